from __future__ import annotations

import hashlib
import hmac
import re
from typing import Literal
from collections.abc import Iterator

from pydantic import Field, SecretStr, field_validator

from shared import CommaList, HeraldSettings, Secret, split_commas

DEV_TWILIO_TOKEN = "sandbox-auth-token"
_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")


class Settings(HeraldSettings):
    """The SMS sender: Twilio, destinations, caps, and phone verification (``HERALD_*``)."""

    service_name: str = "sms"
    port: int = 8104

    # Twilio (or the sandbox stand-in at the same API shape)
    twilio_api_base: str = "http://127.0.0.1:8110"
    twilio_account_sid: str = "AC00000000000000000000000000000000"
    twilio_auth_token: SecretStr = SecretStr(DEV_TWILIO_TOKEN)
    twilio_from: str = "+15005550006"
    twilio_timeout_seconds: float = Field(default=10.0, gt=0)
    # on a user's erasure, what happens to their messages' logs at Twilio (docs/data.md): kept, bodies redacted, or deleted
    twilio_erasure: Literal["keep", "redact", "delete"] = "keep"
    twilio_erasure_budget_seconds: float = Field(default=10.0, ge=0)  # an erasure tries its messages at Twilio this long; the rest in the background
    twilio_erasure_retry_seconds: float = Field(default=60.0, gt=0)  # the background's interval, and the first pause before a message is tried again
    twilio_erasure_give_up_days: float = Field(default=30.0, gt=0)  # a message Twilio has not let erase by then is dropped from the queue (logged)
    twilio_status_callbacks: bool = True  # ask for delivery receipts at HERALD_PUBLIC_URL/v1/webhooks/twilio/status

    # retries (through retry.sms, then dlq)
    sms_max_attempts: int = Field(default=0, ge=0)  # 0: retried until the retry window closes
    sms_retry_base_seconds: float = Field(default=1.0, gt=0)
    sms_retry_cap_seconds: float = Field(default=600.0, gt=0)

    # destinations and bodies
    sms_allowed_countries: CommaList = Field(
        default=["US", "CA", "GB", "IE", "DE", "AT", "CH", "FR", "NL", "BE", "LU", "ES", "PT", "IT", "DK", "SE", "NO", "FI", "PL", "AU", "NZ"]  # pydantic copies a list default per instance
    )
    sms_allowed_costly_types: CommaList = []  # premium_rate, shared_cost, uan, personal_number, pager, voicemail: refused unless named
    sms_max_segments: int = Field(default=3, ge=1, le=10)
    sms_price_default_usd: float = Field(default=0.05, ge=0)
    sms_prices_usd: CommaList = Field(
        default=["US=0.0083", "CA=0.0083", "GB=0.0524", "IE=0.0796", "DE=0.0919", "FR=0.0798", "NL=0.1094", "AU=0.0515"]
    )

    # caps (Redis, shared by every instance)
    sms_daily_cap: int = Field(default=10, ge=0)  # SMS per user in any 24 hours, critical ones included
    sms_daily_cap_critical: int = Field(default=20, ge=0)  # ceiling on critical SMS per user in any 24 hours
    sms_provider_mps: int = Field(default=10, ge=1)  # messages per second to the provider, all instances together
    sms_throttle_wait_seconds: float = Field(default=5.0, ge=0)  # longest wait for a provider slot before retrying later
    sms_redis_prefix: str = "sms:"
    sms_ledger_retention_days: float = Field(default=730, gt=0)  # the ledger is the cost record (no numbers in it): kept longer

    # phone verification
    verify_code_ttl_seconds: int = Field(default=600, ge=1)
    verify_max_requests: int = Field(default=3, ge=1)
    verify_window_seconds: int = Field(default=600, ge=1)
    verify_cooldown_seconds: int = Field(default=60, ge=0)
    verify_max_tries: int = Field(default=5, ge=1)  # wrong tries at one code before it is invalid
    verify_lock_failures: int = Field(default=10, ge=1)  # wrong tries at a number, across codes, before the number is locked
    verify_lock_seconds: int = Field(default=86_400, ge=60)  # the window those are counted in, and how long the lock lasts
    verify_code_secret: SecretStr | None = None  # key of the stored code hashes; unset: derived from the Twilio auth token

    _split = field_validator("sms_allowed_countries", "sms_prices_usd", "sms_allowed_costly_types", mode="before")(split_commas)

    @field_validator("twilio_api_base")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("sms_allowed_countries")
    @classmethod
    def _upper(cls, value: list[str]) -> list[str]:
        return [c.upper() for c in value]

    def production_secrets(self) -> Iterator[Secret]:
        yield from super().production_secrets()
        sid = self.twilio_account_sid.strip()
        if not _ACCOUNT_SID.fullmatch(sid) or set(sid[2:]) == {"0"}:
            sid = ""  # the development default or not a Twilio account SID at all
        yield Secret("HERALD_TWILIO_ACCOUNT_SID (AC and 32 hexadecimal digits)", sid, min_length=34)
        yield Secret("HERALD_TWILIO_AUTH_TOKEN", self.twilio_auth_token.get_secret_value())
        secret = self.verify_code_secret.get_secret_value() if self.verify_code_secret else None
        yield Secret("HERALD_VERIFY_CODE_SECRET", secret, required=False)

    def price_table(self) -> dict[str, float]:
        """``sms_prices_usd`` as ``{country: price per segment}``."""
        table: dict[str, float] = {}
        for entry in self.sms_prices_usd:
            country, sep, price = entry.partition("=")
            if not sep:
                raise ValueError(f"HERALD_SMS_PRICES_USD entry {entry!r} is not of the form CC=price")
            table[country.strip().upper()] = float(price)
        return table

    def code_key(self) -> bytes:
        """The key of the stored verification-code hashes."""
        if self.verify_code_secret is not None and self.verify_code_secret.get_secret_value():
            return self.verify_code_secret.get_secret_value().encode()
        token = self.twilio_auth_token.get_secret_value().encode()
        return hmac.new(token, b"herald phone verification codes", hashlib.sha256).digest()

    @property
    def status_callback_url(self) -> str | None:
        return f"{self.public_url}/v1/webhooks/twilio/status" if self.twilio_status_callbacks else None
