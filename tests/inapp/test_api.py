"""The inbox API on a running app with real PostgreSQL and Redis: every operation, scoping, pagination."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from services.inapp.app import create_app
from services.inapp.settings import Settings

from ..support import bearer, running, settings_for


async def test_list_returns_the_users_items_newest_first_with_the_foundation_fields(client, module_settings, seed, user, other_user):
    first = await seed(user, title="first")
    second = await seed(user, title="second")
    await seed(other_user, title="not yours")
    response = await client.get("/v1/inbox", headers=bearer(module_settings, user))
    assert response.status_code == 200
    body = response.json()
    assert [i["title"] for i in body["items"]] == ["second", "first"]
    assert [i["id"] for i in body["items"]] == [str(second["id"]), str(first["id"])]
    assert {"id", "title", "type", "read", "body", "url", "category", "created_at", "data"} <= set(body["items"][0])
    assert body["items"][0]["read"] is False and body["next_cursor"] is None


async def test_cursor_pages_cover_everything_once(client, module_settings, seed, user):
    ids = [str((await seed(user, title=f"n{i}"))["id"]) for i in range(7)]
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        body = (await client.get("/v1/inbox", params=params, headers=bearer(module_settings, user))).json()
        seen += [i["id"] for i in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids)) and pages == 3


async def test_pagination_is_stable_while_notifications_arrive(client, module_settings, seed, user):
    originals = [str((await seed(user, title=f"old{i}"))["id"]) for i in range(30)]
    stop = asyncio.Event()

    async def keep_inserting() -> int:
        count = 0
        while not stop.is_set():
            await seed(user, title=f"new{count}")
            count += 1
            await asyncio.sleep(0)
        return count

    writers = [asyncio.create_task(keep_inserting()) for _ in range(3)]
    seen, cursor = [], None
    body = (await client.get("/v1/inbox", params={"limit": 4}, headers=bearer(module_settings, user))).json()
    while True:
        seen += [i["id"] for i in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        await asyncio.sleep(0.01)
        body = (await client.get("/v1/inbox", params={"limit": 4, "cursor": cursor}, headers=bearer(module_settings, user))).json()
    stop.set()
    inserted = sum(await asyncio.gather(*writers))
    assert inserted > 0
    assert len(seen) == len(set(seen)), "an item appeared on two pages"
    assert [i for i in seen if i in originals] == list(reversed(originals)), "an item present from the start was skipped or reordered"


async def test_filters_by_category_and_unread(client, module_settings, seed, user):
    h = bearer(module_settings, user)
    lesson = await seed(user, category="lesson_updates", title="lesson")
    message = await seed(user, category="messages", title="message")
    await seed(user, category="security", title="security")
    await client.post(f"/v1/inbox/{lesson['id']}/read", headers=h)
    by_category = (await client.get("/v1/inbox", params={"category": "lesson_updates"}, headers=h)).json()["items"]
    assert [i["title"] for i in by_category] == ["lesson"]
    two = (await client.get("/v1/inbox", params=[("category", "lesson_updates"), ("category", "messages")], headers=h)).json()["items"]
    assert {i["title"] for i in two} == {"lesson", "message"}
    unread = (await client.get("/v1/inbox", params={"unread": "true"}, headers=h)).json()["items"]
    assert [i["title"] for i in unread] == ["security", "message"]
    both = (await client.get("/v1/inbox", params={"unread": "true", "category": "messages"}, headers=h)).json()["items"]
    assert [i["id"] for i in both] == [str(message["id"])]


async def test_bad_filter_cursor_and_limit_are_4xx_with_a_message(client, module_settings, user):
    h = bearer(module_settings, user)
    for params in ({"category": "nonsense"}, {"cursor": "not-a-cursor"}, {"cursor": "czow"}, {"cursor": "eDox"}, {"limit": 0}, {"unread": "maybe"}):
        response = await client.get("/v1/inbox", params=params, headers=h)
        assert response.status_code in (400, 422), params
        assert response.json()["detail"]


async def test_limit_above_the_maximum_is_capped(client, module_settings, seed, user):
    for i in range(3):
        await seed(user, title=f"n{i}")
    body = (await client.get("/v1/inbox", params={"limit": 10_000}, headers=bearer(module_settings, user))).json()
    assert len(body["items"]) == 3


async def test_unread_count_read_unread_and_read_all(client, module_settings, seed, user, other_user, pool):
    h = bearer(module_settings, user)
    a, b, _ = await seed(user), await seed(user), await seed(user)
    theirs = await seed(other_user)
    assert (await client.get("/v1/inbox/unread-count", headers=h)).json() == {"count": 3}

    read = await client.post(f"/v1/inbox/{a['id']}/read", headers=h)
    assert read.status_code == 200
    assert read.json()["item"]["read"] is True and read.json()["changed"] is True and read.json()["unread_count"] == 2
    again = (await client.post(f"/v1/inbox/{a['id']}/read", headers=h)).json()
    assert again["changed"] is False and again["unread_count"] == 2

    unread = (await client.post(f"/v1/inbox/{a['id']}/unread", headers=h)).json()
    assert unread["item"]["read"] is False and unread["unread_count"] == 3

    await client.post(f"/v1/inbox/{b['id']}/read", headers=h)
    everything = (await client.post("/v1/inbox/read-all", headers=h)).json()
    assert everything == {"changed": 2, "unread_count": 0}
    assert (await client.get("/v1/inbox/unread-count", headers=h)).json() == {"count": 0}
    assert (await client.get("/v1/inbox/unread-count", headers=bearer(module_settings, other_user))).json() == {"count": 1}
    assert await pool.fetchval("SELECT read_at FROM inapp.notifications WHERE id = $1", theirs["id"]) is None


async def test_soft_delete_hides_the_item_and_keeps_the_row(client, module_settings, seed, user, pool):
    h = bearer(module_settings, user)
    kept, gone = await seed(user, title="kept"), await seed(user, title="gone")
    response = await client.delete(f"/v1/inbox/{gone['id']}", headers=h)
    assert response.status_code == 204
    assert [i["title"] for i in (await client.get("/v1/inbox", headers=h)).json()["items"]] == ["kept"]
    assert (await client.get("/v1/inbox/unread-count", headers=h)).json() == {"count": 1}
    row = await pool.fetchrow("SELECT title, deleted_at FROM inapp.notifications WHERE id = $1", gone["id"])
    assert row["title"] == "gone" and row["deleted_at"] is not None
    assert (await client.delete(f"/v1/inbox/{gone['id']}", headers=h)).status_code == 404
    assert (await client.post(f"/v1/inbox/{gone['id']}/read", headers=h)).status_code == 404
    assert await pool.fetchval("SELECT deleted_at FROM inapp.notifications WHERE id = $1", kept["id"]) is None


async def test_clear_all_soft_deletes_only_this_users_items(client, module_settings, seed, user, other_user, pool):
    for _ in range(3):
        await seed(user)
    await seed(other_user)
    response = await client.delete("/v1/inbox", headers=bearer(module_settings, user))
    assert response.status_code == 200 and response.json() == {"changed": 3, "unread_count": 0}
    assert (await client.get("/v1/inbox", headers=bearer(module_settings, user))).json()["items"] == []
    assert len((await client.get("/v1/inbox", headers=bearer(module_settings, other_user))).json()["items"]) == 1
    assert await pool.fetchval("SELECT count(*) FROM inapp.notifications WHERE user_id = $1 AND deleted_at IS NOT NULL", user) == 3


async def test_another_users_notification_is_404_on_every_endpoint_and_unchanged(client, module_settings, seed, user, other_user, pool):
    victim = await seed(other_user, title="private")
    missing = uuid.uuid4()
    h = bearer(module_settings, user)
    calls = [("POST", "/v1/inbox/{}/read"), ("POST", "/v1/inbox/{}/unread"), ("DELETE", "/v1/inbox/{}")]
    for method, path in calls:
        theirs = await client.request(method, path.format(victim["id"]), headers=h)
        absent = await client.request(method, path.format(missing), headers=h)
        assert theirs.status_code == absent.status_code == 404, path
        assert theirs.json() == absent.json(), "another user's id must look exactly like a missing one"
        assert theirs.headers.get("content-length") == absent.headers.get("content-length")
    await client.post(f"/v1/inbox/{victim['id']}/read", headers=bearer(module_settings, other_user))  # the owner reads it...
    await client.post(f"/v1/inbox/{victim['id']}/unread", headers=h)  # ...the intruder cannot unread it
    await client.post("/v1/inbox/read-all", headers=h)
    await client.delete("/v1/inbox", headers=h)
    listed = (await client.get("/v1/inbox", headers=h)).json()["items"]
    assert str(victim["id"]) not in {i["id"] for i in listed}
    row = await pool.fetchrow("SELECT read_at, deleted_at, title FROM inapp.notifications WHERE id = $1", victim["id"])
    assert row["read_at"] is not None and row["deleted_at"] is None and row["title"] == "private"


async def test_a_malformed_id_is_422_not_500(client, module_settings, user):
    response = await client.post("/v1/inbox/not-a-uuid/read", headers=bearer(module_settings, user))
    assert response.status_code == 422


def _token(secret: str, *, alg: str = "HS256", **claims) -> str:
    payload = {"sub": "mallory", "aud": "herald", "exp": dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5), **claims}
    return jwt.encode(payload, secret, algorithm=alg)


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_tokens_are_checked_for_signature_expiry_audience_and_algorithm(client, module_settings):
    secret = module_settings.jwt_secret.get_secret_value()
    header, _, payload_sig = _token(secret).partition(".")
    payload = payload_sig.split(".")[0]
    unsigned = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode() + "." + payload + "."
    bad = {  # each token with the reason it must be refused for
        "none": (unsigned, "alg value is not allowed"),
        "wrong key": (_token("x" * 40), "Signature verification failed"),
        "expired": (_token(secret, exp=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)), "Signature has expired"),
        "wrong audience": (_token(secret, aud="someone-else"), "Audience doesn't match"),
        "no exp": (jwt.encode({"sub": "mallory", "aud": "herald"}, secret, algorithm="HS256"), 'missing the "exp" claim'),
        "HS512": (_token(secret, alg="HS512"), "alg value is not allowed"),
        "garbage": ("abc.def.ghi", "Invalid header"),
    }
    for name, (token, reason) in bad.items():
        for method, path in [("GET", "/v1/inbox"), ("GET", "/v1/inbox/unread-count"), ("POST", "/v1/inbox/read-all"), ("POST", "/v1/inbox/stream-token")]:
            response = await client.request(method, path, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401, (name, path)
            assert reason in response.json()["detail"], (name, path, response.json())
    assert (await client.get("/v1/inbox")).status_code == 401


@pytest.fixture(scope="module")
def rsa_keys():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return private, public


async def test_with_a_public_key_rs256_is_accepted_and_hs256_signed_with_the_public_key_is_refused(infra, namespace, rsa_keys, user):
    private, public = rsa_keys
    settings = settings_for(Settings, infra, namespace, jwt_public_key=public)
    good = jwt.encode({"sub": user, "aud": "herald", "exp": dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)}, private, algorithm="RS256")
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    body = jwt.utils.base64url_encode(f'{{"sub":"{user}","aud":"herald","exp":{int(dt.datetime.now(dt.UTC).timestamp()) + 300}}}'.encode())
    signature = jwt.utils.base64url_encode(hmac.new(public.encode(), header + b"." + body, hashlib.sha256).digest())
    confused = (header + b"." + body + b"." + signature).decode()
    async with running(create_app(settings)) as app_client:
        assert (await app_client.get("/v1/inbox", headers={"Authorization": f"Bearer {good}"})).status_code == 200
        assert (await app_client.get("/v1/inbox", headers={"Authorization": f"Bearer {confused}"})).status_code == 401


async def test_stream_token_is_short_lived_and_stored_hashed(client, module_settings, user, redis_client):
    response = await client.post("/v1/inbox/stream-token", headers=bearer(module_settings, user))
    assert response.status_code == 200
    body = response.json()
    assert body["expires_in"] == module_settings.stream_token_ttl_seconds and len(body["token"]) >= 40
    keys = [k.decode() for k in await redis_client.keys(f"{module_settings.inbox_redis_prefix}stream-token:*")]
    assert keys and all(body["token"] not in k for k in keys)
    ttl = max([await redis_client.ttl(k) for k in keys])
    assert 0 < ttl <= module_settings.stream_token_ttl_seconds


async def test_operations_are_counted(client, module_settings, seed, user):
    h = bearer(module_settings, user)
    item = await seed(user)
    await client.post(f"/v1/inbox/{item['id']}/read", headers=h)
    await client.post(f"/v1/inbox/{item['id']}/unread", headers=h)
    await client.delete(f"/v1/inbox/{item['id']}", headers=h)
    metrics = (await client.get("/metrics/")).text
    for op in ("read", "unread", "deleted"):
        assert f'herald_inbox_operations_total{{operation="{op}"}}' in metrics


async def test_the_front_end_origin_may_call_the_api_from_a_browser(client, module_settings):
    origin = module_settings.frontend_url
    preflight = await client.options(
        "/v1/inbox/read-all", headers={"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    )
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == origin
    foreign = await client.options("/v1/inbox", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in foreign.headers
