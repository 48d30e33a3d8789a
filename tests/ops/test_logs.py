import asyncio
import json
import uuid

import pytest

from ..support import cloud_event, produce
from .traffic import create_users, post_events, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def json_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_logs_are_json_lines_that_never_show_an_address_or_number_in_clear(platform):
    tag = uuid.uuid4().hex[:8]
    emails = [f"ada.{tag}@example.com", f"grace.{tag}@example.org", f"broken.{tag}@example.net"]
    phones = [f"+1415555{int(tag[:4], 16) % 10000:04d}", f"+4915112{int(tag[4:], 16) % 1000000:06d}"]
    users = [f"u-{tag}-{i}" for i in range(2)]
    settings = platform.settings

    create_users(platform, [{"user_id": u, "email": e, "phone": p, "name": "Ada"} for u, e, p in zip(users, emails, phones, strict=False)])
    post_events(platform, [cloud_event("auth.password_changed", {"user_id": users[0], "email": emails[0], "ip": "203.0.113.9"}, subject=users[0])])
    refused = cloud_event("user.created", {"user_id": users[0], "email": emails[2], "phone": phones[1], "phone_verified_at": "not a time"})
    post_events(platform, refused, expect=422)

    bad_event = cloud_event("user.created", {"user_id": users[1], "email": emails[2], "phone": phones[0], "phone_verified_at": "not a time"})
    bad_dispatch = {"event_id": "e-1", "channel": "inapp", "recipient": {"user_id": users[1], "email": emails[2], "phone": phones[1]}, "data": {"email": emails[1]}}

    async def feed() -> None:
        await produce(settings.kafka_bootstrap, settings.domain_topic("user.created"), bad_event, key=users[1].encode())
        await produce(settings.kafka_bootstrap, settings.notify_topic("inapp"), bad_dispatch, key=users[1].encode())

    asyncio.run(feed())

    def finished():
        lines = json_lines(platform.logs())
        sent = [l for l in lines if l.get("service") == "inapp" and l["message"].startswith("sent inapp") and any(u in l["message"] for u in users)]
        dead = [l for l in lines if l.get("service") == "router" and l["message"].startswith("dead-lettered")]
        invalid = [l for l in lines if l.get("service") == "inapp" and l["message"].startswith("invalid dispatch")]
        return (sent, dead, invalid) if len(sent) >= 3 and dead and invalid else None

    sent, _, _ = wait_for(finished, what="the traffic to be delivered and the bad messages dead-lettered")
    assert all(l["event_id"] and l["notification_id"] for l in sent)

    text = platform.logs()
    lines = json_lines(text)
    assert lines and {l["service"] for l in lines} >= {"ingress", "router", "inapp"}
    non_json = [line for line in text.splitlines() if line.strip() and not line.startswith("{")]
    assert not non_json, non_json[:5]
    for secret in [*emails, *phones, *(p.lstrip("+") for p in phones), "dev-api-key-change-me"]:
        assert secret not in text, f"{secret} appears in clear in the services' logs"
