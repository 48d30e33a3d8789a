import secrets
import uuid

import pytest
from pydantic import ValidationError

from shared import Channel, CloudEvent, Dispatch, HeraldSettings, Recipient, mask_email, mask_phone, notification_id, retry_delay
from shared._settings import DEV_API_KEYS


def test_notification_id_is_deterministic_and_distinct_per_channel_and_user():
    a = notification_id(source="s", event_id="e", user_id="u", channel="email")
    assert a == notification_id(source="s", event_id="e", user_id="u", channel="email")
    assert a != notification_id(source="s", event_id="e", user_id="u", channel="sms")
    assert a != notification_id(source="s", event_id="e", user_id="v", channel="email")
    assert a != notification_id(source="other", event_id="e", user_id="u", channel="email")
    assert a.version == 5


def test_cloudevent_requires_the_core_attributes():
    with pytest.raises(ValidationError) as no_type:
        CloudEvent.model_validate({"specversion": "1.0", "id": "x", "source": "s"})
    assert [(e["loc"], e["type"]) for e in no_type.value.errors()] == [(("type",), "missing")]
    with pytest.raises(ValidationError) as old_version:
        CloudEvent.model_validate({"specversion": "0.3", "id": "x", "source": "s", "type": "t"})
    assert [(e["loc"], e["type"]) for e in old_version.value.errors()] == [(("specversion",), "literal_error")]
    event = CloudEvent.model_validate({"specversion": "1.0", "id": "x", "source": "s", "type": "booking.created", "time": "2026-01-01T00:00:00"})
    assert event.area == "booking" and event.time is not None and event.time.tzinfo is not None


def test_dispatch_round_trips_as_json():
    d = Dispatch(
        notification_id=uuid.uuid4(), event_id="e", event_source="s", event_type="booking.created", category="lesson_updates",
        channel=Channel.inapp, recipient=Recipient(user_id="u"), template="t",
    )
    assert Dispatch.model_validate_json(d.model_dump_json()) == d


def test_settings_read_comma_separated_api_keys_and_topic_names(monkeypatch):
    monkeypatch.setenv("HERALD_API_KEYS", "billing=k1, crm=k2")
    monkeypatch.setenv("HERALD_KAFKA_TOPIC_NAMESPACE", "acme.")
    s = HeraldSettings()
    assert s.api_key_table() == {"billing": "k1", "crm": "k2"}
    assert s.notify_topic("email") == "acme.notify.email"
    assert s.notify_topic("email", critical=True) == "acme.notify.email.critical"
    assert s.domain_topic("auth.password_changed") == "acme.domain.auth"
    assert s.dlq_topic == "acme.dlq" and s.status_topic == "acme.notify.status"


def test_production_is_the_default_and_refuses_the_development_secrets(monkeypatch):
    monkeypatch.delenv("HERALD_ENVIRONMENT")
    with pytest.raises(ValidationError, match="HERALD_JWT_SECRET.*HERALD_API_KEYS entry 'dev'"):
        HeraldSettings()
    monkeypatch.setenv("HERALD_JWT_SECRET", secrets.token_urlsafe(32))
    with pytest.raises(ValidationError, match="HERALD_API_KEYS"):
        HeraldSettings()
    monkeypatch.setenv("HERALD_API_KEYS", "billing:publish=" + secrets.token_urlsafe(32))
    assert HeraldSettings().environment == "production"
    monkeypatch.setenv("HERALD_ENVIRONMENT", "development")  # chosen explicitly, the placeholders are fine
    monkeypatch.delenv("HERALD_JWT_SECRET")
    assert HeraldSettings(api_keys=DEV_API_KEYS).environment == "development"


@pytest.mark.parametrize(
    ("setting", "value", "why"),
    [
        ("jwt_secret", "", "is empty"),
        ("jwt_secret", "REPLACE_ME_WITH_AT_LEAST_32_RANDOM_CHARACTERS", "placeholder"),
        ("jwt_secret", "change-me-" + "a1b2c3d4e5f6a7b8c9d0e1f2", "placeholder"),
        ("jwt_secret", "Zq8vN3xK", "shorter than 32"),
        ("jwt_secret", "ab" * 20, "different characters"),
        ("api_keys", "REPLACE_ME=REPLACE_ME", "HERALD_API_KEYS entry 'REPLACE_ME' holds a placeholder"),
        ("api_keys", "", "HERALD_API_KEYS is empty"),
        ("api_keys", "shop:publish=0123456789abcdef", "entry 'shop' is shorter than 32"),
        ("database_url", "postgresql://herald:REPLACE_ME@postgres:5432/herald", "HERALD_DATABASE_URL \\(its password\\) holds a placeholder"),
        ("redis_url", "redis://:changeme@redis:6379/0", "HERALD_REDIS_URL \\(its password\\) holds a placeholder"),
    ],
)
def test_production_refuses_an_unsafe_secret_naming_its_setting(setting, value, why):
    real = {"environment": "production", "jwt_secret": secrets.token_urlsafe(32), "api_keys": "shop:publish=" + secrets.token_urlsafe(32)}
    with pytest.raises(ValidationError, match=why) as refused:
        HeraldSettings(**real | {setting: value})
    message = " ".join(error["msg"] for error in refused.value.errors())
    if value and len(value) > 8:
        assert value not in message.replace("'REPLACE_ME'", "")  # the message names the setting, not the value
    HeraldSettings(**real)  # and the real values pass


def test_a_refused_start_exits_with_every_setting_to_fix_and_no_traceback(monkeypatch):
    monkeypatch.delenv("HERALD_ENVIRONMENT")
    with pytest.raises(SystemExit) as refused:
        HeraldSettings.load(port="eighty")
    assert str(refused.value).splitlines()[1:] == ["  - HERALD_PORT: Input should be a valid integer, unable to parse string as an integer"]
    with pytest.raises(SystemExit) as refused:
        HeraldSettings.load(api_keys=DEV_API_KEYS + ",shop:publish=" + "k" * 12)
    assert str(refused.value).splitlines() == [
        "herald herald: refusing to start; fix these settings:",
        "  - HERALD_JWT_SECRET (or HERALD_JWT_PUBLIC_KEY, HERALD_JWT_JWKS_URL) holds a placeholder; set the real value",
        "  - HERALD_API_KEYS entry 'dev' holds a placeholder; set the real value",
        "  - HERALD_API_KEYS entry 'shop' is shorter than 32 characters; use a longer random value",
        "  - HERALD_API_KEYS entry 'dev' has no scopes; write it name:scope+scope=key (publish, recipients, traces, admin)",
    ]  # and no value: pydantic's own message would print every input, secrets too


def test_operator_tools_read_production_settings_without_the_services_secrets(monkeypatch):
    from herald.cli import ToolSettings

    monkeypatch.delenv("HERALD_ENVIRONMENT")
    assert ToolSettings(database_url="postgresql://herald:REPLACE_ME@db/herald").environment == "production"


def test_masking_hides_addresses():
    assert mask_email("ada@example.com") == "a***@example.com"
    masked = mask_phone("+14155550100")
    assert masked.startswith("+1415") and masked.endswith("00") and "555" not in masked


def test_retry_delay_grows_exponentially_with_full_jitter_and_honours_retry_after_in_full():
    import random

    rng = random.Random(1)
    for attempt, ceiling in ((1, 1), (5, 16), (7, 30), (40, 30)):  # full jitter: anywhere in [0, min(cap, base * 2**(n-1))]
        delays = [retry_delay(attempt, base=1, cap=30, rng=rng) for _ in range(500)]
        assert 0 <= min(delays) < ceiling * 0.1 and ceiling * 0.9 < max(delays) <= ceiling
    assert retry_delay(1, base=1, cap=30, retry_after=20, rng=rng) >= 20
    assert retry_delay(1, base=1, cap=30, retry_after=1000, rng=rng) == 1000  # a provider's Retry-After is not cut to the cap


def test_every_log_line_is_masked_whoever_logs_it_tracebacks_too(capfd):
    import logging

    from shared._logging import configure_logging

    configure_logging("t", json=True)
    log = logging.getLogger("some.library")
    log.warning("could not deliver to %s at %s", "ada.lovelace@example.com", "+14155550123")
    try:
        raise ValueError("refused grace@example.org")
    except ValueError:
        log.exception("failed")
    err = capfd.readouterr().err
    assert "ada.lovelace@example.com" not in err and "+14155550123" not in err and "grace@example.org" not in err
    assert "a***@example.com" in err and "g***@example.org" in err  # what is kept: the domain, the shape


def test_dead_letter_headers_hold_no_address_or_number_in_clear():
    from aiokafka import ConsumerRecord

    from shared._kafka import dead_letter

    record = ConsumerRecord("notify.email", 0, 7, 0, 0, None, b"{}", None, 0, 0, [])
    out = dead_letter(HeraldSettings(environment="test"), record, stage="email", reason="invalid_data", error="bad address ada@example.com, phone +491511234567")
    assert out.headers["herald-error"] == "bad address a***@example.com, phone +4915******67"


@pytest.mark.parametrize("service", ["router", "email", "sms"])
def test_a_service_process_started_in_production_with_placeholders_refuses_naming_the_settings(service):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}  # the default environment: production
    env["HERALD_API_KEYS"] = "shop:publish=REPLACE_ME"
    done = subprocess.run(
        [sys.executable, "-m", "uvicorn", "--factory", f"services.{service}.app:create_app", "--port", "1"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert f"herald {service}: refusing to start; fix these settings:" in done.stderr
    assert "HERALD_JWT_SECRET" in done.stderr and "HERALD_API_KEYS entry 'shop' holds a placeholder" in done.stderr
    assert "Traceback" not in done.stderr and "REPLACE_ME" not in done.stderr.replace("'REPLACE_ME'", "")
