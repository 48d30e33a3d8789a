"""The ingress's pure decisions, without any server."""

from __future__ import annotations

import pytest

from services.ingress import logic
from services.ingress.logic import Mode, Refusal

AREAS = logic.known_areas()
BOOKING = {"booking_id": "b_1", "student_id": "s", "instructor_id": "i", "title": "Piano", "starts_at": "2026-12-01T15:00:00Z"}


def event(**overrides):
    return {"specversion": "1.0", "id": "e1", "source": "tests", "type": "booking.created", "data": dict(BOOKING), **overrides}


@pytest.mark.parametrize(
    ("content_type", "headers", "mode"),
    [
        ("application/cloudevents+json", {}, Mode.structured),
        ("application/cloudevents+json; charset=UTF-8", {}, Mode.structured),
        ("application/cloudevents-batch+json", {}, Mode.batch),
        ("application/json", {}, Mode.plain),
        ("application/json", {"ce-specversion": "1.0"}, Mode.binary),
        ("application/vnd.bookings+json", {"Ce-Specversion": "1.0"}, Mode.binary),
        (None, {"ce-specversion": "1.0"}, Mode.binary),
        ("application/cloudevents+json", {"ce-specversion": "1.0"}, Mode.structured),
    ],
)
def test_the_binding_mode_follows_the_content_type_and_ce_headers(content_type, headers, mode):
    assert logic.mode_of(content_type, headers) is mode


@pytest.mark.parametrize(
    ("content_type", "headers"),
    [("text/plain", {}), (None, {}), ("application/xml", {}), ("text/plain", {"ce-specversion": "1.0"}), ("application/json; charset=latin-1", {})],
)
def test_other_content_types_are_refused_with_415(content_type, headers):
    with pytest.raises(Refusal) as refused:
        logic.mode_of(content_type, headers)
    assert refused.value.status == 415


def test_binary_mode_reads_percent_encoded_attributes_and_keeps_extensions():
    headers = {"ce-specversion": "1.0", "ce-id": "e1", "ce-source": "a%20b", "ce-type": "booking.created", "ce-tenant": "t1", "Content-Type": "x"}
    raw = logic.from_binary(headers, "application/json", b'{"a": 1}')
    assert raw == {"specversion": "1.0", "id": "e1", "source": "a b", "type": "booking.created", "tenant": "t1", "datacontenttype": "application/json", "data": {"a": 1}}
    assert "data" not in logic.from_binary(headers, "application/json", b"")


def test_binary_mode_names_the_missing_headers():
    with pytest.raises(Refusal, match="ce-id, ce-source") as refused:
        logic.from_binary({"ce-specversion": "1.0", "ce-type": "x.y"}, "application/json", b"{}")
    assert refused.value.status == 422


def test_batches_are_bounded_and_non_empty():
    assert logic.items_of(Mode.batch, [1, 2], max_batch=2) == ([1, 2], True)
    assert logic.items_of(Mode.plain, {"a": 1}, max_batch=2) == ([{"a": 1}], False)
    for document, status in (([1, 2, 3], 413), ([], 422), ({"a": 1}, 400)):
        with pytest.raises(Refusal) as refused:
            logic.items_of(Mode.batch, document, max_batch=2)
        assert refused.value.status == status
    with pytest.raises(Refusal):
        logic.items_of(Mode.structured, [event()], max_batch=2)


def test_events_are_checked_for_envelope_area_and_data():
    assert logic.check_event(event(), areas=AREAS).type == "booking.created"
    assert logic.check_event(event(type="booking.renamed", data={"anything": 1}), areas=AREAS).data == {"anything": 1}  # a type of a known area without a data model
    for raw, fragment in (
        (event(specversion="0.3"), "specversion"),
        (event(id=""), "id"),
        (event(type="rocket.launched"), "rocket"),
        (event(data={**BOOKING, "student_id": ""}), "data.student_id"),
        ("text", "JSON object"),
        (event(data={**BOOKING, "title": "Piano\x00"}), "title: contains a NUL character"),
        (event(data={**BOOKING, "note": "\ud800"}), "note: contains a lone surrogate"),
        (event(data={**BOOKING, "title": "x" * 70_000}), "title: text longer than 65536"),
        (event(subject="b\x00"), "subject: contains a NUL character"),
        (event(type="rocket.launched", data={"x": "\x00"}), "rocket"),  # an unknown area is refused first
    ):
        with pytest.raises(Refusal, match=fragment) as refused:
            logic.check_event(raw, areas=AREAS)
        assert refused.value.status == 422
    assert logic.check_event(event(type="rocket.launched", data=1), areas=logic.known_areas(["rocket"])).area == "rocket"


def test_key_type_patterns_are_globs():
    assert logic.type_allowed("booking.created", ["booking.*"])
    assert logic.type_allowed("auth.2fa_enabled", ["booking.*", "auth.2fa_*"])
    assert logic.type_allowed("anything.at_all", ["*"])
    assert not logic.type_allowed("bookings.created", ["booking.*"])
    assert not logic.type_allowed("auth.password_changed", [])


def test_keys_are_random_and_stored_as_digests():
    key, other = logic.new_key(), logic.new_key()
    assert key != other and key.startswith(logic.KEY_PREFIX) and len(key) > 40
    assert logic.hash_key(key) == logic.hash_key(key) != logic.hash_key(other)
    assert key.encode() not in logic.hash_key(key) and len(logic.hash_key(key)) == 32
    assert key.startswith(logic.key_prefix(key)) and len(logic.key_prefix(key)) < 12


def test_retry_after_rounds_up_to_whole_seconds():
    assert [logic.retry_after(ms) for ms in (1, 999, 1000, 1001, 59_500)] == [1, 1, 1, 2, 60]


def test_dedupe_keys_depend_on_source_and_id_only():
    a = logic.check_event(event(), areas=AREAS)
    same = logic.check_event(event(time="2026-01-01T00:00:00Z"), areas=AREAS)
    other = logic.check_event(event(source="elsewhere"), areas=AREAS)
    assert logic.dedupe_key("ns.", a) == logic.dedupe_key("ns.", same) != logic.dedupe_key("ns.", other)
    assert logic.dedupe_key("ns.", a).startswith("ns.ingress:seen:")


def stripe(event_type, obj, **extra):
    return {"id": "evt_1", "type": event_type, "created": 1764064800, "data": {"object": obj}, **extra}


def test_stripe_events_map_to_domain_events_with_the_stripe_event_id():
    mapped = logic.from_stripe(
        stripe("payout.paid", {"id": "po_1", "amount": 500, "currency": "gbp", "arrival_date": 1764201600, "metadata": {"user_id": "u_2"}}),
        source="stripe", user_key="user_id",
    )
    assert mapped.id == "evt_1" and mapped.source == "stripe" and mapped.type == "payout.paid" and mapped.subject == "u_2"
    assert mapped.data == {"user_id": "u_2", "payout_id": "po_1", "amount": 500, "currency": "GBP", "arrival_date": "2025-11-27"}
    failed = logic.from_stripe(stripe("invoice.payment_failed", {"amount_due": 10, "currency": "usd", "metadata": {"uid": "u_3"}}), source="s", user_key="uid")
    assert failed.type == "payment.failed" and failed.data["user_id"] == "u_3"


def test_stripe_events_without_a_user_or_of_other_types_are_ignored():
    assert isinstance(logic.from_stripe(stripe("charge.succeeded", {}), source="s", user_key="user_id"), logic.Ignored)
    assert isinstance(logic.from_stripe(stripe("payout.paid", {"metadata": {"other": "x"}}), source="s", user_key="user_id"), logic.Ignored)
    assert isinstance(logic.from_stripe(stripe("payout.paid", ["not", "an", "object"]), source="s", user_key="user_id"), logic.Ignored)
    assert isinstance(logic.from_stripe({"id": "e", "type": ["x"]}, source="s", user_key="user_id"), logic.Ignored)


def test_a_stripe_event_whose_object_lacks_needed_fields_is_refused():
    with pytest.raises(Refusal) as refused:
        logic.from_stripe(stripe("payout.paid", {"metadata": {"user_id": "u"}, "created": 10**20}), source="s", user_key="user_id")
    assert refused.value.status == 422 and "amount" in refused.value.detail


def test_partner_payloads_map_through_the_table():
    table = logic.mappings_from({"partners": {"cal": {"types": {"reminder.due": "lesson.reminder"}, "subject": "booking_id"}}})
    mapping = table["cal"]
    assert mapping.source == "partner:cal"
    mapped = logic.from_partner({"type": "reminder.due", "data": BOOKING}, mapping, webhook_id="msg_1", timestamp=1764064800)
    assert (mapped.id, mapped.type, mapped.subject, mapped.source) == ("msg_1", "lesson.reminder", "b_1", "partner:cal")
    assert isinstance(logic.from_partner({"type": "other", "data": {}}, mapping, webhook_id="m", timestamp=0), logic.Ignored)
    with pytest.raises(Refusal):
        logic.from_partner([1], mapping, webhook_id="m", timestamp=0)
    with pytest.raises(ValueError):
        logic.mappings_from({"partners": {"empty": {"types": {}}}})


def test_claims_decide_accepted_duplicate_or_in_flight():
    from services.ingress.intake import Outcome, outcomes_of

    holders = [b"claimed", b"done", b"pending", b"pending", b"claimed", b"pending"]
    keys = ["a", "b", "c", "a", "d", "d"]
    assert outcomes_of(holders, keys) == [
        Outcome.accepted, Outcome.duplicate, Outcome.in_flight, Outcome.duplicate, Outcome.accepted, Outcome.duplicate,
    ]
