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
        app = module.create_app()
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
