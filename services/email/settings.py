from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from shared import HeraldSettings

DEV_UNSUBSCRIBE_SECRET = "dev-only-unsubscribe-secret-change-me-in-production"
_PLACEHOLDERS = {"", "changethis", "change-me", DEV_UNSUBSCRIBE_SECRET}


class Settings(HeraldSettings):
    service_name: str = "email"
    port: int = 8103

    email_provider: Literal["smtp", "resend"] = "smtp"
    email_from: str = "notifications@herald.localhost"  # HERALD_EMAIL_FROM: the sender address
    email_from_name: str = "Herald"  # HERALD_EMAIL_FROM_NAME: the sender's display name
    email_reply_to: str | None = None
    email_brand: str = "Herald"  # the name in the layout's header and footer
    email_max_attempts: int = Field(default=0, ge=0)  # 0: retried until HERALD_RETRY_WINDOW[_CRITICAL]_SECONDS closes
    email_retry_base_seconds: float = Field(default=2.0, gt=0)
    email_retry_cap_seconds: float = Field(default=600.0, gt=0)  # longest backoff (a provider's Retry-After may ask for more)

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    smtp_starttls: bool = False  # upgrade the connection with STARTTLS (required when true)
    smtp_use_tls: bool = False  # implicit TLS (port 465)
    smtp_ca_file: str | None = None  # CA bundle that signs the relay's certificate (default: the system's)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    smtp_pool_size: int = Field(default=64, ge=1)  # open connections kept to the relay

    resend_api_base: str = "http://127.0.0.1:8110"
    resend_api_key: SecretStr = SecretStr("re_dev_sandbox_key")
    resend_timeout_seconds: float = Field(default=10.0, gt=0)
    resend_max_connections: int = Field(default=128, ge=1)  # open HTTP connections to the API

    unsubscribe_secret: SecretStr = SecretStr(DEV_UNSUBSCRIBE_SECRET)
    unsubscribe_ttl_days: float = Field(default=60.0, gt=0)
    unsubscribe_url: str = "http://127.0.0.1:8103/v1/unsubscribe"  # where List-Unsubscribe points (this service, as the world sees it)
    router_api_key: SecretStr | None = None  # key for the router's API; defaults to the first of HERALD_API_KEYS

    @field_validator("resend_api_base")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _refuse_placeholder_unsubscribe_secret(self) -> "Settings":
        if self.environment == "production":
            secret = self.unsubscribe_secret.get_secret_value()
            if secret in _PLACEHOLDERS or len(secret) < 32:
                raise ValueError("HERALD_UNSUBSCRIBE_SECRET is a placeholder or shorter than 32 characters; set a real secret in production")
        return self

    def router_key(self) -> str:
        """The API key this service presents to the router."""
        if self.router_api_key is not None:
            return self.router_api_key.get_secret_value()
        return next(iter(self.api_key_table().values()))
