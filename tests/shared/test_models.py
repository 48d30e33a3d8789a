import uuid

import pytest
from pydantic import ValidationError

from shared import Channel, CloudEvent, Dispatch, HeraldSettings, Recipient, mask_email, mask_phone, notification_id, retry_delay


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


def test_production_refuses_placeholder_secrets(monkeypatch):
    monkeypatch.setenv("HERALD_ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="HERALD_JWT_SECRET"):
        HeraldSettings()
    monkeypatch.setenv("HERALD_JWT_SECRET", "x" * 40)
    with pytest.raises(ValidationError, match="HERALD_API_KEYS"):
        HeraldSettings()
    monkeypatch.setenv("HERALD_API_KEYS", "billing=" + "k" * 40)
    assert HeraldSettings().environment == "production"


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
