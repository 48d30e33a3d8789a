from pydantic import Field, field_validator

from shared import CommaList, HeraldSettings, split_commas


class Settings(HeraldSettings):
    service_name: str = "inapp"
    port: int = 8106

    inbox_page_default: int = Field(default=20, ge=1)
    inbox_page_max: int = Field(default=100, ge=1)
    inbox_retention_days: float = Field(default=180, gt=0, description="a notification is deleted this long after it was stored, read or not")
    inbox_deleted_retention_days: float = Field(default=30, gt=0, description="a notification the user deleted is gone for good this long after")

    # server-sent events
    stream_ping_seconds: float = Field(default=15.0, gt=0, description="heartbeat comment interval, under any proxy's idle timeout")
    stream_queue_size: int = Field(default=100, ge=1, description="messages buffered per open stream before it resyncs from the table")
    stream_token_ttl_seconds: int = Field(default=60, ge=5, le=600)
    stream_max_seconds: float = Field(default=900.0, ge=0, description="a stream ends after this long (0: never); the client re-authenticates")
    stream_send_timeout_seconds: float = Field(default=30.0, gt=0, description="a client that takes longer to accept one write is dropped")
    stream_replay_batch: int = Field(default=200, ge=1)
    stream_max_per_user: int = Field(default=20, ge=1, description="open streams one user may hold on one instance")
    stream_max_per_user_total: int = Field(default=0, ge=0, description="open streams one user may hold across instances, counted in Redis (0: no cap)")
    stream_slot_ttl_seconds: float = Field(default=60.0, ge=5, description="a stream counted in Redis lapses this long after its instance stops renewing it")
    stream_retry_ms: int = Field(default=3000, ge=100, description="the reconnection delay sent to EventSource clients")
    redis_prefix: str = "herald:"
    inbox_redis_namespace: str | None = None  # default: the Kafka topic namespace (instances sharing it share streams)

    # the widget
    cors_origins: CommaList = Field(default_factory=list, description="origins that may call the API from a browser (default: the front-end URL)")
    demo_user: str = "demo-user"
    sandbox_url: str = "http://127.0.0.1:8110"  # the demo page links to its notification trigger

    _split = field_validator("cors_origins", mode="before")(split_commas)

    @property
    def inbox_redis_prefix(self) -> str:
        """Redis keys and channels of the inbox, isolated per topic namespace like the topics."""
        namespace = self.kafka_topic_namespace if self.inbox_redis_namespace is None else self.inbox_redis_namespace
        return f"{self.redis_prefix}{namespace}inbox:"

    def allowed_origins(self) -> list[str]:
        return [o.rstrip("/") for o in self.cors_origins] or [self.frontend_url]

    @property
    def demo_enabled(self) -> bool:
        return self.environment != "production" and self.jwt_secret is not None and not self.jwt_public_key
