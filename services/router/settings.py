from pathlib import Path

from pydantic import Field

from shared import HeraldSettings

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
    trace_retention_days: float = Field(default=30, gt=0)  # decision-trace rows older than this are pruned
    trace_prune_interval_seconds: float = Field(default=600, gt=0)
    trace_page_max: int = Field(default=1000, ge=1)  # most trace items one request returns
