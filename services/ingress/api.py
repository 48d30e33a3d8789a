"""``POST /v1/events``: CloudEvents over HTTP onto the domain topics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel

from shared import AppResources, CloudEvent, Outgoing, ServiceName, publish_many

from . import logic

log = logging.getLogger(__name__)
api = APIRouter(prefix="/v1", tags=["events"])


class Accepted(BaseModel):
    accepted: int
    ids: list[str]


@api.post(
    "/events",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Publish a CloudEvent, or a list of them, to its domain topic",
    responses={422: {"description": "An event is not valid"}, 503: {"description": "Kafka did not take the events"}},
)
async def publish_events(body: CloudEvent | list[CloudEvent], caller: ServiceName, res: AppResources) -> Accepted:
    events = body if isinstance(body, list) else [body]
    settings = res.settings
    if not events:
        raise HTTPException(422, detail="the batch is empty")
    if len(events) > settings.max_batch:  # type: ignore[attr-defined]
        raise HTTPException(413, detail=f"at most {settings.max_batch} events per batch")  # type: ignore[attr-defined]
    errors = {i: p for i, e in enumerate(events) if (p := logic.problems_of(e))}
    if errors:
        raise HTTPException(422, detail=[{"index": i, "error": p} for i, p in errors.items()])
    messages = [
        Outgoing(
            settings.domain_topic(e.type),
            e.model_dump_json(exclude_none=True).encode(),
            key=logic.partition_key(e),
            headers={"content-type": "application/cloudevents+json", "herald-producer": caller},
        )
        for e in events
    ]
    try:
        await publish_many(res.broker, messages)
    except Exception as exc:
        log.error("Kafka did not acknowledge %d events: %s", len(messages), exc)
        raise HTTPException(503, detail="the event log is unavailable; retry later", headers={"Retry-After": "5"}) from None
    return Accepted(accepted=len(events), ids=[e.id for e in events])
