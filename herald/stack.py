"""Start Herald's services as local processes, wait until they are ready, stop them all."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .infra import InfraError, stop, wait_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    app: str  # uvicorn factory
    port: int
    ready_path: str = "/readyz"

    @property
    def port_variable(self) -> str:
        return f"HERALD_{self.name.upper()}_PORT"


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("ingress", "services.ingress.app:create_app", 8101),
    ServiceSpec("router", "services.router.app:create_app", 8102),
    ServiceSpec("email", "services.email.app:create_app", 8103),
    ServiceSpec("sms", "services.sms.app:create_app", 8104),
    ServiceSpec("push", "services.push.app:create_app", 8105),
    ServiceSpec("inapp", "services.inapp.app:create_app", 8106),
)
SANDBOX = ServiceSpec("sandbox", "sandbox.app:create_app", 8110, ready_path="/healthz")


def port_of(spec: ServiceSpec, env: Mapping[str, str]) -> int:
    return int(env.get(spec.port_variable, spec.port))


@dataclass
class Stack:
    """A set of service processes sharing one environment."""

    env: dict[str, str]
    log_dir: Path
    host: str = "127.0.0.1"
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)  # per-service additions to env
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def url(self, spec: ServiceSpec) -> str:
        return f"http://{self.host}:{port_of(spec, self.env)}"

    def start(self, spec: ServiceSpec) -> subprocess.Popen:
        """Start one service (uvicorn --factory) with its log in ``log_dir``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{spec.name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        port = port_of(spec, self.env)
        cmd = [sys.executable, "-m", "uvicorn", "--factory", spec.app, "--host", self.host, "--port", str(port), "--no-access-log"]
        env = {**self.env, **self.service_env.get(spec.name, {})}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[spec.name] = proc
        return proc

    def wait_ready(self, spec: ServiceSpec, *, timeout: float = 60.0) -> None:
        """Poll the service's readiness endpoint until it answers 200."""
        proc = self.procs[spec.name]
        port = port_of(spec, self.env)
        wait_port(self.host, port, timeout=timeout, proc=proc)
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise InfraError(f"{spec.name} exited with {proc.returncode}; see {self.log_dir / (spec.name + '.log')}")
            try:
                response = httpx.get(f"{self.url(spec)}{spec.ready_path}", timeout=3)
                if response.status_code == 200:
                    return
                last = response.text
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise InfraError(f"{spec.name} not ready after {timeout:.0f}s: {last}")

    def start_all(self, specs: tuple[ServiceSpec, ...], *, timeout: float = 90.0) -> None:
        for spec in specs:
            self.start(spec)
        for spec in specs:
            self.wait_ready(spec, timeout=timeout)

    def dead(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is not None]

    def stop_all(self) -> None:
        """SIGTERM every service at once, give each its drain time (HERALD_DRAIN_TIMEOUT_SECONDS + 10 s), then kill."""
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, 15)
                except ProcessLookupError:
                    pass
        grace = float(self.env.get("HERALD_DRAIN_TIMEOUT_SECONDS", "30")) + 10
        for proc in self.procs.values():
            stop(proc, timeout=grace)
        self.procs.clear()
