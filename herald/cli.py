"""``herald``: run the platform locally, migrate, create topics, regenerate the contract, replay the DLQ."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from shared import Channel, HeraldSettings, apply_migrations, create_topics, ensure_database, load_migrations

from . import infra
from .drain import RUN_DRAIN_SECONDS
from .stack import ROOT, SANDBOX, SERVICES, Stack, port_of

RUN_DIR = ROOT / ".run"


def operator() -> str:
    """Who runs an operator command, for the audit log."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def audited(action: str, target: str | None = None, **detail: object) -> None:
    """An audit line for an operator command, on stderr like a service's (JSON unless a terminal)."""
    from shared import audit
    from shared._logging import configure_logging

    configure_logging("herald-cli", level="INFO")
    audit(None, actor=operator(), action=action, target=target, **detail)


class ToolSettings(HeraldSettings):
    """Settings of the operator commands: they serve nothing, so a production setting without its secrets is fine."""

    refuses_unsafe_production = False
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.local.yml"


def migrations_of_all() -> list:
    found = []
    for spec in SERVICES:
        directory = ROOT / "services" / spec.name / "migrations"
        if directory.is_dir():
            found += load_migrations(spec.name, directory)
    return found


async def migrate(database_url: str) -> list[str]:
    """Create the database if needed and apply every service's pending migrations."""
    import asyncpg

    await ensure_database(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        applied = await apply_migrations(conn, migrations_of_all())
    finally:
        await conn.close()
    return [f"{m.service} {m.version:03d}_{m.name}" for m in applied]


async def fresh_database(database_url: str) -> None:
    """Drop the database ``database_url`` names (closing its connections), then create and migrate it
    anew: what the tests and benchmarks start from."""
    import asyncpg

    parts = urlsplit(database_url)
    admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{parts.path.lstrip("/")}" WITH (FORCE)')
    finally:
        await admin.close()
    await migrate(database_url)


def _kafka_port(settings: HeraldSettings) -> tuple[str, int]:
    first = settings.kafka_bootstrap.split(",")[0]
    parts = urlsplit(f"//{first}")
    return parts.hostname or "127.0.0.1", parts.port or 9092


def _wait_bindable(port: int, timeout: float) -> bool:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
                return True
            except OSError:
                if time.monotonic() > deadline:
                    return False
        time.sleep(1)


def dev_vapid_private_key() -> str:
    """The development VAPID private key (base64url, raw 32 bytes), generated once into ``.run/`` (kept out of git)."""
    import base64

    from cryptography.hazmat.primitives.asymmetric import ec

    path = RUN_DIR / "vapid_private_key"
    if not path.exists():
        RUN_DIR.mkdir(exist_ok=True)
        raw = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value.to_bytes(32, "big")
        path.touch(mode=0o600)
        path.write_text(base64.urlsafe_b64encode(raw).decode().rstrip("=") + "\n")
    return path.read_text().strip()


def prometheus_config(targets: dict[str, str], self_target: str, *, base: Path = PROMETHEUS_CONFIG) -> dict:
    """The shipped local Prometheus configuration with each service's target (``host:port``) and absolute rule paths."""
    import yaml

    config = yaml.safe_load(base.read_text())
    config["rule_files"] = [str(base.parent / pattern) for pattern in config.get("rule_files", [])]
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            service = static.get("labels", {}).get("service")
            static["targets"] = [targets[service] if service else self_target]
    return config


def start_prometheus(stack: Stack, port: int) -> subprocess.Popen | None:
    """Start Prometheus, where it is installed, scraping the stack with the shipped configuration and rules."""
    import yaml

    binary = shutil.which("prometheus")
    if binary is None:
        return None
    targets = {spec.name: f"{stack.host}:{port_of(spec, stack.env)}" for spec in SERVICES}
    path = RUN_DIR / "prometheus.yml"
    path.write_text(yaml.safe_dump(prometheus_config(targets, f"127.0.0.1:{port}")))
    log = open(stack.log_dir / "prometheus.log", "ab")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [binary, f"--config.file={path}", f"--storage.tsdb.path={RUN_DIR / 'prometheus'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    infra.wait_port("127.0.0.1", port, timeout=30, proc=proc)
    return proc


def drain_stack(stack: Stack, settings: HeraldSettings, *, timeout: float) -> None:
    """Close intake, then wait (with progress) until every consumer group has finished what it holds."""
    from .drain import wait_until_drained

    ingress = stack.procs.get("ingress")
    if ingress is not None and ingress.poll() is None:
        ingress.send_signal(signal.SIGUSR1)
        print("herald: intake closed (ingress answers 503 with Retry-After); finishing what was accepted (Ctrl-C again to stop at once)")
    try:
        backlog = asyncio.run(wait_until_drained(settings, timeout=timeout))
    except Exception as exc:  # the broker is gone or unreachable: nothing more to wait for
        print(f"herald: cannot measure the backlog ({type(exc).__name__}: {exc}); stopping", file=sys.stderr)
        return
    if not backlog.done:
        left = ", ".join(f"{g} {n}" for g, n in sorted(backlog.waiting.items()) if n)
        print(f"herald: still waiting after {timeout:.0f}s ({left}); the embedded broker loses these when it stops", file=sys.stderr)
    else:
        print("herald: every consumer group has caught up")
    if backlog.delayed:
        print(f"herald: {backlog.delayed} retries wait on delay topics and are lost with the embedded broker", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    """Everything `make run` does after installing."""
    # The local platform (embedded broker, sandbox providers, demo pages) is development unless told otherwise.
    os.environ.setdefault("HERALD_ENVIRONMENT", "development")
    settings = HeraldSettings.load()
    env = dict(os.environ)
    env.setdefault("HERALD_PUSH_DEV_HOSTS", f"127.0.0.1:{port_of(SANDBOX, env)}")
    # Email: the sandbox's SMTP server and Resend stand-in, and unsubscribe links that reach this email service.
    env.setdefault("HERALD_SMTP_PORT", env.get("HERALD_SANDBOX_SMTP_PORT", "2525"))
    env.setdefault("HERALD_RESEND_API_BASE", f"http://127.0.0.1:{port_of(SANDBOX, env)}")
    email = next(spec for spec in SERVICES if spec.name == "email")
    # The router gathers an export from each service where this stack serves it.
    env.setdefault("HERALD_EXPORT_SERVICES", ",".join(f"{s.name}=http://127.0.0.1:{port_of(s, env)}" for s in SERVICES if s.name != "router"))
    env.setdefault("HERALD_UNSUBSCRIBE_URL", f"http://127.0.0.1:{port_of(email, env)}/v1/unsubscribe")
    if not env.get("HERALD_VAPID_PRIVATE_KEY"):
        env["HERALD_VAPID_PRIVATE_KEY"] = dev_vapid_private_key()
    stack = Stack(env=env, log_dir=RUN_DIR / "logs")
    if "HERALD_PUBLIC_URL" not in os.environ:
        # Locally nothing routes /v1/webhooks/twilio/* to sms: let the sandbox call it back directly.
        sms = next(spec for spec in SERVICES if spec.name == "sms")
        stack.service_env["sms"] = {"HERALD_PUBLIC_URL": f"http://127.0.0.1:{port_of(sms, env)}"}
    tansu = prometheus = None
    try:
        infra.ensure_postgres(settings.database_url)
        infra.ensure_redis(settings.redis_url)
        host, port = _kafka_port(settings)
        if host in {"127.0.0.1", "localhost"} and not args.external_kafka:
            if infra.port_open(host, port):
                print(f"herald: {host}:{port} is taken; stop what holds it or set HERALD_KAFKA_BOOTSTRAP to another port", file=sys.stderr)
                return 1
            if not _wait_bindable(port, 90):
                print(f"herald: port {port} is not free yet", file=sys.stderr)
                return 1
            RUN_DIR.mkdir(exist_ok=True)
            tansu = infra.start_tansu(port, log_path=RUN_DIR / "tansu.log")
            print(f"herald: embedded Kafka (Tansu) on {host}:{port}")
        applied = asyncio.run(migrate(settings.database_url))
        print(f"herald: database ready ({len(applied)} migrations applied)")
        created = asyncio.run(create_topics(settings))
        print(f"herald: {len(created)} topics created")
        stack.start_all((SANDBOX, *SERVICES))
        prometheus_port = int(env.get("HERALD_PROMETHEUS_PORT", "9090"))
        if shutil.which("prometheus") and infra.port_open("127.0.0.1", prometheus_port):
            print(f"herald: 127.0.0.1:{prometheus_port} is taken; Prometheus not started (set HERALD_PROMETHEUS_PORT)", file=sys.stderr)
        else:
            prometheus = start_prometheus(stack, prometheus_port)
    except (infra.InfraError, OSError) as exc:
        print(f"herald: {exc}", file=sys.stderr)
        stack.stop_all()
        for proc in (prometheus, tansu):
            if proc:
                infra.stop(proc)
        return 1
    print("\nHerald is running. Ctrl-C stops everything.\n")
    for spec in SERVICES:
        url = stack.url(spec)
        print(f"  {spec.name:8} {url}/docs   metrics {url}/metrics")
    print(f"  sandbox  {stack.url(SANDBOX)}/   (what would have been sent; {stack.url(SANDBOX)}/inapp triggers notifications)")
    inapp = next(spec for spec in SERVICES if spec.name == "inapp")
    print(f"  demo     {stack.url(inapp)}/demo   (the bell widget for a sample user)")
    if prometheus:
        print(f"  prometheus http://127.0.0.1:{prometheus_port}/   (scrapes every service, Herald's alert rules loaded)")
    print(f"  logs     {RUN_DIR / 'logs'}\n")
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stopping:
            dead = stack.dead()
            if dead:
                print(f"herald: {', '.join(dead)} stopped unexpectedly; see {RUN_DIR / 'logs'}", file=sys.stderr)
                break
            time.sleep(0.5)
    finally:
        print("herald: stopping")
        if tansu is not None:  # the embedded broker loses what it holds: finish it first
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
            try:
                drain_stack(stack, settings, timeout=float(env.get("HERALD_RUN_DRAIN_SECONDS", RUN_DRAIN_SECONDS)))
            except KeyboardInterrupt:
                print("herald: stopping at once; what the broker holds is lost", file=sys.stderr)
        stack.stop_all()
        for proc in (prometheus, tansu):
            if proc:
                infra.stop(proc)
    return 0 if stopping else 1


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = ToolSettings()
    for line in asyncio.run(migrate(settings.database_url)):
        print(f"applied {line}")
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    """Create the missing topics and bring the others to their role's configuration (docs/data.md)."""
    from shared._kafka import TopicConfigError, reconfigure_topics

    settings = ToolSettings()
    for topic in asyncio.run(create_topics(settings)):
        print(f"created {topic}")
    try:
        changed = asyncio.run(reconfigure_topics(settings))
    except TopicConfigError as exc:
        print(f"herald topics: {exc}", file=sys.stderr)
        return 1
    for topic in changed:
        print(f"configured {topic}")
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from . import contract

    if args.check:
        stale = contract.differences()
        for path in stale:
            print(f"schemas/{path} is out of date; run `herald schemas`", file=sys.stderr)
        return 1 if stale else 0
    for path in contract.write():
        print(f"wrote schemas/{path}")
    return 0


def cmd_env_example(args: argparse.Namespace) -> int:
    from . import contract

    sys.stdout.write(contract.env_example())
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    from .dlq import replay

    count = asyncio.run(replay(ToolSettings(), stage=args.stage, reason=args.reason, dry_run=args.dry_run))
    print(f"{'would replay' if args.dry_run else 'replayed'} {count} message(s)")
    if not args.dry_run:
        audited("dlq.replay", args.stage, reason=args.reason, count=count)
    return 0


def cmd_service_key(args: argparse.Namespace) -> int:
    """A new service key for HERALD_API_KEYS, or the hashed form of one read from stdin."""
    import secrets

    from shared import Scope, hash_service_key, parse_service_keys

    if args.action == "hash":
        key = sys.stdin.readline().strip()
        if not key:
            print("herald: give the key on standard input (not as an argument: it would stay in the shell's history)", file=sys.stderr)
            return 1
        print(hash_service_key(key))
        return 0
    scopes = "+".join(s.strip() for s in args.scopes.split("+"))
    key = secrets.token_urlsafe(32)
    try:
        parse_service_keys(f"{args.name}:{scopes}={key}")
    except ValueError as exc:
        print(f"herald: {exc}", file=sys.stderr)
        return 1
    print(f"key            {key}")
    print(f"sending side   {args.name}:{scopes}={key}   (or HERALD_ROUTER_API_KEY={key} for the email service)")
    print(f"verifying side {args.name}:{scopes}={hash_service_key(key)}")
    print(f"(shown once; add the entry to HERALD_API_KEYS beside the old one, roll out, then remove the old; scopes: {', '.join(Scope)})")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    import datetime as dt

    import jwt

    settings = ToolSettings()
    if settings.jwt_secret is None:
        print("herald: tokens can only be minted with HERALD_JWT_SECRET", file=sys.stderr)
        return 1
    claims = {"sub": args.user, "aud": settings.jwt_audience, "exp": dt.datetime.now(dt.UTC) + dt.timedelta(hours=args.hours)}
    print(jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256"))
    return 0


def cmd_channel(args: argparse.Namespace) -> int:
    """Hold or resume a sender channel on every instance (Redis keys the senders read every few seconds)."""
    import uuid

    import redis

    from shared._breaker import hold_key, resume_key

    settings = ToolSettings()
    prefix = settings.control_prefix()
    client = redis.Redis.from_url(settings.redis_url)
    try:
        if args.action == "hold":
            client.set(hold_key(prefix, args.channel), "1")
            audited("channel.hold", args.channel)
            print(f"{args.channel}: held; its senders stop calling the provider within {settings.breaker_control_seconds:g}s (messages wait)")
        elif args.action == "resume":
            client.delete(hold_key(prefix, args.channel))
            client.set(resume_key(prefix, args.channel), uuid.uuid4().hex)
            audited("channel.resume", args.channel)
            print(f"{args.channel}: resumed; an open or misconfigured breaker closes, and waiting messages are delivered")
        else:
            held = client.exists(hold_key(prefix, args.channel))
            print(f"{args.channel}: {'held by an operator' if held else 'not held'} (each instance's breaker: herald_channel_state in /metrics)")
    except redis.RedisError as exc:
        print(f"herald: cannot reach Redis at {settings.redis_url}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="herald", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the whole platform locally (what `make run` calls)")
    run.add_argument("--external-kafka", action="store_true", help="use HERALD_KAFKA_BOOTSTRAP as it is, start no broker")
    run.set_defaults(func=cmd_run)
    sub.add_parser("migrate", help="create the database and apply every service's migrations").set_defaults(func=cmd_migrate)
    sub.add_parser("topics", help="create every topic Herald uses, and bring existing ones to their role's configuration").set_defaults(func=cmd_topics)
    schemas = sub.add_parser("schemas", help="regenerate schemas/ from the models and the services")
    schemas.add_argument("--check", action="store_true", help="fail if schemas/ is out of date instead of writing")
    schemas.set_defaults(func=cmd_schemas)
    sub.add_parser("env-example", help="print every HERALD_* variable with its default").set_defaults(func=cmd_env_example)
    dlq = sub.add_parser("dlq", help="dead-letter topic tools").add_subparsers(dest="dlq_command", required=True)
    replay = dlq.add_parser("replay", help="re-publish dead-lettered messages to where they came from")
    replay.add_argument("--stage", required=True, help="only messages dead-lettered by this stage (router, email, sms, push, inapp)")
    replay.add_argument("--reason", help="only messages with this reason")
    replay.add_argument("--dry-run", action="store_true")
    replay.set_defaults(func=cmd_dlq_replay)
    channel = sub.add_parser("channel", help="hold or resume a sender channel (its circuit breaker) on every instance")
    channel.add_argument("action", choices=["hold", "resume", "status"])
    channel.add_argument("channel", choices=[c.value for c in Channel])
    channel.set_defaults(func=cmd_channel)
    keys = sub.add_parser("service-key", help="service keys for HERALD_API_KEYS")
    keys.add_argument("action", choices=["new", "hash"], help="new: a random key and its entries; hash: the hashed form of a key on stdin")
    keys.add_argument("name", nargs="?", default="service", help="the key's name (new)")
    keys.add_argument("--scopes", default="publish", help="joined by '+': publish, recipients, traces, admin (new)")
    keys.set_defaults(func=cmd_service_key)
    token = sub.add_parser("token", help="mint a development JWT for a user id")
    token.add_argument("user")
    token.add_argument("--hours", type=float, default=12)
    token.set_defaults(func=cmd_token)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
