"""Kafka stopped: ingress answers 503 with Retry-After, claims nothing, and writes nothing behind the caller's back."""

from __future__ import annotations

import json

from herald import infra
from services.ingress import logic
from services.ingress.app import create_app
from shared import CloudEvent

from ..conftest import ARTIFACTS
from ..support import TopicReader, eventually, make_topics, running
from .conftest import ingress_settings
from .kafka_outage import Relay, start_broker
from .test_events import booking


async def test_kafka_down_answers_503_claims_nothing_and_the_retry_is_written_once(infra_env, namespace, redis_client):
    relay_port, broker_port = infra.free_port(), infra.free_port()
    broker = start_broker(broker_port, relay_port, ARTIFACTS / "tansu-outage.log")
    async with Relay(relay_port, target=broker_port) as relay:
        settings = ingress_settings(infra_env, namespace, kafka_bootstrap=f"127.0.0.1:{relay_port}", kafka_request_timeout_ms=2000)
        await make_topics(settings)
        topic = settings.domain_topic("booking.created")
        try:
            async with running(create_app(settings)) as http:
                headers = {"Authorization": f"ApiKey {next(iter(settings.api_key_table().values()))}"}
                assert (await http.post("/v1/events", json=booking(), headers=headers)).status_code == 202

                infra.stop(broker)
                relay.target = None
                lost = booking("evt-during-outage")
                down = await http.post("/v1/events", json=lost, headers=headers)
                assert down.status_code == 503, down.text
                assert int(down.headers["Retry-After"]) >= 1 and "retry" in down.json()["detail"]
                batch = await http.post("/v1/events", json=[booking("evt-batch-1"), booking("evt-batch-2")], headers=headers)
                assert batch.status_code == 503
                for event_id in ("evt-during-outage", "evt-batch-1", "evt-batch-2"):
                    key = logic.dedupe_key(settings.kafka_topic_namespace, CloudEvent.model_validate(booking(event_id)))
                    assert await redis_client.exists(key) == 0, f"{event_id} was left claimed"

                new_port = infra.free_port()
                broker = start_broker(new_port, relay_port, ARTIFACTS / "tansu-outage.log")
                relay.target = new_port
                await make_topics(settings)

                async def retried():
                    response = await http.post("/v1/events", json=lost, headers=headers)
                    return response if response.status_code == 202 else None

                response = await eventually(retried, timeout=60, what="ingress accepting again after Kafka came back")
                assert response.json()["status"] == "accepted", "the refused event must not count as seen"
                after = await http.post("/v1/events", json=booking("evt-after"), headers=headers)
                assert after.status_code == 202

                async with TopicReader(settings.kafka_bootstrap, topic) as reader:
                    await reader.wait_for(2, timeout=30)
                    for _ in range(10):
                        await reader.poll()
                ids = [json.loads(r.value)["id"] for r in reader.records]
                assert sorted(ids) == ["evt-after", "evt-during-outage"], ids
        finally:
            infra.stop(broker)
