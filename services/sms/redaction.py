"""Erasing a user's messages at Twilio (``HERALD_TWILIO_ERASURE=delete|redact``), apart from the erasure itself.

An erasure queues every message id the ledger holds for the user in ``sms.provider_erasures`` and
tries them at once, for at most ``HERALD_TWILIO_ERASURE_BUDGET_SECONDS``. What Twilio does not take
then (it is unreachable, answers 5xx or 429, or the message is still in progress) stays queued and is
tried again in the background with growing pauses, by whichever sms instance leases it first, so a
Twilio outage never holds up the erasure topic nor makes the service unready. A message Twilio
refuses for good (another 4xx) is logged and dropped, as is one still queued after
``HERALD_TWILIO_ERASURE_GIVE_UP_DAYS``. Progress is counted in ``herald_erased_total{store}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import Any

from shared import Resources, describe, periodic

from .providers.twilio import ProviderError

log = logging.getLogger(__name__)

#: Twilio's "Cannot delete message because it is in progress".
IN_PROGRESS = 20009
#: How long a worker holds the messages it leased before another instance may take them.
LEASE = timedelta(minutes=5)
#: The longest pause between two tries of one message.
MAX_PAUSE_SECONDS = 3600.0


async def queue(conn: Any, *, user_id: str, how: str) -> int:
    """Queue the user's messages at Twilio for erasure (each once); how many are queued now."""
    await conn.execute(
        """
        INSERT INTO sms.provider_erasures (provider_message_id, user_id, how)
        SELECT DISTINCT provider_message_id, user_id, $2 FROM sms.ledger WHERE user_id = $1 AND provider_message_id IS NOT NULL
        ON CONFLICT (provider_message_id) DO NOTHING
        """,
        user_id,
        how,
    )
    return int(await conn.fetchval("SELECT count(*) FROM sms.provider_erasures WHERE user_id = $1", user_id))


async def _lease(conn: Any, *, user_id: str | None, limit: int, lease: timedelta) -> list[Any]:
    return await conn.fetch(
        """
        UPDATE sms.provider_erasures SET due_at = now() + $3::interval, attempts = attempts + 1
         WHERE provider_message_id IN (
               SELECT provider_message_id FROM sms.provider_erasures
                WHERE due_at <= now() AND ($1::text IS NULL OR user_id = $1)
                ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED)
        RETURNING provider_message_id, user_id, how, attempts, created_at
        """,
        user_id,
        limit,
        lease,
    )


async def work(
    res: Resources, *, user_id: str | None = None, budget: float, pause: float, give_up: timedelta, batch: int = 20, counted: bool = True
) -> dict[str, int]:
    """Try the queued messages that are due (only ``user_id``'s when given) for at most ``budget`` seconds (a call
    in flight is cut short then, and tried again later); counts by outcome. ``pause``: the first wait before a
    message that failed is tried again (it doubles). ``counted``: add the outcomes to ``herald_erased_total``
    (the erasure's own pass reports them instead, and its report is counted)."""
    provider = res.extra["twilio"]
    counts = {"twilio_deleted": 0, "twilio_redacted": 0, "twilio_not_found": 0, "twilio_refused": 0, "twilio_abandoned": 0}
    deadline = time.monotonic() + budget
    lease = max(LEASE, timedelta(seconds=budget + 60))  # longer than this pass: nobody else takes what it holds
    while time.monotonic() < deadline:
        async with res.pool.acquire() as conn:
            leased = await _lease(conn, user_id=user_id, limit=batch, lease=lease)
        if not leased:
            break
        for i, row in enumerate(leased):
            if time.monotonic() >= deadline:  # out of time: the rest is due again at once
                async with res.pool.acquire() as conn:
                    await conn.execute(
                        "UPDATE sms.provider_erasures SET due_at = now(), attempts = attempts - 1 WHERE provider_message_id = ANY($1::text[])",
                        [r["provider_message_id"] for r in leased[i:]],
                    )
                break
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.5)):
                    outcome, error = await _erase_one(provider, row)
            except TimeoutError:
                outcome, error = None, "cut short at the end of the pass"
            except Exception as exc:  # not Twilio's answer: a bug or an unreadable reply, tried again like a failure
                log.exception("erasing message %s at Twilio failed", row["provider_message_id"])
                outcome, error = None, describe(exc)
            async with res.pool.acquire() as conn:
                if outcome is None:
                    if row["created_at"] < await conn.fetchval("SELECT now()") - give_up:
                        outcome = "twilio_abandoned"
                        log.error("gave up erasing message %s at Twilio after %d tries: %s", row["provider_message_id"], row["attempts"], error)
                    else:
                        wait = min(pause * 2 ** min(row["attempts"] - 1, 20), MAX_PAUSE_SECONDS)
                        await conn.execute(
                            "UPDATE sms.provider_erasures SET due_at = now() + $2::interval, last_error = $3 WHERE provider_message_id = $1",
                            row["provider_message_id"], timedelta(seconds=wait), error[:500],
                        )
                        continue
                await conn.execute("DELETE FROM sms.provider_erasures WHERE provider_message_id = $1", row["provider_message_id"])
            counts[outcome] += 1
            if counted:
                res.metrics.erased.labels(outcome).inc()
    return counts


async def _erase_one(provider: Any, row: Any) -> tuple[str | None, str]:
    """Erase one message: the outcome's count name, or None (try again later) with what went wrong."""
    sid, how = row["provider_message_id"], row["how"]
    try:
        if await provider.erase(sid, how=how):
            return ("twilio_deleted" if how == "delete" else "twilio_redacted"), ""
        return "twilio_not_found", ""
    except ProviderError as exc:
        if exc.status is None or exc.status >= 500 or exc.status == 429 or exc.code == IN_PROGRESS:
            return None, f"{exc.status or 'no answer'}: {exc}"
        log.error("Twilio refused to erase message %s (%s %s): %s; not tried again", sid, exc.status, exc.code, exc)
        return "twilio_refused", ""


def worker(*, interval: float, pause: float, give_up: timedelta):  # noqa: ANN201 - a hook for create_service
    """A service hook that works through the queue every ``interval`` seconds while the service runs."""

    async def work_off(res: Resources) -> None:
        done = await work(res, budget=max(interval, 30.0), pause=pause, give_up=give_up)
        if any(done.values()):
            log.info("Twilio erasures: %s", ", ".join(f"{k} {v}" for k, v in done.items() if v))

    return periodic("Twilio erasure", work_off, lambda res: interval)
