"""Pure decisions of the SMS sender: numbers, encodings and segments, caps, prices, provider errors."""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any, Literal

import phonenumbers

from shared import DeliveryState, Limit, local_times, mask_phone

# GSM 03.38 default alphabet (one septet each) and its extension table (escape + one septet).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = frozenset("\f^{}\\[~]|€")

Encoding = Literal["GSM-7", "UCS-2"]
SINGLE = {"GSM-7": 160, "UCS-2": 70}  # capacity of a single-segment message
PART = {"GSM-7": 153, "UCS-2": 67}  # capacity of each part of a concatenated message


class InvalidNumber(ValueError):
    """Not a valid E.164 phone number."""


@dataclass(frozen=True)
class Number:
    e164: str
    country: str  # ISO 3166 alpha-2, e.g. "US"
    kind: str = "unknown"  # phonenumbers' number type, lower case: mobile, fixed_line_or_mobile, premium_rate…


#: Number types that cost the sender (or the recipient) more than a normal SMS, or reach no person's phone:
#: refused unless HERALD_SMS_ALLOWED_COSTLY_TYPES names them.
COSTLY_TYPES = frozenset({"premium_rate", "shared_cost", "uan", "personal_number", "pager", "voicemail"})


def kind_allowed(number: Number, allowed_costly: list[str]) -> bool:
    """Whether ``number``'s type may receive SMS: any ordinary type, a costly one only when allowed."""
    return number.kind not in COSTLY_TYPES or number.kind in {k.lower() for k in allowed_costly}


@dataclass(frozen=True)
class Segments:
    encoding: Encoding
    units: int  # septets for GSM-7, UTF-16 code units for UCS-2
    count: int


def parse_number(raw: str | None) -> Number:
    """The E.164 form and country of ``raw``; raises ``InvalidNumber``."""
    if not raw or not raw.strip().startswith("+"):
        raise InvalidNumber("not an E.164 number (must start with +)")
    try:
        parsed = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidNumber(str(exc)) from None
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidNumber("not a valid phone number")
    country = phonenumbers.region_code_for_number(parsed) or ""
    kind = phonenumbers.number_type(parsed)
    name = next((n for n, v in vars(phonenumbers.PhoneNumberType).items() if v == kind and not n.startswith("_") and n.isupper()), "UNKNOWN")
    return Number(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), country, name.lower())


def country_allowed(number: Number, allowed: list[str]) -> bool:
    """Is ``number`` in one of the destination countries SMS may go to."""
    return number.country.upper() in {c.upper() for c in allowed}


def encoding_of(text: str) -> Encoding:
    """GSM-7 when every character is in the GSM alphabet; one other character makes it UCS-2."""
    return "GSM-7" if all(ch in GSM7_BASIC or ch in GSM7_EXTENDED for ch in text) else "UCS-2"


def _costs(text: str, encoding: Encoding) -> list[int]:
    if encoding == "GSM-7":
        return [2 if ch in GSM7_EXTENDED else 1 for ch in text]
    return [2 if ord(ch) > 0xFFFF else 1 for ch in text]


def count_segments(text: str) -> Segments:
    """How many SMS segments ``text`` takes (160/153 GSM-7 septets, 70/67 UCS-2 units).

    In a concatenated message an escaped GSM character or a surrogate pair is
    never split across two parts, as handsets and carriers do it.
    """
    encoding = encoding_of(text)
    costs = _costs(text, encoding)
    units = sum(costs)
    if units <= SINGLE[encoding]:
        return Segments(encoding, units, 1 if units else 0)
    parts, room = 1, PART[encoding]
    for cost in costs:
        if cost > room:
            parts, room = parts + 1, PART[encoding]
        room -= cost
    return Segments(encoding, units, parts)


def fit(text: str, max_segments: int) -> tuple[str, bool]:
    """``text`` cut at a character boundary (with an ellipsis) to at most ``max_segments``; and whether it was cut."""
    if count_segments(text).count <= max_segments:
        return text, False

    def candidate(length: int) -> str:
        head = text[:length].rstrip()
        return head + ("…" if encoding_of(head) == "UCS-2" else "...")

    low, high = 0, len(text)  # the longest prefix whose candidate fits
    while low < high:
        mid = (low + high + 1) // 2
        if count_segments(candidate(mid)).count <= max_segments:
            low = mid
        else:
            high = mid - 1
    return candidate(low), True


def price(segments: int, country: str, table: dict[str, float], default: float) -> float:
    """Estimated price in US dollars of ``segments`` segments to ``country``."""
    return round(segments * table.get(country.upper(), default), 6)


_NUMBERISH = re.compile(r"\+\d[\d ().-]{5,}\d|\b\d{8,15}\b")


def mask_numbers(text: str) -> str:
    """``text`` with every phone-number-like run masked (provider messages quote the number)."""
    return _NUMBERISH.sub(lambda m: mask_phone(re.sub(r"[^\d+]", "", m.group())), text)


# --- caps -----------------------------------------------------------------

DAY = 86_400.0


def cap_limits(*, prefix: str, user_id: str, critical: bool, daily_cap: int, critical_cap: int) -> list[Limit]:
    """The limits one SMS to ``user_id`` takes a slot in.

    Every SMS counts in the user's 24-hour total. A non-critical SMS is refused
    when that total reaches ``daily_cap``; a critical one is never refused by
    it (a security alert must not be crowded out by lesson reminders) but has
    its own ceiling, ``critical_cap``, against abuse.
    """
    tag = f"{prefix}cap:{{{user_id}}}"  # one hash tag per user: both keys in one cluster slot
    if critical:
        return [Limit(f"{tag}:all", None, DAY), Limit(f"{tag}:critical", critical_cap, DAY)]
    return [Limit(f"{tag}:all", daily_cap, DAY)]


def cap_reason(refused: Limit) -> str:
    return "daily_cap_critical" if refused.key.endswith(":critical") else "daily_cap"


# --- provider errors and receipts -------------------------------------------

#: Twilio error codes that will fail the same way every time, with Herald's reason.
PERMANENT_CODES = {
    21211: "invalid_number",
    21214: "invalid_number",
    21217: "invalid_number",
    21265: "invalid_number",
    21408: "region_not_enabled",
    21612: "unroutable",
    21614: "not_sms_capable",
    21610: "recipient_opted_out",
    21602: "empty_body",
    21617: "body_too_long",
    30004: "blocked",
    30005: "unknown_destination",
    30006: "landline_or_unreachable",
}


@dataclass(frozen=True)
class ProviderFailure:
    transient: bool
    reason: str


def classify_provider_error(status: int | None, code: int | None) -> ProviderFailure:
    """Is a Twilio error worth retrying, and under which reason.

    Rate limits, server errors and authentication errors are retried (an
    authentication error is a configuration fault: the dispatch ends in the
    dead-letter topic, to be replayed once the credentials are fixed); other
    client errors are permanent.
    """
    if code in PERMANENT_CODES:
        return ProviderFailure(False, PERMANENT_CODES[code])
    if status == 429 or code in (20429, 14107):
        return ProviderFailure(True, "provider_rate_limited")
    if status is None or status >= 500:
        return ProviderFailure(True, f"provider_{status or 'unreachable'}")
    if status in (401, 403) or code == 20003:
        return ProviderFailure(True, "provider_auth")
    return ProviderFailure(False, f"provider_rejected_{code or status}")


RECEIPT_STATES = {"delivered": DeliveryState.delivered, "undelivered": DeliveryState.failed, "failed": DeliveryState.failed}


def receipt_state(message_status: str) -> DeliveryState | None:
    """The final state a Twilio status callback reports, or None for an intermediate one (queued, sent…)."""
    return RECEIPT_STATES.get(message_status.lower())


def receipt_reason(message_status: str, error_code: str | None) -> str | None:
    if message_status.lower() == "delivered":
        return None
    return f"{message_status.lower()}:{error_code}" if error_code else message_status.lower()


# --- rendering ----------------------------------------------------------------

def template_data(data: dict[str, Any], *, url: str | None, timezone: str) -> dict[str, Any]:
    """The variables an SMS template sees: the event's data, times shown in the recipient's zone, and ``url``."""
    return {**local_times(data, timezone), "url": url}


# --- phone verification ---------------------------------------------------------


def new_code() -> str:
    """A uniformly random 6-digit code."""
    return f"{secrets.randbelow(1_000_000):06d}"


def hash_code(secret: bytes, *, user_id: str, phone: str, code: str) -> str:
    """The stored form of a code: keyed by a server secret and bound to the user and number."""
    return hmac.new(secret, f"{user_id}\x1f{phone}\x1f{code}".encode(), hashlib.sha256).hexdigest()


def code_matches(stored: str, secret: bytes, *, user_id: str, phone: str, code: str) -> bool:
    """Compare a submitted code with the stored hash in constant time."""
    return hmac.compare_digest(stored, hash_code(secret, user_id=user_id, phone=phone, code=code))


def verification_limits(*, prefix: str, user_id: str, phone: str, max_requests: int, window: float, cooldown: float) -> list[Limit]:
    """Limits on sending codes: ``max_requests`` per ``window`` per user and per number, one per ``cooldown``."""
    number = hashlib.sha256(phone.encode()).hexdigest()[:24]  # no number in clear in key names
    limits = [
        Limit(f"{prefix}verify:user:{user_id}", max_requests, window),
        Limit(f"{prefix}verify:number:{number}", max_requests, window),
    ]
    if cooldown > 0:
        limits.insert(0, Limit(f"{prefix}verify:cooldown:{user_id}", 1, cooldown))
    return limits


def retry_after_seconds(wait: float) -> int:
    """A ``Retry-After`` value: whole seconds, at least one."""
    return max(1, math.ceil(wait))
