"""The few domain metrics every service shares; per-handler metrics come from FastStream's middleware."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    """Named counters and histograms on one registry (one registry per app)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.events = Counter(
            "herald_events_total",
            "Domain events consumed, by type and outcome (routed, skipped, duplicate, dead_lettered)",
            ["type", "outcome"],
            registry=registry,
        )
        self.dispatches = Counter(
            "herald_dispatches_total",
            "Dispatches the router published or suppressed, by channel, lane and outcome",
            ["channel", "lane", "outcome", "reason"],
            registry=registry,
        )
        self.deliveries = Counter(
            "herald_deliveries_total",
            "Sender outcomes, by channel, event type, status and reason",
            ["channel", "type", "status", "reason"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            "herald_dead_lettered_total",
            "Messages written to the dead-letter topic, by stage and reason",
            ["stage", "reason"],
            registry=registry,
        )
        self.erasures = Counter(
            "herald_erasures_total",
            "User erasures this service applied (erased) or could not apply (dead_lettered)",
            ["outcome"],
            registry=registry,
        )
        self.schedules = Counter(
            "herald_schedules_total",
            "Scheduled sends and reminders by outcome: scheduled_sendat, scheduled_reminder, released, expired, cancelled, refused",
            ["outcome"],
            registry=registry,
        )
        self.erased = Counter(
            "herald_erased_total",
            "Rows and Redis keys erasures removed or cleared, by store",
            ["store"],
            registry=registry,
        )
        self.purged = Counter(
            "herald_retention_purged_total",
            "Rows deleted because they were past their store's retention (docs/data.md), by store",
            ["store"],
            registry=registry,
        )
        self.provider_latency = Histogram(
            "herald_provider_latency_seconds",
            "Time a provider took to accept (or refuse) a message",
            ["channel", "provider"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.end_to_end = Histogram(
            "herald_end_to_end_latency_seconds",
            "From the domain event's time to the channel's acceptance",
            ["channel", "lane"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.hops = Histogram(
            "herald_hop_latency_seconds",
            "Where a notification's time goes, hop by hop: route (event time to the router's decision), "
            "queue (decision to a sender picking the dispatch up; first attempts only), claim (pick-up to the "
            "provider call: ledger claim and checks), record (provider acceptance to the ledger saying sent), "
            "publish (the batch's outcomes written to Kafka). The provider call itself: herald_provider_latency_seconds.",
            ["hop", "channel"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.sms_segments = Counter(
            "herald_sms_segments_total",
            "SMS segments handed to the provider, by event type, category and destination country",
            ["type", "category", "country"],
            registry=registry,
        )
        self.sms_spend = Counter(
            "herald_sms_spend_usd_total",
            "Estimated SMS spend in US dollars, by event type, category and destination country",
            ["type", "category", "country"],
            registry=registry,
        )
        self.inbox_operations = Counter(
            "herald_inbox_operations_total",
            "In-app inbox changes: stored, read, unread, deleted",
            ["operation"],
            registry=registry,
        )
        self.sse_streams = Gauge(
            "herald_sse_streams_open",
            "Server-sent-event streams open on this instance",
            registry=registry,
        )
        self.sse_fanout = Histogram(
            "herald_sse_fanout_latency_seconds",
            "From storing an in-app notification to writing it to an open stream",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.channel_state = Gauge(
            "herald_channel_state",
            "1 for the state each sender channel's circuit breaker is in (closed, open, half_open, misconfigured, held)",
            ["channel", "state"],
            registry=registry,
        )
        self.breaker_transitions = Counter(
            "herald_breaker_transitions_total",
            "Circuit breaker changes, by channel and the state entered",
            ["channel", "state"],
            registry=registry,
        )
        self.audit_actions = Counter(
            "herald_audit_actions_total",
            "Administrative actions, by action and the service key (or operator) that took them",
            ["action", "actor"],
            registry=registry,
        )
        self.dependency_up = Gauge(
            "herald_dependency_up",
            "1 while a dependency (kafka, postgres, redis) answers and a handler is not waiting out an outage (<name>-delivery…), else 0",
            ["dependency"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "herald_consumer_lag",
            "Messages not yet consumed, by consumer group, topic and partition",
            ["group", "topic", "partition"],
            registry=registry,
        )
