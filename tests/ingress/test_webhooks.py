"""Stripe and Standard Webhooks inbound, signed with the providers' own libraries, against the real broker."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import uuid

import stripe
from standardwebhooks import Webhook

from .conftest import PARTNER_SECRET, STRIPE_SECRET
from ..support import STARTS, Moment, TopicReader

ARRIVAL = Moment(days=2, hour=0)  # when a Stripe payout arrives

LESSON = {"booking_id": "b_7", "student_id": "stu_1", "instructor_id": "ins_1", "title": "Cello lesson", "starts_at": STARTS.iso}


def stripe_event(event_type: str, obj: dict, *, event_id: str | None = None) -> str:
    return json.dumps(
        {
            "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
            "object": "event",
            "api_version": "2025-10-29",
            "created": int(Moment(days=0, hour=0).at.timestamp()),
            "livemode": False,
            "type": event_type,
            "data": {"object": obj},
        }
    )


def payout(user: str = "ins_9") -> dict:
    return {"id": "po_1", "object": "payout", "amount": 12000, "currency": "usd", "arrival_date": int(ARRIVAL.at.timestamp()), "metadata": {"user_id": user}}


def signed(payload: str, *, secret: str = STRIPE_SECRET, timestamp: int | None = None) -> dict[str, str]:
    header = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp)
    return {"Stripe-Signature": header, "Content-Type": "application/json"}


async def post_stripe(ingress, payload: str, headers: dict[str, str]):
    return await ingress.http.post("/v1/webhooks/stripe", content=payload, headers=headers)


async def test_a_signed_stripe_payout_becomes_a_payout_paid_event(ingress):
    payload = stripe_event("payout.paid", payout(), event_id="evt_payout_1")
    response = await post_stripe(ingress, payload, signed(payload))
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "accepted", "id": "evt_payout_1", "type": "payout.paid"}
    async with TopicReader(ingress.settings.kafka_bootstrap, ingress.settings.domain_topic("payout.paid")) as reader:
        [event] = [json.loads(r.value) for r in await reader.wait_for(1)]
    assert event["type"] == "payout.paid" and event["source"] == "stripe" and event["id"] == "evt_payout_1"
    assert event["data"] == {"user_id": "ins_9", "payout_id": "po_1", "amount": 12000, "currency": "USD", "arrival_date": ARRIVAL.at.date().isoformat()}


async def test_failed_payments_of_both_kinds_become_payment_failed(ingress):
    intent = {
        "id": "pi_1", "object": "payment_intent", "amount": 4500, "currency": "eur",
        "last_payment_error": {"message": "Your card was declined."}, "metadata": {"user_id": "stu_3", "booking_id": "b_42"},
    }
    invoice = {"id": "in_1", "object": "invoice", "amount_due": 990, "currency": "usd", "parent": {"subscription_details": {"metadata": {"user_id": "stu_4"}}}}
    for event_type, obj in (("payment_intent.payment_failed", intent), ("invoice.payment_failed", invoice)):
        payload = stripe_event(event_type, obj)
        response = await post_stripe(ingress, payload, signed(payload))
        assert response.status_code == 200 and response.json()["status"] == "accepted", response.text
    async with TopicReader(ingress.settings.kafka_bootstrap, ingress.settings.domain_topic("payment.failed")) as reader:
        events = [json.loads(r.value) for r in await reader.wait_for(2)]
    data = sorted((e["data"] for e in events), key=lambda d: d["user_id"])
    assert data == [
        {"user_id": "stu_3", "amount": 4500, "currency": "EUR", "reason": "Your card was declined.", "booking_id": "b_42"},
        {"user_id": "stu_4", "amount": 990, "currency": "USD", "reason": "Invoice payment failed"},
    ]


async def test_a_stripe_retry_of_the_same_event_is_published_once(ingress):
    payload = stripe_event("payout.paid", payout("ins_5"), event_id="evt_retried")
    first = await post_stripe(ingress, payload, signed(payload))
    retry = await post_stripe(ingress, payload, signed(payload, timestamp=int(time.time()) + 5))
    assert first.json()["status"] == "accepted" and retry.status_code == 200 and retry.json()["status"] == "duplicate"
    async with TopicReader(ingress.settings.kafka_bootstrap, ingress.settings.domain_topic("payout.paid")) as reader:
        await reader.wait_for(1)
        for _ in range(3):
            await reader.poll()
    assert [json.loads(r.value)["id"] for r in reader.records] == ["evt_retried"]


async def test_forged_tampered_stale_or_missing_stripe_signatures_are_refused(ingress):
    payload = stripe_event("payout.paid", payout(), event_id="evt_forged")
    tampered = payload.replace("12000", "99999")
    cases = {
        "tampered body": (tampered, signed(payload)),
        "wrong secret": (payload, signed(payload, secret="whsec_someone_else")),
        "ten minutes old": (payload, signed(payload, timestamp=int(time.time()) - 600)),
        "missing": (payload, {"Content-Type": "application/json"}),
        "garbage": (payload, {"Stripe-Signature": "nonsense", "Content-Type": "application/json"}),
    }
    for name, (body, headers) in cases.items():
        response = await post_stripe(ingress, body, headers)
        assert response.status_code == 400, (name, response.text)
        assert response.json()["detail"]
    async with TopicReader(ingress.settings.kafka_bootstrap, ingress.settings.domain_topic("payout.paid")) as reader:
        for _ in range(3):
            await reader.poll()
    assert reader.records == []


async def test_stripe_events_herald_does_not_act_on_are_answered_200(ingress):
    for event_type, obj in (("customer.created", {"id": "cus_1", "object": "customer"}), ("payout.paid", {"id": "po_2", "object": "payout", "amount": 1, "currency": "usd", "metadata": {}})):
        payload = stripe_event(event_type, obj)
        response = await post_stripe(ingress, payload, signed(payload))
        assert response.status_code == 200 and response.json()["status"] == "ignored", response.text


def partner_headers(body: str, *, msg_id: str, secret: str = PARTNER_SECRET, at: dt.datetime | None = None) -> dict[str, str]:
    at = at or dt.datetime.now(dt.UTC)
    signature = Webhook(secret).sign(msg_id=msg_id, timestamp=at, data=body)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": signature, "Content-Type": "application/json"}


async def test_a_standard_webhook_from_a_partner_is_mapped_and_published_once(ingress):
    body = json.dumps({"type": "booking.confirmed", "timestamp": Moment(days=-1, hour=10).iso, "data": LESSON})
    first = await ingress.http.post("/v1/webhooks/standard/scheduler", content=body, headers=partner_headers(body, msg_id="msg_1"))
    again = await ingress.http.post("/v1/webhooks/standard/scheduler", content=body, headers=partner_headers(body, msg_id="msg_1"))
    assert first.status_code == 200 and first.json() == {"status": "accepted", "id": "msg_1", "type": "booking.confirmed"}
    assert again.json()["status"] == "duplicate"
    async with TopicReader(ingress.settings.kafka_bootstrap, ingress.settings.domain_topic("booking.confirmed")) as reader:
        [record] = await reader.wait_for(1)
    event = json.loads(record.value)
    assert event["source"] == "partner:scheduler" and event["subject"] == "b_7" and event["data"] == LESSON
    assert record.key == b"b_7"


async def test_standard_webhooks_refuse_bad_signatures_unknown_partners_and_invalid_data(ingress):
    body = json.dumps({"type": "booking.confirmed", "data": LESSON})
    other_secret = "whsec_" + base64.b64encode(b"another partner's key").decode()
    stale = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    for headers in (partner_headers(body, msg_id="m", secret=other_secret), partner_headers(body, msg_id="m", at=stale), {"Content-Type": "application/json"}):
        response = await ingress.http.post("/v1/webhooks/standard/scheduler", content=body, headers=headers)
        assert response.status_code == 400, response.text
    unknown = await ingress.http.post("/v1/webhooks/standard/nobody", content=body, headers=partner_headers(body, msg_id="m"))
    assert unknown.status_code == 404
    invalid = json.dumps({"type": "booking.confirmed", "data": {**LESSON, "student_id": ""}})
    refused = await ingress.http.post("/v1/webhooks/standard/scheduler", content=invalid, headers=partner_headers(invalid, msg_id="m2"))
    assert refused.status_code == 422 and "student_id" in refused.json()["detail"]
    ignored = json.dumps({"type": "calendar.synced", "data": {}})
    answered = await ingress.http.post("/v1/webhooks/standard/scheduler", content=ignored, headers=partner_headers(ignored, msg_id="m3"))
    assert answered.status_code == 200 and answered.json()["status"] == "ignored"


async def test_webhooks_are_limited_per_source_address_before_any_verification(infra, namespace):
    from services.ingress.app import create_app

    from ..support import make_topics, running
    from .conftest import ingress_settings

    settings = ingress_settings(infra, namespace, public_rate_limits="webhooks=2")
    await make_topics(settings)
    async with running(create_app(settings)) as http:
        answers = [await http.post("/v1/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": "t=1,v1=bad"}) for _ in range(3)]
        partner = await http.post("/v1/webhooks/standard/scheduler", content=b"{}")
    assert [a.status_code for a in answers] == [400, 400, 429]  # bad signatures, then the address is out of requests
    assert partner.status_code == 429 and int(partner.headers["Retry-After"]) >= 1
