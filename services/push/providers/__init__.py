"""The outside world of the push service: Web Push services, reached through pywebpush."""

from .webpush import PushConnectionError, PushResponse, WebPushClient, load_vapid, public_key, resolve

__all__ = ["PushConnectionError", "PushResponse", "WebPushClient", "load_vapid", "public_key", "resolve"]
