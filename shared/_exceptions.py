"""What can go wrong with one message, and what happens next.

    HeraldError
     ├── TransientError   retried through retry.<channel> with backoff
     ├── PermanentError   not retried: recorded as failed
     ├── Suppressed       not sent on purpose (preference, cap, no address): recorded
     └── InvalidMessage   not a valid message at all: written to dlq with the reason
"""

from __future__ import annotations


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
