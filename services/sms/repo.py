"""Queries on ``sms.ledger``: the delivery ledger with what each message cost and how it ended."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from shared import DeliveryState, Ledger


class SmsLedger(Ledger):
    """The shared ledger, except that a receipt already recorded is never overwritten by a late ``sent``."""

    def __init__(self) -> None:
        super().__init__("sms")

    async def finish(
        self,
        *,
        conn: Any,
        notification_id: Any,
        status: DeliveryState,
        target: str = "",
        provider_message_id: str | None = None,
        error: str | None = None,
    ) -> None:
        """Record the outcome of a claimed delivery (a receipt that came first wins over ``sent``)."""
        await conn.execute(
            """
            UPDATE sms.ledger
               SET status = CASE WHEN $3 = 'sent' AND provider_status IN ('delivered', 'undelivered', 'failed') THEN status ELSE $3 END,
                   provider_message_id = COALESCE($4, provider_message_id),
                   error = CASE WHEN $3 = 'sent' AND provider_status IN ('undelivered', 'failed') THEN error ELSE $5 END,
                   updated_at = now(),
                   sent_at = CASE WHEN $3 = 'sent' THEN COALESCE(sent_at, now()) ELSE sent_at END
             WHERE notification_id = $1 AND target = $2
            """,
            notification_id,
            target,
            status.value,
            provider_message_id,
            error,
        )


async def record_accepted(
    *,
    conn: Any,
    notification_id: UUID,
    provider_message_id: str,
    category: str,
    critical: bool,
    country: str,
    encoding: str,
    segments: int,
    price_usd: float,
) -> None:
    """Note the provider's id and the message's cost as soon as the provider has taken it."""
    await conn.execute(
        """
        UPDATE sms.ledger
           SET provider_message_id = $2, category = $3, critical = $4, country = $5, encoding = $6,
               segments = $7, price_usd = $8, updated_at = now()
         WHERE notification_id = $1 AND target = ''
        """,
        notification_id,
        provider_message_id,
        category,
        critical,
        country,
        encoding,
        segments,
        price_usd,
    )


async def apply_receipt(
    *, conn: Any, provider_message_id: str, state: DeliveryState, provider_status: str, error_code: str | None
) -> dict[str, Any] | None:
    """Record a final delivery receipt once; the ledger row when it changed, None when already known or unknown."""
    row = await conn.fetchrow(
        """
        UPDATE sms.ledger
           SET status = $2, provider_status = $3, error_code = $4, updated_at = now(),
               error = CASE WHEN $2 = 'failed' THEN 'receipt ' || $3 || COALESCE(' ' || $4, '') ELSE error END,
               delivered_at = CASE WHEN $2 = 'delivered' THEN now() ELSE delivered_at END
         WHERE provider_message_id = $1
           AND status IN ('claimed', 'sent')
           AND provider_status IS DISTINCT FROM $3
        RETURNING notification_id, event_id, event_type, user_id, attempts, critical
        """,
        provider_message_id,
        state.value,
        provider_status,
        error_code,
    )
    return dict(row) if row is not None else None


async def note_progress(*, conn: Any, provider_message_id: str, provider_status: str) -> None:
    """Keep an intermediate provider status (queued, sent) without changing the outcome."""
    await conn.execute(
        "UPDATE sms.ledger SET provider_status = $2, updated_at = now() WHERE provider_message_id = $1 AND provider_status IS NULL",
        provider_message_id,
        provider_status,
    )


async def spend(*, conn: Any, since: Any) -> list[dict[str, Any]]:
    """Segments and estimated spend since ``since``, by event type, category and country."""
    rows = await conn.fetch(
        """
        SELECT event_type, category, country, count(*) AS messages, sum(segments) AS segments, sum(price_usd) AS price_usd
          FROM sms.ledger
         WHERE sent_at >= $1
         GROUP BY event_type, category, country
         ORDER BY event_type, category, country
        """,
        since,
    )
    return [dict(r) for r in rows]
