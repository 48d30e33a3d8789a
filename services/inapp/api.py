"""The inbox API: every route answers for the authenticated user only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel

from shared import AppResources, Category, UserId

from . import repo

api = APIRouter(prefix="/v1/inbox", tags=["inbox"])


class InboxItem(BaseModel):
    id: UUID
    category: Category
    type: str
    title: str
    body: str
    url: str | None
    data: dict[str, Any]
    created_at: datetime
    read: bool


class InboxPage(BaseModel):
    items: list[InboxItem]


@api.get("", summary="The authenticated user's latest notifications")
async def list_inbox(user_id: UserId, res: AppResources, limit: Annotated[int, Query(ge=1, le=100)] = 20) -> InboxPage:
    async with res.pool.acquire() as conn:
        rows = await repo.latest(conn=conn, user_id=user_id, limit=limit)
    return InboxPage(items=[InboxItem(read=r.pop("read_at") is not None, **r) for r in rows])
