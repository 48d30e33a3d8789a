"""Log lines of a batch name the event they are about, and only that one."""

import json
import logging
from types import SimpleNamespace

from aiokafka import ConsumerRecord
from prometheus_client import CollectorRegistry

from services.router.catalogue import load_catalogue
from services.router.routing import BatchRouter
from services.router.settings import Settings
from shared import event_id_var
from shared._metrics import Metrics


def record(offset: int, value: bytes) -> ConsumerRecord:
    return ConsumerRecord("domain.booking", 0, offset, 0, 0, None, value, None, 0, len(value), [])


def event(event_id: str, event_type: str, data: dict) -> bytes:
    return json.dumps({"specversion": "1.0", "id": event_id, "source": "tests", "type": event_type, "data": data}).encode()


def test_a_dead_letter_line_names_its_own_event_and_parsing_leaves_no_event_id_behind(caplog):
    router = BatchRouter(Settings(), load_catalogue())
    res = SimpleNamespace(metrics=Metrics(CollectorRegistry()))
    caplog.set_level(logging.DEBUG, logger="services.router.routing")
    broken = router.parse(record(1, event("e-broken", "booking.confirmed", {"booking_id": "b-1"})), res)
    skipped = router.parse(record(2, event("e-unknown", "booking.unheard_of", {})), res)
    unreadable = router.parse(record(3, b"{not json"), res)
    assert event_id_var.get() is None
    assert broken.failed is not None and unreadable.failed is not None and skipped.failed is None

    router.dead_letter(broken, res, [])
    router.dead_letter(unreadable, res, [])
    lines = {r.getMessage().split(":")[0]: getattr(r, "event_id", None) for r in caplog.records}
    assert lines == {
        "skipped event of unknown type 'booking.unheard_of'": "e-unknown",
        "dead-lettered domain.booking/0@1": "e-broken",
        "dead-lettered domain.booking/0@3": None,
    }
