"""What Herald's services share: the message contract, settings, wiring and delivery semantics.

Only the names in ``__all__`` are public; the ``_``-prefixed modules are private.
"""

from ._app import OutageBackoff, AppResources, KafkaResources, Resources, create_service, periodic
from ._auth import AdminService, PublishService, RecipientsService, TracesService, UserId, current_user, decode_user_token, service_with
from ._audit import audit
from ._keys import Scope, ServiceKey, hash_service_key, parse_service_keys
from ._db import MigrationError, apply_migrations, create_pool, ensure_database, load_migrations
from ._breaker import ChannelGate, GateState
from ._erasure import Erase, Erasure, ErasureReport, erased_users, erasure_router, record_tombstone
from ._export import Export, ledger_export, rows
from ._exceptions import HeraldError, InvalidMessage, Misconfigured, PermanentError, Suppressed, TransientError, describe, is_outage, parse_retry_after, patiently
from ._kafka import (
    Outgoing,
    all_topics,
    create_topics,
    dead_letter,
    header,
    make_broker,
    publish_many,
    subscriber_options,
)
from ._logging import configure_logging, event_id_var, mask_email, mask_phone, mask_text, notification_id_var
from ._metrics import Metrics
from ._models import (
    NOTIFICATION_NAMESPACE,
    SWITCHABLE_CATEGORIES,
    Category,
    Channel,
    CloudEvent,
    DeliveryState,
    DeliveryStatus,
    Dispatch,
    Recipient,
    notification_id,
    utcnow,
)
from ._ratelimit import Grant, Limit, RateLimiter, per_address, per_user, public_user_key
from ._retention import Purge, ledger_purge, purge_all, retention
from ._sender import Clock, Deliver, Ledger, SenderPipeline, retry_delay
from ._templates import MessageTemplates, TemplateError, local_times
from ._settings import REDIS_ROLES, CommaList, HeraldSettings, Secret, UnsafeProductionSettings, looks_like_placeholder, split_commas, url_password

__all__ = [
    "NOTIFICATION_NAMESPACE",
    "REDIS_ROLES",
    "SWITCHABLE_CATEGORIES",
    "AppResources",
    "Category",
    "Clock",
    "Channel",
    "ChannelGate",
    "CloudEvent",
    "CommaList",
    "Deliver",
    "Erase",
    "Erasure",
    "Export",
    "ledger_export",
    "rows",
    "ErasureReport",
    "erased_users",
    "erasure_router",
    "record_tombstone",
    "DeliveryState",
    "DeliveryStatus",
    "GateState",
    "Grant",
    "Dispatch",
    "HeraldError",
    "HeraldSettings",
    "Secret",
    "UnsafeProductionSettings",
    "url_password",
    "looks_like_placeholder",
    "InvalidMessage",
    "Limit",
    "KafkaResources",
    "Ledger",
    "Metrics",
    "MessageTemplates",
    "MigrationError",
    "Misconfigured",
    "OutageBackoff",
    "periodic",
    "Outgoing",
    "PermanentError",
    "Purge",
    "ledger_purge",
    "purge_all",
    "retention",
    "RateLimiter",
    "per_address",
    "per_user",
    "public_user_key",
    "Recipient",
    "Resources",
    "SenderPipeline",
    "AdminService",
    "PublishService",
    "RecipientsService",
    "TracesService",
    "Scope",
    "ServiceKey",
    "hash_service_key",
    "parse_service_keys",
    "service_with",
    "audit",
    "Suppressed",
    "TemplateError",
    "TransientError",
    "UserId",
    "all_topics",
    "apply_migrations",
    "configure_logging",
    "create_pool",
    "create_service",
    "create_topics",
    "current_user",
    "dead_letter",
    "decode_user_token",
    "ensure_database",
    "event_id_var",
    "header",
    "load_migrations",
    "local_times",
    "make_broker",
    "mask_email",
    "mask_text",
    "mask_phone",
    "notification_id",
    "notification_id_var",
    "parse_retry_after",
    "publish_many",
    "retry_delay",
    "split_commas",
    "subscriber_options",
    "describe",
    "is_outage",
    "patiently",
    "utcnow",
]
