"""The checked-in contract in ``schemas/``: JSON Schema of every message, AsyncAPI of every service."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from shared import CloudEvent, DeliveryStatus, Dispatch
from shared.events import EVENT_MODELS

from .stack import SERVICES

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"


def _dump(document: object) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def event_schemas() -> dict[str, str]:
    """``events/<type>.json`` for every known event type's ``data``, plus the messages' schemas."""
    files = {f"events/{event_type}.json": _dump(model.model_json_schema()) for event_type, model in EVENT_MODELS.items()}
    files["cloudevent.json"] = _dump(CloudEvent.model_json_schema())
    files["dispatch.json"] = _dump(Dispatch.model_json_schema())
    files["delivery-status.json"] = _dump(DeliveryStatus.model_json_schema())
    return files


def asyncapi_documents() -> dict[str, str]:
    """``asyncapi/<service>.json`` generated from each service's FastStream broker."""
    from faststream.specification import AsyncAPI

    files = {}
    for spec in SERVICES:
        module = importlib.import_module(spec.app.split(":")[0])
        settings = importlib.import_module(spec.app.split(":")[0].rsplit(".", 1)[0] + ".settings").Settings
        app = module.create_app(settings(environment="development"))  # built to be described, never served
        broker = app.state.resources.broker
        document = AsyncAPI(broker, title=f"Herald {spec.name}", version="0.1.0").to_specification().to_jsonable()
        files[f"asyncapi/{spec.name}.json"] = _dump(document)
    return files


def generate() -> dict[str, str]:
    return {**event_schemas(), **asyncapi_documents()}


def write(directory: Path = SCHEMAS_DIR) -> list[str]:
    """Write every generated file; return the paths that changed."""
    changed = []
    for relative, content in generate().items():
        path = directory / relative
        if not path.exists() or path.read_text() != content:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            changed.append(relative)
    return changed


def differences(directory: Path = SCHEMAS_DIR) -> list[str]:
    """Files whose checked-in content differs from what the models generate."""
    stale = [rel for rel, content in generate().items() if not (directory / rel).exists() or (directory / rel).read_text() != content]
    return stale


def settings_classes() -> dict[str, type]:
    """Every service's settings class, by service name."""
    classes = {}
    for spec in SERVICES:
        module = importlib.import_module(spec.app.split(":")[0].rsplit(".", 1)[0] + ".settings")
        classes[spec.name] = module.Settings
    return classes


def env_variables() -> dict[str, tuple[str, str]]:
    """``HERALD_*`` variable → (default as written in an env file, the services that read it)."""
    from pydantic import SecretStr

    found: dict[str, tuple[str, list[str]]] = {}

    from shared import HeraldSettings

    from pathlib import Path

    from .drain import RUN_DRAIN_SECONDS
    from .stack import SANDBOX

    found["HERALD_SANDBOX_PORT"] = (str(SANDBOX.port), ["make run"])
    found["HERALD_RUN_DRAIN_SECONDS"] = (str(RUN_DRAIN_SECONDS), ["make run"])
    for spec in SERVICES:
        found[spec.port_variable] = (str(spec.port), ["make run"])
    root = SCHEMAS_DIR.parent
    for service, cls in {"all": HeraldSettings, **settings_classes()}.items():
        for name, field in cls.model_fields.items():
            if name in {"service_name", "port"}:  # fixed per service; ports are HERALD_<SERVICE>_PORT
                continue
            variable = f"HERALD_{name.upper()}"
            default = field.get_default(call_default_factory=True)
            if isinstance(default, Path):
                default = default.relative_to(root) if default.is_relative_to(root) else default
            if isinstance(default, SecretStr):
                default = default.get_secret_value()
            if isinstance(default, list | tuple):
                default = ",".join(map(str, default))
            text = "" if default is None else str(default)
            if isinstance(default, bool):
                text = text.lower()
            if variable in found:
                if service != "all" and found[variable][1] != ["all"] and service not in found[variable][1]:
                    found[variable][1].append(service)
                continue
            found[variable] = (text, [service])
    return {k: (v[0], ", ".join(v[1])) for k, v in found.items()}


def env_example() -> str:
    """The text of ``.env.example``: every variable with its default."""
    lines = [
        "# Every setting Herald reads, with its default (commented out: a service's own default may differ,",
        "# e.g. ingress waits less for Kafka). Uncomment and export what you change.",
        "# Lists are comma-separated. `make run` honours anything already set in the environment.",
        "# Secrets below are development placeholders: production (HERALD_ENVIRONMENT=production) refuses them.",
        "",
    ]
    for variable, (default, services) in sorted(env_variables().items()):
        lines.append(f"# read by: {services}")
        lines.append(f"#{variable}={default}")
    return "\n".join(lines) + "\n"
