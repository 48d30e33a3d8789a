"""The subscription API: every route that reads or changes subscriptions answers for the authenticated user only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, cast
from uuid import UUID

from fastapi import APIRouter, Header, HTTPException, Response, status
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared import AppResources, UserId, erased_users

from . import logic, repo
from .providers import WebPushClient
from .settings import Settings

api = APIRouter(prefix="/v1/push", tags=["push"])


class SubscriptionKeys(BaseModel):
    p256dh: str = Field(max_length=100, description="The browser's P-256 public key, base64url (65-byte uncompressed point)")
    auth: str = Field(max_length=40, description="The browser's auth secret, base64url (16 bytes)")

    @field_validator("p256dh")
    @classmethod
    def _p256dh(cls, value: str) -> str:
        return logic.check_p256dh(value)

    @field_validator("auth")
    @classmethod
    def _auth(cls, value: str) -> str:
        return logic.check_auth(value)


class SubscriptionIn(BaseModel):
    """A browser ``PushSubscription`` as ``JSON.stringify(subscription)`` gives it."""

    model_config = ConfigDict(extra="ignore")

    endpoint: str = Field(min_length=1, max_length=logic.MAX_ENDPOINT_LENGTH)
    expirationTime: int | None = None  # noqa: N815 - the browser's field name
    keys: SubscriptionKeys


class EndpointIn(BaseModel):
    endpoint: str = Field(min_length=1, max_length=logic.MAX_ENDPOINT_LENGTH)


class SubscriptionOut(BaseModel):
    id: UUID
    endpoint: str
    created_at: datetime
    last_success_at: datetime | None
    failures: int


class SubscriptionList(BaseModel):
    items: list[SubscriptionOut]


class VapidKey(BaseModel):
    publicKey: str = Field(description="Pass as applicationServerKey to PushManager.subscribe()")  # noqa: N815


def _refused(message: str) -> HTTPException:
    return HTTPException(422, detail=f"endpoint refused: {message}")


async def _check(endpoint: str, settings: Settings, client: WebPushClient) -> None:
    try:
        checked = logic.check_endpoint(endpoint, allowed_hosts=settings.push_allowed_hosts, dev_hosts=settings.push_dev_hosts)
        if not checked.dev:
            logic.check_addresses(checked, await client.addresses(checked))
    except logic.EndpointRefused as exc:
        raise _refused(str(exc)) from None


@api.get("/vapid-public-key", summary="The VAPID public key browsers subscribe with (applicationServerKey)")
async def vapid_public_key(res: AppResources) -> VapidKey:
    return VapidKey(publicKey=res.extra["push"].public_key)


@api.post(
    "/subscriptions",
    status_code=status.HTTP_201_CREATED,
    summary="Subscribe the authenticated user's browser (200 when it was already subscribed)",
    responses={
        409: {"description": "The endpoint is another account's, or the user has too many"},
        410: {"description": "The user was erased"},
        422: {"description": "Refused endpoint or keys"},
    },
)
async def subscribe(
    body: SubscriptionIn,
    user_id: UserId,
    res: AppResources,
    response: Response,
    user_agent: Annotated[str | None, Header()] = None,
) -> SubscriptionOut:
    settings = cast(Settings, res.settings)
    await _check(body.endpoint, settings, res.extra["push"])
    async with res.pool.acquire() as conn, conn.transaction():
        await repo.lock_user(conn=conn, user_id=user_id)
        if await erased_users(conn=conn, schema="push", user_ids=[user_id]):
            raise HTTPException(status.HTTP_410_GONE, detail="this user was erased; no subscription is stored for it")
        if await repo.count_for_user(conn=conn, user_id=user_id) >= settings.push_max_subscriptions_per_user:
            existing = {s["endpoint"] for s in await repo.list_for_user(conn=conn, user_id=user_id)}
            if body.endpoint not in existing:
                raise HTTPException(status.HTTP_409_CONFLICT, detail="too many push subscriptions; remove an old one first")
        row, created = await repo.subscribe(
            conn=conn,
            user_id=user_id,
            endpoint=body.endpoint,
            endpoint_hash=logic.endpoint_hash(body.endpoint),
            p256dh=body.keys.p256dh,
            auth=body.keys.auth,
            user_agent=(user_agent or "")[:300] or None,
        )
    if row is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail="this endpoint is subscribed for another account; unsubscribe it in the browser and subscribe again",
        )
    if not created:
        response.status_code = status.HTTP_200_OK
    return SubscriptionOut(**row)


@api.get("/subscriptions", summary="The authenticated user's subscriptions")
async def list_subscriptions(user_id: UserId, res: AppResources) -> SubscriptionList:
    async with res.pool.acquire() as conn:
        rows = await repo.list_for_user(conn=conn, user_id=user_id)
    return SubscriptionList(items=[SubscriptionOut(**r) for r in rows])


@api.delete(
    "/subscriptions",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Unsubscribe one of the authenticated user's endpoints",
    responses={404: {"description": "The user has no subscription with this endpoint"}},
)
async def unsubscribe(body: EndpointIn, user_id: UserId, res: AppResources) -> Response:
    async with res.pool.acquire() as conn:
        if not await repo.unsubscribe(conn=conn, user_id=user_id, endpoint=body.endpoint):
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such subscription")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
