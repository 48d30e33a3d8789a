"""Kafka subscribers of the push service: each dispatch goes to every subscription of its recipient, each once.

The shared pipeline claims the dispatch (ledger target ``''``); ``deliver`` then
claims each subscription's delivery (ledger target = the endpoint's hash) before
sending to it, so a retried or redelivered dispatch re-sends only to the
subscriptions that have not had it yet. Dispatch-level outcome (``logic.verdict``):
any transient failure → retry the dispatch; else sent if at least one
subscription has it; else failed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faststream.kafka import KafkaRouter

from shared import (
    Channel,
    DeliveryState,
    Dispatch,
    Erasure,
    Ledger,
    MessageTemplates,
    Misconfigured,
    PermanentError,
    Resources,
    SenderPipeline,
    Suppressed,
    TemplateError,
    TransientError,
    erasure_router,
    ledger_export,
    local_times,
    patiently,
    rows,
)

from . import logic, repo
from .logic import EndpointRefused, Outcome, TargetResult
from .providers import PushConnectionError, WebPushClient
from .settings import Settings

log = logging.getLogger(__name__)

_LEDGER_STATE = {
    Outcome.sent: DeliveryState.sent,
    Outcome.removed: DeliveryState.failed,
    Outcome.failed: DeliveryState.failed,
    Outcome.retry: DeliveryState.retrying,
}


class PushDelivery:
    """``deliver`` for the shared pipeline, plus the per-subscription steps it takes."""

    def __init__(self, settings: Settings, templates: MessageTemplates, ledger: Ledger) -> None:
        self.settings = settings
        self.templates = templates
        self.ledger = ledger

    async def __call__(self, dispatch: Dispatch, res: Resources) -> str:
        payload = self.payload(dispatch, res)
        async with res.pool.acquire() as conn:
            subscriptions = await repo.list_for_user(conn=conn, user_id=dispatch.recipient.user_id)
        if not subscriptions:
            raise Suppressed("no_subscription")
        results = await asyncio.gather(*(self.deliver_to(sub, dispatch, payload, res) for sub in subscriptions))
        outcome = logic.verdict(results)
        if any(r.reason == logic.VAPID_REJECTED for r in results):
            raise Misconfigured(logic.VAPID_REJECTED, "the push service refused Herald's VAPID signature; check HERALD_VAPID_PRIVATE_KEY and HERALD_VAPID_SUBJECT")
        if outcome.state == "retry":
            raise TransientError(outcome.reason, outcome.summary, retry_after=outcome.retry_after)
        if outcome.state == "failed":
            raise PermanentError(outcome.reason, outcome.summary)
        return outcome.summary

    def payload(self, dispatch: Dispatch, res: Resources) -> bytes:
        """The push's JSON: rendered title and body, absolute URL, id and category, shortened to the limit."""
        try:
            text = self.templates.render(dispatch.template, dispatch.locale, local_times(dispatch.data, dispatch.timezone))
        except TemplateError as exc:
            raise PermanentError("template_error", str(exc)) from None
        try:
            payload, shortened = logic.build_payload(
                title=text["title"],
                body=text["body"],
                url=logic.absolute_url(dispatch.url, self.settings.frontend_url),
                notification_id=dispatch.notification_id,
                category=dispatch.category.value,
                limit=self.settings.push_max_payload_bytes,
            )
        except (KeyError, ValueError) as exc:
            raise PermanentError("payload_error", str(exc)) from None
        if shortened:
            res.extra["push_metrics"].shortened.inc()
            log.warning("push payload of %s shortened to %d bytes", dispatch.notification_id, len(payload))
        return payload

    async def deliver_to(self, sub: dict[str, Any], dispatch: Dispatch, payload: bytes, res: Resources) -> TargetResult:
        """Claim, send and record one subscription's delivery."""
        target = sub["endpoint_hash"]
        async with res.pool.acquire() as conn:
            claimed = await self.ledger.claim(conn=conn, dispatch=dispatch, target=target)
            if claimed is None:
                return await self.earlier(conn, dispatch, target)
            if claimed.erased:  # erased since the dispatch was claimed: this browser gets nothing
                await self.ledger.finish(conn=conn, notification_id=dispatch.notification_id, target=target, status=DeliveryState.suppressed, error="user_deleted")
                raise Suppressed("user_deleted", "the user was erased")
        result = await self.send(sub, dispatch, payload, res)
        # Once the push service has answered, recording it must not fail the attempt (and re-send the push).
        await patiently(
            lambda: self.record(sub, dispatch, result, res), patience=self.settings.ledger_write_patience_seconds,
            what=f"push result of {dispatch.notification_id}", problems=res.problems, key="push-ledger",
        )
        return result

    async def earlier(self, conn: Any, dispatch: Dispatch, target: str) -> TargetResult:
        """The result of an earlier attempt at a delivery that cannot be claimed now."""
        status, error = await repo.target_status(conn=conn, notification_id=dispatch.notification_id, target=target) or ("", None)
        if status == DeliveryState.sent:
            return TargetResult(Outcome.already)
        if status == DeliveryState.failed:
            return TargetResult(Outcome.failed, error or "failed_earlier")
        return TargetResult(Outcome.retry, "in_flight")  # claimed by another consumer within its lease

    async def send(self, sub: dict[str, Any], dispatch: Dispatch, payload: bytes, res: Resources) -> TargetResult:
        """Check the endpoint again (DNS can change), push, and say what the answer means."""
        client: WebPushClient = res.extra["push"]
        s = self.settings
        try:
            endpoint = logic.check_endpoint(sub["endpoint"], allowed_hosts=s.push_allowed_hosts, dev_hosts=s.push_dev_hosts)
            logic.check_addresses(endpoint, [] if endpoint.dev else await client.addresses(endpoint))
            response = await client.send(
                endpoint=sub["endpoint"],
                p256dh=sub["p256dh"],
                auth=sub["auth"],
                payload=payload,
                ttl=s.push_ttl_seconds,
                urgency=logic.urgency(critical=dispatch.critical, category=dispatch.category.value),
                topic=logic.topic(dispatch.notification_id),
            )
        except EndpointRefused as exc:
            log.warning("push endpoint of subscription %s refused at send time: %s", sub["id"], exc)
            return TargetResult(Outcome.failed, "endpoint_refused")
        except PushConnectionError as exc:
            return TargetResult(Outcome.retry, exc.reason)
        return logic.result_of(response.status, retry_after=response.retry_after, location=response.location)

    async def record(self, sub: dict[str, Any], dispatch: Dispatch, result: TargetResult, res: Resources) -> None:
        """Ledger row, subscription health (remove when gone or failing too often) and metrics."""
        metrics = res.extra["push_metrics"]
        metrics.deliveries.labels(result.outcome.value, result.reason).inc()
        async with res.pool.acquire() as conn:
            await self.ledger.finish(
                conn=conn,
                notification_id=dispatch.notification_id,
                target=sub["endpoint_hash"],
                status=_LEDGER_STATE[result.outcome],
                provider_message_id=result.message_id,
                error=result.reason or None,
            )
            if result.outcome is Outcome.sent:
                await repo.record_success(conn=conn, id=sub["id"])
            elif result.outcome is Outcome.removed:
                if await repo.remove(conn=conn, id=sub["id"]):
                    metrics.removed.labels("gone").inc()
                    log.info("removed push subscription %s of user %s: %s", sub["id"], sub["user_id"], result.reason)
            elif result.reason not in ("http_429", logic.VAPID_REJECTED):  # Herald's rate or keys, not the subscription's fault
                failures = await repo.record_failure(conn=conn, id=sub["id"], error=result.reason)
                if failures is not None and failures >= self.settings.push_max_failures and await repo.remove(conn=conn, id=sub["id"]):
                    metrics.removed.labels("too_many_failures").inc()
                    log.warning("dropped push subscription %s after %d failures in a row", sub["id"], failures)


async def export(user_id: str, res: Resources) -> dict[str, Any]:
    """What the push service holds about a user: subscriptions (without the browser's auth secret) and ledger rows."""
    async with res.pool.acquire() as conn:
        found = await ledger_export(conn, "push", user_id)
        found["subscriptions"] = await rows(
            conn,
            "SELECT id, endpoint, user_agent, created_at, updated_at, last_success_at, last_failure_at, failures"
            " FROM push.subscriptions WHERE user_id = $1 ORDER BY created_at, id",
            user_id,
        )
    return found


def build_routers(settings: Settings, templates: MessageTemplates) -> list[KafkaRouter]:
    """The shared sender pipeline driving ``PushDelivery``."""
    ledger = Ledger("push")
    pipeline = SenderPipeline(
        settings,
        Channel.push,
        PushDelivery(settings, templates, ledger),
        ledger=ledger,
        max_attempts=settings.push_max_attempts,
        retry_base_seconds=settings.push_retry_base_seconds,
        retry_cap_seconds=settings.push_retry_cap_seconds,
    )

    async def erase(erasure: Erasure, res: Resources) -> dict[str, int]:
        """The push service's part of an erasure: the user's subscriptions (endpoints, keys, user agents) go;
        the ledger keeps its rows (by endpoint hash) without error texts."""
        async with res.pool.acquire() as conn, conn.transaction():
            await repo.lock_user(conn=conn, user_id=erasure.user_id)  # a subscribe under way commits first, and is removed
            subscriptions = await repo.erase_user(conn=conn, user_id=erasure.user_id)
            scrubbed = await ledger.erase(conn=conn, user_id=erasure.user_id)
        return {"subscriptions": subscriptions, "ledger_errors": scrubbed}

    return [*pipeline.routers(), erasure_router(settings, "push", erase, tombstones="push")]
