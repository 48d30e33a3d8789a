"""A Stripe event delivered twice (Stripe retries) yields one notification: ingress, router and inapp on the real broker."""

from __future__ import annotations

import json
import time

from services.inapp.app import create_app as inapp_app
from services.inapp.settings import Settings as InappSettings
from services.ingress.app import create_app as ingress_app
from services.router.app import create_app as router_app
from services.router.settings import Settings as RouterSettings

from services.ingress import logic
from shared import CloudEvent

from ..support import TopicReader, bearer, eventually, make_topics, running, settings_for
from .conftest import ingress_settings
from .test_webhooks import payout, signed, stripe_event


async def test_a_retried_stripe_payout_lands_in_the_inbox_once(infra, namespace, redis_client):
    ingress = ingress_settings(infra, namespace)
    router = settings_for(RouterSettings, infra, namespace)
    inapp = settings_for(InappSettings, infra, namespace)
    await make_topics(ingress)
    user = f"payee_{namespace.strip('.')}"
    payload = stripe_event("payout.paid", payout(user), event_id=f"evt_{namespace.strip('.')}")
    async with running(router_app(router)), running(inapp_app(inapp)) as inbox, running(ingress_app(ingress)) as http:
        first = await http.post("/v1/webhooks/stripe", content=payload, headers=signed(payload))
        retry = await http.post("/v1/webhooks/stripe", content=payload, headers=signed(payload, timestamp=int(time.time()) + 30))
        assert (first.json()["status"], retry.json()["status"]) == ("accepted", "duplicate")

        async def items():
            response = await inbox.get("/v1/inbox", headers=bearer(inapp, user))
            assert response.status_code == 200, response.text
            return response.json()["items"]

        [item] = await eventually(items, timeout=60, what="the payee's notification")
        assert item["type"] == "payout.paid" and item["category"] == "security"
        late = await http.post("/v1/webhooks/stripe", content=payload, headers=signed(payload))
        assert late.json()["status"] == "duplicate"

        # Even once ingress has forgotten the event (its dedupe TTL), the notification ids stop a second notification.
        event = CloudEvent(specversion="1.0", id=f"evt_{namespace.strip('.')}", source="stripe", type="payout.paid")
        assert await redis_client.delete(logic.dedupe_key(ingress.kafka_topic_namespace, event)) == 1
        async with TopicReader(infra.kafka_bootstrap, inapp.status_topic) as statuses:
            forgotten = await http.post("/v1/webhooks/stripe", content=payload, headers=signed(payload))
            assert forgotten.json()["status"] == "accepted"

            async def inapp_saw_a_duplicate():
                seen = [json.loads(r.value) for r in await statuses.poll()]
                return [s for s in seen if (s["status"], s["channel"], s["user_id"], s["replayed"]) == ("sent", "inapp", user, True)]

            await eventually(inapp_saw_a_duplicate, timeout=60, what="inapp recognising the replayed dispatch (repeating its outcome)")
        assert len(await items()) == 1
