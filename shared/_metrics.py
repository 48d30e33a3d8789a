"""The few domain metrics every service shares; per-handler metrics come from FastStream's middleware."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

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
