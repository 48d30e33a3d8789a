"""OpenAPI completeness: answers FastAPI and the shared dependencies give that routes do not declare themselves.

- 401 on every route that depends on ``UserId`` or a service key, and 403 (a key without the scope) on the latter;
- 400 on every route whose JSON body FastAPI parses (it answers 400 to a body that is not JSON).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from ._auth import current_user

UNAUTHORIZED: dict[str, Any] = {
    "description": "Missing or invalid credentials",
    "headers": {"WWW-Authenticate": {"description": "The scheme to authenticate with", "schema": {"type": "string"}}},
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"], "title": "Unauthorized"}
        }
    },
}
BAD_BODY: dict[str, Any] = {
    "description": "The body is not valid JSON",
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"], "title": "BadRequest"}
        }
    },
}
TOO_MANY: dict[str, Any] = {
    "description": "Too many requests from this address (or for this user); Retry-After says when to try again",
    "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"], "title": "TooManyRequests"}
        }
    },
}
FORBIDDEN: dict[str, Any] = {
    "description": "The service key lacks the scope this route needs",
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"], "title": "Forbidden"}
        }
    },
}


def _limited(dependant: Dependant) -> bool:
    return any(hasattr(d.call, "herald_rate_group") or _limited(d) for d in dependant.dependencies)


def _scoped(dependant: Dependant) -> bool:
    return any(hasattr(d.call, "herald_scope") or _scoped(d) for d in dependant.dependencies)


def _authenticates(dependant: Dependant) -> bool:
    return any(d.call is current_user or hasattr(d.call, "herald_scope") or _authenticates(d) for d in dependant.dependencies)


def _api_routes(app: FastAPI) -> list[APIRoute]:
    try:  # FastAPI 0.165 includes routers lazily; this is how its own OpenAPI builder walks them
        from fastapi.openapi.utils import _get_api_route_for_openapi
        from fastapi.routing import iter_route_contexts
    except ImportError:
        return [route for route in app.routes if isinstance(route, APIRoute)]
    return [route for context in iter_route_contexts(app.routes) if (route := _get_api_route_for_openapi(context)) is not None]


def complete_openapi(app: FastAPI) -> None:
    """Document, when the document is built, the 401 and 400 answers routes give without declaring them."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        document = build()
        for route in _api_routes(app):
            if not route.include_in_schema:
                continue
            extra = {}
            if _authenticates(route.dependant):
                extra["401"] = UNAUTHORIZED
            if _scoped(route.dependant):
                extra["403"] = FORBIDDEN
            if _limited(route.dependant):
                extra["429"] = TOO_MANY
            if route.body_field is not None:
                extra["400"] = BAD_BODY
            for method in route.methods:
                operation = document.get("paths", {}).get(route.path_format, {}).get(method.lower())
                for status, response in extra.items():
                    if operation is not None:
                        operation.setdefault("responses", {}).setdefault(status, response)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
