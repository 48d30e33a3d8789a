"""Retention against the services' real schemas: rows past their store's age go, a bounded batch at a time;
newer rows, and deliveries still in progress, stay."""

import uuid
from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from shared import HeraldSettings, Metrics, create_pool, purge_all


def metric(metrics: Metrics, store: str) -> float:
    return metrics.registry.get_sample_value("herald_retention_purged_total", {"store": store}) or 0.0


async def purged(infra, purges) -> Metrics:
    metrics = Metrics(CollectorRegistry())
    pool = await create_pool(infra.database_url, min_size=1, max_size=2)
    try:
        # batch 1: several statements per store, as a store larger than one batch is purged
        await purge_all(SimpleNamespace(pool=pool, metrics=metrics), purges, batch=1, pause=0)
    finally:
        await pool.close()
    return metrics


async def ledger_row(db, schema: str, *, age: str, status: str) -> uuid.UUID:
    nid = uuid.uuid4()
    await db.execute(
        f"INSERT INTO {schema}.ledger (notification_id, event_id, event_type, user_id, status, created_at) "
        f"VALUES ($1, 'e-retention', 't', 'u-retention', $2, now() - interval '{age}')",
        nid, status,
    )
    return nid


async def test_each_senders_ledger_keeps_its_finished_rows_for_its_retention_and_what_is_in_progress_always(infra, db):
    from services.sms.settings import Settings as SmsSettings
    from shared import ledger_purge

    settings, sms = HeraldSettings(environment="test"), SmsSettings(environment="test")
    assert settings.ledger_retention_days == 180 and sms.sms_ledger_retention_days == 730
    rows = {}
    for schema in ("email", "sms", "push", "inapp"):
        rows[schema] = {
            "old": await ledger_row(db, schema, age="200 days", status="sent"),
            "old_in_progress": await ledger_row(db, schema, age="200 days", status="claimed"),
            "new": await ledger_row(db, schema, age="10 days", status="failed"),
            "very_old": await ledger_row(db, schema, age="800 days", status="delivered"),
        }
    purges = [ledger_purge(s, days=settings.ledger_retention_days) for s in ("email", "push", "inapp")]
    purges.append(ledger_purge("sms", days=sms.sms_ledger_retention_days))
    metrics = await purged(infra, purges)
    for schema, ids in rows.items():
        left = {r["notification_id"] for r in await db.fetch(f"SELECT notification_id FROM {schema}.ledger WHERE event_id = 'e-retention'")}
        kept = {"old_in_progress", "new"} | ({"old"} if schema == "sms" else set())  # sms: the cost record, two years
        assert left == {ids[k] for k in kept}, schema
        assert metric(metrics, f"{schema}.ledger") >= (1 if schema == "sms" else 2)


async def test_the_inbox_the_trace_and_finished_broadcasts_go_after_their_retention(infra, db):
    from services.inapp.handlers import purges as inapp_purges
    from services.inapp.settings import Settings as InappSettings
    from services.router.app import purges as router_purges
    from services.router.settings import Settings as RouterSettings

    user = f"u-{uuid.uuid4().hex[:8]}"
    inbox = {}
    for name, created, deleted in (("old", "200 days", None), ("new", "1 day", None), ("deleted_long_ago", "40 days", "31 days"), ("deleted_lately", "40 days", "2 days")):
        nid = uuid.uuid4()
        await db.execute(
            "INSERT INTO inapp.notifications (id, seq, user_id, category, type, title, body, created_at, deleted_at) "
            f"VALUES ($1, (SELECT count(*) + 1 FROM inapp.notifications WHERE user_id = $2), $2, 'messages', 't', 'title', 'body', now() - interval '{created}', "
            f"{'NULL' if deleted is None else f'now() - interval {deleted!r}'})",
            nid, user,
        )
        inbox[name] = nid
    trace = {}
    for name, age in (("old", "40 days"), ("new", "1 day")):
        nid = uuid.uuid4()
        await db.execute(
            "INSERT INTO router.decisions (notification_id, event_id, event_source, event_type, user_id, channel, decision, reason, decided_at) "
            f"VALUES ($1, $2, 'tests', 'payout.paid', 'u', 'email', 'routed', 'routed', now() - interval '{age}')",
            nid, f"e-{user}",
        )
        await db.execute(
            f"INSERT INTO router.deliveries (notification_id, status, attempt, event_id, user_id, channel, at) VALUES ($1, 'sent', 1, $2, 'u', 'email', now() - interval '{age}')",
            nid, f"e-{user}",
        )
        trace[name] = nid
    broadcasts = {}
    for name, finished in (("finished_long_ago", "8 days"), ("finished_lately", "1 day"), ("open", None)):
        broadcasts[name] = await db.fetchval(
            "INSERT INTO router.broadcasts (namespace, event_source, event_id, template, shard, shards, event, origin, finished_at) "
            f"VALUES ($1, 'tests', $2, 't', 0, 1, '\\x00'::bytea, 'o', {'NULL' if finished is None else f'now() - interval {finished!r}'}) RETURNING id",
            f"ns-{user}", name,
        )
    metrics = await purged(infra, [*inapp_purges(InappSettings(environment="test")), *router_purges(RouterSettings(environment="test"))])

    left = {r["id"] for r in await db.fetch("SELECT id FROM inapp.notifications WHERE user_id = $1", user)}
    assert left == {inbox["new"], inbox["deleted_lately"]}
    for table in ("decisions", "deliveries"):
        assert {r["notification_id"] for r in await db.fetch(f"SELECT notification_id FROM router.{table} WHERE event_id = $1", f"e-{user}")} == {trace["new"]}
    left = {r["id"] for r in await db.fetch("SELECT id FROM router.broadcasts WHERE namespace = $1", f"ns-{user}")}
    assert left == {broadcasts["finished_lately"], broadcasts["open"]}
    for store in ("inapp.notifications", "inapp.notifications.deleted", "router.decisions", "router.deliveries", "router.broadcasts"):
        assert metric(metrics, store) >= 1, store
