"""What the provider stand-ins received, and the faults they were told to inject."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

_ids = itertools.count(1)


@dataclass
class Received:
    """One message a stand-in accepted."""

    provider: str
    to: str
    subject: str = ""
    text: str = ""
    html: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    id: int = field(default_factory=lambda: next(_ids))
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    #: Fills the fields above the first time the message is read, so a stand-in under load keeps
    #: what it received as it came and parses it only when someone looks.
    settle: Callable[[Received], None] | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        if self.settle is not None:
            settle, self.settle = self.settle, None
            settle(self)
        return {k: v for k, v in asdict(self).items() if k != "settle"}

    def brief(self) -> dict[str, Any]:
        """What ``as_dict`` gives without the HTML and without parsing a message that is not parsed yet."""
        return {k: v for k, v in asdict(self).items() if k not in {"settle", "html"}}


@dataclass
class Fault:
    """Answer requests with ``status`` (0 = hang until the client times out).

    By default the next ``count`` requests. With ``probability`` each request is hit with that
    chance (only hits count down); with ``until_cleared`` the fault never runs out and stays until
    ``DELETE /api/faults`` removes it. ``message`` replaces the answer's text where the protocol has
    one (an SMTP reply, e.g. ``5.7.8 Authentication credentials invalid``).
    """

    status: int
    count: int = 1
    retry_after: int | None = None
    probability: float | None = None
    until_cleared: bool = False
    message: str | None = None

    @property
    def spent(self) -> bool:
        return not self.until_cleared and self.count <= 0


class Store:
    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.faults: dict[str, list[Fault]] = {}

    def add(self, message: Received) -> Received:
        self.messages.append(message)
        return message

    def list(self, provider: str | None = None) -> list[dict[str, Any]]:
        return [m.as_dict() for m in self.messages if provider in (None, m.provider)]

    def clear(self) -> None:
        self.messages.clear()
        self.faults.clear()

    def list_after(self, after: int = 0, provider: str | None = None) -> list[dict[str, Any]]:
        """The messages with an id above ``after``, briefly (see ``Received.brief``)."""
        return [m.brief() for m in self.messages if m.id > after and provider in (None, m.provider)]

    def inject(self, provider: str, fault: Fault) -> None:
        self.faults.setdefault(provider, []).append(fault)

    def clear_faults(self, provider: str | None = None, status: int | None = None) -> int:
        """Remove the faults of ``provider`` (every provider when None), only those of ``status`` if given; how many."""
        removed = 0
        for name in [provider] if provider is not None else list(self.faults):
            queue = self.faults.get(name) or []
            kept = [f for f in queue if status is not None and f.status != status]
            removed += len(queue) - len(kept)
            if kept:
                self.faults[name] = kept
            else:
                self.faults.pop(name, None)
        return removed

    def take_fault(self, provider: str) -> Fault | None:
        """The fault to apply to this request, if any: the first in line that hits (each counts down)."""
        queue = self.faults.get(provider) or []
        queue[:] = [f for f in queue if not f.spent]
        for fault in queue:
            if fault.probability is not None and random.random() >= fault.probability:
                continue
            if not fault.until_cleared:
                fault.count -= 1
            return fault
        return None


store = Store()
