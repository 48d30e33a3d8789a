"""The inbox's pure decisions: cursors, resume points, gap handling, payload shapes."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from services.inapp import logic


@pytest.mark.parametrize("seq", [1, 42, 2**63 - 1])
def test_a_cursor_round_trips(seq):
    cursor = logic.encode_cursor(seq)
    assert "=" not in cursor and str(seq) not in cursor
    assert logic.decode_cursor(cursor) == seq


@pytest.mark.parametrize("cursor", ["", "!!!", "czow", "eDox", logic.encode_cursor(1)[:-1] + "*", "czotMQ", "czoxMjM0NTY3ODkwMTIzNDU2Nzg5MDEyMzQ1"])
def test_a_cursor_herald_did_not_issue_is_refused(cursor):
    with pytest.raises(logic.BadCursor, match="the cursor is not valid"):
        logic.decode_cursor(cursor)


def test_next_cursor_points_below_the_last_item_shown_only_when_there_is_more():
    rows = [{"seq": s} for s in (9, 8, 7, 6)]
    assert logic.next_cursor(rows, 3) == logic.encode_cursor(7)
    assert logic.next_cursor(rows[:3], 3) is None
    assert logic.next_cursor([], 3) is None


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("", None), ("  ", None), ("0", 0), ("17", 17), (" 5 ", 5)])
def test_parse_event_id(value, expected):
    assert logic.parse_event_id(value) == expected


@pytest.mark.parametrize("value", ["-1", "1.5", "abc", "9" * 20, "1e3"])
def test_an_event_id_that_is_not_ours_is_refused(value):
    with pytest.raises(logic.BadCursor):
        logic.parse_event_id(value)


def test_resume_point():
    assert logic.resume_point(None, 12) == 12  # a new client starts now
    assert logic.resume_point(5, 12) == 5  # a returning client gets 6..12
    assert logic.resume_point(40, 12) == 12  # never beyond what exists, or later numbers would be skipped


@pytest.mark.parametrize(
    ("last", "seq", "send", "backfill"),
    [(4, 5, True, False), (4, 4, False, False), (4, 2, False, False), (4, 7, False, True), (0, 1, True, False)],
)
def test_on_notification(last, seq, send, backfill):
    assert logic.on_notification(last, seq) == logic.Step(send=send, backfill=backfill)


def test_channel_and_token_keys():
    assert logic.channel_of("herald:t1.inbox:", "u1") == "herald:t1.inbox:user:u1"
    key = logic.token_key("p:", "secret-token")
    assert key.startswith("p:stream-token:") and "secret-token" not in key
    assert logic.token_key("p:", "secret-token") == key != logic.token_key("p:", "other")


def _row(**overrides):
    row = dict(
        id=uuid.UUID(int=1), seq=3, user_id="u", category="messages", type="message.received", title="t", body="b",
        url=None, data={"a": 1}, created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), read_at=None,
    )
    row.update(overrides)
    return row


def test_item_of_hides_the_owner_and_the_sequence():
    item = logic.item_of(_row(read_at=datetime(2026, 1, 3, tzinfo=UTC)))
    assert item == {
        "id": "00000000-0000-0000-0000-000000000001", "category": "messages", "type": "message.received", "title": "t",
        "body": "b", "url": None, "data": {"a": 1}, "created_at": "2026-01-02T03:04:05+00:00", "read": True,
        "read_at": "2026-01-03T00:00:00+00:00",
    }


def test_messages_carry_what_a_stream_needs():
    note = json.loads(logic.notification_message(_row(), unread=4, stored_at=10.5))
    assert note["kind"] == "notification" and note["seq"] == 3 and note["unread"] == 4 and note["stored_at"] == 10.5
    assert note["item"]["id"] == "00000000-0000-0000-0000-000000000001"
    change = json.loads(logic.change_message("read", ids=["x"], unread=2))
    assert change == {"kind": "change", "op": "read", "ids": ["x"], "unread": 2}


def test_templates_declare_the_data_fields_shown_beside_the_rendered_text(tmp_path):
    import pytest

    from services.inapp.app import TEMPLATES
    from shared import MessageTemplates, TemplateError

    templates = MessageTemplates(TEMPLATES)
    assert templates.display_fields("new_message") == ("conversation_id", "message_id")  # never the preview: it is in the body
    assert templates.display_fields("password_changed") == ()
    assert all(set(templates.display_fields(n)) <= {"booking_id", "starts_at", "previous_starts_at", "conversation_id", "message_id", "review_id", "rating", "hall_id", "payout_id"} for n in templates.names())
    (tmp_path / "en.yaml").write_text("a:\n  title: t\n  display: booking_id\n")
    with pytest.raises(TemplateError, match="a.display must be a list"):
        MessageTemplates(tmp_path)
