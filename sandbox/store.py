"""What the provider stand-ins received, and the faults they were told to inject."""

from __future__ import annotations

import itertools
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


@dataclass
class Fault:
    """Answer the next ``count`` requests with ``status`` (0 = hang until the client times out)."""

    status: int
    count: int = 1
    retry_after: int | None = None


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

    def inject(self, provider: str, fault: Fault) -> None:
        self.faults.setdefault(provider, []).append(fault)

    def take_fault(self, provider: str) -> Fault | None:
        """The fault to apply to this request, if any (each counts down)."""
        queue = self.faults.get(provider) or []
        while queue:
            fault = queue[0]
            if fault.count <= 0:
                queue.pop(0)
                continue
            fault.count -= 1
            return fault
        return None


store = Store()
