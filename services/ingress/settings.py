from collections.abc import Iterator
from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from shared import CommaList, HeraldSettings, Secret, split_commas

WEBHOOK_MAPPING = Path(__file__).with_name("webhooks.yaml")


class Settings(HeraldSettings):
    service_name: str = "ingress"
    port: int = 8101

    max_batch: int = Field(default=500, ge=1, description="Most events in one batch request")
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Larger request bodies (events, webhooks) are refused with 413")
    # The producer drops a record it could not deliver within the request timeout, and ingress waits for that
    # verdict (plus a margin, see ``publish_wait_seconds``), so a 503 means the record is gone, not queued to be
    # written later. Shorter than the shared default so callers hear "retry" within seconds.
    kafka_request_timeout_ms: int = Field(default=5_000, ge=500)
    retry_after_seconds: int = Field(default=5, ge=1, description="Retry-After sent with a 503")
    dedupe_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60, description="How long a source+id is remembered as seen")
    extra_areas: CommaList = Field(default=[], description="Areas (domain.<area> topics) accepted besides the known event types'")

    key_rate_per_minute: int = Field(default=600, ge=1, description="Default request rate of a new producer key")
    service_key_rate_per_minute: int = Field(default=0, ge=0, description="Rate of HERALD_API_KEYS keys; 0 means unlimited")

    stripe_webhook_secret: SecretStr | None = None
    stripe_tolerance_seconds: int = Field(default=300, ge=1)
    stripe_user_metadata_key: str = "user_id"
    stripe_source: str = "stripe"

    webhook_secrets: SecretStr = SecretStr("")  # Standard Webhooks partners, "partner=whsec_...,other=whsec_..."
    webhook_mapping_path: Path = WEBHOOK_MAPPING

    _split = field_validator("extra_areas", mode="before")(split_commas)

    @property
    def publish_wait_seconds(self) -> float:
        """How long to wait for Kafka's acknowledgement: past the producer's own request timeout."""
        return self.kafka_request_timeout_ms / 1000 + 5

    def production_secrets(self) -> Iterator[Secret]:
        yield from super().production_secrets()
        # unset: that webhook is off (answers 404); set, it must be the provider's real signing secret
        stripe = self.stripe_webhook_secret.get_secret_value() if self.stripe_webhook_secret else None
        yield Secret("HERALD_STRIPE_WEBHOOK_SECRET", stripe, min_length=24, required=False)
        for pair in split_commas(self.webhook_secrets.get_secret_value()):  # type: ignore[union-attr]
            partner, _, secret = pair.partition("=")
            yield Secret(f"HERALD_WEBHOOK_SECRETS entry {partner.strip()!r}", secret, min_length=24)

    def webhook_secret_table(self) -> dict[str, str]:
        """The Standard Webhooks partners' signing secrets as ``{partner: secret}``."""
        table: dict[str, str] = {}
        for pair in split_commas(self.webhook_secrets.get_secret_value()):  # type: ignore[union-attr]
            name, sep, secret = pair.partition("=")
            if not sep or not secret.strip():
                raise ValueError(f"HERALD_WEBHOOK_SECRETS entry {name!r} is not of the form partner=secret")
            table[name.strip()] = secret.strip()
        return table
