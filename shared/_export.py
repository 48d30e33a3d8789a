"""Export: each service answers, to an admin key, everything it holds about one user; the router gathers them.

A service passes its ``export`` function to ``create_service``, which serves it as
``GET /v1/admin/users/{user_id}/export``. The router's ``GET /v1/recipients/{user_id}/export``
asks every service in ``HERALD_EXPORT_SERVICES`` with the caller's own credentials and returns one
document (docs/data.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path

from ._app import AppResources, Resources
from ._audit import audit
from ._auth import AdminService

#: What one service holds about a user, as JSON-able data (rows as dicts).
Export = Callable[[str, Resources], Awaitable[dict[str, Any]]]

ExportUser = Annotated[str, Path(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$", description="A user id of the host application")]


def export_api(service: str, export: Export) -> APIRouter:
    api = APIRouter(prefix="/v1/admin", tags=["admin"])

    @api.get("/users/{user_id}/export", summary=f"Everything the {service} service holds about a user (admin API key)")
    async def export_user(user_id: ExportUser, caller: AdminService, res: AppResources) -> dict[str, Any]:
        found = await export(user_id, res)
        audit(res.metrics, actor=caller, action="user.export", target=user_id)
        return found

    return api


async def rows(conn: Any, sql: str, *args: Any) -> list[dict[str, Any]]:
    """A query's rows as dicts (for an export)."""
    return [dict(r) for r in await conn.fetch(sql, *args)]


async def ledger_export(conn: Any, schema: str, user_id: str) -> dict[str, Any]:
    """A sender's part every sender shares: its ledger rows of the user and the user's tombstone, if erased."""
    return {
        "ledger": await rows(conn, f"SELECT * FROM {schema}.ledger WHERE user_id = $1 ORDER BY created_at, notification_id, target", user_id),
        "erasure": (await rows(conn, f"SELECT * FROM {schema}.erasures WHERE user_id = $1", user_id) or [None])[0],
    }
