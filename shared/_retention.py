"""Retention: each service deletes the rows of its own stores that are past their age, a bounded batch at a time.

A store is a table and the condition under which a row is old enough to go (:class:`Purge`). Every
``HERALD_RETENTION_INTERVAL_SECONDS`` a service deletes, store by store, at most
``HERALD_RETENTION_BATCH`` rows per statement (picked by ``ctid``, so no statement holds many row
locks or runs long), pausing between statements, until a statement finds fewer. What went is counted in
``herald_retention_purged_total{store}``. docs/data.md lists every store's age and setting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ._app import Resources, periodic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Purge:
    """The rows of ``table`` for which ``old`` holds go; ``old`` is SQL whose ``$1`` is the interval ``keep``."""

    store: str
    table: str
    old: str
    keep: timedelta

    async def run(self, conn: Any, *, batch: int) -> int:
        """Delete up to ``batch`` old rows; how many went."""
        status = await conn.execute(
            f"DELETE FROM {self.table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {self.table} WHERE {self.old} LIMIT $2))", self.keep, batch
        )
        return int(status.split()[-1])


async def purge_all(res: Resources, purges: Sequence[Purge], *, batch: int, pause: float = 0.05) -> dict[str, int]:
    """One pass over every store: old rows deleted ``batch`` at a time; how many went per store."""
    gone: dict[str, int] = {}
    for purge in purges:
        total = 0
        while True:
            async with res.pool.acquire() as conn:
                count = await purge.run(conn, batch=batch)
            total += count
            if count:
                res.metrics.purged.labels(purge.store).inc(count)
            if count < batch:
                break
            await asyncio.sleep(pause)  # let other work through between batches
        gone[purge.store] = total
    return gone


def retention(purges: Callable[[], Sequence[Purge]]):  # noqa: ANN201 - a hook factory for create_service
    """A service hook that runs :func:`purge_all` every ``retention_interval_seconds`` while the service runs."""

    async def purge(res: Resources) -> None:
        gone = await purge_all(res, purges(), batch=res.settings.retention_batch)
        if any(gone.values()):
            log.info("retention: %s", ", ".join(f"{store} {n}" for store, n in gone.items() if n))

    return periodic("retention", purge, lambda res: res.settings.retention_interval_seconds)


def ledger_purge(schema: str, *, days: float) -> Purge:
    """A sender's ledger rows older than ``days`` that are finished (a claim or retry in progress stays)."""
    return Purge(
        f"{schema}.ledger",
        f"{schema}.ledger",
        "created_at < now() - $1::interval AND status NOT IN ('claimed', 'retrying')",
        timedelta(days=days),
    )
