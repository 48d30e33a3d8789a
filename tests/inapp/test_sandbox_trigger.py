"""The sandbox's trigger page sends a notification that takes the real path into a user's open stream."""

from __future__ import annotations

import httpx
import pytest

from sandbox.app import create_app as create_sandbox
from services.inapp.app import create_app as create_inapp
from services.inapp.settings import Settings as InappSettings
from services.ingress.app import create_app as create_ingress
from services.ingress.settings import Settings as IngressSettings
from services.router.app import create_app as create_router
from services.router.settings import Settings as RouterSettings

from ..support import bearer, make_topics, settings_for
from .helpers import Server, sse

pytestmark = pytest.mark.slow


async def test_sandbox_trigger_reaches_the_users_stream_through_ingress_router_and_inapp(infra, namespace, monkeypatch, user):
    inapp = settings_for(InappSettings, infra, namespace)
    await make_topics(inapp)
    async with (
        Server(create_ingress(settings_for(IngressSettings, infra, namespace))) as ingress,
        Server(create_router(settings_for(RouterSettings, infra, namespace))) as _router,
        Server(create_inapp(inapp)) as inbox,
    ):
        monkeypatch.setenv("HERALD_SANDBOX_INGRESS_URL", ingress.url)
        monkeypatch.setenv("HERALD_API_KEYS", inapp.api_keys.get_secret_value())
        sandbox = Server(create_sandbox())
        sandbox.ready_path = "/healthz"
        async with sandbox, sse(f"{inbox.url}/v1/inbox/stream", headers=bearer(inapp, user)) as stream:
            await stream.next("ready")
            async with httpx.AsyncClient(timeout=15) as client:
                page = await client.get(f"{sandbox.url}/inapp", params={"user": user})
                assert page.status_code == 200 and "Send an in-app notification" in page.text
                welcome = await client.post(f"{sandbox.url}/inapp/send", json={"user": user, "kind": "welcome", "text": "Ada"})
                assert welcome.status_code == 200, welcome.text
                item = (await stream.next("notification", timeout=60)).json()
                assert item["type"] == "user.created" and item["title"] == "Welcome, Ada!"
                sent = await client.post(f"{sandbox.url}/inapp/send", json={"user": user, "kind": "message", "text": "See you at the lake"})
                assert sent.status_code == 200, sent.text
                refused = await client.post(f"{sandbox.url}/inapp/send", json={"user": user, "kind": "nonsense"})
                assert refused.status_code == 422
            item = (await stream.next("notification", timeout=60)).json()
            assert item["type"] == "message.received" and item["category"] == "messages"
            assert item["body"] == "See you at the lake" and item["title"].startswith("New message from")
