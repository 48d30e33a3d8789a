"""Pure decisions of the email sender."""

import secrets
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from services.email.logic import (
    InvalidToken,
    absolute_url,
    event_data,
    format_money,
    http_failure,
    one_line,
    parse_retry_after,
    preference_patch,
    read_unsubscribe_token,
    smtp_failure,
    unsubscribable,
    unsubscribe_link,
    unsubscribe_token,
)
from services.email.settings import Settings
from shared import Category, Misconfigured, PermanentError, TransientError

from ..support import production

SECRET = "a-test-unsubscribe-secret-long-enough-for-every-hmac-algorithm-0123456789"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_one_line_removes_every_line_break():
    assert one_line("Hello\r\nBcc: evil@example.com\n\tthere  ") == "Hello Bcc: evil@example.com there"


def test_only_promotional_and_tips_mail_is_unsubscribable():
    assert {c for c in Category if unsubscribable(c)} == {Category.promotional, Category.learning_tips}


def test_an_unsubscribe_token_names_its_user_and_category():
    token = unsubscribe_token(secret=SECRET, user_id="u_1", category=Category.promotional, now=NOW, ttl=timedelta(days=1))
    assert read_unsubscribe_token(secret=SECRET, token=token, now=NOW + timedelta(hours=23)) == ("u_1", Category.promotional)


def test_a_token_is_judged_at_the_time_it_is_given_not_the_real_clock():
    """Issued two years ago and read as of then: valid; read as of now: expired; issued now and read two years on: expired."""
    long_ago = datetime.now(UTC) - timedelta(days=730)
    old = unsubscribe_token(secret=SECRET, user_id="u_1", category=Category.promotional, now=long_ago, ttl=timedelta(days=1))
    assert read_unsubscribe_token(secret=SECRET, token=old, now=long_ago + timedelta(hours=1)) == ("u_1", Category.promotional)
    with pytest.raises(InvalidToken) as expired:
        read_unsubscribe_token(secret=SECRET, token=old)
    assert expired.value.reason == "expired"
    fresh = unsubscribe_token(secret=SECRET, user_id="u_1", category=Category.promotional, now=datetime.now(UTC), ttl=timedelta(days=1))
    with pytest.raises(InvalidToken) as later:
        read_unsubscribe_token(secret=SECRET, token=fresh, now=datetime.now(UTC) + timedelta(days=730))
    assert later.value.reason == "expired"


def test_leeway_applies_to_the_given_time_as_pyjwt_applies_it_to_the_real_clock():
    token = unsubscribe_token(secret=SECRET, user_id="u_1", category=Category.promotional, now=NOW, ttl=timedelta(days=1))
    just_after = NOW + timedelta(days=1, seconds=5)
    assert read_unsubscribe_token(secret=SECRET, token=token, now=just_after, leeway=10) == ("u_1", Category.promotional)
    with pytest.raises(InvalidToken) as refused:
        read_unsubscribe_token(secret=SECRET, token=token, now=just_after, leeway=4)
    assert refused.value.reason == "expired"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (unsubscribe_token(secret="another-secret-another-secret-xx", user_id="u_1", category=Category.promotional, now=NOW, ttl=timedelta(days=1)), "bad_signature"),
        ("not-a-token", "malformed"),
        ("", "malformed"),
        (jwt.encode({"sub": "u_1", "cat": "promotional", "aud": "herald", "exp": int(NOW.timestamp()) + 3600}, SECRET, algorithm="HS256"), "wrong_audience"),
        (jwt.encode({"sub": "u_1", "cat": "security", "aud": "herald-unsubscribe", "exp": int(NOW.timestamp()) + 3600}, SECRET, algorithm="HS256"), "not_unsubscribable"),
        (jwt.encode({"sub": "u_1", "cat": "weather", "aud": "herald-unsubscribe", "exp": int(NOW.timestamp()) + 3600}, SECRET, algorithm="HS256"), "unknown_category"),
        (jwt.encode({"sub": "u_1", "cat": "promotional", "aud": "herald-unsubscribe", "exp": int(NOW.timestamp()) + 3600}, SECRET, algorithm="HS512"), "wrong_algorithm"),
        (jwt.encode({"sub": "u_1", "cat": "promotional", "aud": "herald-unsubscribe"}, SECRET, algorithm="HS256"), "missing_claim"),
        (jwt.encode({"sub": "", "cat": "promotional", "aud": "herald-unsubscribe", "exp": int(NOW.timestamp()) + 3600}, SECRET, algorithm="HS256"), "missing_claim"),
        (jwt.encode({"sub": "u_1", "cat": "promotional", "aud": "herald-unsubscribe", "exp": "tomorrow"}, SECRET, algorithm="HS256"), "malformed"),
    ],
    ids=["forged", "garbage", "empty", "wrong-audience", "not-switchable", "unknown-category", "other-algorithm", "no-expiry", "no-user", "text-expiry"],
)
def test_a_bad_unsubscribe_token_is_refused_for_its_own_reason(token, reason):
    """Each token is valid in time (read at NOW, an hour before it expires), so only its own fault can refuse it."""
    with pytest.raises(InvalidToken) as refused:
        read_unsubscribe_token(secret=SECRET, token=token, now=NOW)
    assert refused.value.reason == reason


def test_an_expired_unsubscribe_token_is_refused():
    token = unsubscribe_token(secret=SECRET, user_id="u_1", category=Category.learning_tips, now=NOW, ttl=timedelta(days=1))
    with pytest.raises(InvalidToken) as at_given_time:
        read_unsubscribe_token(secret=SECRET, token=token, now=NOW + timedelta(days=1, seconds=1))
    assert at_given_time.value.reason == "expired"
    old = unsubscribe_token(secret=SECRET, user_id="u_1", category=Category.learning_tips, now=datetime.now(UTC) - timedelta(days=2), ttl=timedelta(days=1))
    with pytest.raises(InvalidToken) as on_real_clock:
        read_unsubscribe_token(secret=SECRET, token=old)
    assert on_real_clock.value.reason == "expired"


def test_a_tampered_unsubscribe_token_is_refused():
    token = unsubscribe_token(secret=SECRET, user_id="u_1", category=Category.promotional, now=NOW, ttl=timedelta(days=1))
    header, payload, signature = token.split(".")
    other = unsubscribe_token(secret=SECRET, user_id="u_2", category=Category.promotional, now=NOW, ttl=timedelta(days=1)).split(".")[1]
    with pytest.raises(InvalidToken) as refused:
        read_unsubscribe_token(secret=SECRET, token=f"{header}.{other}.{signature}", now=NOW)
    assert refused.value.reason == "bad_signature"


def test_the_preference_change_switches_one_category_off_for_email():
    assert preference_patch(Category.promotional) == {"preferences": [{"category": "promotional", "channel": "email", "enabled": False}]}


def test_the_unsubscribe_link_carries_the_token_url_encoded():
    assert unsubscribe_link("https://h.example/v1/unsubscribe", "a.b+c") == "https://h.example/v1/unsubscribe?token=a.b%2Bc"


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_http_answers_worth_retrying(status):
    assert isinstance(http_failure(status), TransientError)


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_api_key_is_a_misconfiguration_that_pauses_the_channel(status):
    error = http_failure(status)
    assert isinstance(error, Misconfigured) and error.reason == f"http_{status}"


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_http_answers_not_worth_retrying(status):
    error = http_failure(status)
    assert isinstance(error, PermanentError) and error.reason == f"http_{status}"


def test_retry_after_is_honoured_in_seconds_or_as_a_date():
    assert http_failure(429, retry_after="7").retry_after == 7.0
    assert parse_retry_after("Wed, 25 Nov 2026 12:00:30 GMT", now=NOW) == 30.0
    assert parse_retry_after("Wed, 25 Nov 2026 11:00:00 GMT", now=NOW) == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


def test_smtp_codes_4xx_are_temporary_and_5xx_permanent():
    assert isinstance(smtp_failure(451), TransientError) and isinstance(smtp_failure(421), TransientError)
    assert isinstance(smtp_failure(550), PermanentError) and smtp_failure(553).reason == "smtp_553"
    assert isinstance(smtp_failure(550, detail="5.1.1 no such user"), PermanentError)
    for refused in (not_recipient for not_recipient in (451, 550, 553)):
        assert not isinstance(smtp_failure(refused), Misconfigured)


@pytest.mark.parametrize(
    ("code", "detail"),
    [(530, "5.7.0 Authentication required"), (535, "5.7.8 Authentication credentials invalid"), (550, "5.7.1 Relaying denied"),
     (554, "5.7.1 Sender address rejected"), (550, "5.7.0 Must issue a STARTTLS command first")],
)
def test_smtp_replies_that_refuse_herald_itself_pause_the_channel(code, detail):
    error = smtp_failure(code, detail=detail)
    assert isinstance(error, Misconfigured) and error.reason == f"smtp_{code}"


def test_links_are_made_absolute_from_the_front_end():
    assert absolute_url("http://localhost:3000", "/bookings/1") == "http://localhost:3000/bookings/1"
    assert absolute_url("http://localhost:3000/", "offers") == "http://localhost:3000/offers"
    assert absolute_url("http://localhost:3000", None) == "http://localhost:3000/"
    assert absolute_url("http://localhost:3000", "https://app.example/x") == "https://app.example/x"


def test_money_is_shown_in_major_units():
    assert format_money(123456, "eur") == "1,234.56 EUR"


def test_event_data_gets_every_field_of_its_model():
    data = event_data("booking.cancelled", {"booking_id": "b", "student_id": "s", "instructor_id": "i", "title": "T", "starts_at": "2026-12-01T15:00:00Z"})
    assert data["reason"] is None and data["location"] is None
    with pytest.raises(PermanentError) as invalid:
        event_data("booking.cancelled", {"title": "T"})
    assert invalid.value.reason == "invalid_data" and "booking_id" in str(invalid.value.detail)


def test_production_refuses_a_placeholder_unsubscribe_secret():
    real, secret = production(router_api_key=secrets.token_urlsafe(32)), secrets.token_urlsafe(32)
    for placeholder in (None, "short", "REPLACE_ME", "s" * 40):
        with pytest.raises(ValueError, match="HERALD_UNSUBSCRIBE_SECRET"):
            Settings(**real, **({"unsubscribe_secret": placeholder} if placeholder is not None else {}))
    assert Settings(**real, unsubscribe_secret=secret).unsubscribe_secret.get_secret_value() == secret


def test_production_checks_the_providers_credentials_it_uses():
    real = production(unsubscribe_secret=secrets.token_urlsafe(32), router_api_key=secrets.token_urlsafe(32))
    assert Settings(**real, email_provider="smtp").email_provider == "smtp"  # the unused Resend default is not in the way
    with pytest.raises(ValueError, match="HERALD_RESEND_API_KEY"):
        Settings(**real, email_provider="resend")  # its development default
    with pytest.raises(ValueError, match="HERALD_RESEND_API_KEY"):
        Settings(**real, email_provider="smtp", resend_api_key="REPLACE_ME")  # set, though unused: still not a placeholder
    assert Settings(**real, email_provider="resend", resend_api_key="re_" + secrets.token_urlsafe(24)).email_provider == "resend"
    with pytest.raises(ValueError, match="HERALD_SMTP_PASSWORD"):
        Settings(**real, smtp_username="herald")
    with pytest.raises(ValueError, match="HERALD_ROUTER_API_KEY"):
        Settings(**real | {"router_api_key": "change-me"})
    with pytest.raises(ValueError, match="HERALD_ROUTER_API_KEY is empty"):  # the one key email sends: required in production
        Settings(**{k: v for k, v in real.items() if k != "router_api_key"})


def test_the_router_key_defaults_to_the_first_service_key():
    assert Settings(api_keys="email=abc,other=def").router_key() == "abc"
    assert Settings(api_keys="email=abc", router_api_key="xyz").router_key() == "xyz"


def test_the_unsubscribe_link_is_valid_from_the_senders_clock():
    import uuid
    from urllib.parse import parse_qs, urlparse

    from services.email.handlers import unsubscribe_url_for
    from shared import Channel, Dispatch, Recipient

    settings = Settings(environment="test", unsubscribe_ttl_days=2)
    dispatch = Dispatch(
        notification_id=uuid.uuid4(), event_id="e", event_source="tests", event_type="marketing.promotion", category=Category.promotional,
        channel=Channel.email, recipient=Recipient(user_id="u_7", email="u7@example.com"), template="promotion",
    )
    then = datetime(2031, 1, 1, tzinfo=UTC)
    link = unsubscribe_url_for(settings, dispatch, clock=lambda: then)
    [token] = parse_qs(urlparse(link).query)["token"]
    secret = settings.unsubscribe_secret.get_secret_value()
    assert read_unsubscribe_token(secret=secret, token=token, now=then + timedelta(days=1)) == ("u_7", Category.promotional)
    with pytest.raises(InvalidToken) as expired:
        read_unsubscribe_token(secret=secret, token=token, now=then + timedelta(days=2))
    assert expired.value.reason == "expired"
