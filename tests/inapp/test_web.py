"""The widget script and the demo pages over HTTP."""

from __future__ import annotations

import json
import re

from services.inapp.app import create_app
from services.inapp.settings import Settings
from shared import decode_user_token

from ..support import production, running, settings_for


async def test_the_widget_script_is_served_as_a_module(client):
    script = await client.get("/widget/herald.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "customElements.define('herald-bell'" in script.text and "customElements.define('herald-inbox'" in script.text


async def test_the_demo_page_signs_in_a_sample_user_without_a_token_in_any_url(client, module_settings):
    page = await client.get("/demo")
    assert page.status_code == 200
    assert '<herald-bell id="bell" inbox-url="/demo/inbox?user=demo-user">' in page.text
    config = re.search(r'<script type="application/json" id="herald-demo">(.*?)</script>', page.text).group(1)
    token = json.loads(config)["token"]
    assert decode_user_token(module_settings, token) == "demo-user"
    assert not re.search(r'(href|src)="[^"]*' + re.escape(token[:20]), page.text)
    other = await client.get("/demo/inbox", params={"user": "ada@example"})
    assert other.status_code == 200 and "<herald-inbox>" in other.text and "ada@example" in other.text


async def test_the_demo_refuses_a_user_id_that_could_inject_markup(client):
    response = await client.get("/demo", params={"user": '"><script>alert(1)</script>'})
    assert response.status_code == 400 and response.json()["detail"]


async def test_the_demo_is_not_served_in_production(infra, namespace):
    settings = settings_for(Settings, infra, namespace, **production())
    async with running(create_app(settings)) as client:
        assert (await client.get("/demo")).status_code == 404
        assert (await client.get("/demo/inbox")).status_code == 404
        assert (await client.get("/widget/herald.js")).status_code == 200


async def test_the_demo_needs_a_shared_secret_to_mint_tokens(infra, namespace):
    settings = settings_for(Settings, infra, namespace, jwt_public_key="-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----")
    async with running(create_app(settings)) as client:
        assert (await client.get("/demo")).status_code == 404
