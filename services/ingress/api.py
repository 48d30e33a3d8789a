"""``POST /v1/events``: CloudEvents over HTTP (structured, batch and binary mode) onto the domain topics."""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from shared import AppResources, CloudEvent
from shared.events import BookingCreated

from . import intake, logic
from .auth import CurrentProducer, Producer
from .settings import Settings

log = logging.getLogger(__name__)


class Problem(BaseModel):
    """Why a request was refused."""

    detail: str


class Receipt(BaseModel):
    """One event taken: ``accepted`` (published now) or ``duplicate`` (its source + id was taken before)."""

    id: str
    source: str
    type: str
    status: Literal["accepted", "duplicate"]


class ItemResult(BaseModel):
    """What became of one event of a batch; ``code`` is the HTTP status it would have had on its own (202, 403, 409, 422)."""

    index: int = Field(ge=0)
    status: Literal["accepted", "duplicate", "refused"]
    code: int
    id: str | None = None
    source: str | None = None
    detail: str | None = None


class BatchReceipt(BaseModel):
    """Per-item answer to a batch."""

    accepted: int
    duplicate: int
    refused: int
    items: list[ItemResult]


def problem(description: str) -> dict[str, Any]:
    return {"model": Problem, "description": description}


def _retry_after(description: str) -> dict[str, Any]:
    return {
        "model": Problem,
        "description": description,
        "headers": {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}},
    }


COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: problem("The body is not JSON, or the JSON is not what the mode expects"),
    401: problem("No, an unknown, a revoked or an expired API key"),
    409: _retry_after("The same source + id is being published by another request right now; retry shortly"),
    413: problem("The body is larger than the limit, or the batch has too many events"),
    503: _retry_after("Kafka (or the dedupe store) did not take the events; nothing was accepted"),
}


EXAMPLE = {
    "specversion": "1.0",
    "id": "evt-1",
    "source": "https://bookings.example/api",
    "type": "booking.created",
    "subject": "b_42",
    "time": "2026-11-25T10:00:00Z",
    "datacontenttype": "application/json",
    "data": BookingCreated.model_json_schema()["examples"][0],
}


def _openapi(settings: Settings) -> dict[str, Any]:
    event = CloudEvent.model_json_schema()
    batch = {"type": "array", "items": event, "minItems": 1, "maxItems": settings.max_batch}
    headers = [
        {"name": f"ce-{name}", "in": "header", "required": False, "schema": {"type": "string"}, "description": description}
        for name, description in [
            ("specversion", "Binary mode: `1.0`; its presence selects binary mode, the body is then the event's data"),
            ("id", "Binary mode: the event id"),
            ("source", "Binary mode: the event source"),
            ("type", "Binary mode: the event type"),
            ("subject", "Binary mode: the subject (the partition key)"),
            ("time", "Binary mode: when it happened (RFC 3339)"),
        ]
    ]
    return {
        "parameters": headers,
        "requestBody": {
            "required": True,
            "description": (
                f"Structured mode: one event as `{logic.STRUCTURED}`. Batch mode: an array as `{logic.BATCH}`. "
                f"`{logic.JSON}` takes one event or an array. Binary mode: `ce-*` headers and the data as a JSON body."
            ),
            "content": {
                logic.STRUCTURED: {"schema": event, "example": EXAMPLE},
                logic.BATCH: {"schema": batch, "example": [EXAMPLE, {**EXAMPLE, "id": "evt-2"}]},
                logic.JSON: {"schema": {"anyOf": [event, batch]}, "example": EXAMPLE},
            },
        },
    }


def in_flight(event: CloudEvent) -> logic.Refusal:
    return logic.Refusal(409, f"event {event.id!r} from {event.source!r} is being published right now; retry shortly", retry_after=1)


def _check(raw: Any, producer: Producer, areas: frozenset[str]) -> CloudEvent:
    event = logic.check_event(raw, areas=areas)
    if not producer.may_publish(event.type):
        raise logic.Refusal(403, f"this key may not publish events of type {event.type!r}")
    if not producer.may_publish_from(event.source):
        raise logic.Refusal(403, f"this key may not publish events from source {event.source!r}")
    return event


def build_api(settings: Settings) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["events"])
    areas = logic.known_areas(settings.extra_areas)

    @api.post(
        "/events",
        status_code=status.HTTP_202_ACCEPTED,
        summary="Publish a CloudEvent, or a batch, to its domain topic",
        description=(
            "Answers only after Kafka has acknowledged every accepted event. The same `source` + `id` sent again "
            "is answered as a `duplicate` and not published twice. A batch answers per item: 202 when every item "
            "was taken, 207 when at least one was refused."
        ),
        response_model=None,
        responses={
            202: {"description": "Taken (a batch answers per item)", "model": Receipt | BatchReceipt},
            207: {"description": "A batch of which at least one item was refused", "model": BatchReceipt},
            403: problem("This key may not publish: not its scope, the event's type or its source"),
            415: problem("The Content-Type is none of the CloudEvents HTTP binding's modes"),
            422: problem("The event is not a valid CloudEvent, its area is unknown, or its data does not fit its type"),
            429: _retry_after("The key's rate limit is reached"),
            **COMMON_ERRORS,
        },
        openapi_extra=_openapi(settings),
    )
    async def publish_events(request: Request, producer: CurrentProducer, res: AppResources) -> JSONResponse:
        mode = logic.mode_of(request.headers.get("content-type"), request.headers)
        body = await request.body()  # bounded by HERALD_MAX_BODY_BYTES (shared BodyLimit)
        if mode is logic.Mode.binary:
            raws, is_batch = [logic.from_binary(request.headers, request.headers.get("content-type"), body)], False
        else:
            raws, is_batch = logic.items_of(mode, logic.parse_json(body), max_batch=settings.max_batch)
        if not is_batch:
            event = _check(raws[0], producer, areas)
            [outcome] = await intake.take(res, [event], producer=producer.name)
            if outcome is intake.Outcome.in_flight:
                raise in_flight(event)
            receipt = Receipt(id=event.id, source=event.source, type=event.type, status=outcome.value)
            return JSONResponse(receipt.model_dump(), status_code=202)
        return await _batch(res, raws, producer, areas)

    return api


async def _batch(res: Any, raws: list[Any], producer: Producer, areas: frozenset[str]) -> JSONResponse:
    items: list[ItemResult | None] = []
    valid: list[tuple[int, CloudEvent]] = []
    for index, raw in enumerate(raws):
        try:
            valid.append((index, _check(raw, producer, areas)))
            items.append(None)
        except logic.Refusal as refusal:
            items.append(ItemResult(index=index, status="refused", code=refusal.status, detail=refusal.detail, **_ids(raw)))
    outcomes = await intake.take(res, [e for _, e in valid], producer=producer.name) if valid else []
    for (index, event), outcome in zip(valid, outcomes, strict=True):
        if outcome is intake.Outcome.in_flight:
            items[index] = ItemResult(index=index, status="refused", code=409, id=event.id, source=event.source, detail=in_flight(event).detail)
        else:
            items[index] = ItemResult(index=index, status=outcome.value, code=202, id=event.id, source=event.source)
    results = [item for item in items if item is not None]
    count = {s: sum(1 for item in results if item.status == s) for s in ("accepted", "duplicate", "refused")}
    receipt = BatchReceipt(items=results, **count)
    return JSONResponse(receipt.model_dump(exclude_none=True), status_code=207 if count["refused"] else 202)


def _ids(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        return {}
    return {k: raw[k] for k in ("id", "source") if isinstance(raw.get(k), str)}
