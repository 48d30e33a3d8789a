"""The sandbox relay keeps a message as received and parses it when it is first shown."""

from types import SimpleNamespace

from sandbox.smtp import received


def envelope(raw: bytes) -> SimpleNamespace:
    return SimpleNamespace(original_content=raw, content=raw, rcpt_tos=["ada@example.com"], mail_from="n@herald.example")


def test_a_message_is_parsed_when_first_shown():
    raw = b"From: n@herald.example\r\nTo: ada@example.com\r\nSubject: Hello\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHi there\r\n"
    message = received(envelope(raw))
    assert message.subject == "" and message.settle is not None  # nothing parsed yet
    shown = message.as_dict()
    assert (shown["subject"], shown["text"].strip(), shown["to"]) == ("Hello", "Hi there", "ada@example.com")
    assert ["Subject", "Hello"] in shown["meta"]["headers"] and "settle" not in shown
    assert message.as_dict() == shown


def test_a_message_that_cannot_be_parsed_is_shown_raw_with_the_reason():
    raw = b"Subject: Odd\r\nContent-Type: text/plain; charset=no-such-charset\r\nContent-Transfer-Encoding: 8bit\r\n\r\nHallo \xe4\r\n"
    shown = received(envelope(raw)).as_dict()
    assert "parse_error" in shown["meta"] and "Hallo" in shown["text"]
