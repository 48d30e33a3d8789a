"""The whole platform as processes on free ports, with a real Prometheus scraping it (ops end-to-end tests)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from herald import infra as local
from herald.cli import prometheus_config
from herald.stack import ROOT, SERVICES, ServiceSpec, Stack, port_of
from shared import HeraldSettings, create_topics

from ..support import Infra, new_namespace

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


class DeployedStack(Stack):
    """The local stack, with uvicorn started as the deploy files start it (JSON log configuration)."""

    def start(self, spec: ServiceSpec) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{spec.name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        cmd = [
            sys.executable, "-m", "uvicorn", "--factory", spec.app, "--host", self.host, "--port", str(port_of(spec, self.env)),
            "--no-access-log", "--log-config", str(DEPLOY / "logging.yaml"),
        ]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[spec.name] = proc
        return proc


@dataclass
class RunningPlatform:
    """Herald's services as processes, their logs, and the Prometheus that scrapes them."""

    stack: Stack
    settings: HeraldSettings
    log_dir: Path
    prometheus_url: str = ""
    prometheus: subprocess.Popen | None = field(default=None, repr=False)

    def url(self, name: str) -> str:
        return self.stack.url(next(s for s in SERVICES if s.name == name))

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query through Prometheus' HTTP API; its result vector."""
        response = httpx.get(f"{self.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{expr!r}: {body}"
        return body["data"]["result"]

    def value(self, expr: str) -> float:
        """The single value of a query that sums to one series (0 when nothing matches yet)."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0


def scrape_config(targets: dict[str, int], prometheus_port: int, *, interval: str = "1s") -> dict[str, Any]:
    """What `herald run` gives Prometheus, pointed at ``targets`` (service → port), scraping every ``interval``."""
    config = prometheus_config({name: f"127.0.0.1:{port}" for name, port in targets.items()}, f"127.0.0.1:{prometheus_port}")
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    return config


def start_prometheus(config: dict[str, Any], workdir: Path, port: int, *, timeout: float = 60) -> subprocess.Popen:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: run `make system-deps` (Debian package prometheus)"
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    log = open(workdir / "prometheus.out", "ab")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {proc.returncode}: {(workdir / 'prometheus.out').read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    local.stop(proc)
    raise AssertionError("prometheus not ready")


@contextmanager
def running_platform(infra: Infra, workdir: Path, *, services: tuple[ServiceSpec, ...] = SERVICES, **env: str) -> Iterator[RunningPlatform]:
    """Start ``services`` on free ports against the test infrastructure, and Prometheus scraping them."""
    namespace = new_namespace()
    environment = {**os.environ, **infra.env(namespace), "HERALD_LOG_JSON": "true", **env}
    ports = {spec.name: local.free_port() for spec in services}
    environment.update({spec.port_variable: str(ports[spec.name]) for spec in services})
    settings = HeraldSettings(**{k.removeprefix("HERALD_").lower(): v for k, v in infra.env(namespace).items()})
    asyncio.run(create_topics(settings))
    log_dir = workdir / "logs"
    stack = DeployedStack(env=environment, log_dir=log_dir)
    platform = RunningPlatform(stack=stack, settings=settings, log_dir=log_dir)
    try:
        stack.start_all(services, timeout=120)
        prometheus_port = local.free_port()
        config = scrape_config(ports, prometheus_port)
        platform.prometheus = start_prometheus(config, workdir, prometheus_port)
        platform.prometheus_url = f"http://127.0.0.1:{prometheus_port}"
        yield platform
    finally:
        if platform.prometheus is not None:
            local.stop(platform.prometheus)
        stack.stop_all()
