import importlib
import os
import re
import secrets
import tomllib
from pathlib import Path

import pytest
import yaml
from faststream.kafka import KafkaBroker

from herald.stack import SERVICES
from shared import Channel, HeraldSettings, Ledger, SenderPipeline
from shared._lag import watched_groups

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
K8S = ROOT / "deploy" / "k8s"
K8S_DOCS = [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
NAMES = [spec.name for spec in SERVICES]
PORTS = {spec.name: spec.port for spec in SERVICES}
SENDERS = [c.value for c in Channel]
#: The settings DESIGN.md names as part of the contract.
CONTRACT = {
    "HERALD_EMAIL_PROVIDER", "HERALD_SMTP_HOST", "HERALD_SMTP_PORT", "HERALD_RESEND_API_BASE", "HERALD_RESEND_API_KEY",
    "HERALD_TWILIO_API_BASE", "HERALD_TWILIO_ACCOUNT_SID", "HERALD_TWILIO_AUTH_TOKEN", "HERALD_TWILIO_FROM",
    "HERALD_VAPID_PRIVATE_KEY", "HERALD_VAPID_SUBJECT", "HERALD_PUSH_ALLOWED_HOSTS", "HERALD_PUSH_DEV_HOSTS",
    "HERALD_STRIPE_WEBHOOK_SECRET",
}  # fmt: skip
def _vapid_key() -> str:
    import base64

    from cryptography.hazmat.primitives.asymmetric import ec

    raw = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value.to_bytes(32, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


ROUTER_KEY = secrets.token_urlsafe(32)
REQUIRED = {"HERALD_VAPID_PRIVATE_KEY": _vapid_key(), "HERALD_UNSUBSCRIBE_SECRET": secrets.token_urlsafe(32), "POSTGRES_PASSWORD": "pg-secret", "HERALD_JWT_SECRET": secrets.token_urlsafe(32), "HERALD_API_KEYS": "shop:publish=" + secrets.token_urlsafe(32) + ",email:recipients=" + ROUTER_KEY, "HERALD_ROUTER_API_KEY": ROUTER_KEY, "GRAFANA_ADMIN_PASSWORD": "g", "HERALD_TWILIO_ACCOUNT_SID": "AC" + secrets.token_hex(16), "HERALD_TWILIO_AUTH_TOKEN": secrets.token_hex(16)}


def settings_class(name: str) -> type[HeraldSettings]:
    return importlib.import_module(f"services.{name}.settings").Settings


def factory_of(command: list[str]) -> str:
    return command[command.index("--factory") + 1]


def port_of(command: list[str]) -> int:
    return int(command[command.index("--port") + 1])


def check_env_names(service: str, names: set[str]) -> None:
    fields = {f"HERALD_{f.upper()}" for f in settings_class(service).model_fields}
    unknown = sorted(names - fields)
    assert not unknown, f"{service}: {unknown} are not settings of services.{service}.settings.Settings"


def test_every_contract_setting_is_read_by_some_service():
    fields = {f"HERALD_{f.upper()}" for name in NAMES for f in settings_class(name).model_fields}
    assert CONTRACT <= fields, f"DESIGN.md's settings no service reads: {sorted(CONTRACT - fields)}"


def interpolate(value: str) -> str:
    def one(match: re.Match[str]) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3) or ""
        if name in REQUIRED:
            return REQUIRED[name]
        assert op != ":?", f"{name} is required but the test supplies no value for it"
        return rest if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def imported_app(factory: str):
    module, _, name = factory.partition(":")
    create_app = getattr(importlib.import_module(module), name)
    assert callable(create_app)
    return create_app


def expected_groups(service: str, settings: HeraldSettings) -> dict[str, tuple[str, ...]]:
    """Consumer group → topics of a service: from its app, or for a sender not built yet, from the shared sender pipeline."""
    app = imported_app(f"services.{service}.app:create_app")(settings_class(service)(**settings.model_dump()))
    groups = watched_groups(app.state.resources.broker)
    if not groups and service in SENDERS:
        broker = KafkaBroker(settings.kafka_bootstrap)
        for router in SenderPipeline(settings, Channel(service), lambda d, r: None, ledger=Ledger(service)).routers():
            broker.include_router(router)
        groups = watched_groups(broker)
    return {g.group: g.topics for g in groups}


# docker-compose.yml ------------------------------------------------------------


def test_compose_runs_the_infrastructure_and_every_service():
    services = COMPOSE["services"]
    assert set(services) >= {"kafka", "postgres", "redis", "prometheus", "grafana", "migrate", *NAMES}
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"] and not any("ZOOKEEPER" in k for k in kafka["environment"])
    for name in ("kafka", "postgres", "redis", "prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"], name


def test_compose_migrates_once_before_any_service_starts():
    migrate = COMPOSE["services"]["migrate"]
    assert migrate["restart"] == "no"
    assert "herald.cli migrate" in migrate["command"][-1] and "herald.cli topics" in migrate["command"][-1]
    from herald.cli import main

    for sub in ("migrate", "topics"):
        with pytest.raises(SystemExit) as done:
            main([sub, "--help"])
        assert done.value.code == 0
    for name in NAMES:
        depends = COMPOSE["services"][name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert all(depends[d]["condition"] == "service_healthy" for d in ("kafka", "postgres", "redis")), name


@pytest.mark.parametrize("name", NAMES)
def test_compose_service_runs_its_factory_with_probes_and_real_settings(name):
    service = COMPOSE["services"][name]
    command = service["command"]
    assert command[0] == "uvicorn" and factory_of(command) == f"services.{name}.app:create_app"
    app = imported_app(factory_of(command))(settings_class(name)())
    paths = {getattr(r, "path", None) for r in app.routes}
    assert {"/readyz", "/healthz"} <= paths
    env = {k: interpolate(str(v)) for k, v in service["environment"].items()}
    assert port_of(command) == int(env["HERALD_PORT"]) == PORTS[name]
    assert service["ports"] == [f"{PORTS[name]}:{PORTS[name]}"]
    probe = service["healthcheck"]["test"]
    assert "/readyz" in probe[-1]
    compile(probe[-1], "healthcheck", "exec")
    assert (ROOT / command[command.index("--log-config") + 1]).is_file()
    check_env_names(name, set(env))
    settings = settings_class(name)(**{k.removeprefix("HERALD_").lower(): v for k, v in env.items()})
    assert settings.environment == "production" and settings.kafka_enable_idempotence
    assert settings.kafka_bootstrap == "kafka:9092" and settings.database_url.startswith("postgresql://herald:pg-secret@postgres:5432/")


def test_compose_production_refuses_to_start_without_real_secrets():
    env = {k: interpolate(str(v)) for k, v in COMPOSE["x-herald-env"].items()}
    env["HERALD_JWT_SECRET"] = "changethis"
    with pytest.raises(ValueError, match="HERALD_JWT_SECRET"):
        HeraldSettings(**{k.removeprefix("HERALD_").lower(): v for k, v in env.items()})


def test_compose_mounts_the_shipped_prometheus_and_grafana_files():
    prometheus = COMPOSE["services"]["prometheus"]
    mounts = {m.split(":")[1]: ROOT / m.split(":")[0] for m in prometheus["volumes"] if m.startswith("./")}
    assert mounts["/etc/prometheus/prometheus.yml"] == ROOT / "deploy/prometheus/prometheus.yml"
    assert all(path.exists() for path in mounts.values())
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    herald = next(job for job in config["scrape_configs"] if job["job_name"] == "herald")
    assert {s["labels"]["service"]: s["targets"] for s in herald["static_configs"]} == {n: [f"{n}:{PORTS[n]}"] for n in NAMES}
    local = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.local.yml").read_text())
    herald = next(job for job in local["scrape_configs"] if job["job_name"] == "herald")
    assert {s["labels"]["service"]: s["targets"] for s in herald["static_configs"]} == {n: [f"127.0.0.1:{PORTS[n]}"] for n in NAMES}

    grafana = COMPOSE["services"]["grafana"]
    mounts = {m.split(":")[1]: ROOT / m.split(":")[0] for m in grafana["volumes"] if m.startswith("./")}
    assert all(path.exists() for path in mounts.values())
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/herald.yml").read_text())["providers"][0]
    assert (mounts[provider["options"]["path"]] / "herald.json").is_file()
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and datasource["uid"] == "prometheus"


# deploy/k8s --------------------------------------------------------------------


def kinds(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in K8S_DOCS if d["kind"] == kind}


def test_kustomization_lists_every_manifest_but_the_example_secrets():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    shipped = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secrets.example.yaml"}
    assert listed == shipped


@pytest.mark.parametrize("name", NAMES)
def test_k8s_deployment_has_probes_resources_and_real_settings(name):
    deployment = kinds("Deployment")[name]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert factory_of(command) == f"services.{name}.app:create_app"
    assert port_of(command) == PORTS[name]
    assert container["image"].split(":")[0] == COMPOSE["x-herald-image"]["image"].split(":")[0] == "herald"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": PORTS[name]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    app = imported_app(factory_of(command))(settings_class(name)())
    assert {"/readyz", "/healthz"} <= {getattr(r, "path", None) for r in app.routes}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and {"cpu", "memory"} <= set(container["resources"]["limits"])

    configmaps, secrets = kinds("ConfigMap"), kinds("Secret")
    names = set()
    for source in container["envFrom"]:
        if "configMapRef" in source:
            names |= set(configmaps[source["configMapRef"]["name"]]["data"])
        else:
            names |= set(secrets[source["secretRef"]["name"]]["stringData"])
    for entry in container["env"]:
        names.add(entry["name"])
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["key"] in secrets[ref["name"]]["stringData"], ref
    check_env_names(name, names)

    service = kinds("Service")[name]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_k8s_migrations_run_as_a_job():
    job = kinds("Job")["herald-migrate"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert "herald.cli migrate" in container["command"][-1] and "herald.cli topics" in container["command"][-1]


def scaling_rule() -> dict:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules" / "herald.yml").read_text())
    (group,) = [g for g in rules["groups"] if g["name"] == "herald-scaling"]
    (rule,) = group["rules"]
    return rule


@pytest.mark.parametrize("channel", SENDERS)
def test_each_sender_scales_on_the_backlog_of_its_own_lanes(channel):
    """KEDA asks Prometheus for the recorded backlog of this channel's normal and critical groups.

    What the rule computes (paused channels count 0) is pinned by its promtool unit test; here: the
    ScaledObject asks for it, and the rule's group pattern takes exactly the lanes' groups of the
    sender as built, and none of its delay topics' groups.
    """
    config = kinds("ConfigMap")["herald-config"]["data"]
    settings = HeraldSettings(kafka_bootstrap=config["HERALD_KAFKA_BOOTSTRAP"])
    scaled = kinds("ScaledObject")[channel]
    assert scaled["spec"]["scaleTargetRef"]["name"] in kinds("Deployment")
    assert scaled["spec"]["scaleTargetRef"]["name"] == channel
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] <= int(config["HERALD_KAFKA_PARTITIONS"])
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    rule = scaling_rule()
    assert trigger["metadata"]["query"] == f'sum({rule["record"]}{{channel="{channel}"}})'
    assert int(trigger["metadata"]["threshold"]) > 0 and trigger["metadata"]["serverAddress"].startswith("http")

    patterns = set(re.findall(r'herald_consumer_lag\{group=~"([^"]+)"\}', rule["expr"])) | set(re.findall(r'"group", "([^"]+)"\)', rule["expr"]))
    (pattern,) = patterns  # the filter and the channel label use one pattern
    groups = expected_groups(channel, settings)
    lanes = {f"herald-{channel}", f"herald-{channel}-critical"}
    assert lanes <= set(groups)
    for group in groups:
        match = re.fullmatch(pattern, group)
        if group in lanes:
            assert match and match.group(2) == channel, group
        else:
            assert match is None, group
            assert all(topic.startswith("retry.") or topic == settings.erasure_topic for topic in groups[group])


# Dockerfile --------------------------------------------------------------------


def dockerfile_copies() -> list[tuple[str, str]]:
    """``(source, destination)`` of the final stage's COPY lines that take files from the build context."""
    lines = (ROOT / "Dockerfile").read_text().split("FROM ")[-1].splitlines()
    copies = []
    for line in lines:
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            source, destination = [p for p in parts[1:] if not p.startswith("--")]
            copies.append((source, destination))
    return copies


def image_lock() -> Path:
    """The lock file the image's build stage installs."""
    build = (ROOT / "Dockerfile").read_text().split("FROM ")[1]
    [name] = re.findall(r"^COPY (requirements[\w.]*\.lock) ", build, re.M)
    return ROOT / name


def pins(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", path.read_text(), re.M))


def image_venv(where: Path) -> Path:
    """A virtual environment holding exactly the image's lock (from uv's cache after `make install`)."""
    import subprocess
    import sys

    uv = Path(sys.executable).parent / "uv"
    subprocess.run([str(uv), "venv", "-q", "--python", sys.executable, str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    subprocess.run([str(uv), "pip", "install", "-q", "--python", str(python), "-r", str(image_lock())], check=True, timeout=600)
    return python


def test_the_image_installs_the_runtime_lock_pinned_as_the_tests_run_it():
    runtime, full = pins(image_lock()), pins(ROOT / "requirements.lock")
    assert image_lock().name == "requirements.runtime.lock"
    assert runtime and {name: full.get(name) for name in runtime} == runtime
    assert not {"pytest", "playwright", "schemathesis", "hypothesis"} & set(runtime)
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[\[=<>~ ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in declared}
    assert names <= set(runtime)


def test_the_image_holds_what_every_service_and_the_set_up_job_need(tmp_path):
    import shutil
    import subprocess
    import sys

    ignored = shutil.ignore_patterns("__pycache__", "*.pyc")
    for source, destination in dockerfile_copies():
        target = tmp_path / destination.removeprefix("./")
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target, ignore=ignored)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / source, target)
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert not {src for src, _ in dockerfile_copies()} & set(dockerignore)
    probe = "; ".join(
        [
            "import importlib, pathlib, sys",
            f"root = pathlib.Path({str(tmp_path)!r})",
            "from herald.cli import main, migrations_of_all",
            "assert pathlib.Path(sys.modules['herald.cli'].__file__).is_relative_to(root)",
            "assert len(migrations_of_all()) >= 6",
            *[
                f"m = importlib.import_module('services.{n}.app'); assert pathlib.Path(m.__file__).is_relative_to(root); m.create_app()"
                for n in NAMES
            ],
        ]
    )
    # The interpreter has only what the image installs: the runtime lock, no test tools.
    python = image_venv(tmp_path / "venv")
    result = subprocess.run([str(python), "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HERALD_ENVIRONMENT": "test"}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in NAMES:
        command = COMPOSE["services"][name]["command"]
        assert (tmp_path / command[command.index("--log-config") + 1]).is_file()


@pytest.mark.parametrize("name", NAMES)
def test_k8s_example_secrets_are_refused_naming_every_secret_the_service_uses(name, monkeypatch):
    """Applied as shipped, the example secrets' placeholders stop each service, each setting named."""
    deployment = kinds("Deployment")[name]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    configmaps, secrets_ = kinds("ConfigMap"), kinds("Secret")
    env: dict[str, str] = {}
    secret_names: set[str] = set()
    for source in container["envFrom"]:
        if "configMapRef" in source:
            env |= configmaps[source["configMapRef"]["name"]]["data"]
        else:
            data = secrets_[source["secretRef"]["name"]]["stringData"]
            env |= data
            secret_names |= set(data)
    for entry in container["env"]:
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            env[entry["name"]] = secrets_[ref["name"]]["stringData"][ref["key"]]
            secret_names.add(entry["name"])
        elif "value" in entry:
            env[entry["name"]] = str(entry["value"])
    for key in [k for k in os.environ if k.startswith("HERALD_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert env["HERALD_ENVIRONMENT"] == "production"
    with pytest.raises(SystemExit) as refused:
        settings_class(name).load()
    message = str(refused.value)
    assert message.startswith(f"herald {name}: refusing to start")
    missing = {s for s in secret_names if s not in message}
    if name == "email":  # the example's Resend key is refused only where Resend is the provider; its placeholder still is
        assert env["HERALD_EMAIL_PROVIDER"] == "smtp" or "HERALD_RESEND_API_KEY" not in missing
    assert missing <= {"HERALD_RESEND_API_KEY"} if name == "email" else not missing, missing
    assert "REPLACE_ME" not in message.replace("'REPLACE_ME'", "")  # names settings, never echoes a value
