"""The settings base every service's settings class extends."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, ClassVar, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ._keys import ServiceKey, parse_service_keys

CommaList = Annotated[list[str], NoDecode]

DEV_JWT_SECRET = "dev-only-jwt-secret-change-me-in-production"
DEV_API_KEYS = "dev=dev-api-key-change-me"

#: What placeholders look like: the shipped examples' REPLACE_ME, "change me", the development defaults.
_PLACEHOLDER = re.compile(
    r"replace[-_ ]?me|change[-_ ]?(me|this|it)|dev[-_ ]?only|sandbox|placeholder|example|your[-_ ]|secret[-_ ]?here|^(password|secret|test|dev)$",
    re.IGNORECASE,
)
#: A random secret of 16 characters or more shows at least this many different characters.
_MIN_DISTINCT = 8


def looks_like_placeholder(value: str) -> bool:
    """Whether ``value`` is one of the shipped placeholders or development defaults."""
    return bool(_PLACEHOLDER.search(value))


@dataclass(frozen=True)
class Secret:
    """One secret a service uses in production: its setting, its value (None: unset) and how long it must be."""

    env: str
    value: str | None
    min_length: int = 32
    required: bool = True

    def problem(self) -> str | None:
        """Why this secret is not fit for production, or None."""
        value = (self.value or "").strip()
        if not value:
            return f"{self.env} is empty; set it" if self.required else None
        if _PLACEHOLDER.search(value):
            return f"{self.env} holds a placeholder; set the real value"
        if len(value) < self.min_length:
            return f"{self.env} is shorter than {self.min_length} characters; use a longer random value"
        if self.min_length >= 16 and len(set(value)) < _MIN_DISTINCT:
            return f"{self.env} has fewer than {_MIN_DISTINCT} different characters, not a random value; generate one (python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        return None


class UnsafeProductionSettings(ValueError):
    """A production start refused: each problem names the setting to fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("refusing to start in production: " + "; ".join(problems))


def split_commas(value: object) -> object:
    """Turn ``"a, b,c"`` into ``["a", "b", "c"]``; lists pass through."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class HeraldSettings(BaseSettings):
    """Settings shared by every Herald service (``HERALD_*`` environment variables)."""

    model_config = SettingsConfigDict(env_prefix="HERALD_", extra="ignore", validate_default=True)

    #: False only for operator tools that read settings without serving (``herald migrate``, ``herald topics``…).
    refuses_unsafe_production: ClassVar[bool] = True

    service_name: str = "herald"
    # production unless chosen otherwise: `make run`, `make test`, the benchmarks and the sandbox choose theirs
    environment: Literal["development", "test", "production"] = "production"
    host: str = "127.0.0.1"
    port: int = 8100
    log_level: str = "INFO"
    log_json: bool | None = None  # None: JSON lines unless stderr is a terminal

    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_enable_idempotence: bool = False
    kafka_session_timeout_ms: int = 10_000
    kafka_heartbeat_interval_ms: int = 3_000
    kafka_partitions: int = 12
    kafka_replication_factor: int = 1
    kafka_max_batch: int = 500
    kafka_batch_timeout_ms: int = 50  # how long a consumer waits for a batch before it looks again (it returns as soon as records come)
    # How long the broker may hold a fetch while it has nothing new. Kafka answers as soon as a record
    # arrives, so this costs no latency there; the embedded broker holds the fetch for the whole wait,
    # so on it this bounds every hop's latency (`herald run` and the tests lower it: docs/performance.md).
    kafka_fetch_max_wait_ms: int = Field(default=100, ge=1)
    kafka_request_timeout_ms: int = 40_000  # a produce request (and a queued record) fails after this long
    kafka_max_message_bytes: int = 1_000_000  # largest dispatch the router writes; keep under the broker's message.max.bytes
    kafka_group_prefix: str = "herald"
    kafka_metadata_max_age_ms: int = 30_000  # how soon a new domain.<area> topic is picked up by the router
    # how every client connects (docs/security.md): TLS with the broker's CA (and a client certificate), SASL credentials
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_ssl_ca_file: str | None = None  # the CA that signs the brokers' certificates (default: the system's)
    kafka_ssl_cert_file: str | None = None  # a client certificate, where the brokers ask for one (with its key file)
    kafka_ssl_key_file: str | None = None
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_topic_namespace: str = ""  # prefixed to every topic name (isolates tests, or tenants of one cluster)
    consumer_lag_interval_seconds: float = 15.0  # how often a service measures its consumer groups' lag (0: never)

    topic_domain_prefix: str = "domain."
    topic_notify_prefix: str = "notify."
    topic_retry_prefix: str = "retry."
    topic_critical_suffix: str = ".critical"
    topic_status: str = "notify.status"
    topic_dlq: str = "dlq"
    topic_erasure: str = "erasure"  # a user's erasure, read by every service (docs/data.md)
    topic_erasure_status: str = "erasure.status"  # each service's report that it erased a user, read by the router
    # how long each role's topics keep records (docs/data.md): personal data in a topic goes when its retention passes it
    topic_retention_hours: CommaList = ["domain=168", "notify=168", "retry=168", "status=72", "dlq=720", "erasure=720", "erasure_status=720"]
    kafka_min_insync_replicas: int | None = Field(default=None, ge=1)  # per topic (unset: the cluster's default); with replication 3, use 2

    # retention (docs/data.md): how often each service deletes what is past its age, and how many rows per statement
    retention_interval_seconds: float = Field(default=600, gt=0)
    retention_batch: int = Field(default=5000, ge=1)
    ledger_retention_days: float = Field(default=180, gt=0)  # a sender's finished ledger rows (sms: HERALD_SMS_LEDGER_RETENTION_DAYS)

    database_url: str = "postgresql://postgres@127.0.0.1:5432/herald"
    database_pool_min: int = 1
    database_pool_max: int = 10
    database_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    database_statement_timeout_seconds: float = Field(default=15.0, ge=0)  # 0: no limit
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis by role (docs/data.md: what losing each costs); each unset one is HERALD_REDIS_URL
    redis_dedupe_url: str | None = None  # ingress's record of events seen: on a Redis that is never flushed
    redis_ratelimit_url: str | None = None  # SMS caps, provider throughput, producer and public request limits
    redis_cache_url: str | None = None  # the router's profile cache: may be flushed at any time
    redis_codes_url: str | None = None  # pending phone verification codes

    jwt_secret: SecretStr | None = SecretStr(DEV_JWT_SECRET)
    jwt_public_key: str | None = None
    jwt_jwks_url: str | None = None  # the identity provider's JWKS: tokens with a `kid` are checked against its keys (rotation)
    jwt_jwks_algorithms: CommaList = ["RS256", "ES256"]  # what a JWKS key may sign with (never HS*)
    jwt_jwks_cache_seconds: float = Field(default=300.0, gt=0)  # how long the key set is kept; an unknown kid fetches it again
    jwt_audience: str = "herald"
    api_keys: SecretStr = SecretStr(DEV_API_KEYS)  # name:scope+scope=key or name:scopes=sha256:<hex>, comma-separated (docs/security.md)
    api_key_sources: str = ""  # name=source source,…: the CloudEvents sources a key name may publish (unset: any)

    frontend_url: str = "http://localhost:3000"
    link_hosts: CommaList = []  # hosts besides the front end's that links from event data may point at ("*.example.com" too)
    public_url: str = "http://127.0.0.1:8101"
    router_url: str = "http://127.0.0.1:8102"  # services that change preferences call the router's API here

    concurrency: int = Field(default=64, ge=1)
    # unauthenticated endpoints, per client address and (where there is one) per user, a minute (0: no limit)
    public_rate_limits: CommaList = ["webhooks=6000", "unsubscribe=60", "stream=120", "verification=60"]
    public_user_rate_limits: CommaList = ["stream=60"]
    max_body_bytes: int = Field(default=65_536, ge=1024)  # a larger request body is refused with 413 while it is read
    body_limits: CommaList = []  # routes with their own limit: "path-prefix=bytes,…" (the longest prefix wins)

    # Delivery (senders): docs/reliability.md
    retry_window_seconds: float = Field(default=1800.0, gt=0)  # how long a normal notification is retried, from when it was routed
    retry_window_critical_seconds: float = Field(default=7200.0, gt=0)  # the same for critical notifications
    retry_tiers: CommaList = ["10", "60", "600", "3600"]  # delay topics retry.<ch>[.critical].<N>s, by the wait they hold
    unexpected_error_attempts: int = Field(default=3, ge=1)  # an unexpected exception this many times in a row: dlq, not the whole window
    delivery_lease_seconds: float = Field(default=60.0, gt=0)  # a claimed delivery whose process vanished is tried again after this
    ledger_write_patience_seconds: float = Field(default=900.0, ge=0)  # how long an accepted send's ledger write is retried
    outage_backoff_max_seconds: float = Field(default=30.0, gt=0)  # longest pause between tries while PostgreSQL or Redis is down
    breaker_failures: int = Field(default=20, ge=1)  # provider failures in a row that open a channel's circuit breaker
    breaker_failure_rate: float = Field(default=0.5, gt=0, le=1)  # or this share of failed calls over the window
    breaker_window_seconds: float = Field(default=30.0, gt=0)
    breaker_min_calls: int = Field(default=20, ge=1)  # calls in the window before the rate counts
    breaker_open_seconds: float = Field(default=5.0, gt=0)  # first pause before a probe; doubles after each failed probe
    breaker_open_max_seconds: float = Field(default=300.0, gt=0)
    breaker_control_seconds: float = Field(default=2.0, gt=0)  # how often a sender reads the operator's hold/resume
    control_redis_prefix: str = "herald:"  # Redis keys of `herald channel hold|resume`
    drain_timeout_seconds: float = Field(default=30.0, ge=0)  # on SIGTERM, how long in-flight messages may take to finish

    @field_validator(
        "retry_tiers", "link_hosts", "jwt_jwks_algorithms", "public_rate_limits", "public_user_rate_limits", "body_limits", "topic_retention_hours",
        mode="before",
    )
    @classmethod
    def _split_lists(cls, value: object) -> object:
        return split_commas(value)

    @field_validator("retry_tiers")
    @classmethod
    def _check_tiers(cls, value: list[str]) -> list[str]:
        if not value or not all(v.isdigit() and int(v) > 0 for v in value):
            raise ValueError("HERALD_RETRY_TIERS must be whole seconds above 0, comma-separated (for example 10,60,600,3600)")
        return [str(n) for n in sorted({int(v) for v in value})]

    @property
    def retry_tiers_seconds(self) -> list[int]:
        return [int(v) for v in self.retry_tiers]

    @field_validator("jwt_jwks_algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        if not value or any(a.upper().startswith("HS") or a.lower() == "none" for a in value):
            raise ValueError("HERALD_JWT_JWKS_ALGORITHMS takes asymmetric algorithms only (RS256, ES256, PS256, EdDSA…)")
        return value

    @field_validator("public_rate_limits", "public_user_rate_limits")
    @classmethod
    def _check_rates(cls, value: list[str]) -> list[str]:
        for entry in value:
            group, sep, rate = entry.partition("=")
            if not sep or not rate.strip().isdigit():
                raise ValueError(f"rate limit entry {entry!r} is not of the form group=requests-per-minute (groups: webhooks, unsubscribe, stream, verification)")
        return value

    def public_rate_table(self) -> dict[str, int]:
        return {g.strip(): int(r) for g, _, r in (e.partition("=") for e in self.public_rate_limits)}

    def public_user_rate_table(self) -> dict[str, int]:
        return {g.strip(): int(r) for g, _, r in (e.partition("=") for e in self.public_user_rate_limits)}

    @field_validator("body_limits")
    @classmethod
    def _check_limits(cls, value: list[str]) -> list[str]:
        for entry in value:
            prefix, sep, size = entry.partition("=")
            if not sep or not prefix.startswith("/") or not size.strip().isdigit() or int(size) < 1024:
                raise ValueError(f"HERALD_BODY_LIMITS entry {entry!r} is not of the form /path-prefix=bytes (1024 or more)")
        return value

    def body_limit_table(self) -> dict[str, int]:
        """``HERALD_BODY_LIMITS`` as ``{path prefix: bytes}``."""
        return {prefix.strip(): int(size) for prefix, _, size in (entry.partition("=") for entry in self.body_limits)}

    @field_validator("frontend_url", "public_url", "router_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _retention_holds_a_retry(self) -> HeraldSettings:
        hours = self.topic_retention_table()  # refuses a malformed or incomplete table
        if hours["retry"] * 3600 < 2 * max(self.retry_tiers_seconds):
            raise ValueError(
                f"HERALD_TOPIC_RETENTION_HOURS retry={hours['retry']:g} would delete retries before they are due:"
                f" keep them at least twice the longest of HERALD_RETRY_TIERS ({max(self.retry_tiers_seconds)} s)"
            )
        return self

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> HeraldSettings:
        try:
            self.service_keys  # noqa: B018 - malformed entries are refused in every environment
        except ValueError as exc:
            if self.environment != "production" or not self.refuses_unsafe_production:
                raise
            malformed = str(exc)  # listed with every other problem, not alone
        else:
            malformed = None
        if self.environment == "production" and self.refuses_unsafe_production:
            problems = [problem for secret in self.production_secrets() if (problem := secret.problem())]
            problems += list(self.production_problems())
            if malformed:
                problems.insert(0, malformed)
            if problems:
                raise UnsafeProductionSettings(problems)
        return self

    @cached_property
    def service_keys(self) -> list[ServiceKey]:
        """``HERALD_API_KEYS`` parsed: each entry's name, scopes, bound sources and key (or its hash)."""
        return parse_service_keys(self.api_keys.get_secret_value(), self.api_key_sources)

    def _keys_or_none(self) -> list[ServiceKey]:
        try:
            return self.service_keys
        except ValueError:  # reported on its own
            return []

    def production_problems(self) -> Iterator[str]:
        """What production refuses besides secrets; services add theirs."""
        for key in self._keys_or_none():
            if not key.scoped:
                yield f"HERALD_API_KEYS entry {key.name!r} has no scopes; write it name:scope+scope=key (publish, recipients, traces, admin)"

    def production_secrets(self) -> Iterator[Secret]:
        """Every secret this service uses, as production must have it; services add theirs."""
        value = self.jwt_secret.get_secret_value() if self.jwt_secret else None
        if self.jwt_public_key is None and self.jwt_jwks_url is None:
            yield Secret("HERALD_JWT_SECRET (or HERALD_JWT_PUBLIC_KEY, HERALD_JWT_JWKS_URL)", value)
        else:  # beside a public key or JWKS the shared secret is optional: empty turns HS256 off, set it is checked
            yield Secret("HERALD_JWT_SECRET (set it empty to accept only HERALD_JWT_PUBLIC_KEY / HERALD_JWT_JWKS_URL)", value, required=False)
        raw = self.api_keys.get_secret_value().strip()
        if not raw:
            yield Secret("HERALD_API_KEYS", None)
        for key in self._keys_or_none():
            yield Secret(f"HERALD_API_KEYS entry {key.name!r}", key.secret, min_length=32)
        if self.kafka_security_protocol.startswith("SASL"):
            password = self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            yield Secret("HERALD_KAFKA_SASL_PASSWORD", password, min_length=8)
        yield from url_password("HERALD_DATABASE_URL", self.database_url)
        yield from url_password("HERALD_REDIS_URL", self.redis_url)
        for role in REDIS_ROLES:
            if getattr(self, f"redis_{role}_url"):
                yield from url_password(f"HERALD_REDIS_{role.upper()}_URL", getattr(self, f"redis_{role}_url"))

    @classmethod
    def load(cls, **values: object) -> Self:
        """Settings for a service starting: a refused production start exits with what to fix, not a traceback."""
        try:
            return cls(**values)
        except ValidationError as exc:
            lines: list[str] = []
            for error in exc.errors():
                cause = error.get("ctx", {}).get("error")
                if isinstance(cause, UnsafeProductionSettings):
                    lines += cause.problems
                else:
                    field = ".".join(str(p) for p in error["loc"])
                    lines.append(f"HERALD_{field.upper()}: " * bool(field) + error["msg"].removeprefix("Value error, "))
            name = cls.model_fields["service_name"].default
            raise SystemExit(f"herald {name}: refusing to start; fix these settings:\n" + "\n".join(f"  - {line}" for line in lines)) from None

    def api_key_table(self) -> dict[str, str]:
        """The service keys held in plaintext as ``{name: key}`` (the last of a name): for a service that sends one."""
        return {key.name: key.secret for key in self.service_keys if not key.hashed}

    # topic names -------------------------------------------------------
    def notify_topic(self, channel: str, *, critical: bool = False) -> str:
        return f"{self.kafka_topic_namespace}{self.topic_notify_prefix}{channel}{self.topic_critical_suffix if critical else ''}"

    def retry_topic(self, channel: str, *, critical: bool = False, tier: int) -> str:
        """The delay topic holding ``channel``'s retries of one lane that wait about ``tier`` seconds."""
        lane = self.topic_critical_suffix if critical else ""
        return f"{self.kafka_topic_namespace}{self.topic_retry_prefix}{channel}{lane}.{tier}s"

    def retry_topics(self, channel: str) -> list[str]:
        """Every delay topic of ``channel``, both lanes."""
        return [self.retry_topic(channel, critical=c, tier=t) for c in (False, True) for t in self.retry_tiers_seconds]

    def domain_topic(self, event_type: str) -> str:
        """``domain.<area>`` for an event type ``<area>.<name>``."""
        return self.area_topic(event_type.split(".", 1)[0])

    def area_topic(self, area: str) -> str:
        return f"{self.kafka_topic_namespace}{self.topic_domain_prefix}{area}"

    def domain_pattern(self) -> str:
        """The regular expression the router subscribes with."""
        return re.escape(f"{self.kafka_topic_namespace}{self.topic_domain_prefix}") + ".*"

    @property
    def status_topic(self) -> str:
        return f"{self.kafka_topic_namespace}{self.topic_status}"

    @property
    def dlq_topic(self) -> str:
        return f"{self.kafka_topic_namespace}{self.topic_dlq}"

    @property
    def erasure_topic(self) -> str:
        return f"{self.kafka_topic_namespace}{self.topic_erasure}"

    @property
    def erasure_status_topic(self) -> str:
        return f"{self.kafka_topic_namespace}{self.topic_erasure_status}"

    def topic_retention_table(self) -> dict[str, float]:
        """``topic_retention_hours`` as {role: hours}, every role present."""
        table: dict[str, float] = {}
        for entry in self.topic_retention_hours:
            role, sep, hours = entry.partition("=")
            if not sep or role.strip() not in TOPIC_ROLES:
                raise ValueError(f"HERALD_TOPIC_RETENTION_HOURS entry {entry!r} is not role=hours with a role of {', '.join(TOPIC_ROLES)}")
            table[role.strip()] = float(hours)
        missing = [r for r in TOPIC_ROLES if r not in table]
        if missing:
            raise ValueError(f"HERALD_TOPIC_RETENTION_HOURS has no retention for {', '.join(missing)}")
        return table

    def redis_url_for(self, role: str) -> str:
        """The Redis URL of ``role`` (one of ``REDIS_ROLES``, or ``main``)."""
        return (getattr(self, f"redis_{role}_url") if role in REDIS_ROLES else None) or self.redis_url

    def control_prefix(self) -> str:
        """Redis key prefix of operator controls, isolated per topic namespace like the topics."""
        return f"{self.control_redis_prefix}{self.kafka_topic_namespace}"

    def group_id(self, name: str) -> str:
        return f"{self.kafka_group_prefix}-{name}"


#: The kinds of topic, each with its own retention (``topic_retention_hours``).
TOPIC_ROLES = ("domain", "notify", "retry", "status", "dlq", "erasure", "erasure_status")

#: What Herald keeps in Redis besides the main URL's (pub/sub, stream tokens, operator controls), each with its own URL setting.
REDIS_ROLES = ("dedupe", "ratelimit", "cache", "codes")


def url_password(env: str, url: str) -> Iterator[Secret]:
    """A connection URL's password, when it has one: a placeholder there is refused like any secret."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return
    if password is not None:
        yield Secret(f"{env} (its password)", password, min_length=1)
