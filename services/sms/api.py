"""HTTP routes of the sms service: phone verification (JWT user), Twilio status callbacks, the spend report."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from twilio.request_validator import RequestValidator

from shared import (
    AppResources,
    Category,
    Channel,
    CloudEvent,
    DeliveryState,
    DeliveryStatus,
    Dispatch,
    Outgoing,
    Recipient,
    TracesService,
    UserId,
    erased_users,
    is_outage,
    mask_phone,
    per_address,
    publish_many,
)
from shared.events import UserUpdated

from . import logic, repo
from .delivery import SmsDelivery
from .settings import Settings
from .verification import PendingCodes

log = logging.getLogger(__name__)

api = APIRouter()

STATUS_PATH = "/v1/webhooks/twilio/status"
ERASED = "this user was erased; no code is sent or kept for it"


class VerificationRequest(BaseModel):
    phone: str = Field(min_length=2, max_length=32, description="The number to verify, in E.164 form (+14155550100)")
    locale: str = Field(default="en", max_length=16, description="Language of the SMS")


class VerificationSent(BaseModel):
    status: str = "sent"
    phone: str = Field(description="The number the code went to, masked")
    expires_in: int = Field(description="Seconds the code stays valid")
    resend_after: int = Field(description="Seconds before another code may be requested")


class VerificationCheck(BaseModel):
    code: str = Field(min_length=1, max_length=16)
    phone: str | None = Field(default=None, max_length=32, description="Optional: the number the code was sent to")


class Verified(BaseModel):
    verified: bool = True
    phone: str
    phone_verified_at: datetime


def _parts(res: Any) -> tuple[Settings, SmsDelivery, PendingCodes]:
    return res.settings, res.extra["delivery"], res.extra["codes"]


def _refuse(status_code: int, detail: str, *, retry_after: float | None = None, **extra: Any) -> JSONResponse:
    headers = {}
    body: dict[str, Any] = {"detail": detail, **extra}
    if retry_after is not None:
        seconds = logic.retry_after_seconds(retry_after)
        headers["Retry-After"] = str(seconds)
        body["retry_after"] = seconds
    return JSONResponse(body, status_code=status_code, headers=headers)


def _number(raw: str | None, settings: Settings) -> logic.Number:
    try:
        number = logic.parse_number(raw)
    except logic.InvalidNumber as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"phone: {exc}") from None
    if not logic.country_allowed(number, settings.sms_allowed_countries):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"phone: SMS to country {number.country or 'unknown'} is not available")
    if not logic.kind_allowed(number, settings.sms_allowed_costly_types):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"phone: SMS to {number.kind.replace('_', ' ')} numbers is not available")
    return number


@api.post(
    "/v1/verifications",
    status_code=status.HTTP_202_ACCEPTED,
    tags=["verification"],
    summary="Send a 6-digit code to a phone number of the authenticated user",
    responses={
        410: {"description": "The user was erased: no code is sent or kept"},
        422: {"description": "Not a valid E.164 number, or a country SMS does not go to"},
        429: {"description": "Too many codes requested; Retry-After says how long to wait"},
        503: {"description": "The SMS provider did not take the code; nothing was sent"},
    },
    dependencies=[Depends(per_address("verification"))],
)
async def start_verification(body: VerificationRequest, user_id: UserId, res: AppResources) -> Any:
    settings, delivery, codes = _parts(res)
    number = _number(body.phone, settings)
    try:
        async with res.pool.acquire() as conn:
            erased = await erased_users(conn=conn, schema="sms", user_ids=[user_id])
    except Exception as exc:
        if not is_outage(exc):
            raise
        return _refuse(status.HTTP_503_SERVICE_UNAVAILABLE, "the service cannot check this account now; no code was sent, try again shortly")
    if erased:
        return _refuse(status.HTTP_410_GONE, ERASED)
    locked = await codes.locked_for(phone=number.e164, limit=settings.verify_lock_failures)
    if locked:
        return _refuse(status.HTTP_429_TOO_MANY_REQUESTS, "too many wrong codes for this number; it is locked for now", retry_after=locked)
    limiter = delivery.limiter(res)
    grant = await limiter.acquire(
        *logic.verification_limits(
            prefix=settings.sms_redis_prefix, user_id=user_id, phone=number.e164, max_requests=settings.verify_max_requests,
            window=settings.verify_window_seconds, cooldown=settings.verify_cooldown_seconds,
        )
    )
    if not grant:
        what = "wait before asking for another code" if grant.refused and ":cooldown:" in grant.refused.key else "too many codes requested"
        return _refuse(status.HTTP_429_TOO_MANY_REQUESTS, what, retry_after=grant.retry_after)
    refusal = await _send_code(res, user_id=user_id, number=number, locale=body.locale)
    if refusal is not None:
        await limiter.release(grant)
        return refusal
    log.info("verification code sent to %s for user %s", mask_phone(number.e164), user_id)
    return VerificationSent(phone=mask_phone(number.e164), expires_in=settings.verify_code_ttl_seconds, resend_after=settings.verify_cooldown_seconds)


async def _send_code(res: Any, *, user_id: str, number: logic.Number, locale: str) -> JSONResponse | None:
    """Store a new code and send it as a critical SMS, now; a refusal to answer with, or None when it was sent."""
    settings, delivery, codes = _parts(res)
    code = logic.new_code()
    digest = await codes.store(user_id=user_id, phone=number.e164, code=code)
    dispatch = Dispatch(
        notification_id=uuid.uuid4(), event_id=f"verification-{uuid.uuid4().hex}", event_source="herald/sms",
        event_type="phone.verification", category=Category.security, critical=True, channel=Channel.sms,
        recipient=Recipient(user_id=user_id, phone=number.e164), locale=locale, template="verification_code",
        data={"code": code, "minutes": max(1, settings.verify_code_ttl_seconds // 60)},
    )
    try:
        outcome = await delivery.send_now(dispatch, res)
    except Exception:
        log.exception("verification SMS to %s: outcome unknown", mask_phone(number.e164))
        outcome = None
    if outcome is not None and outcome.status is DeliveryState.sent:
        return None
    await codes.forget(user_id=user_id, digest=digest)
    reason = outcome.reason if outcome else "error"
    log.warning("verification code for user %s to %s not sent: %s", user_id, mask_phone(number.e164), reason)
    if reason == "user_deleted":  # erased while the code was being sent: the claim saw it, nothing went out
        return _refuse(status.HTTP_410_GONE, ERASED)
    if reason in ("daily_cap", "daily_cap_critical"):
        return _refuse(status.HTTP_429_TOO_MANY_REQUESTS, "the daily SMS limit for this account is reached", retry_after=logic.DAY)
    if reason in logic.PERMANENT_CODES.values():
        return _refuse(status.HTTP_422_UNPROCESSABLE_CONTENT, f"the SMS provider refused this number ({reason})")
    return _refuse(status.HTTP_503_SERVICE_UNAVAILABLE, "the SMS provider did not take the code; no code was sent, try again shortly", reason=reason)


@api.post(
    "/v1/verifications/check",
    tags=["verification"],
    summary="Check a code; a correct one marks the number verified",
    responses={
        400: {"description": "Wrong code (the answer says how many tries are left)"},
        410: {"description": "No code pending: never sent, expired, used, or invalidated by too many wrong tries"},
        429: {"description": "Too many wrong codes for this number across codes: locked; Retry-After says how long"},
        503: {"description": "The verified number could not be announced; try again"},
    },
    dependencies=[Depends(per_address("verification"))],
)
async def check_verification(body: VerificationCheck, user_id: UserId, res: AppResources) -> Any:
    settings, _, codes = _parts(res)
    attempt = await codes.attempt(user_id=user_id)
    gone = "no code pending: it expired, was used, or was invalidated; request a new one"
    if attempt is None or attempt.tries > settings.verify_max_tries:
        return _refuse(status.HTTP_410_GONE, gone)
    locked = await codes.locked_for(phone=attempt.phone, limit=settings.verify_lock_failures)
    if locked:
        await codes.forget(user_id=user_id, digest=attempt.stored_hash)
        return _refuse(status.HTTP_429_TOO_MANY_REQUESTS, "too many wrong codes for this number; it is locked for now", retry_after=locked)
    same_number = body.phone is None or _same(body.phone, attempt.phone)
    if same_number and codes.matches(attempt, user_id=user_id, code=body.code.strip()):
        verified_at = datetime.now(UTC)
        try:
            await _announce_verified(res, user_id=user_id, phone=attempt.phone, verified_at=verified_at)
        except Exception:
            log.exception("could not announce the verified number of user %s", user_id)
            return _refuse(status.HTTP_503_SERVICE_UNAVAILABLE, "the number could not be recorded as verified; try again")
        await codes.forget(user_id=user_id, digest=attempt.stored_hash)
        await codes.clear_failures(phone=attempt.phone)
        log.info("user %s verified %s", user_id, mask_phone(attempt.phone))
        return Verified(phone=attempt.phone, phone_verified_at=verified_at)
    failures = await codes.failed(phone=attempt.phone, window=settings.verify_lock_seconds)
    if failures >= settings.verify_lock_failures:
        await codes.forget(user_id=user_id, digest=attempt.stored_hash)
        log.warning("verification of %s locked after %d wrong codes (user %s)", mask_phone(attempt.phone), failures, user_id)
        return _refuse(status.HTTP_429_TOO_MANY_REQUESTS, "wrong code; too many for this number, it is locked for now", retry_after=settings.verify_lock_seconds)
    left = settings.verify_max_tries - attempt.tries
    if left <= 0:
        await codes.forget(user_id=user_id, digest=attempt.stored_hash)
        return _refuse(status.HTTP_400_BAD_REQUEST, "wrong code; it is now invalid, request a new one", tries_left=0)
    return _refuse(status.HTTP_400_BAD_REQUEST, "wrong code", tries_left=left)


async def _announce_verified(res: Any, *, user_id: str, phone: str, verified_at: datetime) -> None:
    """Publish ``user.updated`` with the verified number (the router keeps its recipients directory from it)."""
    data = UserUpdated(user_id=user_id, phone=phone, phone_verified_at=verified_at)
    event = CloudEvent(
        specversion="1.0", id=uuid.uuid4().hex, source="herald/sms", type="user.updated", time=verified_at,
        subject=user_id, data=data.model_dump(mode="json", exclude_none=True),
    )
    await publish_many(res.broker, [Outgoing(res.settings.domain_topic("user.updated"), event, key=user_id)])


def _same(given: str, stored: str) -> bool:
    try:
        return logic.parse_number(given).e164 == stored
    except logic.InvalidNumber:
        return False


@api.post(
    STATUS_PATH,
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["webhooks"],
    summary="Twilio message status callback (verified X-Twilio-Signature)",
    responses={403: {"description": "Missing or wrong X-Twilio-Signature"}, 400: {"description": "Not a status callback"}},
    dependencies=[Depends(per_address("webhooks"))],
)
async def twilio_status(request: Request, res: AppResources) -> Response:
    settings: Settings = res.settings  # type: ignore[assignment]
    params = dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))
    signature = request.headers.get("x-twilio-signature", "")
    url = settings.public_url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    token = settings.twilio_auth_token.get_secret_value()
    if not token or not signature or not RequestValidator(token).validate(url, params, signature):
        log.warning("refused a Twilio status callback with a %s signature", "wrong" if signature else "missing")
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="missing or invalid X-Twilio-Signature")
    sid, message_status = params.get("MessageSid") or params.get("SmsSid"), params.get("MessageStatus") or params.get("SmsStatus")
    if not sid or not message_status:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="MessageSid and MessageStatus are required")
    state = logic.receipt_state(message_status)
    async with res.pool.acquire() as conn:
        if state is None:
            await repo.note_progress(conn=conn, provider_message_id=sid, provider_status=message_status.lower())
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        error_code = params.get("ErrorCode") or None
        row = await repo.apply_receipt(conn=conn, provider_message_id=sid, state=state, provider_status=message_status.lower(), error_code=error_code)
    if row is None:
        log.info("receipt %s for message %s already recorded or unknown", message_status, sid)
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    reason = logic.receipt_reason(message_status, error_code)
    update = DeliveryStatus(
        notification_id=row["notification_id"], event_id=row["event_id"], event_type=row["event_type"], channel=Channel.sms,
        user_id=row["user_id"], status=state, reason=reason, attempt=row["attempts"], provider_message_id=sid, critical=row["critical"],
    )
    res.metrics.deliveries.labels("sms", row["event_type"], state.value, reason or "").inc()
    await publish_many(res.broker, [Outgoing(settings.status_topic, update, key=str(row["notification_id"]))])
    log.info("message %s %s", sid, message_status)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@api.get("/v1/sms/spend", tags=["operations"], summary="Segments and estimated spend by event type, category and country")
async def sms_spend(_: TracesService, res: AppResources, hours: Annotated[int, Query(ge=1, le=24 * 366)] = 24) -> list[dict[str, Any]]:
    async with res.pool.acquire() as conn:
        rows = await repo.spend(conn=conn, since=datetime.now(UTC) - timedelta(hours=hours))
    return [{**r, "price_usd": float(r["price_usd"] or 0), "segments": int(r["segments"] or 0)} for r in rows]
