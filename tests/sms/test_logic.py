import secrets
from pathlib import Path

import pytest
import yaml

from services.sms import logic
from services.sms.app import TEMPLATES
from shared import DeliveryState, MessageTemplates
from shared.events import EVENT_MODELS

from ..support import production

CATALOGUE = Path(__file__).resolve().parents[2] / "services" / "router" / "catalogue.yaml"


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("", "GSM-7", 0, 0),
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),
        ("a" * 306, "GSM-7", 306, 2),
        ("a" * 307, "GSM-7", 307, 3),
        ("€" * 80, "GSM-7", 160, 1),
        ("€" * 81, "GSM-7", 162, 2),
        ("a" * 152 + "€" + "a" * 10, "GSM-7", 164, 2),
        ("Grüße, Ärger, ñ, Ø, à", "GSM-7", 21, 1),
        ("ж" * 70, "UCS-2", 70, 1),
        ("ж" * 71, "UCS-2", 71, 2),
        ("ж" * 134, "UCS-2", 134, 2),
        ("ж" * 135, "UCS-2", 135, 3),
        ("🎹" * 35, "UCS-2", 70, 1),
        ("🎹" * 36, "UCS-2", 72, 2),
    ],
)
def test_segments_of_gsm7_and_ucs2_bodies(text, encoding, units, segments):
    assert logic.count_segments(text) == logic.Segments(encoding, units, segments)


def test_one_character_outside_gsm7_makes_the_whole_mixed_body_ucs2():
    mixed = "a" * 100 + "ł"
    assert logic.encoding_of("a" * 100) == "GSM-7"
    assert logic.count_segments(mixed) == logic.Segments("UCS-2", 101, 2)


def test_an_escaped_character_or_a_surrogate_pair_is_never_split_across_parts():
    assert logic.count_segments("a" * 152 + "€" + "a" * 153).count == 3  # the € opens part two
    assert logic.count_segments("ж" * 66 + "🎹" + "ж" * 67).count == 3


def test_a_long_body_is_cut_at_a_character_boundary_to_the_maximum_segments():
    text, cut = logic.fit("word " * 100, 2)
    assert cut and text.endswith("...") and logic.count_segments(text).count == 2 and len(text) <= 306
    unicode, cut = logic.fit("ж" * 200, 1)
    assert cut and unicode == "ж" * 69 + "…" and logic.count_segments(unicode).count == 1
    emoji, cut = logic.fit("🎹" * 60, 1)
    assert cut and emoji == "🎹" * 34 + "…"
    assert logic.fit("short", 1) == ("short", False)


def test_numbers_are_parsed_to_e164_with_their_country():
    assert logic.parse_number("+1 (415) 555-0100") == logic.Number("+14155550100", "US", "fixed_line_or_mobile")
    assert logic.parse_number("+4915112345678") == logic.Number("+4915112345678", "DE", "mobile")
    for bad in (None, "", "4155550100", "hello"):
        with pytest.raises(logic.InvalidNumber, match="must start with"):
            logic.parse_number(bad)
    with pytest.raises(logic.InvalidNumber, match="not a valid phone number"):
        logic.parse_number("+1415555")
    with pytest.raises(logic.InvalidNumber, match="Could not interpret"):
        logic.parse_number("+999123")


def test_only_allowed_countries_receive_sms():
    assert logic.country_allowed(logic.Number("+14155550100", "US"), ["US", "DE"])
    assert not logic.country_allowed(logic.Number("+861012345678", "CN"), ["US", "DE"])


def test_price_is_per_segment_and_country_with_a_default():
    assert logic.price(3, "US", {"US": 0.0083}, 0.05) == 0.0249
    assert logic.price(2, "BR", {"US": 0.0083}, 0.05) == 0.1


def test_critical_sms_count_in_the_daily_total_but_are_capped_only_by_their_own_ceiling():
    normal = logic.cap_limits(prefix="p:", user_id="u1", critical=False, daily_cap=10, critical_cap=20)
    critical = logic.cap_limits(prefix="p:", user_id="u1", critical=True, daily_cap=10, critical_cap=20)
    assert [(lim.key, lim.limit) for lim in normal] == [("p:cap:{u1}:all", 10)]
    assert [(lim.key, lim.limit) for lim in critical] == [("p:cap:{u1}:all", None), ("p:cap:{u1}:critical", 20)]
    assert logic.cap_reason(critical[1]) == "daily_cap_critical" and logic.cap_reason(normal[0]) == "daily_cap"


@pytest.mark.parametrize(
    ("status", "code", "transient", "reason"),
    [
        (400, 21211, False, "invalid_number"),
        (400, 21610, False, "recipient_opted_out"),
        (400, 21408, False, "region_not_enabled"),
        (429, 20429, True, "provider_rate_limited"),
        (500, 20500, True, "provider_500"),
        (503, None, True, "provider_503"),
        (None, None, True, "provider_unreachable"),
        (401, 20003, True, "provider_auth"),
        (400, 21999, False, "provider_rejected_21999"),
    ],
)
def test_twilio_errors_map_to_transient_or_permanent(status, code, transient, reason):
    assert logic.classify_provider_error(status, code) == logic.ProviderFailure(transient, reason)


def test_receipts_map_to_final_states():
    assert logic.receipt_state("delivered") is DeliveryState.delivered
    assert logic.receipt_state("undelivered") is DeliveryState.failed
    assert logic.receipt_state("failed") is DeliveryState.failed
    assert logic.receipt_state("sent") is None and logic.receipt_state("queued") is None
    assert logic.receipt_reason("undelivered", "30003") == "undelivered:30003"
    assert logic.receipt_reason("delivered", None) is None


def test_phone_numbers_in_provider_messages_are_masked():
    masked = logic.mask_numbers("The 'To' number +14155550100 is not valid (code 21211, 2026-11-25)")
    assert "+14155550100" not in masked and "+1415*****00" in masked and "21211" in masked and "2026-11-25" in masked


def test_codes_are_six_digits_stored_keyed_and_compared_against_the_hash():
    codes = {logic.new_code() for _ in range(200)}
    assert all(len(c) == 6 and c.isdigit() for c in codes) and len(codes) > 150
    stored = logic.hash_code(b"k", user_id="u1", phone="+14155550100", code="123456")
    assert "123456" not in stored
    assert logic.code_matches(stored, b"k", user_id="u1", phone="+14155550100", code="123456")
    assert not logic.code_matches(stored, b"k", user_id="u2", phone="+14155550100", code="123456")
    assert not logic.code_matches(stored, b"k", user_id="u1", phone="+14155550100", code="123457")
    assert not logic.code_matches(stored, b"other", user_id="u1", phone="+14155550100", code="123456")


def test_verification_limits_cover_the_user_the_number_and_the_cooldown_without_the_number_in_clear():
    limits = logic.verification_limits(prefix="p:", user_id="u1", phone="+14155550100", max_requests=3, window=600, cooldown=60)
    assert [(lim.limit, lim.window) for lim in limits] == [(1, 60), (3, 600), (3, 600)]
    assert all("4155550100" not in lim.key for lim in limits)
    assert len(logic.verification_limits(prefix="p:", user_id="u1", phone="+1", max_requests=3, window=600, cooldown=0)) == 2


def test_times_are_shown_in_the_recipients_zone():
    data = logic.template_data({"starts_at": "2026-12-01T15:00:00Z", "title": "x"}, url=None, timezone="America/New_York")
    assert data == {"starts_at": "2026-12-01 10:00", "title": "x", "url": None}
    assert logic.template_data({"at": "soon"}, url="u", timezone="Nowhere/Else") == {"at": "soon", "url": "u"}


def sms_templates_in_the_catalogue() -> list[tuple[str, str]]:
    catalogue = yaml.safe_load(CATALOGUE.read_text())
    catalogue.pop("schedules", None)  # not an event type: the schedule rules (docs/timing.md)
    return sorted({(n["template"], event_type) for event_type, ns in catalogue.items() for n in ns or [] if "sms" in n["channels"]})


def test_the_catalogue_names_sms_templates():
    assert len(sms_templates_in_the_catalogue()) >= 8


@pytest.mark.parametrize(("template", "event_type"), sms_templates_in_the_catalogue())
@pytest.mark.parametrize("locale", ["en", "de"])
def test_every_sms_template_of_the_catalogue_renders_in_each_locale_within_the_segment_limit(template, event_type, locale):
    templates = MessageTemplates(TEMPLATES)
    assert template in templates.names(locale)
    example = EVENT_MODELS[event_type].model_json_schema()["examples"][0]
    data = logic.template_data(example, url="https://app.example.com/x", timezone="Europe/Berlin")
    text = templates.render(template, locale, data)["text"]
    assert text and "{{" not in text and logic.count_segments(text).count <= 3


def test_the_verification_code_template_renders_in_each_locale():
    templates = MessageTemplates(TEMPLATES)
    for locale in templates.locales:
        text = templates.render("verification_code", locale, {"code": "042917", "minutes": 10, "url": None})["text"]
        assert "042917" in text and logic.count_segments(text).count == 1


def test_production_refuses_placeholder_twilio_credentials_and_a_short_code_secret():
    from pydantic import ValidationError

    from services.sms.settings import Settings

    real = production(twilio_account_sid="AC" + secrets.token_hex(16))
    token, other, code_secret = secrets.token_hex(16), secrets.token_hex(16), secrets.token_urlsafe(32)
    for placeholder in ("sandbox-auth-token", "REPLACE_ME", "", "t" * 32, "short"):
        with pytest.raises(ValidationError, match="HERALD_TWILIO_AUTH_TOKEN"):
            Settings(**real, twilio_auth_token=placeholder)
    for sid in ("REPLACE_ME", "AC" + "0" * 32, "AC123", ""):
        with pytest.raises(ValidationError, match="HERALD_TWILIO_ACCOUNT_SID"):
            Settings(**real | {"twilio_account_sid": sid}, twilio_auth_token=token)
    with pytest.raises(ValidationError, match="HERALD_VERIFY_CODE_SECRET"):
        Settings(**real, twilio_auth_token=token, verify_code_secret="short")
    settings = Settings(**real, twilio_auth_token=token)
    assert settings.code_key() != Settings(**real, twilio_auth_token=other).code_key()
    assert Settings(**real, twilio_auth_token=token, verify_code_secret=code_secret).code_key() == code_secret.encode()


def test_number_types_from_phonenumbers_and_which_are_costly():
    assert logic.parse_number("+4915112345678").kind == "mobile"
    assert logic.parse_number("+14155550100").kind == "fixed_line_or_mobile"
    premium = logic.parse_number("+19005550123")
    assert premium.kind == "premium_rate" and not logic.kind_allowed(premium, [])
    assert logic.kind_allowed(premium, ["premium_rate"]) and logic.kind_allowed(logic.parse_number("+4930123456"), [])
    assert logic.parse_number("+15005550009").kind == "personal_number" and not logic.kind_allowed(logic.parse_number("+15005550009"), ["pager"])
