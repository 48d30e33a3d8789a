"""The subscription API: validation, SSRF refusals and per-user scoping, against real PostgreSQL, Kafka and Redis."""

from __future__ import annotations

import base64
import os
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.push.app import create_app
from services.push.settings import Settings

from ..support import bearer, make_topics, new_namespace, running, settings_for

DEV_HOST = "127.0.0.1:9"


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def browser_keys() -> dict[str, str]:
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return {"p256dh": b64(point), "auth": b64(os.urandom(16))}


def subscription(endpoint: str | None = None) -> dict:
    return {"endpoint": endpoint or f"http://{DEV_HOST}/push/{uuid.uuid4().hex}", "expirationTime": None, "keys": browser_keys()}


async def _api(infra, **overrides):
    settings = settings_for(Settings, infra, new_namespace(), **overrides)
    await make_topics(settings)
    return settings, running(create_app(settings))


@pytest.fixture(scope="module")
async def strict(infra):
    """No dev host; the allow-list even names private addresses, which must still be refused."""
    settings, app = await _api(infra, push_dev_hosts="", push_allowed_hosts="fcm.googleapis.com,10.0.0.1,169.254.169.254,127.0.0.1,localhost")
    async with app as client:
        yield settings, client


@pytest.fixture(scope="module")
async def dev(infra):
    settings, app = await _api(infra, push_dev_hosts=DEV_HOST)
    async with app as client:
        yield settings, client


@pytest.mark.parametrize(
    ("endpoint", "why"),
    [
        ("https://10.0.0.1/push/abc", "private address"),
        ("https://169.254.169.254/latest/meta-data/", "metadata address"),
        ("https://127.0.0.1/push/abc", "loopback address"),
        ("https://[::ffff:10.0.0.1]/push/abc", "private address"),
        ("http://fcm.googleapis.com/fcm/send/abc", "must use https"),
        ("https://fcm.googleapis.com/fcm/send/" + "a" * 3000, "at most 2048"),
        ("https://push.attacker.example/abc", "not an allowed push service"),
        ("https://localhost/push/abc", "resolves to a loopback address"),
        ("https://user:pw@fcm.googleapis.com/fcm/send/abc", "credentials"),
    ],
)
async def test_an_endpoint_herald_must_not_reach_is_refused_with_422(strict, endpoint, why):
    settings, client = strict
    answer = await client.post("/v1/push/subscriptions", json=subscription(endpoint), headers=bearer(settings, "u1"))
    assert answer.status_code == 422, answer.text
    assert why in answer.text


async def test_the_dev_setting_admits_only_the_host_and_port_it_names(dev):
    settings, client = dev
    admitted = await client.post("/v1/push/subscriptions", json=subscription(), headers=bearer(settings, "u1"))
    other_port = await client.post("/v1/push/subscriptions", json=subscription("http://127.0.0.1:10/push/x"), headers=bearer(settings, "u1"))
    assert admitted.status_code == 201, admitted.text
    assert other_port.status_code == 422 and "https" in other_port.text


@pytest.mark.parametrize(
    "keys",
    [
        {"p256dh": b64(os.urandom(65)), "auth": b64(os.urandom(16))},  # not a curve point
        {"p256dh": b64(b"\x04" + os.urandom(32)), "auth": b64(os.urandom(16))},  # too short
        {"p256dh": browser_keys()["p256dh"], "auth": b64(os.urandom(8))},  # auth too short
        {"p256dh": browser_keys()["p256dh"] + "!", "auth": b64(os.urandom(16))},  # not base64url
        {"p256dh": browser_keys()["p256dh"]},  # auth missing
    ],
)
async def test_keys_of_the_wrong_length_or_encoding_are_refused(dev, keys):
    settings, client = dev
    body = {**subscription(), "keys": keys}
    answer = await client.post("/v1/push/subscriptions", json=body, headers=bearer(settings, "u1"))
    assert answer.status_code == 422, answer.text


async def test_subscribing_twice_refreshes_the_keys_and_listing_shows_only_your_own(dev, db):
    settings, client = dev
    mine, theirs = subscription(), subscription()
    first = await client.post("/v1/push/subscriptions", json=mine, headers=bearer(settings, "alice"))
    again = await client.post("/v1/push/subscriptions", json={**mine, "keys": browser_keys()}, headers=bearer(settings, "alice"))
    await client.post("/v1/push/subscriptions", json=theirs, headers=bearer(settings, "bob"))
    listed = await client.get("/v1/push/subscriptions", headers=bearer(settings, "alice"))
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert [s["endpoint"] for s in listed.json()["items"]] == [mine["endpoint"]]


async def test_another_users_subscription_cannot_be_deleted_or_taken_over(dev, db):
    settings, client = dev
    alices = subscription()
    assert (await client.post("/v1/push/subscriptions", json=alices, headers=bearer(settings, "alice"))).status_code == 201
    delete = await client.request("DELETE", "/v1/push/subscriptions", json={"endpoint": alices["endpoint"]}, headers=bearer(settings, "mallory"))
    takeover = await client.post("/v1/push/subscriptions", json={**alices, "keys": browser_keys()}, headers=bearer(settings, "mallory"))
    row = await db.fetchrow("SELECT user_id, p256dh FROM push.subscriptions WHERE endpoint = $1", alices["endpoint"])
    assert delete.status_code == 404
    assert takeover.status_code == 409
    assert (row["user_id"], row["p256dh"]) == ("alice", alices["keys"]["p256dh"])
    own = await client.request("DELETE", "/v1/push/subscriptions", json={"endpoint": alices["endpoint"]}, headers=bearer(settings, "alice"))
    assert own.status_code == 204
    assert await db.fetchval("SELECT count(*) FROM push.subscriptions WHERE endpoint = $1", alices["endpoint"]) == 0


async def test_the_subscription_api_needs_a_user_token(dev):
    settings, client = dev
    assert (await client.post("/v1/push/subscriptions", json=subscription())).status_code == 401
    assert (await client.get("/v1/push/subscriptions", headers={"Authorization": "Bearer nope"})).status_code == 401


async def test_a_user_has_a_bounded_number_of_subscriptions(infra):
    settings, app = await _api(infra, push_dev_hosts=DEV_HOST, push_max_subscriptions_per_user=2)
    async with app as client:
        answers = [await client.post("/v1/push/subscriptions", json=subscription(), headers=bearer(settings, "hoarder")) for _ in range(3)]
    assert [a.status_code for a in answers] == [201, 201, 409]


async def test_the_vapid_public_key_is_the_configured_keys_public_half(infra):
    private = ec.generate_private_key(ec.SECP256R1())
    raw = private.private_numbers().private_value.to_bytes(32, "big")
    settings, app = await _api(infra, vapid_private_key=b64(raw))
    async with app as client:
        answer = await client.get("/v1/push/vapid-public-key")
    expected = private.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    assert answer.status_code == 200
    assert base64.urlsafe_b64decode(answer.json()["publicKey"] + "==") == expected


async def test_an_erased_user_cannot_subscribe_again(dev, db):
    settings, client = dev
    user = f"gone-{uuid.uuid4().hex[:8]}"
    await db.execute("INSERT INTO push.erasures (user_id, erasure_id, requested_at) VALUES ($1, $2, now())", user, uuid.uuid4())
    answer = await client.post("/v1/push/subscriptions", json=subscription(), headers=bearer(settings, user))
    assert answer.status_code == 410 and "erased" in answer.json()["detail"]
    assert await db.fetchval("SELECT count(*) FROM push.subscriptions WHERE user_id = $1", user) == 0


async def test_a_subscribe_waiting_for_an_erasure_of_its_user_is_refused_when_the_erasure_commits(dev, db):
    """The push erasure and a subscribe of one user are serialised (one advisory lock): a subscribe that waited
    for the erasure sees its tombstone and stores nothing."""
    import asyncio

    settings, client = dev
    user = f"racing-{uuid.uuid4().hex[:8]}"
    async with db.transaction():  # as the push erasure does: the user's lock, then the tombstone
        await db.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"push:{user}")
        pending = asyncio.ensure_future(client.post("/v1/push/subscriptions", json=subscription(), headers=bearer(settings, user)))
        await asyncio.sleep(0.5)
        assert not pending.done()  # waiting for the erasure
        await db.execute("INSERT INTO push.erasures (user_id, erasure_id, requested_at) VALUES ($1, $2, now())", user, uuid.uuid4())
    answer = await pending
    assert answer.status_code == 410
    assert await db.fetchval("SELECT count(*) FROM push.subscriptions WHERE user_id = $1", user) == 0
