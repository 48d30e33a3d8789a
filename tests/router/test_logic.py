"""The pure routing decision over the whole catalogue, and the directory and preference rules."""

from datetime import UTC, datetime, timedelta

import pytest

from services.router import logic
from services.router.cache import decode, encode
from services.router.catalogue import CatalogueError, load_catalogue
from services.router.logic import Contact, Directory, Profile
from shared import Category, Channel, CloudEvent, Dispatch, InvalidMessage, notification_id
from shared.events import EVENT_MODELS

CATALOGUE = load_catalogue()
FRONTEND = "https://app.example.com"
NOTIFYING = [(t, ns) for t, ns in CATALOGUE.entries.items() if ns]


def example_event(event_type: str, **data_overrides) -> CloudEvent:
    data = {**EVENT_MODELS[event_type].model_config["json_schema_extra"]["examples"][0], **data_overrides}
    return CloudEvent(specversion="1.0", id=f"ev-{event_type}", source="tests", type=event_type, data=data)


def known(user_id: str, **overrides) -> Contact:
    values = dict(email=f"{user_id}@example.com", phone="+14155550100", phone_verified=True, locale="de", timezone="Europe/Berlin")
    values.update(overrides)
    return Contact(user_id=user_id, **values)


def _profile(value):
    return value if isinstance(value, Profile) else Profile(value)


def decisions_for(event_type: str, make_profile, **data_overrides):
    event = example_event(event_type, **data_overrides)
    data = logic.validate_data(event)
    notifications = CATALOGUE.get(event_type)
    recipients = {n: logic.recipients_of(n, data) for n in notifications}
    users = {u for us in recipients.values() for u in us}
    profiles = {u: _profile(make_profile(u)) for u in users}
    return event, logic.route(event, data, notifications, recipients, profiles, frontend_url=FRONTEND)


def test_the_catalogue_names_every_notification_of_the_design():
    expected = {
        "welcome", "booking_created_instructor", "booking_created_student", "booking_confirmed_student", "booking_confirmed_instructor",
        "booking_cancelled", "booking_rescheduled", "lesson_reminder", "new_message", "new_review", "review_response", "hall_admin_alert", "new_device_login",
        "password_changed", "two_factor_enabled", "two_factor_disabled", "payment_failed", "payout_sent", "learning_tip", "promotion",
        "system_update",
    }
    assert CATALOGUE.templates == expected
    critical = {t for t, ns in NOTIFYING if any(n.critical for n in ns)}
    assert critical == {"auth.new_device_login", "auth.password_changed", "auth.2fa_enabled", "auth.2fa_disabled", "payment.failed", "payout.paid"}
    assert CATALOGUE.get("payout.paid")[0].channels == (Channel.email, Channel.inapp)


@pytest.mark.parametrize(("event_type", "notifications"), NOTIFYING, ids=[t for t, _ in NOTIFYING])
def test_a_known_verified_user_gets_every_catalogue_channel(event_type, notifications):
    event, decisions = decisions_for(event_type, known)
    data = logic.validate_data(event)
    expected = {(u, c) for n in notifications for u in logic.recipients_of(n, data) for c in n.channels}
    assert {(d.user_id, d.channel) for d in decisions} == expected
    for d in decisions:
        assert d.routed and d.reason == "routed"
        dispatch = d.dispatch
        # the event's id, or the catalogue's identity for it (lesson.reminder: one per booking, start and offset)
        identity = event.id if d.notification.identity is None else "identity|lesson.reminder|reminder:b_42:2026-12-01T15:00:00Z:60"
        assert dispatch.notification_id == notification_id(source="tests", event_id=identity, user_id=d.user_id, channel=d.channel.value)
        assert dispatch.template == d.notification.template
        assert dispatch.category == d.notification.category
        assert dispatch.critical == d.notification.critical == (d.notification.category is Category.security)
        assert (dispatch.locale, dispatch.timezone) == ("de", "Europe/Berlin")
        assert dispatch.recipient.email == (f"{d.user_id}@example.com" if d.channel is Channel.email else None)
        assert dispatch.recipient.phone == ("+14155550100" if d.channel is Channel.sms else None)
        assert dispatch.url is None or dispatch.url.startswith(FRONTEND + "/")
        assert Dispatch.model_validate_json(dispatch.model_dump_json()) == dispatch  # built unvalidated: prove it is valid
        assert Dispatch.model_validate(dispatch.model_dump()) == dispatch


@pytest.mark.parametrize(("event_type", "notifications"), NOTIFYING, ids=[t for t, _ in NOTIFYING])
def test_preferences_switch_off_everything_but_critical(event_type, notifications):
    def all_off(user_id):
        return Profile(known(user_id), {(c.value, ch.value): False for c in Category for ch in Channel})

    _, decisions = decisions_for(event_type, all_off)
    for d in decisions:
        if d.notification.critical:
            assert d.routed, d
        else:
            assert (d.routed, d.reason) == (False, "preference_off")


@pytest.mark.parametrize(("event_type", "notifications"), NOTIFYING, ids=[t for t, _ in NOTIFYING])
def test_an_unknown_user_gets_only_the_channels_that_need_no_address(event_type, notifications):
    _, decisions = decisions_for(event_type, lambda u: Profile.unknown(u))
    for d in decisions:
        if d.channel in (Channel.push, Channel.inapp):
            assert d.routed
        else:
            assert (d.reason, d.detail) == ("no_address", "user not in the recipients directory")


@pytest.mark.parametrize(("event_type", "notifications"), NOTIFYING, ids=[t for t, _ in NOTIFYING])
def test_a_deleted_user_gets_nothing(event_type, notifications):
    _, decisions = decisions_for(event_type, lambda u: Profile(Contact(user_id=u, deleted=True)))
    assert decisions and all(d.reason == "user_deleted" and not d.routed for d in decisions)


@pytest.mark.parametrize(("event_type", "notifications"), NOTIFYING, ids=[t for t, _ in NOTIFYING])
def test_sms_needs_a_verified_phone_unless_critical(event_type, notifications):
    _, unverified = decisions_for(event_type, lambda u: Profile(known(u, phone_verified=False)))
    _, no_phone = decisions_for(event_type, lambda u: Profile(known(u, phone=None, phone_verified=False)))
    for d in (d for d in unverified if d.channel is Channel.sms):
        assert d.routed if d.notification.critical else d.reason == "phone_unverified"
    for d in no_phone:
        assert d.reason == ("no_address" if d.channel is Channel.sms else "routed")


def test_one_user_named_twice_by_an_event_gets_each_channel_once():
    _, decisions = decisions_for("booking.cancelled", known, student_id="u_same", instructor_id="u_same")
    assert sorted(d.channel.value for d in decisions) == ["email", "inapp", "push", "sms"]


def test_the_same_event_twice_gives_identical_notification_ids():
    _, first = decisions_for("hall.alert", known)
    _, second = decisions_for("hall.alert", known)
    assert [d.dispatch.notification_id for d in first] == [d.dispatch.notification_id for d in second]
    assert len({d.dispatch.notification_id for d in first}) == len(first) == 4


def test_recipients_must_be_named():
    event = example_event("message.received")
    notification = CATALOGUE.get("message.received")[0]
    with pytest.raises(InvalidMessage) as missing:
        logic.recipients_of(notification, {**logic.validate_data(event), "recipient_id": ""})
    assert missing.value.reason == "missing_recipients"
    with pytest.raises(InvalidMessage) as not_string:
        logic.validate_data(example_event("hall.alert", admin_ids=["u_7", 8]))
    assert not_string.value.reason == "invalid_data" and "admin_ids.1" in not_string.value.detail


def test_a_system_update_without_users_is_a_broadcast():
    notification = CATALOGUE.get("system.update")[0]
    assert logic.recipients_of(notification, logic.validate_data(example_event("system.update", user_ids=None))) is None
    assert logic.recipients_of(notification, logic.validate_data(example_event("system.update", user_ids=[]))) is None
    assert logic.recipients_of(notification, logic.validate_data(example_event("system.update"))) == ["u_1", "u_2"]


def test_trace_rows_name_every_decision_with_its_reason():
    event, decisions = decisions_for("booking.confirmed", lambda u: Profile(known(u, phone_verified=False)))
    rows = logic.trace_rows(event, decisions)
    assert len(rows) == len(decisions) == 6
    sms = [r for r in rows if r["channel"] == "sms"]
    assert sms == [sms[0]] and (sms[0]["decision"], sms[0]["reason"]) == ("suppressed", "phone_unverified")
    assert sms[0]["notification_id"] == notification_id(source="tests", event_id=event.id, user_id="u_1", channel="sms")


# ------------------------------------------------------------------ directory


def test_a_changed_phone_without_verification_is_unverified():
    verified = datetime(2026, 1, 1, tzinfo=UTC)
    current = Directory(user_id="u", phone="+14155550100", phone_verified_at=verified)
    assert logic.directory_update(current, "u", {"phone": "+14155550199"}).phone_verified_at is None
    assert logic.directory_update(current, "u", {"phone": "+14155550100"}).phone_verified_at == verified
    assert logic.directory_update(current, "u", {"email": "a@example.com"}).phone_verified_at == verified
    moved = logic.directory_update(current, "u", {"phone": "+4915112345678", "phone_verified_at": "2026-02-02T00:00:00Z"})
    assert (moved.phone, moved.phone_verified_at) == ("+4915112345678", datetime(2026, 2, 2, tzinfo=UTC))
    assert logic.directory_update(current, "u", {"phone": None}) == Directory(user_id="u")


def test_phone_verification_arrives_as_a_user_update():
    current = Directory(user_id="u", phone="+14155550100")
    row = logic.directory_update(current, "u", {"phone": "+1 415 555 0100", "phone_verified_at": "2026-03-01T10:00:00+00:00"})
    assert row.phone == "+14155550100" and row.phone_verified_at is not None
    assert logic.contact_of(row, "u").phone_verified


@pytest.mark.parametrize("fields", [{"phone": "12345"}, {"phone": "+1 555"}, {"email": "not-an-address"}, {"timezone": "Mars/Base"}, {"locale": "!!"}])
def test_invalid_contact_details_are_invalid_data(fields):
    with pytest.raises(InvalidMessage) as err:
        logic.directory_update(None, "u", fields)
    assert err.value.reason == "invalid_data"


def test_only_the_fields_present_change():
    current = Directory(user_id="u", email="a@example.com", locale="fr", timezone="Europe/Paris")
    assert logic.directory_update(current, "u", {"locale": "de"}) == Directory(user_id="u", email="a@example.com", locale="de", timezone="Europe/Paris")
    assert logic.directory_update(current, "u", {"email": None}).email is None


# ------------------------------------------------------------------ preferences


def test_the_preference_matrix_is_complete_and_security_is_locked():
    matrix = logic.preference_matrix(CATALOGUE, {("promotional", "email"): False})
    assert len(matrix) == len(Category) * len(Channel)
    by_key = {(p["category"], p["channel"]): p for p in matrix}
    assert by_key[("promotional", "email")]["enabled"] is False and by_key[("promotional", "email")]["default"] is True
    assert by_key[("promotional", "sms")] == {"category": "promotional", "channel": "sms", "enabled": False, "default": False, "available": False, "locked": False}
    assert by_key[("security", "sms")]["locked"] and by_key[("security", "sms")]["enabled"]
    assert by_key[("lesson_updates", "sms")]["enabled"]


def test_preference_changes_name_what_is_wrong():
    valid, problems = logic.check_preference_changes(
        [
            {"category": "promotional", "channel": "email", "enabled": False},
            {"category": "spam", "channel": "email", "enabled": False},
            {"category": "messages", "channel": "pigeon", "enabled": True},
            {"category": "security", "channel": "sms", "enabled": False},
        ]
    )
    assert valid == {("promotional", "email"): False}
    assert len(problems) == 3
    assert "'spam'" in problems[0] and "'pigeon'" in problems[1] and "security" in problems[2]


def test_a_cached_profile_reads_back_the_same():
    for profile in (Profile(known("u"), {("promotional", "email"): False}), Profile.unknown("u", {("messages", "push"): False}), Profile(Contact("u", deleted=True))):
        assert decode("u", encode(profile)) == profile


# ------------------------------------------------------------------ catalogue


@pytest.mark.parametrize(("field", "value", "message"), [("category", "gossip", "category"), ("channels", "[email, fax]", "channels")])
def test_a_catalogue_naming_an_unknown_category_or_channel_fails_clearly(tmp_path, field, value, message):
    entry = {"template": "t", "category": "messages", "channels": "[email]", "recipients": "recipient_id", field: value}
    path = tmp_path / "catalogue.yaml"
    path.write_text("message.received:\n  - " + "\n    ".join(f"{k}: {v}" for k, v in entry.items()) + "\n")
    with pytest.raises(CatalogueError) as err:
        load_catalogue(path)
    assert "message.received" in str(err.value) and message in str(err.value) and value.strip("[]").split(", ")[-1] in str(err.value)


def test_the_service_refuses_to_start_with_a_bad_catalogue(tmp_path):
    from services.router.app import create_app
    from services.router.settings import Settings

    path = tmp_path / "catalogue.yaml"
    path.write_text("message.received:\n  - {template: t, category: messages, channels: [email, telegraph], recipients: recipient_id}\n")
    with pytest.raises(CatalogueError, match="telegraph"):
        create_app(Settings(catalogue_path=path))


def test_ids_with_control_characters_are_invalid():
    with pytest.raises(InvalidMessage) as bad_id:
        logic.parse_event(b'{"specversion": "1.0", "id": "e\\u0000", "source": "s", "type": "payout.paid"}')
    assert bad_id.value.reason == "not_cloudevent"
    notification = CATALOGUE.get("hall.alert")[0]
    with pytest.raises(InvalidMessage) as bad_user:
        logic.recipients_of(notification, {"admin_ids": ["u_1", "u\x00"]})
    assert bad_user.value.reason == "invalid_data"


def test_every_dispatch_of_an_event_is_stamped_with_the_time_it_was_routed_at():
    event = example_event("booking.confirmed")
    data = logic.validate_data(event)
    notifications = CATALOGUE.get("booking.confirmed")
    recipients = {n: logic.recipients_of(n, data) for n in notifications}
    profiles = {u: Profile(known(u)) for us in recipients.values() for u in us}
    then = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    decisions = logic.route(event, data, notifications, recipients, profiles, frontend_url=FRONTEND, now=then)
    stamped = {d.dispatch.created_at for d in decisions if d.dispatch is not None}
    assert stamped == {then}


def test_a_lesson_reminder_expires_when_the_lesson_starts_and_a_promotion_two_days_after_routing():
    then = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    reminder = example_event("lesson.reminder", starts_at="2031-05-06T15:00:00Z")
    data = logic.validate_data(reminder)
    [student, instructor] = CATALOGUE.get("lesson.reminder")
    decisions = logic.route(reminder, data, [student, instructor], {n: logic.recipients_of(n, data) for n in (student, instructor)},
                            {}, frontend_url=FRONTEND, now=then)
    assert {d.dispatch.expires_at for d in decisions if d.dispatch} == {datetime(2031, 5, 6, 15, 0, tzinfo=UTC)}
    [promotion] = CATALOGUE.get("marketing.promotion")
    assert logic.expiry(promotion, {}, then) == then + timedelta(days=2)
    [welcome] = CATALOGUE.get("user.created")
    assert logic.expiry(welcome, {}, then) is None
    # the sooner of the two when both are given
    both = student.model_copy(update={"expires_after": timedelta(hours=1)})
    assert logic.expiry(both, {"starts_at": "2031-05-06T15:00:00Z"}, then) == then + timedelta(hours=1)


def test_the_catalogue_refuses_an_expiry_field_that_is_not_a_time(tmp_path):
    path = tmp_path / "catalogue.yaml"
    path.write_text("lesson.reminder:\n  - template: lesson_reminder\n    category: lesson_updates\n    channels: [email]\n    recipients: student_id\n    expires_at: title\n")
    with pytest.raises(CatalogueError, match="expires_at 'title' is not a time field"):
        load_catalogue(path)


def _dispatch_ids(event: CloudEvent) -> set:
    data = logic.validate_data(event)
    notifications = CATALOGUE.get(event.type)
    recipients = {n: logic.recipients_of(n, data) for n in notifications}
    profiles = {u: _profile(known(u)) for us in recipients.values() for u in us}
    return {d.dispatch.notification_id for d in logic.route(event, data, notifications, recipients, profiles, frontend_url=FRONTEND)}


def test_a_reminder_herald_plans_and_one_a_producer_sends_for_the_same_booking_and_offset_are_one_notification():
    from services.router.catalogue import Reminder
    from services.router.schedules import reminder_event

    booking = example_event("booking.created", starts_at="2031-05-06T15:00:00Z")
    data = logic.validate_data(booking)
    hour = reminder_event(booking, data, Reminder(type="lesson.reminder", before=timedelta(hours=1), at="starts_at"), datetime(2031, 5, 6, 14, tzinfo=UTC))
    day = reminder_event(booking, data, Reminder(type="lesson.reminder", before=timedelta(hours=24), at="starts_at"), datetime(2031, 5, 5, 15, tzinfo=UTC))
    # The producer's own, with another id and the start written in another offset: the same instant.
    producers = CloudEvent(
        specversion="1.0", id="producer-42", source="tests", type="lesson.reminder",
        data={**{k: v for k, v in booking.data.items()}, "starts_at": "2031-05-06T17:00:00+02:00", "minutes_before": 60},
    )
    assert len(_dispatch_ids(hour)) == 7  # student: email, sms, push, inapp; instructor: email, push, inapp
    assert _dispatch_ids(producers) == _dispatch_ids(hour)
    assert not _dispatch_ids(day) & _dispatch_ids(hour)  # another offset is another reminder
    moved = CloudEvent(**{**producers.model_dump(), "data": {**producers.data, "starts_at": "2031-05-07T15:00:00Z"}})
    assert not _dispatch_ids(moved) & _dispatch_ids(hour)  # a new start is a new reminder
    # A producer's reminder that leaves minutes_before to the model's default is identified by its own id:
    # two such reminders (24 h and 1 h, say) are two notifications, and neither is taken for Herald's.
    unspecified = [CloudEvent(**{**producers.model_dump(), "id": f"p-{n}", "data": {k: v for k, v in producers.data.items() if k != "minutes_before"}}) for n in (1, 2)]
    assert not _dispatch_ids(unspecified[0]) & _dispatch_ids(unspecified[1])
    assert not _dispatch_ids(unspecified[0]) & _dispatch_ids(hour)


BOOKING_ENTRY = "booking.created:\n  - {template: t, category: lesson_updates, channels: [email], recipients: student_id}\nlesson.reminder:\n  - {template: r, category: lesson_updates, channels: [email], recipients: student_id}\n"


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ("schedules:\n  booking.created: {key: 'booking:{bookingid}'}\n", "bookingid"),
        ("schedules:\n  booking.created:\n    key: x\n    reminders: [{type: lesson.nagging, before: PT1H, at: starts_at}]\n", "lesson.nagging"),
        ("schedules:\n  booking.created:\n    key: x\n    reminders: [{type: lesson.reminder, before: PT1H, at: title}]\n", "title"),
        ("schedules:\n  booking.created:\n    key: x\n    reminders: [{type: lesson.reminder, before: -PT1H, at: starts_at}]\n", "before"),
        ("schedules:\n  payout.paid: {key: x}\n", "payout.paid"),
        ("schedules:\n  booking.created: {key: x, cancel: true}\n", "cancel"),
    ],
)
def test_a_catalogue_with_a_wrong_schedule_rule_fails_clearly(tmp_path, rules, message):
    path = tmp_path / "catalogue.yaml"
    path.write_text(BOOKING_ENTRY + rules)
    with pytest.raises(CatalogueError, match="schedules") as err:
        load_catalogue(path)
    assert message in str(err.value)


def test_the_catalogues_reminders_and_keys():
    created = CATALOGUE.schedules["booking.created"]
    assert [(r.type, r.before, r.at) for r in created.reminders] == [("lesson.reminder", timedelta(hours=24), "starts_at"), ("lesson.reminder", timedelta(hours=1), "starts_at")]
    assert {t for t, rule in CATALOGUE.schedules.items() if rule.cancels} == {"booking.cancelled", "booking.rescheduled"}
    assert {rule.key for rule in CATALOGUE.schedules.values()} == {"booking:{booking_id}"}


NIGHT = (datetime.strptime("22:00", "%H:%M").time(), datetime.strptime("07:00", "%H:%M").time())
EARLY = (datetime.strptime("01:00", "%H:%M").time(), datetime.strptime("02:30", "%H:%M").time())


@pytest.mark.parametrize(
    ("now", "zone", "window", "until"),
    [
        # an ordinary night, both zones; outside the window nothing is held
        ("2026-06-10T21:00Z", "Europe/Berlin", NIGHT, "2026-06-11T05:00Z"),
        ("2026-06-10T19:59Z", "Europe/Berlin", NIGHT, None),
        ("2026-06-11T05:00Z", "Europe/Berlin", NIGHT, None),  # the end itself is outside
        ("2026-06-11T03:00Z", "America/New_York", NIGHT, "2026-06-11T11:00Z"),
        # spring forward: the night is an hour shorter in UTC (Berlin 29 March, New York 8 March)
        ("2026-03-28T23:00Z", "Europe/Berlin", NIGHT, "2026-03-29T05:00Z"),
        ("2026-03-08T05:00Z", "America/New_York", NIGHT, "2026-03-08T11:00Z"),
        # fall back: an hour longer (Berlin 25 October, New York 1 November)
        ("2026-10-24T23:00Z", "Europe/Berlin", NIGHT, "2026-10-25T06:00Z"),
        ("2026-11-01T05:30Z", "America/New_York", NIGHT, "2026-11-01T12:00Z"),
        # an end the clock skips (02:30 does not exist in Berlin on 29 March): the first instant after the gap
        ("2026-03-29T00:30Z", "Europe/Berlin", EARLY, "2026-03-29T01:00Z"),
        # an end the clock shows twice (25 October): the next occurrence after now, first or repeated
        ("2026-10-25T00:15Z", "Europe/Berlin", EARLY, "2026-10-25T00:30Z"),
        ("2026-10-25T01:15Z", "Europe/Berlin", EARLY, "2026-10-25T01:30Z"),
        # a window within one day, and an unknown zone read as UTC
        ("2026-06-10T01:10Z", "Nowhere/Else", EARLY, "2026-06-10T02:30Z"),
    ],
)
def test_quiet_hours_end_on_the_users_wall_clock_across_dst_changes(now, zone, window, until):
    parse = lambda v: datetime.fromisoformat(v.replace("Z", "+00:00"))  # noqa: E731
    found = logic.quiet_until(parse(now), zone, window)
    assert found == (parse(until) if until else None)
    if found is not None:
        assert found > parse(now)
