from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator

from shared import CommaList, HeraldSettings, Secret, looks_like_placeholder, split_commas

#: The public Web Push services: Chrome/Edge-on-Android (FCM), Firefox (autopush), Safari (Apple), Edge on Windows (WNS).
DEFAULT_PUSH_HOSTS = ["fcm.googleapis.com", "updates.push.services.mozilla.com", "web.push.apple.com", "*.notify.windows.com"]


class Settings(HeraldSettings):
    service_name: str = "push"
    port: int = 8105

    vapid_private_key: SecretStr | None = None  # base64url raw 32-byte P-256 key (or base64url DER)
    vapid_subject: str = "mailto:ops@herald.invalid"

    push_allowed_hosts: CommaList = Field(default_factory=lambda: list(DEFAULT_PUSH_HOSTS))
    push_dev_hosts: CommaList = Field(default_factory=list)  # host:port admitted over http, even on loopback
    push_ttl_seconds: Annotated[int, Field(ge=0, le=2_419_200)] = 86_400
    push_max_payload_bytes: Annotated[int, Field(ge=256, le=4096)] = 3993  # 4096 minus the aes128gcm header and tag
    push_max_failures: Annotated[int, Field(ge=1)] = 10  # consecutive failed sends before a subscription is dropped
    push_timeout_seconds: float = Field(default=10.0, gt=0)
    push_resolve_timeout_seconds: float = Field(default=3.0, gt=0)
    push_max_subscriptions_per_user: Annotated[int, Field(ge=1)] = 20
    push_max_attempts: Annotated[int, Field(ge=0)] = 0  # 0: retried until the retry window closes
    push_retry_base_seconds: float = Field(default=2.0, gt=0)
    push_retry_cap_seconds: float = Field(default=600.0, gt=0)  # longest backoff (a Retry-After may ask for more)

    @field_validator("push_allowed_hosts", "push_dev_hosts", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        value = split_commas(value)
        return [v.lower() for v in value] if isinstance(value, list) else value

    @field_validator("vapid_subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        if not (value.startswith("mailto:") or value.startswith("https://")):
            raise ValueError("HERALD_VAPID_SUBJECT must be a mailto: or https: URL")
        return value

    @field_validator("vapid_private_key")
    @classmethod
    def _loadable(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not looks_like_placeholder(value.get_secret_value()):  # a placeholder: refused with the other secrets
            from py_vapid import Vapid

            try:
                Vapid.from_string(private_key=value.get_secret_value())
            except Exception:  # py_vapid raises several kinds for a bad key
                raise ValueError("HERALD_VAPID_PRIVATE_KEY is not a base64url P-256 private key (raw 32 bytes or DER)") from None
        return value

    @model_validator(mode="after")
    def _production_rules(self) -> Settings:
        if self.environment == "production":
            if self.push_dev_hosts:
                raise ValueError("HERALD_PUSH_DEV_HOSTS is for development only; leave it empty in production")
        return self

    def production_secrets(self) -> Iterator[Secret]:
        yield from super().production_secrets()
        # a value that is set is a loadable P-256 key (checked above); unset, no push service would accept Herald
        yield Secret("HERALD_VAPID_PRIVATE_KEY", self.vapid_private_key.get_secret_value() if self.vapid_private_key else None, min_length=1)
