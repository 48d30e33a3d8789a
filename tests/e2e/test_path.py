"""One real path through real processes: ingress → domain topic → router → notify.inapp → inapp → inbox."""

import re

import httpx
import pytest

from herald import infra as local
from herald.stack import SERVICES, Stack
from shared import HeraldSettings

from ..support import STARTS, TopicReader, api_key, bearer, cloud_event, eventually, make_topics, produce, settings_for

pytestmark = pytest.mark.slow

PATH_SERVICES = tuple(s for s in SERVICES if s.name in {"ingress", "router", "inapp"})


@pytest.fixture
async def stack(infra, namespace, tmp_path):
    env = {**__import__("os").environ, **infra.env(namespace)}
    for spec in PATH_SERVICES:
        env[spec.port_variable] = str(local.free_port())
    settings = settings_for(HeraldSettings, infra, namespace)
    await make_topics(settings)
    running = Stack(env=env, log_dir=tmp_path / "logs")
    try:
        running.start_all(PATH_SERVICES, timeout=90)
        yield running, settings
    finally:
        running.stop_all()


def url(stack: Stack, name: str) -> str:
    return stack.url(next(s for s in SERVICES if s.name == name))


def booking(event_id: str) -> dict:
    data = {"booking_id": "b_1", "student_id": "stu_1", "instructor_id": "ins_1", "title": "Piano lesson", "starts_at": STARTS.iso}
    return cloud_event("booking.created", data, id=event_id, subject="b_1")


def counter(metrics: str, name: str, **labels: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_an_event_published_over_http_reaches_the_inbox_once_even_when_published_twice(stack, infra):
    procs, settings = stack
    async with httpx.AsyncClient(timeout=10) as http:
        answers = []
        for _ in range(2):
            accepted = await http.post(f"{url(procs, 'ingress')}/v1/events", json=booking("evt-1"), headers=api_key(settings))
            assert accepted.status_code == 202, accepted.text
            answers.append(accepted.json()["status"])
        assert answers == ["accepted", "duplicate"]
        # A producer writing to Kafka directly bypasses ingress's check: the channels' ledgers catch that copy.
        await produce(infra.kafka_bootstrap, settings.domain_topic("booking.created"), booking("evt-1"), key=b"b_1")

        async def instructor_inbox():
            response = await http.get(f"{url(procs, 'inapp')}/v1/inbox", headers=bearer(settings, "ins_1"))
            assert response.status_code == 200
            return response.json()["items"]

        [item] = await eventually(instructor_inbox, timeout=45, what="the instructor's notification")
        assert item["type"] == "booking.created" and "Piano lesson" in item["title"] and item["read"] is False
        async def student_items():
            r = await http.get(f"{url(procs, 'inapp')}/v1/inbox", headers=bearer(settings, "stu_1"))
            return r.json()["items"]

        [received] = await eventually(student_items, timeout=30, what="the student's notification")
        assert received["id"] != item["id"]
        assert "received" in received["title"].lower()

        async def duplicate_counted():
            text = (await http.get(f"{url(procs, 'inapp')}/metrics/")).text
            return counter(text, "herald_deliveries_total", channel="inapp", status="duplicate") >= 2

        await eventually(duplicate_counted, timeout=30, what="the second copy counted as a duplicate")
        assert len(await instructor_inbox()) == 1
        stranger = await http.get(f"{url(procs, 'inapp')}/v1/inbox", headers=bearer(settings, "someone_else"))
        assert stranger.json()["items"] == []
        assert (await http.get(f"{url(procs, 'inapp')}/v1/inbox")).status_code == 401


async def test_malformed_events_go_to_the_dlq_with_a_reason_and_the_router_keeps_going(stack, infra):
    procs, settings = stack
    topic = settings.domain_topic("booking.created")
    await produce(infra.kafka_bootstrap, topic, b"\xff not json", key=b"k")
    await produce(infra.kafka_bootstrap, topic, {"hello": "world"}, key=b"k")
    bad_data = booking("evt-bad")
    bad_data["data"]["starts_at"] = "not a time"
    await produce(infra.kafka_bootstrap, topic, bad_data, key=b"k")
    await produce(infra.kafka_bootstrap, topic, cloud_event("booking.created", {"title": "x"}, id="evt-norecipients"), key=b"k")
    await produce(infra.kafka_bootstrap, settings.domain_topic("widget.spun"), cloud_event("widget.spun", {}), key=b"k")
    await produce(infra.kafka_bootstrap, topic, booking("evt-good"), key=b"k")

    async with TopicReader(infra.kafka_bootstrap, settings.dlq_topic) as dlq:
        dead = await dlq.wait_for(3, timeout=45)
    reasons = {dict(r.headers)["herald-reason"].decode(): r for r in dead}
    assert set(reasons) == {"invalid_json", "not_cloudevent", "invalid_data"}
    assert reasons["invalid_json"].value == b"\xff not json"
    assert dict(reasons["invalid_data"].headers)["herald-stage"] == b"router"
    assert b"starts_at" in dict(reasons["invalid_data"].headers)["herald-error"]
    async with httpx.AsyncClient(timeout=10) as http:

        async def good_one_arrived():
            r = await http.get(f"{url(procs, 'inapp')}/v1/inbox", headers=bearer(settings, "ins_1"))
            return r.json()["items"]

        await eventually(good_one_arrived, timeout=45, what="the valid event after the bad ones")

        async def unknown_type_skipped():
            text = (await http.get(f"{url(procs, 'router')}/metrics/")).text
            return text if counter(text, "herald_events_total", type="unknown", outcome="skipped") == 1 else None

        # widget.spun lives on a topic created by its producer: the router's pattern picks it up
        metrics = await eventually(unknown_type_skipped, timeout=45, what="the unknown type skipped and counted")
    assert counter(metrics, "herald_dead_lettered_total", stage="router", reason="invalid_json") == 1
    # booking.created without student/instructor ids fails its schema, so it is invalid_data too
    assert counter(metrics, "herald_dead_lettered_total", stage="router", reason="invalid_data") == 2
    assert re.search(r'herald_events_total\{outcome="routed",type="booking.created"\} 1', metrics)


async def test_ingress_refuses_bad_requests_with_a_4xx_and_a_message(stack):
    procs, settings = stack
    async with httpx.AsyncClient(timeout=10) as http:
        ingress = f"{url(procs, 'ingress')}/v1/events"
        assert (await http.post(ingress, json=booking("x"))).status_code == 401
        assert (await http.post(ingress, json=booking("x"), headers={"Authorization": "ApiKey wrong"})).status_code == 401
        invalid = booking("x")
        invalid["data"]["instructor_id"] = ""
        refused = await http.post(ingress, json=invalid, headers=api_key(settings))
        assert refused.status_code == 422 and "instructor_id" in refused.text
        not_event = await http.post(ingress, json={"id": "x"}, headers=api_key(settings))
        assert not_event.status_code == 422
