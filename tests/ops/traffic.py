"""Traffic for the ops end-to-end tests: events through ingress, waits on what Prometheus sees."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx

from ..support import STARTS, api_key, cloud_event
from .stack import RunningPlatform

WELCOMED = 'sum(herald_deliveries_total{channel="inapp", type="user.created", status="sent"})'


def wait_for(probe, *, timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


def post_events(platform: RunningPlatform, events: list[dict] | dict, *, expect: int = 202) -> None:
    response = httpx.post(f"{platform.url('ingress')}/v1/events", json=events, headers=api_key(platform.settings), timeout=20)
    assert response.status_code == expect, response.text


def create_users(platform: RunningPlatform, users: list[dict]) -> None:
    """Announce users (``user.created``) and wait until each one's welcome is in their inbox, so later events find them."""
    before = platform.value(WELCOMED)
    post_events(platform, [cloud_event("user.created", data, subject=data["user_id"]) for data in users])
    wait_for(lambda: platform.value(WELCOMED) >= before + len(users), what=f"{len(users)} welcome(s) delivered")


def traffic(platform: RunningPlatform, count: int) -> list[dict]:
    """``count`` password changes (critical lane) and bookings (normal lane, two recipients), between known users."""
    pairs = [(f"u-{uuid.uuid4().hex[:8]}", f"i-{uuid.uuid4().hex[:8]}") for _ in range(count)]
    create_users(platform, [{"user_id": u} for pair in pairs for u in pair])
    events = []
    for student, instructor in pairs:
        events.append(cloud_event("auth.password_changed", {"user_id": student}, subject=student))
        booking = {"booking_id": uuid.uuid4().hex, "student_id": student, "instructor_id": instructor, "title": "Piano lesson", "starts_at": STARTS.iso}
        events.append(cloud_event("booking.created", booking, subject=booking["booking_id"]))
    return events
