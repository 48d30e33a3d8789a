from pathlib import Path

from pydantic import Field, field_validator

from shared import CommaList, HeraldSettings, split_commas

from .catalogue import DEFAULT_PATH


class Settings(HeraldSettings):
    service_name: str = "router"
    port: int = 8102
    kafka_max_batch: int = 2000  # events per consumed batch: the router amortises its lookups and writes over it
    catalogue_path: Path = DEFAULT_PATH
    profile_cache_ttl_seconds: int = Field(default=3600, ge=1)  # every change invalidates at once; this bounds memory
    route_chunk: int = Field(default=250, ge=1)  # events decided, published and traced together
    route_pipeline_depth: int = Field(default=4, ge=1)  # chunks of one batch being published and traced at once
    broadcast_page: int = Field(default=1000, ge=1)  # users routed per step of a broadcast
    broadcast_shards: int = Field(default=4, ge=1)  # parts a broadcast is split into, each walked by whichever instance takes it
    broadcast_walkers: int = Field(default=2, ge=1)  # shards one router instance walks at once
    broadcast_lease_seconds: float = Field(default=60, gt=0)  # a shard whose walker stopped renewing is taken over after this
    broadcast_poll_seconds: float = Field(default=5, gt=0)  # how often an idle walker looks for shards another instance wrote
    dispatch_linger_ms: int = Field(default=5, ge=0)  # how long the dispatch producer waits to fill a batch
    dispatch_max_batch_bytes: int = Field(default=512 * 1024, ge=16 * 1024)  # below the broker's message.max.bytes
    # where GET /v1/recipients/{user_id}/export gathers the other services' parts: name=base URL each (docs/data.md)
    export_services: CommaList = Field(
        default=[f"{name}=http://127.0.0.1:{port}" for name, port in (("ingress", 8101), ("email", 8103), ("sms", 8104), ("push", 8105), ("inapp", 8106))]
    )
    export_timeout_seconds: float = Field(default=30, gt=0)
    erasure_services: CommaList = Field(default=["ingress", "router", "email", "sms", "push", "inapp"])  # who must report an erasure done
    _lists = field_validator("erasure_services", "export_services", mode="before")(split_commas)

    @field_validator("export_services")
    @classmethod
    def _named_urls(cls, value: list[str]) -> list[str]:
        for entry in value:
            name, sep, url = entry.partition("=")
            if not sep or not name.strip() or not url.strip().startswith(("http://", "https://")):
                raise ValueError(f"HERALD_EXPORT_SERVICES entry {entry!r} is not of the form name=http(s)://host:port")
        return value

    def export_urls(self) -> dict[str, str]:
        """``export_services`` as {service: base URL}."""
        return {name.strip(): url.strip().rstrip("/") for name, _, url in (e.partition("=") for e in self.export_services)}
    schedule_poll_seconds: float = Field(default=0.5, gt=0)  # the longest a due schedule another instance planned waits to be seen
    schedule_release_batch: int = Field(default=1000, ge=1)  # schedules released per transaction
    schedule_quota_per_source: int = Field(default=100_000, ge=1)  # pending schedules one CloudEvents source may have
    schedule_retention_days: float = Field(default=30, gt=0)  # released, cancelled and expired schedules are deleted this long after
    trace_retention_days: float = Field(default=30, gt=0)  # decision-trace rows older than this are pruned
    broadcast_retention_days: float = Field(default=7, gt=0)  # a finished broadcast's shards are deleted this long after
    trace_page_max: int = Field(default=1000, ge=1)  # most trace items one request returns
