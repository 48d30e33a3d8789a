"""Building the MIME message: headers through the email library, never by concatenation."""

import email
import email.policy
import uuid

import pytest

from services.email.compose import Rendered, compose
from services.email.providers.resend import payload

NID = uuid.UUID("6f1f3c2e-6a43-5d4e-9c61-8a3b2f0e7d11")
RENDERED = Rendered(subject="Hello", html="<p>Hi</p>", text="Hi\n")


def build(**overrides):
    options = dict(to="ada@example.com", sender="notifications@herald.example", sender_name="Herald", notification_id=NID)
    options.update(overrides)
    return compose(overrides.pop("rendered", RENDERED), **{k: v for k, v in options.items() if k != "rendered"}).message()


def test_a_message_has_both_parts_and_the_usual_headers():
    message = build(reply_to="help@herald.example")
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert parsed["From"] == "Herald <notifications@herald.example>" and parsed["To"] == "ada@example.com"
    assert parsed["Reply-To"] == "help@herald.example" and parsed["Subject"] == "Hello"
    assert parsed["Message-ID"].endswith("@herald.example>") and parsed["X-Herald-Notification-Id"] == str(NID)
    assert parsed.get_body(("plain",)).get_content() == "Hi\n" and "<p>Hi</p>" in parsed.get_body(("html",)).get_content()
    assert parsed["List-Unsubscribe"] is None


def test_one_click_unsubscribe_headers_follow_rfc_8058():
    message = build(unsubscribe_url="https://herald.example/v1/unsubscribe?token=abc")
    assert message["List-Unsubscribe"] == "<https://herald.example/v1/unsubscribe?token=abc>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_line_breaks_in_the_subject_or_sender_name_cannot_add_a_header():
    message = build(rendered=Rendered(subject="Hi\r\nBcc: evil@example.com", html="<p/>", text="x"), sender_name="Herald\r\nBcc: evil@example.com")
    raw = message.as_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Bcc"] is None and b"\r\nBcc:" not in raw and b"\nBcc:" not in raw
    assert parsed["Subject"] == "Hi Bcc: evil@example.com"


@pytest.mark.parametrize("address", ["ada@example.com\r\nBcc: evil@example.com", "ada@example.com, evil@example.com", "not-an-address", "a b@example.com"])
def test_a_recipient_that_is_not_one_plain_mailbox_is_refused(address):
    with pytest.raises(ValueError):
        build(to=address)


def test_the_resend_payload_carries_the_same_message():
    body = payload(compose(RENDERED, to="ada@example.com", sender="notifications@herald.example", sender_name="Herald", notification_id=NID,
                           unsubscribe_url="https://herald.example/u?token=abc"))
    assert body["from"] == "Herald <notifications@herald.example>" and body["to"] == ["ada@example.com"]
    assert body["subject"] == "Hello" and body["text"] == "Hi\n" and "<p>Hi</p>" in body["html"]
    assert body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert body["headers"]["X-Herald-Notification-Id"] == str(NID)


def test_the_message_policy_itself_refuses_a_header_with_a_line_break():
    from email.message import EmailMessage

    from services.email.compose import POLICY

    message = EmailMessage(policy=POLICY)
    with pytest.raises(ValueError, match="linefeed or carriage return"):
        message["Subject"] = "Hi\r\nBcc: evil@example.com"


@pytest.mark.parametrize("line_break", ["\r\n", "\n", "\u2028", "\x0b"])
def test_an_unsubscribe_link_with_a_line_break_is_refused_before_any_provider(line_break):
    with pytest.raises(ValueError, match="linefeed or carriage return"):
        compose(RENDERED, to="ada@example.com", sender="n@herald.example", sender_name="Herald", notification_id=NID,
                unsubscribe_url=f"https://herald.example/u{line_break}Bcc: evil@example.com")


def test_messages_that_share_parsed_headers_each_keep_their_own():
    first = build(sender_name="Alpha", reply_to="a@herald.example", unsubscribe_url="https://herald.example/u?token=1")
    second = build(sender_name="Beta")
    again = build(sender_name="Alpha", reply_to="a@herald.example")
    parsed = [email.message_from_bytes(m.as_bytes(), policy=email.policy.default) for m in (first, second, again)]
    assert [p["From"] for p in parsed] == ["Alpha <notifications@herald.example>", "Beta <notifications@herald.example>", "Alpha <notifications@herald.example>"]
    assert [p["Reply-To"] for p in parsed] == ["a@herald.example", None, "a@herald.example"]
    assert [p["List-Unsubscribe-Post"] for p in parsed] == ["List-Unsubscribe=One-Click", None, None]
    assert len({p.get_boundary() for p in parsed}) == 3
    assert all([part.get_content_type() for part in p.iter_parts()] == ["text/plain", "text/html"] for p in parsed)


def test_line_breaks_cannot_reach_the_resend_payload_either():
    evil = Rendered(subject="Hi\r\nBcc: evil@example.com", html="<p/>", text="x")
    body = payload(compose(evil, to="ada@example.com", sender="n@herald.example", sender_name="Herald\r\nBcc: evil@example.com", notification_id=NID))
    assert body["subject"] == "Hi Bcc: evil@example.com" and "\n" not in body["from"] and "\r" not in body["from"]
    assert all("\n" not in value and "\r" not in value for value in body["headers"].values())


@pytest.mark.parametrize("sender_name", ["Herald", "Hérald — the notification platform of a company with a very long name indeed, Zürich"])
def test_kept_headers_turn_into_the_same_bytes_as_the_standard_librarys_under_every_policy(monkeypatch, sender_name):
    import email.generator
    import io
    from datetime import UTC, datetime

    from services.email import compose as composing

    def message(email_):
        built = email_.message(now=datetime(2026, 12, 4, 12, 0, tzinfo=UTC))
        built.set_boundary("=_herald_fixed")
        return built

    def flat(message_, policy):
        out = io.BytesIO()
        email.generator.BytesGenerator(out, policy=policy).flatten(message_)
        return out.getvalue()

    made = compose(RENDERED, to="ada@example.com", sender="n@herald.example", sender_name=sender_name, notification_id=NID,
                   reply_to="help@herald.example", unsubscribe_url="https://herald.example/u?token=abc")
    kept = [message(made) for _ in range(2)]  # the second reuses the first's parsed and folded headers
    monkeypatch.setattr(composing, "POLICY", email.policy.default)
    stock = message(made)
    for policy in (email.policy.SMTP, email.policy.SMTPUTF8, email.policy.default, email.policy.SMTP.clone(max_line_length=40)):
        assert flat(kept[0], policy) == flat(kept[1], policy) == flat(stock, policy)
    assert kept[0]["From"] is kept[1]["From"] and len(kept[0]["From"].__dict__["_herald_folds"]) == 4  # folded once per policy, and kept
