"""Preferences over HTTP: the full matrix, validation, scoping to the caller, and the cache that every change invalidates."""

from ..support import bearer
from .conftest import by_channel, new_user

PROMO_OFF = {"preferences": [{"category": "promotional", "channel": "email", "enabled": False}]}


def promotion(user: str) -> dict:
    return {"user_id": user, "campaign_id": "c1", "title": "20% off", "body": "Book now", "path": "/offers"}


def entry(body: dict, category: str, channel: str) -> dict:
    [found] = [p for p in body["preferences"] if (p["category"], p["channel"]) == (category, channel)]
    return found


async def test_get_answers_the_full_matrix_with_defaults(router):
    user = new_user()
    response = await router.client.get("/v1/preferences", headers=bearer(router.settings, user))
    assert response.status_code == 200
    body = response.json()
    assert body["user_id"] == user and len(body["preferences"]) == 7 * 4
    assert entry(body, "promotional", "email") | {} == {"category": "promotional", "channel": "email", "enabled": True, "default": True, "available": True, "locked": False}
    assert entry(body, "security", "sms")["locked"] is True
    assert entry(body, "promotional", "sms")["enabled"] is False


async def test_a_change_takes_effect_on_the_very_next_event(router, redis_client):
    user = new_user()
    await router.put_recipient(user, email="a@example.com")
    first = await router.publish("marketing.promotion", promotion(user))
    assert by_channel(await router.trace(first["id"], 3))["email"]["decision"] == "routed"
    assert await redis_client.exists(f"herald:router:profile:{user}") == 1  # the profile is cached now

    response = await router.client.patch(f"/v1/users/{user}/preferences", json=PROMO_OFF, headers=router.key)
    assert response.status_code == 200 and entry(response.json(), "promotional", "email")["enabled"] is False
    second = await router.publish("marketing.promotion", promotion(user))
    items = by_channel(await router.trace(second["id"], 3))
    assert (items["email"]["decision"], items["email"]["reason"]) == ("suppressed", "preference_off")
    assert items["inapp"]["decision"] == "routed"

    again = await router.client.patch("/v1/preferences", json={"preferences": [{"category": "promotional", "channel": "email", "enabled": True}]}, headers=bearer(router.settings, user))
    assert again.status_code == 200
    third = await router.publish("marketing.promotion", promotion(user))
    assert by_channel(await router.trace(third["id"], 3))["email"]["decision"] == "routed"


async def test_critical_notifications_ignore_preferences_on_their_channels(router):
    user = new_user()
    await router.put_recipient(user, email="a@example.com", phone="+14155550100")
    everything_off = {"preferences": [{"category": c, "channel": ch, "enabled": False} for c in ("lesson_updates", "messages", "reviews", "learning_tips", "system_updates", "promotional") for ch in ("email", "sms", "push", "inapp")]}
    assert (await router.client.patch("/v1/preferences", json=everything_off, headers=bearer(router.settings, user))).status_code == 200
    event = await router.publish("auth.new_device_login", {"user_id": user, "device": "Firefox on Linux"})
    items = by_channel(await router.trace(event["id"], 3))
    assert {c: i["decision"] for c, i in items.items()} == {"email": "routed", "sms": "routed", "inapp": "routed"}  # even an unverified phone
    tip = await router.publish("content.learning_tip", {"user_id": user, "title": "Scales", "body": "Daily"})
    assert {i["reason"] for i in await router.trace(tip["id"], 3)} == {"preference_off"}


async def test_security_and_unknown_names_are_refused_with_a_message_and_nothing_changes(router):
    user = new_user()
    headers = bearer(router.settings, user)
    cases = [
        ({"category": "security", "channel": "email", "enabled": False}, "security"),
        ({"category": "gossip", "channel": "email", "enabled": False}, "gossip"),
        ({"category": "promotional", "channel": "fax", "enabled": False}, "fax"),
    ]
    for bad, word in cases:
        body = {"preferences": [PROMO_OFF["preferences"][0], bad]}
        for path, h in (("/v1/preferences", headers), (f"/v1/users/{user}/preferences", router.key)):
            response = await router.client.patch(path, json=body, headers=h)
            assert response.status_code == 422, response.text
            assert word in str(response.json()["detail"])
    for body in ({"preferences": []}, {"preferences": [{"category": "promotional", "channel": "email", "enabled": "no"}]}, {}):
        assert (await router.client.patch("/v1/preferences", json=body, headers=headers)).status_code == 422
    current = (await router.client.get("/v1/preferences", headers=headers)).json()
    assert entry(current, "promotional", "email")["enabled"] is True


async def test_a_user_token_cannot_read_or_change_another_users_preferences(router):
    alice, bob = new_user(), new_user()
    as_alice = bearer(router.settings, alice)
    assert (await router.client.get(f"/v1/users/{bob}/preferences", headers=as_alice)).status_code == 401
    assert (await router.client.patch(f"/v1/users/{bob}/preferences", json=PROMO_OFF, headers=as_alice)).status_code == 401
    assert (await router.client.patch("/v1/preferences", json=PROMO_OFF, headers=as_alice)).status_code == 200
    mine = (await router.client.get("/v1/preferences", headers=as_alice)).json()
    assert mine["user_id"] == alice and entry(mine, "promotional", "email")["enabled"] is False
    bobs = (await router.client.get(f"/v1/users/{bob}/preferences", headers=router.key)).json()
    assert bobs["user_id"] == bob and entry(bobs, "promotional", "email")["enabled"] is True
    assert (await router.client.get("/v1/preferences")).status_code == 401
    assert (await router.client.get("/v1/preferences", headers={"Authorization": "Bearer not-a-token"})).status_code == 401
    assert (await router.client.get(f"/v1/users/{bob}/preferences", headers={"Authorization": "ApiKey wrong"})).status_code == 401


async def test_ids_with_control_characters_are_refused_not_a_server_error(router):
    from ..support import user_token

    for method, path in [("GET", "/v1/users/a%00b/preferences"), ("GET", "/v1/users/a%0Ab/trace"), ("GET", "/v1/events/e%00/trace")]:
        assert (await router.client.request(method, path, headers=router.key)).status_code == 422, path
    assert (await router.client.put("/v1/recipients/a%00b", json={"email": "a@example.com"}, headers=router.key)).status_code == 422
    response = await router.client.get("/v1/preferences", headers={"Authorization": f"Bearer {user_token(router.settings, 'a' + chr(0) + 'b')}"})
    assert response.status_code == 401 and "control characters" in response.json()["detail"]
