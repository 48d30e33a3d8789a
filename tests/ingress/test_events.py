"""POST /v1/events against the real broker, PostgreSQL and Redis: every binding mode, keys, limits, duplicates."""

from __future__ import annotations

import json
import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition

from ..support import STARTS, Moment, TopicReader, cloud_event

BOOKING = {"booking_id": "b_1", "student_id": "stu_1", "instructor_id": "ins_1", "title": "Piano lesson", "starts_at": STARTS.iso}
PASSWORD = {"user_id": "u_1"}


async def published(bootstrap: str, topic: str) -> bool:
    """Whether the topic's log holds anything, read from its end offsets (no waiting)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        offsets = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return sum(offsets.values()) > 0
    finally:
        await consumer.stop()


async def written(bootstrap: str, topic: str, expected: int | None = None) -> int:
    """How many records the topic holds: wait for ``expected``, then poll once more for strays."""
    async with TopicReader(bootstrap, topic) as reader:
        if expected:
            await reader.wait_for(expected)
        for _ in range(3):
            await reader.poll()
        return len(reader.records)


def booking(event_id: str | None = None, **extra) -> dict:
    return cloud_event("booking.created", dict(BOOKING), id=event_id, subject="b_1", **extra)


async def test_structured_mode_answers_202_only_once_the_event_is_in_the_topic(ingress):
    event = booking()
    response = await ingress.http.post(
        "/v1/events", content=json.dumps(event), headers={**ingress.service_key(), "Content-Type": "application/cloudevents+json; charset=utf-8"}
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"id": event["id"], "source": "tests", "type": "booking.created", "status": "accepted"}
    topic = ingress.settings.domain_topic("booking.created")
    assert await published(ingress.settings.kafka_bootstrap, topic)
    async with TopicReader(ingress.settings.kafka_bootstrap, topic) as reader:
        [record] = await reader.wait_for(1)
    stored = json.loads(record.value)
    assert stored["id"] == event["id"] and stored["data"] == BOOKING and stored["subject"] == "b_1"
    assert record.key == b"b_1"
    assert dict(record.headers)["content-type"] == b"application/cloudevents+json"
    assert dict(record.headers)["herald-producer"] == b"dev"


async def test_a_plain_json_cloudevent_is_still_accepted(ingress):
    response = await ingress.http.post("/v1/events", json=booking(), headers=ingress.service_key())
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "accepted"


async def test_binary_mode_takes_attributes_from_ce_headers_and_data_from_the_body(ingress):
    event_id = uuid.uuid4().hex
    headers = {
        **ingress.service_key(),
        "Content-Type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "https://bookings.example/api",
        "ce-type": "booking.created",
        "ce-subject": "b_1",
        "ce-time": Moment(days=-1, hour=10).iso,
        "ce-traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "ce-note": "caf%C3%A9",
    }
    response = await ingress.http.post("/v1/events", content=json.dumps(BOOKING), headers=headers)
    assert response.status_code == 202, response.text
    async with TopicReader(ingress.settings.kafka_bootstrap, ingress.settings.domain_topic("booking.created")) as reader:
        [record] = await reader.wait_for(1)
    stored = json.loads(record.value)
    assert stored["id"] == event_id and stored["source"] == "https://bookings.example/api"
    assert stored["data"] == BOOKING and stored["datacontenttype"] == "application/json"
    assert stored["traceparent"].startswith("00-0af7") and stored["note"] == "café"


async def test_binary_mode_refuses_missing_attributes_and_non_json_data(ingress):
    headers = {**ingress.service_key(), "Content-Type": "application/json", "ce-specversion": "1.0", "ce-type": "booking.created"}
    missing = await ingress.http.post("/v1/events", content=json.dumps(BOOKING), headers=headers)
    assert missing.status_code == 422 and "ce-id" in missing.json()["detail"]
    text = await ingress.http.post("/v1/events", content="hello", headers={**headers, "Content-Type": "text/plain", "ce-id": "x", "ce-source": "s"})
    assert text.status_code == 415


async def test_a_batch_answers_per_item_and_publishes_only_the_valid_ones(ingress):
    invalid = booking()
    invalid["data"]["instructor_id"] = ""
    unknown_area = cloud_event("spaceship.launched", {"x": 1})
    good = [booking(), booking()]
    batch = [good[0], invalid, "not an event", unknown_area, good[1]]
    response = await ingress.http.post(
        "/v1/events", content=json.dumps(batch), headers={**ingress.service_key(), "Content-Type": "application/cloudevents-batch+json"}
    )
    assert response.status_code == 207, response.text
    body = response.json()
    assert (body["accepted"], body["duplicate"], body["refused"]) == (2, 0, 3)
    items = body["items"]
    assert [i["status"] for i in items] == ["accepted", "refused", "refused", "refused", "accepted"]
    assert items[1]["code"] == 422 and "instructor_id" in items[1]["detail"] and items[1]["id"] == invalid["id"]
    assert items[3]["code"] == 422 and "spaceship" in items[3]["detail"]
    topic = ingress.settings.domain_topic("booking.created")
    assert await written(ingress.settings.kafka_bootstrap, topic, 2) == 2
    async with TopicReader(ingress.settings.kafka_bootstrap, topic) as reader:
        await reader.wait_for(2)
    assert sorted(e["id"] for e in reader.json()) == sorted(e["id"] for e in good)


async def test_an_unreadable_sendat_is_refused_and_a_readable_one_is_published_as_sent(ingress):
    import datetime as dt

    when = (dt.datetime.now(dt.timezone(dt.timedelta(hours=1))) + dt.timedelta(days=2)).replace(microsecond=0).isoformat()
    later = booking(sendat=when)
    too_far = (dt.datetime.now(dt.UTC) + dt.timedelta(days=400)).isoformat()
    for bad in ("tomorrow", "2026-12-01T18:00:00", "2026-13-01T18:00:00Z", 1764612000, too_far, "9999-12-31T23:59:59-23:59"):
        refused = await ingress.http.post("/v1/events", json=booking(sendat=bad), headers=ingress.service_key())
        assert refused.status_code == 422 and "sendat" in refused.json()["detail"], (bad, refused.text)
    accepted = await ingress.http.post("/v1/events", json=later, headers=ingress.service_key())
    assert accepted.status_code == 202, accepted.text
    async with TopicReader(ingress.settings.kafka_bootstrap, ingress.settings.domain_topic("booking.created")) as reader:
        await reader.wait_for(1)
        assert [e["sendat"] for e in reader.json() if e["id"] == later["id"]] == [when]


async def test_a_fully_valid_batch_is_answered_202(ingress):
    batch = [booking() for _ in range(3)]
    response = await ingress.http.post(
        "/v1/events", content=json.dumps(batch), headers={**ingress.service_key(), "Content-Type": "application/cloudevents-batch+json"}
    )
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 3


async def test_the_same_source_and_id_is_accepted_again_but_published_once(ingress):
    event = booking("evt-dup")
    first = await ingress.http.post("/v1/events", json=event, headers=ingress.service_key())
    again = await ingress.http.post("/v1/events", json=event, headers=ingress.service_key())
    other_source = await ingress.http.post("/v1/events", json={**event, "source": "elsewhere"}, headers=ingress.service_key())
    in_batch = await ingress.http.post("/v1/events", json=[event, booking("evt-new"), booking("evt-new")], headers=ingress.service_key())
    assert first.json()["status"] == "accepted"
    assert again.status_code == 202 and again.json()["status"] == "duplicate"
    assert other_source.json()["status"] == "accepted"
    assert in_batch.status_code == 202 and [i["status"] for i in in_batch.json()["items"]] == ["duplicate", "accepted", "duplicate"]
    assert await written(ingress.settings.kafka_bootstrap, ingress.settings.domain_topic("booking.created"), 3) == 3
    metrics = (await ingress.http.get("/metrics/")).text
    assert 'herald_ingress_events_total{outcome="accepted",producer="dev"} 3.0' in metrics
    assert 'herald_ingress_events_total{outcome="duplicate",producer="dev"} 3.0' in metrics


async def test_bodies_over_the_limit_are_refused_with_413(ingress):
    huge = booking()
    huge["data"]["padding"] = "x" * (ingress.settings.max_body_bytes + 1)
    response = await ingress.http.post("/v1/events", json=huge, headers=ingress.service_key())
    assert response.status_code == 413
    too_many = [booking() for _ in range(ingress.settings.max_batch + 1)]
    response = await ingress.http.post("/v1/events", json=too_many, headers=ingress.service_key())
    assert response.status_code == 413 and str(ingress.settings.max_batch) in response.json()["detail"]
    assert await written(ingress.settings.kafka_bootstrap, ingress.settings.domain_topic("booking.created"), 0) == 0


async def test_a_wrong_content_type_is_refused_with_415(ingress):
    for content_type in ("text/plain", "application/xml", "application/cloudevents+json; charset=latin-1"):
        response = await ingress.http.post("/v1/events", content=json.dumps(booking()), headers={**ingress.service_key(), "Content-Type": content_type})
        assert response.status_code == 415, (content_type, response.text)
        assert response.json()["detail"]


async def test_malformed_bodies_get_a_4xx_with_a_message(ingress):
    cases = [
        ("application/cloudevents+json", "{not json", 400),
        ("application/cloudevents-batch+json", json.dumps(booking()), 400),
        ("application/cloudevents+json", json.dumps([booking()]), 422),
        ("application/json", json.dumps({"id": "x"}), 422),
        ("application/json", "[]", 422),
    ]
    for content_type, body, expected in cases:
        response = await ingress.http.post("/v1/events", content=body, headers={**ingress.service_key(), "Content-Type": content_type})
        assert response.status_code == expected, (content_type, body, response.text)
        assert response.json()["detail"]


async def test_requests_without_a_known_key_are_refused(ingress, db):
    assert (await ingress.http.post("/v1/events", json=booking())).status_code == 401
    wrong = await ingress.http.post("/v1/events", json=booking(), headers={"Authorization": "ApiKey hk_nope"})
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "ApiKey"


async def test_a_producer_key_may_publish_only_its_event_types(ingress, db):
    headers = await ingress.new_key(db, "booking.*", "lesson.reminder")
    allowed = await ingress.http.post("/v1/events", json=booking(), headers=headers)
    assert allowed.status_code == 202, allowed.text
    refused = await ingress.http.post("/v1/events", json=cloud_event("auth.password_changed", PASSWORD), headers=headers)
    assert refused.status_code == 403 and "auth.password_changed" in refused.json()["detail"]
    mixed = await ingress.http.post("/v1/events", json=[booking(), cloud_event("auth.password_changed", PASSWORD)], headers=headers)
    assert mixed.status_code == 207
    assert [(i["status"], i["code"]) for i in mixed.json()["items"]] == [("accepted", 202), ("refused", 403)]
    assert await written(ingress.settings.kafka_bootstrap, ingress.settings.domain_topic("auth.password_changed"), 0) == 0


async def test_several_keys_of_a_producer_work_at_once_and_a_revoked_one_stops(ingress, db):
    old = await ingress.new_key(db, "*")
    new = await ingress.new_key(db, "*")
    assert (await ingress.http.post("/v1/events", json=booking(), headers=old)).status_code == 202
    assert (await ingress.http.post("/v1/events", json=booking(), headers=new)).status_code == 202
    digest = __import__("services.ingress.logic", fromlist=["hash_key"]).hash_key(old["Authorization"].split(" ")[1])
    await db.execute("UPDATE ingress.api_keys SET revoked_at = now() WHERE key_hash = $1", digest)
    assert (await ingress.http.post("/v1/events", json=booking(), headers=old)).status_code == 401
    assert (await ingress.http.post("/v1/events", json=booking(), headers=new)).status_code == 202
    stored = await db.fetchval("SELECT count(*) FROM ingress.api_keys WHERE key_hash = $1 OR key_prefix = $2", old["Authorization"].split(" ")[1].encode(), old["Authorization"].split(" ")[1])
    assert stored == 0, "neither the key nor its bytes are stored"


async def test_each_key_has_its_own_rate_limit_with_retry_after(ingress, db):
    limited = await ingress.new_key(db, "*", rate=3)
    other = await ingress.new_key(db, "*", rate=3)
    answers = [(await ingress.http.post("/v1/events", json=booking(), headers=limited)).status_code for _ in range(3)]
    assert answers == [202, 202, 202]
    refused = await ingress.http.post("/v1/events", json=booking(), headers=limited)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert (await ingress.http.post("/v1/events", json=booking(), headers=other)).status_code == 202
    service = [(await ingress.http.post("/v1/events", json=booking(), headers=ingress.service_key())).status_code for _ in range(5)]
    assert service == [202] * 5


async def test_without_redis_events_are_refused_with_503_and_nothing_is_published(infra, namespace, db):
    from herald.infra import free_port
    from services.ingress.app import create_app

    from ..support import make_topics, running
    from .conftest import Ingress, ingress_settings

    settings = ingress_settings(infra, namespace, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    await make_topics(settings)
    async with running(create_app(settings)) as http:
        ingress = Ingress(http, settings)
        for headers in (ingress.service_key(), await ingress.new_key(db, "*")):
            response = await http.post("/v1/events", json=booking(), headers=headers)
            assert response.status_code == 503, response.text
            assert int(response.headers["Retry-After"]) >= 1
    assert await written(settings.kafka_bootstrap, settings.domain_topic("booking.created"), 0) == 0


async def test_an_event_being_published_elsewhere_is_answered_409_until_it_is_done(ingress, redis_client):
    from services.ingress import logic
    from shared import CloudEvent

    event = booking("evt-in-flight")
    key = logic.dedupe_key(ingress.settings.kafka_topic_namespace, CloudEvent.model_validate(event))
    await redis_client.set(key, "pending", ex=30)
    busy = await ingress.http.post("/v1/events", json=event, headers=ingress.service_key())
    assert busy.status_code == 409 and busy.headers["Retry-After"] == "1"
    batch = await ingress.http.post("/v1/events", json=[event, booking()], headers=ingress.service_key())
    assert batch.status_code == 207 and [(i["status"], i["code"]) for i in batch.json()["items"]] == [("refused", 409), ("accepted", 202)]
    await redis_client.delete(key)
    assert (await ingress.http.post("/v1/events", json=event, headers=ingress.service_key())).json()["status"] == "accepted"
    assert await redis_client.get(key) == b"done"
    assert await redis_client.ttl(key) > ingress.settings.dedupe_ttl_seconds - 60


async def test_concurrent_copies_of_one_event_are_published_once(ingress):
    import asyncio

    event = booking("evt-race")
    answers = await asyncio.gather(*(ingress.http.post("/v1/events", json=event, headers=ingress.service_key()) for _ in range(8)))
    outcomes = sorted(a.json()["status"] if a.status_code == 202 else str(a.status_code) for a in answers)
    assert outcomes.count("accepted") == 1 and set(outcomes) <= {"accepted", "duplicate", "409"}, outcomes
    assert await written(ingress.settings.kafka_bootstrap, ingress.settings.domain_topic("booking.created"), 1) == 1
