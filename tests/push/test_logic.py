"""The push service's pure decisions."""

from __future__ import annotations

import base64
import json
import os
import uuid
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.push import logic
from services.push.logic import Answer, EndpointRefused, Outcome, TargetResult
from services.push.settings import DEFAULT_PUSH_HOSTS, Settings

ALLOWED = DEFAULT_PUSH_HOSTS

from ..support import production


def check(url: str, dev: list[str] | None = None) -> logic.Endpoint:
    return logic.check_endpoint(url, allowed_hosts=ALLOWED, dev_hosts=dev or [])


@pytest.mark.parametrize(
    "url",
    [
        "https://fcm.googleapis.com/fcm/send/abc:def",
        "https://updates.push.services.mozilla.com/wpush/v2/gAAAA",
        "https://web.push.apple.com/QGx0",
        "https://wns2-par02p.notify.windows.com/w/?token=BQYAAA",
        "https://FCM.googleapis.com:443/fcm/send/x",
    ],
)
def test_the_real_push_services_are_allowed_by_default(url):
    assert check(url).dev is False


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://notify.windows.com/w/", "not an allowed"),  # the wildcard needs a subdomain
        ("https://fcm.googleapis.com.evil.test/x", "not an allowed"),
        ("https://evil.test/fcm.googleapis.com", "not an allowed"),
        ("https://fcm.googleapis.com:8443/x", "standard https port"),
        ("ftp://fcm.googleapis.com/x", "absolute https"),
        ("fcm.googleapis.com/x", "absolute https"),
        ("https://fcm.googleapis.com/a b", "whitespace"),
        ("https://[fe80::1]/x", "link-local"),
        ("https://[::1]/x", "loopback"),
        ("https://0.0.0.0/x", "unspecified"),
        ("https://100.100.100.200/x", "metadata"),
        ("https://[64:ff9b::a00:1]/x", "private"),
        ("https://2130706433/x", "not an allowed"),
        ("https://fcm.googleapis.com:99999/x", "not a valid URL"),
    ],
)
def test_endpoints_outside_the_push_services_are_refused(url, why):
    with pytest.raises(EndpointRefused, match=why):
        check(url)


def test_a_dev_host_is_admitted_over_http_on_loopback_but_only_on_its_port():
    assert check("http://127.0.0.1:8110/webpush/push/t", dev=["127.0.0.1:8110"]).dev is True
    with pytest.raises(EndpointRefused, match="must use https"):
        check("http://127.0.0.1:8111/webpush/push/t", dev=["127.0.0.1:8110"])
    with pytest.raises(EndpointRefused, match="must use https"):
        check("http://127.0.0.1/webpush/push/t", dev=["127.0.0.1:8110"])


@pytest.mark.parametrize(
    ("addresses", "refused"),
    [
        (["142.250.74.106"], None),
        (["2a00:1450:4001:82b::200a"], None),
        (["142.250.74.106", "10.1.2.3"], "private address"),  # any forbidden answer refuses the host
        (["169.254.169.254"], "metadata address"),
        (["::ffff:127.0.0.1"], "resolves to"),
        (["fd00:ec2::254"], "resolves to"),
        (["100.64.0.1"], "resolves to"),
        ([], "does not resolve"),
    ],
)
def test_a_host_is_refused_when_it_resolves_to_a_forbidden_address(addresses, refused):
    endpoint = check("https://fcm.googleapis.com/fcm/send/x")
    if refused:
        with pytest.raises(EndpointRefused, match=refused):
            logic.check_addresses(endpoint, addresses)
    else:
        logic.check_addresses(endpoint, addresses)


def test_dev_hosts_skip_the_address_check():
    logic.check_addresses(check("http://127.0.0.1:8110/x", dev=["127.0.0.1:8110"]), ["127.0.0.1"])


def _b64(raw: bytes, pad: bool = False) -> str:
    encoded = base64.urlsafe_b64encode(raw).decode()
    return encoded if pad else encoded.rstrip("=")


def test_browser_keys_are_checked_and_stored_unpadded():
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert logic.check_p256dh(_b64(point, pad=True)) == _b64(point)
    assert logic.check_auth(_b64(b"0123456789abcdef", pad=True)) == _b64(b"0123456789abcdef")
    for bad in (_b64(os.urandom(65)), _b64(point[:33]), base64.b64encode(point).decode().replace("-", "+") + "/", ""):
        with pytest.raises(ValueError):
            logic.check_p256dh(bad)
    with pytest.raises(ValueError):
        logic.check_auth(_b64(os.urandom(17)))


def test_links_are_made_absolute_from_the_front_end_url():
    front = "https://app.example.com"
    assert logic.absolute_url("/bookings/1", front) == "https://app.example.com/bookings/1"
    assert logic.absolute_url("bookings/1", front + "/") == "https://app.example.com/bookings/1"
    assert logic.absolute_url("https://other.example.com/x", front) == "https://other.example.com/x"
    assert logic.absolute_url(None, front) == front


def test_a_payload_that_fits_is_left_alone():
    nid = uuid.uuid4()
    payload, shortened = logic.build_payload(title="Hi", body="There", url="https://a.test/x", notification_id=nid, category="messages", limit=3993)
    assert not shortened
    assert json.loads(payload) == {"title": "Hi", "body": "There", "url": "https://a.test/x", "notification_id": str(nid), "category": "messages"}


@pytest.mark.parametrize("limit", [300, 1000, 3993])
def test_an_oversize_payload_is_cut_to_the_byte_limit_on_a_character_boundary(limit):
    payload, shortened = logic.build_payload(
        title="T" * 50, body="日本語" * 2000, url="https://a.test/x", notification_id=uuid.uuid4(), category="messages", limit=limit
    )
    decoded = json.loads(payload.decode("utf-8"))
    assert shortened and len(payload) <= limit
    assert decoded["body"].endswith("…") and decoded["title"] == "T" * 50
    assert len(payload) > limit - 10  # cut as little as possible


def test_the_title_is_cut_only_when_the_body_alone_is_not_enough():
    payload, shortened = logic.build_payload(title="T" * 1000, body="B" * 1000, url="https://a.test/x", notification_id=uuid.uuid4(), category="c", limit=400)
    decoded = json.loads(payload)
    assert shortened and len(payload) <= 400
    assert decoded["body"] == "…" or decoded["body"] == ""
    assert decoded["title"].startswith("TTT") and decoded["title"].endswith("…")


def test_a_payload_that_cannot_fit_is_an_error():
    with pytest.raises(ValueError, match="does not fit in 256 bytes"):
        logic.build_payload(title="t", body="b", url="https://a.test/" + "x" * 500, notification_id=uuid.uuid4(), category="c", limit=256)


def test_urgency_and_topic():
    nid = uuid.uuid4()
    assert logic.urgency(critical=True, category="security") == "high"
    assert logic.urgency(critical=False, category="promotional") == "low"
    assert logic.urgency(critical=False, category="messages") == "normal"
    topic = logic.topic(nid)
    assert len(topic) <= 32 and base64.urlsafe_b64decode(topic + "==") == nid.bytes


def test_a_vapid_refusal_is_a_misconfiguration_not_the_subscriptions_failure():
    result = logic.result_of(403)
    assert (result.outcome, result.reason) == (logic.Outcome.retry, logic.VAPID_REJECTED)


@pytest.mark.parametrize(
    ("status", "answer"),
    [(201, Answer.sent), (202, Answer.sent), (404, Answer.gone), (410, Answer.gone), (413, Answer.permanent), (400, Answer.permanent),
     (401, Answer.misconfigured), (403, Answer.misconfigured), (307, Answer.permanent), (429, Answer.throttled), (500, Answer.transient), (503, Answer.transient)],
)
def test_push_service_answers(status, answer):
    assert logic.classify(status) is answer


def test_what_an_answer_means_for_one_subscription():
    assert logic.result_of(201, location="/m/1") == TargetResult(Outcome.sent, message_id="/m/1")
    assert logic.result_of(410) == TargetResult(Outcome.removed, "http_410")
    assert logic.result_of(413) == TargetResult(Outcome.failed, "http_413")
    assert logic.result_of(308, location="http://169.254.169.254/") == TargetResult(Outcome.failed, "redirect_refused")
    assert logic.result_of(429, retry_after="7") == TargetResult(Outcome.retry, "http_429", retry_after=7)
    assert logic.result_of(502) == TargetResult(Outcome.retry, "http_502")


def test_retry_after_as_seconds_or_http_date():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert logic.parse_retry_after("120", now=now) == 120
    assert logic.parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30
    assert logic.parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0
    assert logic.parse_retry_after("soon", now=now) is None
    assert logic.parse_retry_after(None) is None


def test_the_dispatch_retries_while_any_subscription_failed_transiently():
    results = [TargetResult(Outcome.sent), TargetResult(Outcome.retry, "http_503", 5), TargetResult(Outcome.retry, "http_429", 30)]
    verdict = logic.verdict(results)
    assert (verdict.state, verdict.reason, verdict.retry_after) == ("retry", "http_503", 30)
    assert verdict.summary == "sent=1 retry=2"


def test_the_dispatch_is_sent_when_any_subscription_has_it_and_failed_when_none_does():
    assert logic.verdict([TargetResult(Outcome.already), TargetResult(Outcome.failed, "http_413")]).state == "sent"
    assert logic.verdict([TargetResult(Outcome.sent), TargetResult(Outcome.removed, "http_410")]).state == "sent"
    gone = logic.verdict([TargetResult(Outcome.removed, "http_410")])
    assert (gone.state, gone.reason) == ("failed", "http_410")
    mixed = logic.verdict([TargetResult(Outcome.removed, "http_410"), TargetResult(Outcome.failed, "http_413")])
    assert (mixed.state, mixed.reason) == ("failed", "all_subscriptions_failed")


def test_settings_read_comma_separated_hosts_and_refuse_dev_hosts_in_production(monkeypatch):
    monkeypatch.setenv("HERALD_PUSH_ALLOWED_HOSTS", "push.example.com, *.push.example.net")
    monkeypatch.setenv("HERALD_PUSH_DEV_HOSTS", "127.0.0.1:8110")
    settings = Settings()
    assert settings.push_allowed_hosts == ["push.example.com", "*.push.example.net"]
    assert settings.push_dev_hosts == ["127.0.0.1:8110"]
    with pytest.raises(ValueError, match="not a base64url P-256 private key"):
        Settings(vapid_private_key="not-a-key")
    with pytest.raises(ValueError, match="development only"):
        Settings(**production(vapid_private_key=base64.urlsafe_b64encode(os.urandom(32)).decode()))
    monkeypatch.delenv("HERALD_PUSH_DEV_HOSTS")
    for missing in ({}, {"vapid_private_key": "REPLACE_ME"}):
        with pytest.raises(ValueError, match="HERALD_VAPID_PRIVATE_KEY"):
            Settings(**production(**missing))


def test_every_notification_the_catalogue_sends_by_push_has_a_push_template():
    import pathlib

    import yaml

    from services.push.app import TEMPLATES
    from shared import MessageTemplates

    catalogue = yaml.safe_load(pathlib.Path("services/router/catalogue.yaml").read_text())
    catalogue.pop("schedules", None)  # not an event type: the schedule rules (docs/timing.md)
    wanted = {n["template"] for entries in catalogue.values() for n in entries or [] if "push" in n["channels"]}
    assert wanted and wanted <= MessageTemplates(TEMPLATES).names()


def test_a_time_in_the_push_body_is_shown_in_the_recipients_zone():
    from services.push.app import TEMPLATES
    from services.push.handlers import PushDelivery
    from services.push.settings import Settings
    from shared import Channel, Dispatch, Ledger, MessageTemplates, Recipient

    delivery = PushDelivery(Settings(frontend_url="https://app.example.com"), MessageTemplates(TEMPLATES), Ledger("push"))
    dispatch = Dispatch(
        notification_id=uuid.uuid4(), event_id="e1", event_source="tests", event_type="booking.confirmed", category="lesson_updates",
        channel=Channel.push, recipient=Recipient(user_id="u_1"), template="booking_confirmed_student", timezone="America/New_York",
        data={"booking_id": "b_1", "student_id": "u_1", "instructor_id": "u_2", "title": "Piano", "starts_at": "2026-12-01T15:00:00Z"},
    )
    payload = json.loads(delivery.payload(dispatch, res=None))  # type: ignore[arg-type] - resources are only used for an oversize body
    assert payload["body"] == "See you on 2026-12-01 10:00."
