"""The router's export and erasure-state endpoints: admin only, clear answers when a user or a service is missing."""

import uuid

from herald.infra import free_port
from services.router.app import create_app
from services.router.settings import Settings

from ..support import api_key, bearer, make_topics, running, settings_for


async def test_an_export_names_a_service_that_did_not_answer_and_needs_an_admin_key(infra, namespace, db):
    user = f"u-{uuid.uuid4().hex[:8]}"
    dead = f"http://127.0.0.1:{free_port()}"
    settings = settings_for(Settings, infra, namespace, export_services=[f"email={dead}"])
    await make_topics(settings)
    async with running(create_app(settings)) as http:
        assert (await http.put(f"/v1/recipients/{user}", json={"email": f"{user}@example.com"}, headers=api_key(settings))).status_code == 200
        refused = await http.get(f"/v1/recipients/{user}/export", headers=api_key(settings))
        as_user = await http.get(f"/v1/recipients/{user}/export", headers=bearer(settings, user))
        no_erasure = await http.get(f"/v1/erasures/{user}", headers=api_key(settings))
    assert refused.status_code == 502 and "email" in refused.json()["detail"]
    assert as_user.status_code == 401
    assert no_erasure.status_code == 404 and user in no_erasure.json()["detail"]

    alone = settings_for(Settings, infra, namespace, export_services=[])
    async with running(create_app(alone)) as http:
        found = await http.get(f"/v1/recipients/{user}/export", headers=api_key(alone))
    assert found.status_code == 200
    assert found.json()["services"]["router"]["recipient"]["email"] == f"{user}@example.com"
    assert list(found.json()["services"]) == ["router"]


def test_export_services_must_name_an_http_url():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="HERALD_EXPORT_SERVICES entry 'email' is not of the form"):
        Settings(environment="test", export_services="email")
    assert Settings(environment="test", export_services="email=http://e:8103/ , sms=https://s").export_urls() == {"email": "http://e:8103", "sms": "https://s"}
