"""One SMS from a dispatch to Twilio: render, check the number, fit the body, take cap slots, send, record.

``SmsDelivery.deliver`` is the ``deliver`` the shared ``SenderPipeline`` drives
for every dispatch on ``notify.sms``; ``send_now`` runs the same path
synchronously for a phone-verification code, without retries.
"""

from __future__ import annotations

import logging

from shared import (
    DeliveryState,
    DeliveryStatus,
    Dispatch,
    Limit,
    MessageTemplates,
    Misconfigured,
    Outgoing,
    PermanentError,
    RateLimiter,
    Resources,
    Suppressed,
    TemplateError,
    TransientError,
    mask_phone,
    parse_retry_after,
    patiently,
    publish_many,
)

from . import logic, repo
from .providers.twilio import ProviderError, TwilioProvider
from .settings import Settings

log = logging.getLogger(__name__)


class SmsDelivery:
    def __init__(self, settings: Settings, templates: MessageTemplates, ledger: repo.SmsLedger) -> None:
        self.settings = settings
        self.templates = templates
        self.ledger = ledger
        self.prices = settings.price_table()

    @staticmethod
    def provider(res: Resources) -> TwilioProvider:
        return res.extra["twilio"]

    @staticmethod
    def limiter(res: Resources) -> RateLimiter:
        return res.extra["limiter"]

    def render(self, dispatch: Dispatch) -> str:
        """The SMS body of ``dispatch``, cut to the configured maximum of segments."""
        data = logic.template_data(dispatch.data, url=dispatch.url, timezone=dispatch.timezone)
        try:
            text = self.templates.render(dispatch.template, dispatch.locale, data)["text"]
        except (TemplateError, KeyError) as exc:
            raise PermanentError("template_error", str(exc)) from None
        body, cut = logic.fit(text, self.settings.sms_max_segments)
        if cut:
            log.warning(
                "SMS body of %s cut from %d to %d characters (at most %d segments)",
                dispatch.template, len(text), len(body), self.settings.sms_max_segments,
                extra={"original_length": len(text), "max_segments": self.settings.sms_max_segments},
            )
        return body

    def destination(self, dispatch: Dispatch) -> logic.Number:
        """The recipient's number, valid and in an allowed country."""
        if not dispatch.recipient.phone:
            raise Suppressed("no_phone", "the recipient has no phone number")
        try:
            number = logic.parse_number(dispatch.recipient.phone)
        except logic.InvalidNumber as exc:
            raise PermanentError("invalid_number", f"{mask_phone(dispatch.recipient.phone)}: {exc}") from None
        if not logic.country_allowed(number, self.settings.sms_allowed_countries):
            raise Suppressed("country_not_allowed", f"destination country {number.country or 'unknown'} is not allowed")
        if not logic.kind_allowed(number, self.settings.sms_allowed_costly_types):
            raise Suppressed("number_type_not_allowed", f"{number.kind} numbers cost more than an SMS should; HERALD_SMS_ALLOWED_COSTLY_TYPES allows them")
        return number

    async def deliver(self, dispatch: Dispatch, res: Resources) -> str:
        """Send one dispatch; returns Twilio's message sid or raises Transient/Permanent/Suppressed."""
        s = self.settings
        number = self.destination(dispatch)
        body = self.render(dispatch)
        segments = logic.count_segments(body)
        limiter = self.limiter(res)
        cap = await limiter.acquire(
            *logic.cap_limits(
                prefix=s.sms_redis_prefix, user_id=dispatch.recipient.user_id, critical=dispatch.critical,
                daily_cap=s.sms_daily_cap, critical_cap=s.sms_daily_cap_critical,
            )
        )
        if not cap:
            assert cap.refused is not None
            raise Suppressed(logic.cap_reason(cap.refused), f"cap reached; a slot frees in {cap.retry_after:.0f}s")
        try:
            throttle = await limiter.wait(Limit(f"{s.sms_redis_prefix}mps:twilio", s.sms_provider_mps, 1.0), timeout=s.sms_throttle_wait_seconds)
            if not throttle:
                raise TransientError("provider_throttled", "no provider slot free", retry_after=throttle.retry_after)
            accepted = await self.provider(res).send(to=number.e164, body=body)
        except ProviderError as exc:
            await limiter.release(cap)
            failure = logic.classify_provider_error(exc.status, exc.code)
            detail = f"twilio {exc.status or '-'} {exc.code or '-'}: {logic.mask_numbers(str(exc))}"
            log.warning("Twilio refused SMS to %s: %s", mask_phone(number.e164), detail)
            if failure.reason == "provider_auth":
                raise Misconfigured(failure.reason, detail) from None
            if failure.transient:
                raise TransientError(failure.reason, detail, retry_after=parse_retry_after(exc.retry_after)) from None
            raise PermanentError(failure.reason, detail) from None
        except BaseException:
            await limiter.release(cap)
            raise
        count = accepted.num_segments or segments.count
        cost = logic.price(count, number.country, self.prices, s.sms_price_default_usd)

        async def record() -> None:
            async with res.pool.acquire() as conn:
                await repo.record_accepted(
                    conn=conn, notification_id=dispatch.notification_id, provider_message_id=accepted.sid,
                    category=dispatch.category.value, critical=dispatch.critical, country=number.country,
                    encoding=segments.encoding, segments=count, price_usd=cost,
                )

        # Twilio has it: whatever PostgreSQL does now must not make this attempt fail (and the SMS go out again).
        try:
            await patiently(record, patience=s.ledger_write_patience_seconds, what=f"SMS accounting of {dispatch.notification_id}", problems=res.problems, key="sms-ledger")
        except Exception as exc:
            log.error("SMS %s was sent but its segments and price could not be recorded: %s", accepted.sid, exc)
        labels = (dispatch.event_type, dispatch.category.value, number.country)
        res.metrics.sms_segments.labels(*labels).inc(count)
        res.metrics.sms_spend.labels(*labels).inc(cost)
        log.debug("SMS %s to %s: %d %s segment(s), ~$%.4f", accepted.sid, mask_phone(number.e164), count, segments.encoding, cost)
        return accepted.sid

    async def send_now(self, dispatch: Dispatch, res: Resources) -> DeliveryStatus:
        """Deliver ``dispatch`` once, now, through the ledger (no retry); publish and return its status."""
        async with res.pool.acquire() as conn:
            claimed = await self.ledger.claim(conn=conn, dispatch=dispatch)
        if claimed is None:
            state, fields = DeliveryState.duplicate, {"reason": "already_processed"}
        elif claimed.erased:  # the user was erased: no SMS, and nothing more is kept
            state, fields = DeliveryState.suppressed, {"reason": "user_deleted", "error": "the user was erased"}
            async with res.pool.acquire() as conn:
                await self.ledger.finish(conn=conn, notification_id=dispatch.notification_id, status=state, error=fields["reason"])
        else:
            try:
                sid = await self.deliver(dispatch, res)
                state, fields = DeliveryState.sent, {"provider_message_id": sid}
            except Suppressed as exc:
                state, fields = DeliveryState.suppressed, {"reason": exc.reason, "error": exc.detail}
            except (PermanentError, TransientError) as exc:
                state, fields = DeliveryState.failed, {"reason": exc.reason, "error": exc.detail}
            async with res.pool.acquire() as conn:
                await self.ledger.finish(
                    conn=conn, notification_id=dispatch.notification_id, status=state,
                    provider_message_id=fields.get("provider_message_id"), error=fields.get("error") or fields.get("reason"),
                )
        fields.pop("error", None)
        status = DeliveryStatus.of(dispatch, state, **fields)
        res.metrics.deliveries.labels("sms", dispatch.event_type, state.value, status.reason or "").inc()
        await publish_many(res.broker, [Outgoing(self.settings.status_topic, status, key=str(dispatch.notification_id))])
        return status
