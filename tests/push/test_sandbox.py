"""The sandbox Web Push service really checks what it receives, so a push it accepts proves signature and encryption."""

from __future__ import annotations

import httpx

from services.push.providers import WebPushClient, load_vapid, public_key


def client(vapid, sandbox_url: str) -> WebPushClient:
    return WebPushClient(vapid=vapid, subject="mailto:ops@herald.test", dev_hosts=[sandbox_url.removeprefix("http://")], timeout=10, resolve_timeout=3)


async def make_subscription(sandbox, key: str | None = None) -> dict:
    return (await sandbox.post("/webpush/subscriptions", json={"application_server_key": key})).json()


def args(sub: dict, keys: dict | None = None) -> dict:
    keys = keys or sub["subscription"]["keys"]
    return dict(endpoint=sub["subscription"]["endpoint"], p256dh=keys["p256dh"], auth=keys["auth"], payload=b'{"title":"t","body":"b"}', ttl=60, urgency="low", topic="abc")


async def test_the_sandbox_decrypts_a_push_signed_with_the_key_the_subscription_was_made_with(sandbox, sandbox_url):
    vapid, _ = load_vapid(None)
    sub = await make_subscription(sandbox, public_key(vapid))
    async with client(vapid, sandbox_url) as push:
        answer = await push.send(**args(sub))
    [shown] = [m for m in (await sandbox.get("/api/messages", params={"provider": "webpush"})).json() if m["meta"]["token"] == sub["token"]]
    assert answer.status == 201
    assert (shown["subject"], shown["text"], shown["meta"]["urgency"], shown["meta"]["topic"]) == ("t", "b", "low", "abc")


async def test_the_sandbox_refuses_a_push_signed_with_another_key(sandbox, sandbox_url):
    bound, other = load_vapid(None)[0], load_vapid(None)[0]
    sub = await make_subscription(sandbox, public_key(bound))
    async with client(other, sandbox_url) as push:
        assert (await push.send(**args(sub))).status == 403


async def test_the_sandbox_refuses_a_push_encrypted_for_other_keys(sandbox, sandbox_url):
    vapid, _ = load_vapid(None)
    sub, stranger = await make_subscription(sandbox), await make_subscription(sandbox)
    async with client(vapid, sandbox_url) as push:
        answer = await push.send(**args(sub, keys=stranger["subscription"]["keys"]))
    assert answer.status == 400 and "decrypt" in answer.text


async def test_the_sandbox_refuses_a_forged_vapid_token_and_a_missing_ttl(sandbox, sandbox_url):
    vapid, _ = load_vapid(None)
    sub = await make_subscription(sandbox)
    endpoint = sub["subscription"]["endpoint"]
    headers = vapid.sign({"sub": "mailto:ops@herald.test", "aud": sandbox_url})
    token = headers["Authorization"].split("t=", 1)[1].split(",", 1)[0]
    forged = headers["Authorization"].replace(token, token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"))
    async with httpx.AsyncClient() as http:
        no_ttl = await http.post(endpoint, content=b"x", headers={**headers, "Content-Encoding": "aes128gcm"})
        bad_sig = await http.post(endpoint, content=b"x", headers={"Authorization": forged, "TTL": "60", "Content-Encoding": "aes128gcm"})
        wrong_aud = await http.post(
            endpoint, content=b"x", headers={**vapid.sign({"sub": "mailto:a@b.test", "aud": "https://elsewhere.test"}), "TTL": "60"}
        )
    assert no_ttl.status_code == 400
    assert bad_sig.status_code == 401
    assert wrong_aud.status_code == 401
