"""Pure decisions of the email sender: unsubscribe tokens, provider answers, links and header text."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import jwt
from pydantic import ValidationError

from shared import Category, Misconfigured, PermanentError, TransientError, parse_retry_after
from shared.events import EVENT_MODELS

#: Categories whose mail carries RFC 8058 one-click unsubscribe.
UNSUBSCRIBABLE = frozenset({Category.promotional, Category.learning_tips})

_TOKEN_AUDIENCE = "herald-unsubscribe"
_WHITESPACE = re.compile(r"\s+")


class InvalidToken(ValueError):
    """An unsubscribe token that is forged, expired or malformed; ``reason`` says which, in one word."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


#: What each PyJWT refusal means, most specific first (they subclass one another).
_TOKEN_REFUSALS: tuple[tuple[type[jwt.InvalidTokenError], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAlgorithmError, "wrong_algorithm"),
    (jwt.InvalidAudienceError, "wrong_audience"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.DecodeError, "malformed"),
    (jwt.InvalidTokenError, "invalid"),
)


def one_line(text: str) -> str:
    """Text safe for a header value: every run of whitespace, CR and LF included, becomes one space."""
    return _WHITESPACE.sub(" ", text).strip()


def unsubscribable(category: Category) -> bool:
    """Does mail of this category carry one-click unsubscribe?"""
    return category in UNSUBSCRIBABLE


def unsubscribe_token(*, secret: str, user_id: str, category: Category, now: datetime, ttl: timedelta) -> str:
    """A signed token that switches ``category`` email off for ``user_id`` until ``now + ttl``."""
    claims = {"sub": user_id, "cat": category.value, "aud": _TOKEN_AUDIENCE, "iat": int(now.timestamp()), "exp": int((now + ttl).timestamp())}
    return jwt.encode(claims, secret, algorithm="HS256")


def read_unsubscribe_token(*, secret: str, token: str, now: datetime | None = None, leeway: float = 0) -> tuple[str, Category]:
    """The user id and category a token names; raises ``InvalidToken`` if it is forged, expired or malformed.

    ``now`` is the time the token is judged at (the real clock when None): with it, PyJWT's own
    expiry check, which reads the real clock, is off and ``exp`` is compared with ``now`` instead,
    under the same rule (expired when ``exp <= now - leeway``).
    """
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            audience=_TOKEN_AUDIENCE,
            options={"require": ["exp", "sub", "aud", "cat"], "verify_iat": False, "verify_exp": now is None, "verify_nbf": now is None},
            leeway=leeway,
        )
    except jwt.InvalidTokenError as exc:
        reason = next(name for kind, name in _TOKEN_REFUSALS if isinstance(exc, kind))
        raise InvalidToken(reason, str(exc)) from None
    if now is not None:
        exp = claims["exp"]
        if not isinstance(exp, int) or isinstance(exp, bool):
            raise InvalidToken("malformed", "the exp claim must be an integer")
        if exp <= now.timestamp() - leeway:
            raise InvalidToken("expired", "the token expired before the time it is read at")
    try:
        category = Category(claims["cat"])
    except ValueError:
        raise InvalidToken("unknown_category", f"{claims['cat']!r} is no category") from None
    if not unsubscribable(category):
        raise InvalidToken("not_unsubscribable", f"{category.value} mail carries no unsubscribe")
    if not isinstance(claims["sub"], str) or not claims["sub"]:
        raise InvalidToken("missing_claim", "the token names no user")
    return claims["sub"], category


def preference_patch(category: Category) -> dict[str, Any]:
    """The router's preference update that switches one category's email off."""
    return {"preferences": [{"category": category.value, "channel": "email", "enabled": False}]}



#: SMTP replies that refuse Herald itself (authentication, relaying, sender policy), not a recipient.
SMTP_MISCONFIGURED_CODES = frozenset({530, 535})
SMTP_MISCONFIGURED_ENHANCED = ("5.7.0", "5.7.1", "5.7.8")


def http_failure(status: int, *, retry_after: str | None = None, detail: str = "") -> TransientError | PermanentError:
    """What an HTTP provider's non-2xx answer means: 408, 429 and 5xx are worth retrying, 401 and 403 refuse
    Herald's API key (the channel pauses), other 4xx are the message's own fault."""
    if status in (401, 403):
        return Misconfigured(f"http_{status}", detail or "the provider refused the API key")
    if status == 429 or status == 408 or status >= 500:
        return TransientError(f"http_{status}", detail, retry_after=parse_retry_after(retry_after))
    return PermanentError(f"http_{status}", detail)


def smtp_failure(code: int, *, detail: str = "") -> TransientError | PermanentError:
    """What an SMTP reply means: 4xx is a temporary failure (retry), 5xx a permanent one, except the replies that
    refuse Herald itself (530, 535, enhanced 5.7.0/5.7.1/5.7.8: authentication, relaying), which pause the channel."""
    if code in SMTP_MISCONFIGURED_CODES or (code >= 500 and detail.strip().startswith(SMTP_MISCONFIGURED_ENHANCED)):
        return Misconfigured(f"smtp_{code}", detail)
    if 400 <= code < 500:
        return TransientError(f"smtp_{code}", detail)
    if code >= 500:
        return PermanentError(f"smtp_{code}", detail)
    return TransientError("smtp_error", f"{code} {detail}".strip())


def absolute_url(frontend_url: str, url: str | None) -> str:
    """An absolute link: ``url`` as it is when absolute, else joined to the front-end's base URL."""
    if url and re.match(r"^https?://", url):
        return url
    path = url or "/"
    return frontend_url.rstrip("/") + ("" if path.startswith("/") else "/") + path


def format_money(amount: int, currency: str) -> str:
    """Minor units as ``12.34 EUR``."""
    return f"{amount / 100:,.2f} {currency.upper()}"


def event_data(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """An event's data with every field of its type's model present (defaults filled); unknown types as they are."""
    model = EVENT_MODELS.get(event_type)
    if model is None:
        return dict(data)
    try:
        return model.model_validate(data).model_dump(mode="json")
    except ValidationError as exc:
        raise PermanentError("invalid_data", "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])) from None


def unsubscribe_link(base: str, token: str) -> str:
    """The one-click unsubscribe URL carrying ``token``."""
    return f"{base}?{urlencode({'token': token})}"
