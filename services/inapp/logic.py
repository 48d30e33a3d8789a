"""Pure decisions of the inbox: cursors, stream resume points, event payloads. No I/O."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

_CURSOR_PREFIX = "s:"
MAX_SEQ = 2**63 - 1


class BadCursor(ValueError):
    """A pagination cursor or ``Last-Event-ID`` that Herald did not issue."""


def encode_cursor(seq: int) -> str:
    """The opaque cursor that continues a newest-first listing below ``seq``."""
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The sequence number inside a cursor; ``BadCursor`` if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor("the cursor is not valid") from None
    if not raw.startswith(_CURSOR_PREFIX) or not raw[len(_CURSOR_PREFIX) :].isdigit():
        raise BadCursor("the cursor is not valid")
    seq = int(raw[len(_CURSOR_PREFIX) :])
    if not 0 < seq <= MAX_SEQ:
        raise BadCursor("the cursor is not valid")
    return seq


def next_cursor(rows: list[dict[str, Any]], limit: int) -> str | None:
    """The cursor of the next page when ``rows`` (fetched with ``limit + 1``) has more; else None."""
    if len(rows) <= limit:
        return None
    return encode_cursor(rows[limit - 1]["seq"])


def parse_event_id(value: str | None) -> int | None:
    """The sequence number a client last saw (``Last-Event-ID``); None when absent or empty."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not value.isdigit() or len(value) > 19 or int(value) > MAX_SEQ:
        raise BadCursor("Last-Event-ID is not an event id of this stream")
    return int(value)


def resume_point(last_event_id: int | None, current: int) -> int:
    """Where a stream starts: after what the client saw, never beyond what exists; now for a new client."""
    if last_event_id is None:
        return current
    return min(last_event_id, current)


@dataclass(frozen=True)
class Step:
    """What a stream does with a notification message numbered ``seq`` after having sent ``last``."""

    send: bool  # send this message as it is
    backfill: bool  # read what was missed from the table (a gap, or a dropped message)


def on_notification(last: int, seq: int) -> Step:
    """Send the next number, skip what was already sent, fill a gap from the table."""
    if seq <= last:
        return Step(send=False, backfill=False)
    if seq == last + 1:
        return Step(send=True, backfill=False)
    return Step(send=False, backfill=True)


def channel_of(prefix: str, user_id: str) -> str:
    """The Redis pub/sub channel of one user's inbox changes."""
    return f"{prefix}user:{user_id}"


def token_key(prefix: str, token: str) -> str:
    """The Redis key of a stream token (only its hash is stored)."""
    return f"{prefix}stream-token:{hashlib.sha256(token.encode()).hexdigest()}"


def item_of(row: dict[str, Any]) -> dict[str, Any]:
    """The JSON shape of one inbox row, as the API and the stream show it."""
    return {
        "id": str(row["id"]),
        "category": row["category"],
        "type": row["type"],
        "title": row["title"],
        "body": row["body"],
        "url": row["url"],
        "data": row["data"] if isinstance(row["data"], dict) else json.loads(row["data"] or "{}"),
        "created_at": _iso(row["created_at"]),
        "read": row["read_at"] is not None,
        "read_at": _iso(row["read_at"]),
    }


def _iso(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.isoformat()


def notification_message(row: dict[str, Any], *, unread: int, stored_at: float) -> bytes:
    """The pub/sub message announcing a stored notification."""
    return json.dumps({"kind": "notification", "seq": row["seq"], "item": item_of(row), "unread": unread, "stored_at": stored_at}).encode()


def change_message(op: str, *, ids: list[str], unread: int) -> bytes:
    """The pub/sub message announcing read / unread / deleted / read_all / cleared."""
    return json.dumps({"kind": "change", "op": op, "ids": ids, "unread": unread}).encode()
