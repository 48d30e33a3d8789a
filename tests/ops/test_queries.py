import contextlib

import pytest

from services.email.app import create_app as email_app
from services.email.settings import Settings as EmailSettings
from services.inapp.app import create_app as inapp_app
from services.inapp.settings import Settings as InappSettings
from services.ingress.app import create_app as ingress_app
from services.ingress.settings import Settings as IngressSettings
from services.push.app import create_app as push_app
from services.push.settings import Settings as PushSettings
from services.router.app import create_app as router_app
from services.router.settings import Settings as RouterSettings
from services.sms.app import create_app as sms_app
from services.sms.settings import Settings as SmsSettings

from ..support import running, settings_for
from .promql import DASHBOARDS, SYNTHETIC, all_queries, exported_names, is_exported, metric_names

# The module's first test also starts all six services (each joining its consumer groups): on a
# busy two-core machine that alone can take minutes.
pytestmark = pytest.mark.timeout(400)

SERVICES = [
    (ingress_app, IngressSettings),
    (router_app, RouterSettings),
    (email_app, EmailSettings),
    (sms_app, SmsSettings),
    (push_app, PushSettings),
    (inapp_app, InappSettings),
]


def test_metric_names_are_read_out_of_promql():
    expr = (
        'histogram_quantile(0.99, sum by (channel, lane, le) (rate(herald_end_to_end_latency_seconds_bucket{lane="critical", x=~"a|b"}[5m]))) > 10'
        ' or sum by (group) (max by (group, topic, partition) (herald_consumer_lag)) / on (group) group_left up{job="herald"}'
    )
    assert metric_names(expr) == {"herald_end_to_end_latency_seconds_bucket", "herald_consumer_lag", "up"}
    assert metric_names("label_values(herald_deliveries_total, channel)") == {"herald_deliveries_total"}
    assert metric_names('sum(increase(herald_sms_spend_usd_total{c="$channel"}[$__rate_interval])) > 50') == {"herald_sms_spend_usd_total"}


def test_the_dashboard_and_rules_have_queries():
    queries = all_queries()
    assert DASHBOARDS and len([q for where, q in queries if where.endswith(".json")]) >= 20
    assert len([q for where, q in queries if where.endswith(".yml")]) >= 6


@pytest.fixture(scope="module")
async def exported(infra):
    from ..support import new_namespace

    namespace = new_namespace()
    pages = {}
    async with contextlib.AsyncExitStack() as stack:
        for create_app, settings_cls in SERVICES:
            # Six services in this one process and event loop: no lag collector (it describes every topic of the
            # session's broker) and no metadata refresh each second (the router's pattern subscription reads every
            # topic's metadata), or the loop starves and the consumers' heartbeats miss their 2 s session.
            settings = settings_for(settings_cls, infra, namespace, consumer_lag_interval_seconds=0, kafka_metadata_max_age_ms=60_000)
            client = await stack.enter_async_context(running(create_app(settings)))
            response = await client.get("/metrics/")
            assert response.status_code == 200
            pages[settings.service_name] = exported_names(response.text)
    return pages


def test_every_service_exports_the_shared_and_faststream_metrics(exported):
    assert set(exported) == {"ingress", "router", "email", "sms", "push", "inapp"}
    for service, names in exported.items():
        assert {"herald_deliveries_total", "herald_consumer_lag", "faststream_received_processed_messages_total"} <= names, service


@pytest.mark.parametrize(("where", "expr"), all_queries(), ids=[f"{w}:{i}" for i, (w, _) in enumerate(all_queries())])
def test_every_query_names_a_metric_the_services_export(exported, where, expr):
    union = set().union(*exported.values())
    names = metric_names(expr)
    assert names, f"no metric found in {expr!r}"
    missing = sorted(n for n in names if n not in SYNTHETIC and not is_exported(n, union))
    assert not missing, f"{where}: {expr!r} names {missing}, which no service exports"


def test_dashboard_panels_fit_the_grid_without_overlapping():
    import json

    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] and dashboard["title"]
        cells = set()
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
            mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
            assert not mine & cells, f"{panel['title']} overlaps another panel"
            cells |= mine
            if panel["type"] != "row":
                refs = [t["refId"] for t in panel["targets"]]
                assert refs and len(refs) == len(set(refs)) and panel["datasource"]["uid"] == "${datasource}", panel["title"]
