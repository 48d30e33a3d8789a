"""Whether a channel may call its provider now: the circuit breaker, the misconfiguration pause, the operator's hold.

One ``ChannelGate`` per sender process. The pipeline asks it before each batch and
tells it how each provider call went:

* **closed** (normal): every record is delivered. A run of
  ``HERALD_BREAKER_FAILURES`` provider failures in a row, or a failure rate of at
  least ``HERALD_BREAKER_FAILURE_RATE`` over the last ``HERALD_BREAKER_WINDOW_SECONDS``
  (with at least ``HERALD_BREAKER_MIN_CALLS`` calls), opens it.
* **open**: nothing is delivered; the channel's consumers rewind and pause their
  partitions, so no message burns an attempt. After a pause (doubling from
  ``HERALD_BREAKER_OPEN_SECONDS`` up to ``HERALD_BREAKER_OPEN_MAX_SECONDS``) it lets
  one probe through (**half_open**): success closes it, failure opens it again.
* **misconfigured**: the provider refused Herald's own credentials or relay
  (SMTP 530/535, 5.7.x; HTTP 401/403): the same as open, and the dispatch that met
  it waits with its retry window started afresh, since nothing was the recipient's
  fault. Probes go on until the configuration is fixed.
* **held**: an operator said so (``herald channel hold <channel>``); only
  ``herald channel resume <channel>`` ends it. ``resume`` also closes an open or
  misconfigured gate at once.

The hold and resume commands reach every instance through Redis keys
(``<prefix>channel:<channel>:hold`` and ``…:resume``), read at most every
``HERALD_BREAKER_CONTROL_SECONDS``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)


class GateState(StrEnum):
    closed = "closed"
    open = "open"
    half_open = "half_open"
    misconfigured = "misconfigured"
    held = "held"


def hold_key(prefix: str, channel: str) -> str:
    return f"{prefix}channel:{channel}:hold"


def resume_key(prefix: str, channel: str) -> str:
    return f"{prefix}channel:{channel}:resume"


class ChannelGate:
    """The breaker of one channel in one process (see the module's docstring)."""

    def __init__(
        self,
        channel: str,
        *,
        failures: int = 20,
        failure_rate: float = 0.5,
        window_seconds: float = 30.0,
        min_calls: int = 20,
        open_seconds: float = 5.0,
        open_max_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[GateState, GateState, str], None] | None = None,
    ) -> None:
        self.channel = channel
        self.failures = failures
        self.failure_rate = failure_rate
        self.window = window_seconds
        self.min_calls = min_calls
        self.open_seconds = open_seconds
        self.open_max_seconds = open_max_seconds
        self.clock = clock
        self.on_change = on_change
        self.state = GateState.closed
        self.reason = ""
        self._run = 0  # failures in a row
        self._calls: deque[tuple[float, bool]] = deque()  # (when, failed) within the window
        self._pause = open_seconds
        self._until = 0.0  # when an open gate lets a probe through
        self._probing = False
        self._resume_seen: str | None = None

    # -- what the pipeline asks -------------------------------------------------------------

    def admits(self) -> int | None:
        """How many records of a batch may go to the provider now: None for all, 0 for none, 1 for a probe."""
        if self.state is GateState.closed:
            return None
        if self.state is GateState.held:
            return 0
        if self.state in (GateState.open, GateState.misconfigured) and self.clock() >= self._until and not self._probing:
            self._probing = True
            self._set(GateState.half_open if self.state is GateState.open else self.state, self.reason)
            return 1
        if self.state is GateState.half_open and not self._probing:
            self._probing = True
            return 1
        return 0

    def blocks(self) -> bool:
        """Should a record that reached the provider step now wait instead (the gate closed on it mid-batch)?

        A batch's records run concurrently: when the first failures open the gate, the rest of
        that batch must not go on burning attempts. The probe of a half-open or misconfigured
        gate is let through.
        """
        if self.state in (GateState.open, GateState.held):
            return True
        return self.state is GateState.misconfigured and not self._probing

    def retry_in(self) -> float:
        """Seconds until the gate may let something through again (for resuming paused partitions)."""
        if self.state is GateState.closed:
            return 0.0
        if self.state is GateState.held:
            return 5.0
        return max(self._until - self.clock(), 0.5)

    # -- what the pipeline reports ------------------------------------------------------------

    def succeeded(self) -> None:
        self._record(False)
        self._run = 0
        if self.state is not GateState.closed and self.state is not GateState.held:
            self._pause = self.open_seconds
            self._probing = False
            self._set(GateState.closed, "a delivery succeeded")

    def failed(self, reason: str) -> None:
        """A provider failure (timeout, 5xx, 429…): not a recipient's, not a misconfiguration."""
        self._record(True)
        self._run += 1
        if self.state in (GateState.half_open, GateState.open, GateState.misconfigured) and self._probing:
            self._reopen(GateState.open, f"the probe failed: {reason}")
        elif self.state is GateState.closed and self._tripped():
            self._reopen(GateState.open, f"{self._run} failures in a row, last {reason}" if self._run >= self.failures else f"failure rate over {self.window:.0f}s, last {reason}")

    def misconfigured(self, reason: str) -> None:
        """The provider refused Herald's own credentials or relay: pause the channel until a probe gets through."""
        self._record(True)
        self._reopen(GateState.misconfigured, reason)

    def neutral(self) -> None:
        """A call that says nothing about the provider (suppressed, a recipient's permanent failure)."""
        if self._probing and self.state is not GateState.held:
            self.succeeded()

    def probe_over(self) -> None:
        """The batch that carried a probe is finished; if nothing was reported, the next batch may probe again."""
        self._probing = False

    # -- operator -----------------------------------------------------------------------------

    def control(self, *, held: bool, resume_token: str | None) -> None:
        """Apply the operator's hold and resume (read from Redis by the caller)."""
        if held and self.state is not GateState.held:
            self._set(GateState.held, "held by an operator")
            return
        if not held and self.state is GateState.held:
            self._probing = False
            self._set(GateState.closed, "resumed by an operator")
        if self._resume_seen is None:
            self._resume_seen = resume_token or ""  # a resume said before this process started is not news
        elif resume_token and resume_token != self._resume_seen:
            self._resume_seen = resume_token
            if self.state in (GateState.open, GateState.half_open, GateState.misconfigured):
                self._pause = self.open_seconds
                self._probing = False
                self._run = 0
                self._calls.clear()
                self._set(GateState.closed, "resumed by an operator")

    # -- inside --------------------------------------------------------------------------------

    def _record(self, failed: bool) -> None:
        now = self.clock()
        self._calls.append((now, failed))
        while self._calls and self._calls[0][0] < now - self.window:
            self._calls.popleft()

    def _tripped(self) -> bool:
        if self._run >= self.failures:
            return True
        if len(self._calls) < self.min_calls:
            return False
        return sum(1 for _, failed in self._calls if failed) / len(self._calls) >= self.failure_rate

    def _reopen(self, state: GateState, reason: str) -> None:
        if self._probing or self.state in (GateState.open, GateState.misconfigured, GateState.half_open):
            self._pause = min(self._pause * 2, self.open_max_seconds) if self._probing else self._pause
        self._probing = False
        self._until = self.clock() + self._pause
        self._set(state, reason)

    def _set(self, state: GateState, reason: str) -> None:
        before = self.state
        self.state, self.reason = state, reason
        if before is not state:
            log.warning("channel %s: %s -> %s (%s)", self.channel, before.value, state.value, reason)
            if self.on_change is not None:
                self.on_change(before, state, reason)

    def describe(self) -> dict[str, Any]:
        return {"state": self.state.value, "reason": self.reason}
