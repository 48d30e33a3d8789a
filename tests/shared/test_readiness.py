import subprocess

import pytest

from herald import infra as local
from services.inapp.app import create_app
from services.inapp.settings import Settings

from ..support import running, settings_for, tls_certificate


async def test_readyz_reports_each_dependency_and_turns_false_when_redis_stops(infra, namespace, tmp_path, capfd):
    port = local.free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        local.wait_port("127.0.0.1", port, timeout=10, proc=redis)
        settings = settings_for(Settings, infra, namespace, redis_url=f"redis://127.0.0.1:{port}/0")
        async with running(create_app(settings)) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["checks"] == {"kafka": "ok", "postgres": "ok", "redis": "ok"}
            local.stop(redis)
            not_ready = await client.get("/readyz")
            assert not_ready.status_code == 503
            assert not_ready.json() == {"status": "not ready", "checks": {"kafka": "ok", "postgres": "ok", "redis": "failing"}}
            assert str(port) not in not_ready.text and "Error" not in not_ready.text  # no host, port or exception text
            assert "not ready: redis: ConnectionError" in capfd.readouterr().err  # the why is logged
            metrics = (await client.get("/metrics/")).text
            assert 'herald_dependency_up{dependency="redis"} 0.0' in metrics and 'herald_dependency_up{dependency="kafka"} 1.0' in metrics
            assert (await client.get("/healthz")).status_code == 200
    finally:
        local.stop(redis)


async def test_metrics_endpoint_serves_prometheus_text_with_and_without_the_slash(infra, namespace):
    async with running(create_app(settings_for(Settings, infra, namespace))) as client:
        for path in ("/metrics", "/metrics/"):
            response = await client.get(path, follow_redirects=False)
            assert response.status_code == 200, path
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert "herald_deliveries_total" in response.text
        openmetrics = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text") and openmetrics.text.endswith("# EOF\n")


async def test_redis_with_a_password_is_reached_through_the_url_and_a_wrong_one_is_not(infra, namespace, tmp_path):
    port = local.free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
         "--requirepass", "s3cret-redis-pass"],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        local.wait_port("127.0.0.1", port, timeout=10, proc=redis)
        for password, expected in (("s3cret-redis-pass", "ok"), ("wrong", "failing")):
            settings = settings_for(Settings, infra, namespace, redis_url=f"redis://:{password}@127.0.0.1:{port}/0")
            async with running(create_app(settings)) as client:
                answer = await client.get("/readyz")
            assert answer.json()["checks"]["redis"] == expected
            assert password not in answer.text
    finally:
        local.stop(redis)


@pytest.mark.real_clock  # OpenSSL checks the certificate against the real clock
async def test_redis_over_tls_is_reached_with_its_ca_from_the_url_and_not_without(infra, namespace, tmp_path):
    cert, key = tls_certificate(tmp_path)
    port = local.free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
         "--requirepass", "tls-redis-password"],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        local.wait_port("127.0.0.1", port, timeout=10, proc=redis)
        trusted = f"rediss://:tls-redis-password@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
        for url, expected in ((trusted, "ok"), (trusted.split("?")[0], "failing")):  # the system's CAs do not know this one
            async with running(create_app(settings_for(Settings, infra, namespace, redis_url=url))) as client:
                assert (await client.get("/readyz")).json()["checks"]["redis"] == expected
    finally:
        local.stop(redis)
