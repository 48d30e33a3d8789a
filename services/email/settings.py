from collections.abc import Iterator
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from shared import HeraldSettings, Secret

DEV_UNSUBSCRIBE_SECRET = "dev-only-unsubscribe-secret-change-me-in-production"
DEV_RESEND_KEY = "re_dev_sandbox_key"


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
    # STARTTLS: off; opportunistic (used, the certificate verified, whenever the relay offers it); required
    smtp_starttls: Literal["off", "opportunistic", "required"] = "opportunistic"
    smtp_use_tls: bool = False  # implicit TLS (port 465)
    smtp_ca_file: str | None = None  # CA bundle that signs the relay's certificate (default: the system's)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    smtp_pool_size: int = Field(default=64, ge=1)  # open connections kept to the relay

    resend_api_base: str = "http://127.0.0.1:8110"
    resend_api_key: SecretStr = SecretStr(DEV_RESEND_KEY)
    resend_timeout_seconds: float = Field(default=10.0, gt=0)
    resend_max_connections: int = Field(default=128, ge=1)  # open HTTP connections to the API

    unsubscribe_secret: SecretStr = SecretStr(DEV_UNSUBSCRIBE_SECRET)
    unsubscribe_ttl_days: float = Field(default=60.0, gt=0)
    unsubscribe_url: str = "http://127.0.0.1:8103/v1/unsubscribe"  # where List-Unsubscribe points (this service, as the world sees it)
    router_api_key: SecretStr | None = None  # key for the router's API; defaults to the first of HERALD_API_KEYS

    @field_validator("smtp_starttls", mode="before")
    @classmethod
    def _starttls_words(cls, value: object) -> object:
        if isinstance(value, bool) or str(value).lower() in {"true", "false", "1", "0", "yes", "no"}:  # the older boolean form
            return "required" if str(value).lower() in {"true", "1", "yes"} else "off"
        return value

    @field_validator("resend_api_base")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.rstrip("/")

    def production_secrets(self) -> Iterator[Secret]:
        yield from super().production_secrets()
        yield Secret("HERALD_UNSUBSCRIBE_SECRET", self.unsubscribe_secret.get_secret_value())
        resend = self.resend_api_key.get_secret_value()
        if self.email_provider == "resend" or resend != DEV_RESEND_KEY:  # unused but set: still no placeholder
            yield Secret("HERALD_RESEND_API_KEY", resend, min_length=20, required=self.email_provider == "resend")
        smtp = self.smtp_password.get_secret_value() if self.smtp_password else None
        yield Secret("HERALD_SMTP_PASSWORD", smtp, min_length=8, required=self.email_provider == "smtp" and bool(self.smtp_username))
        # one-click unsubscribes change preferences at the router: the one key this service sends, in plaintext
        yield Secret("HERALD_ROUTER_API_KEY", self.router_api_key.get_secret_value() if self.router_api_key else None)

    def router_key(self) -> str:
        """The API key this service presents to the router (its `recipients` scope changes preferences)."""
        if self.router_api_key is not None:
            return self.router_api_key.get_secret_value()
        plain = list(self.api_key_table().values())  # development and tests: the first key held in plaintext
        if not plain:
            raise ValueError("HERALD_ROUTER_API_KEY is unset and HERALD_API_KEYS holds no plaintext key to send the router")
        return plain[0]
