import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from shared import Category, Channel, Dispatch, Recipient

from ..support import produce
from .promql import all_queries
from .traffic import post_events, traffic, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_prometheus_scrapes_every_service_and_sees_the_traffic_move(platform):
    wait_for(lambda: len(platform.query('up{job="herald"} == 1')) == 6, what="all six services scraped and up")
    services = {r["metric"]["service"] for r in platform.query('up{job="herald"}')}
    assert services == {"ingress", "router", "email", "sms", "push", "inapp"}

    def by_lane() -> dict[str, float]:
        return {r["metric"]["lane"]: float(r["value"][1]) for r in platform.query('sum by (lane) (herald_end_to_end_latency_seconds_count{channel="inapp"})')}

    sent = 'sum(herald_deliveries_total{channel="inapp", status="sent", type!="user.created"})'
    routed = 'sum(herald_events_total{outcome="routed", type!="user.created"})'
    start_sent, start_routed = platform.value(sent), platform.value(routed)
    post_events(platform, traffic(platform, 3))
    # Each service is scraped on its own schedule: wait until both sides' counts have moved.
    wait_for(
        lambda: platform.value(sent) >= start_sent + 9 and platform.value(routed) >= start_routed + 6,
        what="9 in-app deliveries and 6 routed events counted in Prometheus",
    )
    first_sent, first_routed, first_lanes = platform.value(sent), platform.value(routed), by_lane()

    post_events(platform, traffic(platform, 2))
    wait_for(lambda: platform.value(sent) >= first_sent + 6, what="the in-app delivery count to move")
    wait_for(lambda: platform.value(routed) >= first_routed + 4, what="the routed event count to move")

    # two password changes (critical lane); two bookings for two people and four welcomes (normal lane)
    def lanes_moved() -> bool:
        lanes = by_lane()
        return lanes.get("critical", 0) >= first_lanes.get("critical", 0) + 2 and lanes.get("normal", 0) >= first_lanes.get("normal", 0) + 8

    wait_for(lanes_moved, what="end-to-end latency observed in both lanes")
    # Where the time went, hop by hop, from the router's decision to the statuses written.
    hops = {r["metric"]["hop"] for r in platform.query('sum by (hop) (herald_hop_latency_seconds_count{channel="inapp"}) > 0')}
    assert hops == {"route", "queue", "claim", "record", "publish"}
    dispatched = {(r["metric"]["channel"], r["metric"]["lane"]) for r in platform.query('sum by (channel, lane) (herald_dispatches_total{outcome="routed"})')}
    assert {("inapp", "critical"), ("inapp", "normal")} <= dispatched
    # Over the last minutes, not the last scrape alone: on a busy machine one scrape of a service may time out.
    processed = {r["metric"]["service"] for r in platform.query('sum by (service) (max_over_time(faststream_received_processed_messages_total{status="acked"}[5m])) > 0')}
    assert {"router", "inapp"} <= processed
    published = {r["metric"]["service"] for r in platform.query('sum by (service) (max_over_time(faststream_published_messages_total{status="success"}[5m])) > 0')}
    # The router writes dispatches with its own batching producer (herald_dispatches_total, above),
    # so FastStream's publish counter moves for it only when it publishes something else.
    assert {"ingress", "inapp"} <= published
    assert platform.value('histogram_quantile(0.99, sum by (le) (rate(herald_end_to_end_latency_seconds_bucket{channel="inapp"}[1m])))') > 0


def test_consumer_lag_of_each_group_reaches_prometheus_rises_and_drains(platform):
    settings = platform.settings
    groups = {settings.group_id(name) for name in ("router", "inapp", "inapp-critical", "inapp-retry")}

    def reported():
        return {r["metric"]["group"] for r in platform.query("max by (group) (herald_consumer_lag)")}

    wait_for(lambda: groups <= reported(), what=f"lag series of {sorted(groups)}")
    partitions = platform.query(f'herald_consumer_lag{{group="{settings.group_id("inapp")}"}}')
    assert {r["metric"]["topic"] for r in partitions} == {settings.notify_topic("inapp")}
    assert len(partitions) == settings.kafka_partitions

    # A retry not due for a while pauses its partition, so its offset stays uncommitted until then.
    user = f"u-{uuid.uuid4().hex[:8]}"
    held = Dispatch(
        notification_id=uuid.uuid4(), event_id=uuid.uuid4().hex, event_source="tests", event_type="auth.password_changed",
        category=Category.security, critical=True, channel=Channel.inapp, recipient=Recipient(user_id=user),
        template="password_changed", data={"user_id": user}, attempt=2, not_before=datetime.now(UTC) + timedelta(seconds=12),
    )
    asyncio.run(produce(settings.kafka_bootstrap, settings.retry_topic("inapp", critical=True, tier=settings.retry_tiers_seconds[0]), held.model_dump_json().encode(), key=user.encode()))
    retry_lag = f'sum(max by (group, topic, partition) (herald_consumer_lag{{group="{settings.group_id("inapp-retry-critical")}"}}))'
    wait_for(lambda: platform.query(f"{retry_lag} == 1"), what="the retry group's lag to rise to 1")
    wait_for(lambda: platform.query(f"{retry_lag} == 0"), what="the retry group's lag to drain once the retry is done")
    assert platform.query(f'max_over_time(({retry_lag})[2m:1s]) == 1')


def test_prometheus_loads_the_shipped_rules_and_evaluates_every_query(platform):
    def rules():
        body = httpx.get(f"{platform.prometheus_url}/api/v1/rules", timeout=10).json()
        found = [rule for group in body["data"]["groups"] for rule in group["rules"]]
        return found if found and all(rule.get("lastEvaluation", "").startswith("20") and rule["health"] == "ok" for rule in found) else None

    evaluated = wait_for(rules, what="every rule evaluated once")
    assert {r["name"] for r in evaluated} >= {
        "HeraldServiceDown",
        "HeraldConsumerLagGrowing",
        "HeraldDeadLetters",
        "HeraldProviderErrorRatioHigh",
        "HeraldEndToEndLatencyHigh",
        "HeraldSmsSpendOverBudget",
        "channel:herald_scaling_lag:sum",
    }
    # The series KEDA scales on exists for the running sender (a number, paused or not).
    wait_for(lambda: platform.query('channel:herald_scaling_lag:sum{channel="inapp"} >= 0'), what="the in-app scaling series")
    for where, expr in all_queries():
        if expr.startswith("label_values("):
            continue
        concrete = expr.replace("$__rate_interval", "1m").replace("$channel", ".*")
        platform.query(concrete)  # raises with Prometheus' error when the expression does not parse
