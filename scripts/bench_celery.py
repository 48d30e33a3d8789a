"""The Celery + Redis worker `make bench` compares Herald with: the same work per event, done the usual way.

One task per event (`system.update` for one user, as the benchmark sends it to Herald): skip an event
seen before (a Redis key, as a Celery task with ``acks_late`` needs), read the recipient and their
preferences from PostgreSQL, render and send the email (Herald's own templates, CSS inlining and
message building, over SMTP to the same local sink), render and store the in-app row (Herald's own
inbox insert) and announce it on Redis, then note the time it finished. Nothing goes through Kafka, no
ledger, no decision trace, no status messages: a plain in-process design, the one Herald replaces.

    celery -A scripts.bench_celery worker --concurrency 2 --pool prefork

Configured by environment: BENCH_CELERY_BROKER (Redis URL), BENCH_DATABASE_URL, BENCH_SMTP_PORT.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import smtplib
import sys
import time
from pathlib import Path
from typing import Any

from celery import Celery

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import redis  # noqa: E402

from services.email.compose import EmailTemplates, compose  # noqa: E402
from services.inapp import repo  # noqa: E402
from services.inapp.app import TEMPLATES as INAPP_TEMPLATES  # noqa: E402
from shared import MessageTemplates, local_times, notification_id  # noqa: E402

DONE = "bench:celery:done"  # a list of "<event id> <epoch seconds>" the benchmark reads
FAILED = "bench:celery:failed"  # what went wrong, for the benchmark to stop on

app = Celery("herald_bench", broker=os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/1"))
app.conf.update(
    task_acks_late=True,  # a task is lost by no crash: the usual setting for notifications
    worker_prefetch_multiplier=4,
    task_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


class _Worker:
    """Per process (prefork children each make their own): templates, a database connection, SMTP, Redis."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.db: asyncpg.Connection = self.loop.run_until_complete(asyncpg.connect(os.environ["BENCH_DATABASE_URL"]))
        self.loop.run_until_complete(self.db.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"))
        self.redis = redis.Redis.from_url(os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/1"))
        self.email_templates = EmailTemplates()
        self.inapp_templates = MessageTemplates(INAPP_TEMPLATES)
        self.smtp_port = int(os.environ["BENCH_SMTP_PORT"])
        self.smtp: smtplib.SMTP | None = None

    def send(self, message: Any) -> None:
        for attempt in (1, 2):
            try:
                if self.smtp is None:
                    self.smtp = smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=10)
                self.smtp.send_message(message)
                return
            except (smtplib.SMTPServerDisconnected, OSError):
                self.smtp = None
                if attempt == 2:
                    raise


_worker: _Worker | None = None


def worker() -> _Worker:
    global _worker
    if _worker is None or _worker.pid != os.getpid():
        _worker = _Worker()
    return _worker


@app.task(name="notify")
def notify(event: dict[str, Any]) -> None:
    w = worker()
    if not w.redis.set(f"bench:celery:seen:{event['id']}", 1, nx=True, ex=86400):
        return
    try:
        w.loop.run_until_complete(_notify(w, event))
    except Exception as exc:
        w.redis.delete(f"bench:celery:seen:{event['id']}")  # a redelivery tries again
        w.redis.rpush(FAILED, f"{type(exc).__name__}: {exc}")
        raise
    w.redis.rpush(DONE, f"{event['id']} {time.time()}")


async def _notify(w: _Worker, event: dict[str, Any]) -> None:
    data = event["data"]
    user_id = data["user_ids"][0]
    recipient = await w.db.fetchrow("SELECT email, locale, timezone FROM router.recipients WHERE user_id = $1 AND deleted_at IS NULL", user_id)
    if recipient is None:
        return
    off = {r["channel"] for r in await w.db.fetch("SELECT channel FROM router.preferences WHERE user_id = $1 AND category = 'system_updates' AND NOT enabled", user_id)}
    if "email" not in off and recipient["email"]:
        rendered = w.email_templates.render(
            "system_update", locale=recipient["locale"], data=data, url=data.get("path"), frontend_url="http://localhost:3000",
            brand="Herald", timezone=recipient["timezone"],
        )
        nid = notification_id(source=event["source"], event_id=event["id"], user_id=user_id, channel="email")
        email = compose(rendered, to=recipient["email"], sender="notifications@herald.test", sender_name="Herald", notification_id=nid)
        w.send(email.message())
    if "inapp" not in off:
        text = w.inapp_templates.render("system_update", recipient["locale"], local_times(data, recipient["timezone"]))
        nid = notification_id(source=event["source"], event_id=event["id"], user_id=user_id, channel="inapp")
        row, created = await repo.insert(
            conn=w.db, id=nid, user_id=user_id, category="system_updates", type=event["type"], title=text["title"], body=text["body"],
            url=data.get("path"), data={}, created_at=dt.datetime.now(dt.UTC),
        )
        unread = await repo.unread_count(conn=w.db, user_id=user_id)
        if created:
            w.redis.publish(f"bench:celery:inbox:{user_id}", json.dumps({"id": str(nid), "unread": unread}))
