"""A page that sends notifications to a sample user through ingress, to watch the in-app bell update.

``GET /inapp`` shows the form; ``POST /inapp/send`` builds a CloudEvent from the
event type's schema example, names the chosen user as its recipient and posts it
to ingress (``HERALD_SANDBOX_INGRESS_URL``, default the local ingress port) with
the first key of ``HERALD_API_KEYS``. From there it takes the real path:
ingress → Kafka → router → notify.inapp → inapp → the bell.
"""

from __future__ import annotations

import datetime as dt
import html
import os
import uuid
from typing import Any

import httpx
from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from shared import HeraldSettings
from shared.events import EVENT_MODELS

router = APIRouter(prefix="/inapp", tags=["in-app demo"])

#: kind → (label, event type, data field naming the recipient, data field the free text goes into)
KINDS: dict[str, tuple[str, str, str, str | None]] = {
    "welcome": ("Welcome (also registers the user)", "user.created", "user_id", "name"),
    "message": ("New message", "message.received", "recipient_id", "preview"),
    "system": ("System update", "system.update", "user_ids", "body"),
    "tip": ("Learning tip", "content.learning_tip", "user_id", "body"),
    "review": ("New review", "review.received", "instructor_id", "comment"),
    "login": ("New sign-in (security)", "auth.new_device_login", "user_id", "device"),
}


def ingress_url() -> str:
    return os.environ.get("HERALD_SANDBOX_INGRESS_URL") or f"http://127.0.0.1:{os.environ.get('HERALD_INGRESS_PORT', '8101')}"


def inapp_url() -> str:
    return os.environ.get("HERALD_SANDBOX_INAPP_URL") or f"http://127.0.0.1:{os.environ.get('HERALD_INAPP_PORT', '8106')}"


class SendIn(BaseModel):
    user: str = Field(default="demo-user", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.@:-]+$")
    kind: str = "message"
    text: str | None = Field(default=None, max_length=300)


def build_event(kind: str, user: str, text: str | None) -> dict[str, Any]:
    """A CloudEvent of ``kind`` for ``user``, from its type's schema example."""
    _, event_type, recipient_field, text_field = KINDS[kind]
    data = dict(EVENT_MODELS[event_type].model_json_schema()["examples"][0])
    data[recipient_field] = [user] if recipient_field == "user_ids" else user
    if text and text_field:
        data[text_field] = text
    return {
        "specversion": "1.0",
        "id": uuid.uuid4().hex,
        "source": "herald-sandbox",
        "type": event_type,
        "time": dt.datetime.now(dt.UTC).isoformat(),
        "datacontenttype": "application/json",
        "data": data,
    }


@router.post("/send", summary="Send a notification of a kind to a user, through ingress")
async def send(body: SendIn) -> dict[str, Any]:
    if body.kind not in KINDS:
        raise HTTPException(422, detail=f"kind must be one of {', '.join(KINDS)}")
    event = build_event(body.kind, body.user, body.text)
    _, key = next(iter(HeraldSettings(environment="development").api_key_table().items()))
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(f"{ingress_url()}/v1/events", json=event, headers={"Authorization": f"ApiKey {key}"})
    except httpx.HTTPError as exc:
        raise HTTPException(502, detail=f"ingress at {ingress_url()} is unreachable: {exc}") from None
    if response.status_code != 202:
        raise HTTPException(502, detail=f"ingress answered {response.status_code}: {response.text[:300]}")
    return {"sent": event["type"], "id": event["id"], "user": body.user}


@router.get("", response_class=HTMLResponse, summary="The form")
async def page(user: str = "demo-user") -> str:
    options = "".join(f'<option value="{k}">{html.escape(label)}</option>' for k, (label, *_) in KINDS.items())
    bell = f"{inapp_url()}/demo?user={user}"
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Herald sandbox: in-app</title>
<style>body{{font-family:system-ui;margin:2rem;max-width:40rem}}label{{display:block;margin:.6rem 0}}input,select{{font:inherit}}</style>
</head><body><h1>Send an in-app notification</h1>
<p>Open the bell for this user in another window: <a href="{html.escape(bell)}" target="_blank">{html.escape(bell)}</a></p>
<form id="send">
<label>User <input name="user" value="{html.escape(user)}" required></label>
<label>Kind <select name="kind">{options}</select></label>
<label>Text (optional) <input name="text" size="40"></label>
<button>Send through ingress</button></form>
<p id="result" role="status"></p>
<script>
document.getElementById('send').addEventListener('submit', async (event) => {{
  event.preventDefault();
  const form = Object.fromEntries(new FormData(event.target));
  if (!form.text) delete form.text;
  const response = await fetch('/inapp/send', {{method: 'POST', headers: {{'Content-Type': 'application/json'}}, body: JSON.stringify(form)}});
  const body = await response.json();
  document.getElementById('result').textContent = response.ok ? `Sent ${{body.sent}} to ${{body.user}}` : `Failed: ${{JSON.stringify(body.detail)}}`;
}});
</script></body></html>"""
