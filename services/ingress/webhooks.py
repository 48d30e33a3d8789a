"""Provider webhooks: Stripe (``Stripe-Signature``) and Standard Webhooks partners, verified, then published like any event."""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

import stripe
import yaml
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared import AppResources, CloudEvent, per_address

from . import intake, logic
from .api import COMMON_ERRORS, Problem, in_flight, problem
from .settings import Settings

log = logging.getLogger(__name__)


class WebhookReceipt(BaseModel):
    """``accepted`` (published), ``duplicate`` (this webhook was taken before) or ``ignored`` (nothing for Herald)."""

    status: Literal["accepted", "duplicate", "ignored"]
    id: str | None = None
    type: str | None = None
    detail: str | None = None


STRIPE_EVENT = {
    "type": "object",
    "title": "StripeEvent",
    "required": ["id", "type", "data"],
    "properties": {
        "id": {"type": "string", "minLength": 1},
        "object": {"const": "event"},
        "type": {"type": "string"},
        "created": {"type": "integer"},
        "data": {"type": "object", "required": ["object"], "properties": {"object": {"type": "object"}}},
    },
}
STRIPE_EXAMPLE = {
    "id": "evt_1",
    "object": "event",
    "type": "payout.paid",
    "created": 1764064800,
    "data": {"object": {"id": "po_1", "object": "payout", "amount": 12000, "currency": "usd", "arrival_date": 1764201600, "metadata": {"user_id": "u_2"}}},
}
PARTNER_EVENT = {
    "type": "object",
    "title": "StandardWebhookPayload",
    "required": ["type", "data"],
    "properties": {"type": {"type": "string"}, "timestamp": {"type": "string", "format": "date-time"}, "data": {"type": "object"}},
}
PARTNER_EXAMPLE = {
    "type": "booking.confirmed",
    "timestamp": "2026-11-25T10:00:00Z",
    "data": {"booking_id": "b_42", "student_id": "u_1", "instructor_id": "u_2", "title": "Piano lesson", "starts_at": "2026-12-01T15:00:00Z"},
}


def _json_body(headers: dict[str, str], schema: dict[str, Any], example: dict[str, Any]) -> dict[str, Any]:
    return {
        "parameters": [{"name": name, "in": "header", "required": False, "schema": {"type": "string"}, "description": description} for name, description in headers.items()],
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema, "example": example}}},
    }


ERRORS = {
    400: problem("The signature is missing, forged or too old, or the body is not JSON"),
    404: problem("This webhook is not configured"),
    409: COMMON_ERRORS[409],
    413: COMMON_ERRORS[413],
    422: problem("The verified event does not fit Herald's model of its type"),
    503: COMMON_ERRORS[503],
}


async def _publish(res: AppResources, event: CloudEvent | logic.Ignored, *, producer: str) -> WebhookReceipt:
    if isinstance(event, logic.Ignored):
        log.info("%s webhook ignored: %s", producer, event.reason)
        return WebhookReceipt(status="ignored", detail=event.reason)
    [outcome] = await intake.take(res, [event], producer=producer)
    if outcome is intake.Outcome.in_flight:
        raise in_flight(event)
    return WebhookReceipt(status=outcome.value, id=event.id, type=event.type)


def build_webhooks(settings: Settings) -> APIRouter:
    hooks = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
    partners = logic.mappings_from(yaml.safe_load(settings.webhook_mapping_path.read_text()) or {})
    verifiers = {partner: Webhook(secret) for partner, secret in settings.webhook_secret_table().items()}  # a bad secret fails at start-up

    @hooks.post(
        "/stripe",
        summary="Stripe events: payouts paid and failed payments become domain events",
        description=(
            "Verifies `Stripe-Signature` (tolerance `HERALD_STRIPE_TOLERANCE_SECONDS`, 300 s). `payout.paid` → `payout.paid`; "
            "`payment_intent.payment_failed` and `invoice.payment_failed` → `payment.failed`, for the user named by "
            "the object's `metadata[HERALD_STRIPE_USER_METADATA_KEY]` (`user_id`). The Stripe event id is the event id, "
            "so Stripe's retries are duplicates. Other types are answered 200 and ignored."
        ),
        responses=ERRORS,
        response_model_exclude_none=True,
        dependencies=[Depends(per_address("webhooks"))],
        openapi_extra=_json_body({"Stripe-Signature": "t=<timestamp>,v1=<signature>"}, STRIPE_EVENT, STRIPE_EXAMPLE),
    )
    async def stripe_webhook(request: Request, res: AppResources) -> WebhookReceipt:
        if settings.stripe_webhook_secret is None:
            raise logic.Refusal(404, "Stripe webhooks are not configured (HERALD_STRIPE_WEBHOOK_SECRET)")
        body = await request.body()  # bounded by HERALD_MAX_BODY_BYTES (shared BodyLimit)
        try:
            stripe.Webhook.construct_event(
                body, request.headers.get("stripe-signature"), settings.stripe_webhook_secret.get_secret_value(),
                tolerance=settings.stripe_tolerance_seconds,
            )
            payload = json.loads(body)
        except stripe.SignatureVerificationError as exc:
            raise logic.Refusal(400, f"Stripe signature refused: {exc.user_message or exc}") from None
        except (ValueError, TypeError, AttributeError, KeyError) as exc:  # signed, but not the shape of a Stripe event
            raise logic.Refusal(400, f"not a Stripe event: {exc!r}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("id"), str):
            raise logic.Refusal(400, "not a Stripe event: no id")
        event = logic.from_stripe(payload, source=settings.stripe_source, user_key=settings.stripe_user_metadata_key)
        return await _publish(res, event, producer="stripe")

    @hooks.post(
        "/standard/{partner}",
        summary="Standard Webhooks from a configured partner, mapped to domain events",
        description=(
            "Verifies `webhook-id`, `webhook-timestamp` and `webhook-signature` with the partner's secret "
            "(`HERALD_WEBHOOK_SECRETS`), then maps the payload's `type` through the partner table "
            "(`HERALD_WEBHOOK_MAPPING_PATH`). `webhook-id` is the event id, so redeliveries are duplicates."
        ),
        responses=ERRORS,
        response_model_exclude_none=True,
        dependencies=[Depends(per_address("webhooks"))],
        openapi_extra=_json_body(
            {"webhook-id": "The message id (the event id)", "webhook-timestamp": "Unix seconds", "webhook-signature": "v1,<base64 HMAC>"},
            PARTNER_EVENT,
            PARTNER_EXAMPLE,
        ),
    )
    async def standard_webhook(partner: str, request: Request, res: AppResources) -> WebhookReceipt:
        mapping, verifier = partners.get(partner), verifiers.get(partner)
        if mapping is None or verifier is None:
            raise logic.Refusal(404, f"no Standard Webhooks partner {partner!r} is configured")
        body = await request.body()  # bounded by HERALD_MAX_BODY_BYTES (shared BodyLimit)
        try:
            verifier.verify(body, dict(request.headers), json_parse=False)
        except (WebhookVerificationError, ValueError) as exc:
            raise logic.Refusal(400, f"webhook signature refused: {exc}") from None
        payload = logic.parse_json(body)
        event = logic.from_partner(
            payload, mapping, webhook_id=request.headers["webhook-id"], timestamp=int(float(request.headers["webhook-timestamp"]))
        )
        return await _publish(res, event, producer=f"partner:{partner}")

    return hooks


__all__ = ["Problem", "build_webhooks"]
