"""JSON-line logging with the service name, event id and notification id on every line."""

from __future__ import annotations

import contextvars
import logging
import re
import sys

from pythonjsonlogger.json import JsonFormatter

event_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("event_id", default=None)
notification_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("notification_id", default=None)


class _ContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "herald_masked", False):  # every line, whoever logs it: addresses and numbers masked
            record.msg, record.args = mask_text(record.getMessage()), None
            record.herald_masked = True
        record.service = self.service
        record.event_id = getattr(record, "event_id", None) or event_id_var.get()
        record.notification_id = getattr(record, "notification_id", None) or notification_id_var.get()
        return True


def configure_logging(service: str, *, level: str = "INFO", json: bool | None = None) -> None:
    """Send every log line to stderr, as JSON unless stderr is a terminal."""
    if json is None:
        json = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter(service))
    if json:
        handler.setFormatter(
            _MaskedJson(
                "%(asctime)s %(levelname)s %(name)s %(service)s %(event_id)s %(notification_id)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(
            _MaskedText("%(asctime)s %(levelname)-7s %(service)s %(name)s: %(message)s [event=%(event_id)s notification=%(notification_id)s]")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _MaskedJson(JsonFormatter):
    def formatException(self, ei) -> str:  # noqa: ANN001, N802 - logging's signature
        return mask_text(super().formatException(ei))


class _MaskedText(logging.Formatter):
    def formatException(self, ei) -> str:  # noqa: ANN001, N802
        return mask_text(super().formatException(ei))


def mask_email(address: str | None) -> str:
    """``ada@example.com`` → ``a***@example.com``."""
    if not address:
        return "-"
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


def mask_phone(number: str | None) -> str:
    """``+14155550100`` → ``+1415*****00``: country and area stay readable, the line does not."""
    if not number:
        return "-"
    keep_head = min(5, max(len(number) - 4, 0))
    return number[:keep_head] + "*" * max(len(number) - keep_head - 2, 0) + number[-2:]


_EMAILISH = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_NUMBERISH = re.compile(r"\+\d[\d ().-]{5,}\d|\b\d{8,15}\b")


def mask_text(text: str) -> str:
    """``text`` with every email address and phone-number-like run masked (errors quote them)."""
    text = _EMAILISH.sub(lambda m: mask_email(m.group()), text)
    return _NUMBERISH.sub(lambda m: mask_phone(re.sub(r"[^\d+]", "", m.group())), text)
