"""What can go wrong with one message, and what happens next.

    HeraldError
     ├── TransientError   retried through retry.<channel> with backoff
     ├── PermanentError   not retried: recorded as failed
     ├── Suppressed       not sent on purpose (preference, cap, no address): recorded
     └── InvalidMessage   not a valid message at all: written to dlq with the reason
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


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
