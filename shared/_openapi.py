"""OpenAPI completeness: routes that authenticate document their 401 answer."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from ._auth import current_service, current_user

UNAUTHORIZED: dict[str, Any] = {
    "description": "Missing or invalid credentials",
    "headers": {"WWW-Authenticate": {"description": "The scheme to authenticate with", "schema": {"type": "string"}}},
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"], "title": "Unauthorized"}
        }
    },
}
_AUTH = (current_user, current_service)


def _authenticates(dependant: Dependant) -> bool:
    return any(d.call in _AUTH or _authenticates(d) for d in dependant.dependencies)


def _api_routes(app: FastAPI) -> list[APIRoute]:
    try:  # FastAPI 0.165 includes routers lazily; this is how its own OpenAPI builder walks them
        from fastapi.openapi.utils import _get_api_route_for_openapi
        from fastapi.routing import iter_route_contexts
    except ImportError:
        return [route for route in app.routes if isinstance(route, APIRoute)]
    return [route for context in iter_route_contexts(app.routes) if (route := _get_api_route_for_openapi(context)) is not None]


def document_auth(app: FastAPI) -> None:
    """Add the 401 answer to every operation whose route depends on ``UserId`` or ``ServiceName``."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        document = build()
        for route in _api_routes(app):
            if not route.include_in_schema or not _authenticates(route.dependant):
                continue
            for method in route.methods:
                operation = document.get("paths", {}).get(route.path_format, {}).get(method.lower())
                if operation is not None:
                    operation.setdefault("responses", {}).setdefault("401", UNAUTHORIZED)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
