"""What can go wrong with one message, and what happens next.

    HeraldError
     ├── TransientError   retried through the delay topics with backoff, over a time window
     │    └── Misconfigured  Herald's own credentials or relay refused: the channel pauses, the message waits
     ├── PermanentError   not retried: recorded as failed
     ├── Suppressed       not sent on purpose (preference, cap, no address): recorded
     └── InvalidMessage   not a valid message at all: written to dlq with the reason
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar
from email.utils import parsedate_to_datetime

T = TypeVar("T")


class HeraldError(Exception):
    """Root of every error Herald raises about a message."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class TransientError(HeraldError):
    """Worth trying again later (timeout, 5xx, 429)."""

    def __init__(self, reason: str, detail: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(reason, detail)
        self.retry_after = retry_after


class Misconfigured(TransientError):
    """The provider refused Herald's own configuration (credentials, relay, sender): not the recipient's failure.

    The channel pauses (its circuit breaker shows ``misconfigured``) and the dispatch waits, its
    retry window started afresh, until a probe gets through once the configuration is fixed.
    """


class PermanentError(HeraldError):
    """Will fail the same way every time (invalid address, 4xx, gone endpoint)."""


class Suppressed(HeraldError):
    """Deliberately not sent; the reason is recorded."""


class InvalidMessage(HeraldError):
    """Not a message this stage can read; goes to the dead-letter topic."""

def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def is_outage(exc: BaseException) -> bool:
    """Is ``exc`` a dependency being unreachable (PostgreSQL, Redis, the network), not something about a message?

    An outage is waited out, never charged to the message being handled: its attempts are kept.
    A database error about the data itself (a NUL character, a value too long) is not an outage.
    """
    import asyncpg.exceptions as pg
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    outages: tuple[type[BaseException], ...] = (
        OSError,  # ConnectionError and its kin
        TimeoutError,  # asyncio.TimeoutError too
        pg.InterfaceError,  # the connection closed under the query, or the pool is closing
        pg.PostgresConnectionError,  # class 08: connection exceptions
        pg.CannotConnectNowError,  # the server is starting up
        pg.OperatorInterventionError,  # class 57: shutting down, or the query cancelled (statement_timeout too)
        pg.TooManyConnectionsError,
        pg.InternalClientError,  # a connection left mid-operation by a cancelled query: the pool replaces it
        RedisConnectionError,
        RedisTimeoutError,
    )
    return isinstance(exc, outages)


async def patiently(
    write: Callable[[], Awaitable[T]], *, patience: float, what: str, problems: dict[str, str] | None = None, key: str = ""
) -> T:
    """Run ``write`` until it succeeds, retrying any failure with backoff for up to ``patience`` seconds.

    For what must be recorded because a provider has already accepted a send: giving up
    there would let the message be sent again, so every failure is retried, not only outages.
    While it fails, ``problems[key]`` says why (``/readyz``).
    """
    import asyncio
    import logging
    import time

    deadline = time.monotonic() + patience
    pause = 0.2
    while True:
        try:
            result = await write()
        except Exception as exc:
            if time.monotonic() >= deadline:
                raise
            if problems is not None:
                problems[key] = f"{type(exc).__name__}: {exc}"[:300]
            logging.getLogger(__name__).warning("%s failed (%s: %s); trying again in %.1fs", what, type(exc).__name__, exc, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 10.0)
            continue
        if problems is not None:
            problems.pop(key, None)
        return result


def describe(exc: BaseException, *, frames: int = 4, limit: int = 1500) -> str:
    """A short, masked account of an unexpected exception: its type, message and last frames.

    Addresses and numbers are masked, so the text can go into ``dlq`` headers and logs.
    """
    import traceback

    from ._logging import mask_text

    summary = traceback.extract_tb(exc.__traceback__)[-frames:]
    where = " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in reversed(summary))
    text = f"{type(exc).__name__}: {exc}" + (f" [at {where}]" if where else "")
    return mask_text(text)[:limit]
