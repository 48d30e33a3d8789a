"""HTTP routes of the email service: RFC 8058 one-click unsubscribe."""

from __future__ import annotations

import html
import logging
from typing import Annotated
from urllib.parse import quote, urlencode

import httpx
from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from shared import AppResources, Category, per_address

from .logic import InvalidToken, preference_patch, read_unsubscribe_token
from .settings import Settings

log = logging.getLogger(__name__)

api = APIRouter(prefix="/v1", tags=["unsubscribe"])

Token = Annotated[str, Query(min_length=1, max_length=4096, description="The signed token from the email's List-Unsubscribe link")]


class Problem(BaseModel):
    detail: str


_BAD_TOKEN = {400: {"model": Problem, "description": "The token is forged, expired or malformed"}}


class Unsubscribed(BaseModel):
    status: str = "unsubscribed"
    category: Category
    channel: str = "email"


def _verified(settings: Settings, token: str) -> tuple[str, Category]:
    try:
        return read_unsubscribe_token(secret=settings.unsubscribe_secret.get_secret_value(), token=token)
    except InvalidToken as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=f"invalid or expired unsubscribe token: {exc}") from None


@api.post(
    "/unsubscribe",
    summary="One-click unsubscribe (RFC 8058): switch the token's category off for email",
    responses={**_BAD_TOKEN, 502: {"model": Problem, "description": "The router is unreachable or did not accept the change"}},
    dependencies=[Depends(per_address("unsubscribe"))],
)
async def unsubscribe(token: Token, res: AppResources) -> Unsubscribed:
    settings: Settings = res.settings  # type: ignore[assignment]
    user_id, category = _verified(settings, token)
    try:
        response = await res.http.patch(
            f"{settings.router_url}/v1/users/{quote(user_id, safe='')}/preferences",
            json=preference_patch(category),
            headers={"Authorization": f"ApiKey {settings.router_key()}"},
        )
    except httpx.HTTPError as exc:
        log.error("router unreachable for unsubscribe of user %s from %s: %s", user_id, category.value, type(exc).__name__)
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, detail="the preference service is unreachable; try again later") from None
    if response.status_code == status.HTTP_410_GONE:  # the user was erased: nothing is sent to them any more
        log.info("unsubscribe of an erased user from %s: nothing to record", category.value)
        return Unsubscribed(category=category)
    if not response.is_success:
        log.error("router answered %s to unsubscribe of user %s from %s", response.status_code, user_id, category.value)
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, detail=f"the preference service answered {response.status_code}")
    log.info("user %s unsubscribed from %s email", user_id, category.value)
    return Unsubscribed(category=category)


@api.get(
    "/unsubscribe",
    response_class=HTMLResponse,
    summary="A page confirming the unsubscribe with one button (GET changes nothing)",
    responses={400: {"description": "The token is forged, expired or malformed (an HTML page saying so)", "content": {"text/html": {}}}},
    dependencies=[Depends(per_address("unsubscribe"))],
)
async def unsubscribe_page(token: Token, res: AppResources) -> HTMLResponse:
    settings: Settings = res.settings  # type: ignore[assignment]
    brand = html.escape(settings.email_brand)
    try:
        _, category = read_unsubscribe_token(secret=settings.unsubscribe_secret.get_secret_value(), token=token)
    except InvalidToken:
        return HTMLResponse(_page("Unsubscribe", "<p>This unsubscribe link is not valid or has expired.</p>"), status_code=400)
    action = html.escape(f"?{urlencode({'token': token})}", quote=True)
    label = html.escape(category.value.replace("_", " "))
    body = (
        f"<p>Stop receiving <strong>{label}</strong> emails from {brand}?</p>"
        f"<form method=post action='{action}'><input type=hidden name=List-Unsubscribe value=One-Click>"
        "<button type=submit>Unsubscribe</button></form>"
    )
    return HTMLResponse(_page("Unsubscribe", body))


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title></head>"
        f"<body style='font-family:system-ui;margin:3rem auto;max-width:32rem'><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
