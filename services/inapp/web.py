"""The browser side: the widget script, and demo pages for a sample user (never in production)."""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from pathlib import Path
from typing import Annotated

import jwt
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse

from .settings import Settings

STATIC = Path(__file__).with_name("static")
_USER = re.compile(r"^[A-Za-z0-9_.@:-]{1,128}$")

web = APIRouter(tags=["widget"])


@web.get("/widget/herald.js", summary="The <herald-bell> and <herald-inbox> web components (an ES module)")
async def widget() -> FileResponse:
    return FileResponse(STATIC / "herald.js", media_type="text/javascript", headers={"Cache-Control": "public, max-age=300"})


def _demo_user(request: Request, user: str | None) -> tuple[Settings, str, str]:
    settings: Settings = request.app.state.settings
    if not settings.demo_enabled:
        raise HTTPException(404, detail="the demo is available in development only")
    user = user or settings.demo_user
    if not _USER.match(user):
        raise HTTPException(400, detail="user: letters, digits and _ . @ : - only, at most 128")
    assert settings.jwt_secret is not None
    claims = {"sub": user, "aud": settings.jwt_audience, "exp": dt.datetime.now(dt.UTC) + dt.timedelta(hours=12)}
    return settings, user, jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")


def _page(title: str, user: str, token: str, body: str) -> str:
    # The token sits in a JSON script block (never in a URL); "</" is escaped so it cannot end the block.
    config = json.dumps({"token": token}).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<script type="module" src="/widget/herald.js"></script>
<style>
body {{ margin: 0; font: 15px/1.5 system-ui, sans-serif; color: #1f2933; background: #f7f8fa; }}
header {{ display: flex; align-items: center; gap: 16px; padding: 10px 24px; background: #fff; border-bottom: 1px solid #e4e7eb; }}
header .who {{ margin-left: auto; color: #52606d; }}
main {{ max-width: 760px; margin: 24px auto; padding: 0 24px; }}
code {{ background: #eef1f4; padding: 1px 4px; border-radius: 4px; }}
</style></head>
<body>
<header><strong>Demo app</strong><span class="who">Signed in as <code>{html.escape(user)}</code></span>
<herald-bell id="bell" inbox-url="/demo/inbox?user={html.escape(user)}"></herald-bell></header>
<main>{body}<p id="opened" role="status"></p></main>
<script type="application/json" id="herald-demo">{config}</script>
<script type="module">
const {{ token }} = JSON.parse(document.getElementById('herald-demo').textContent);
for (const element of document.querySelectorAll('herald-bell, herald-inbox')) element.tokenProvider = async () => token;
document.addEventListener('herald-open', (event) => {{
  event.preventDefault();
  document.getElementById('opened').textContent = `Opened "${{event.detail.title}}"` + (event.detail.url ? ` (would go to ${{event.detail.url}})` : '');
}});
</script>
</body></html>"""


@web.get("/demo", response_class=HTMLResponse, summary="The bell for a sample user (development only)")
async def demo(request: Request, user: Annotated[str | None, Query(description="The sample user's id")] = None) -> str:
    settings, user, token = _demo_user(request, user)
    trigger = f"{settings.sandbox_url}/inapp?user={user}"
    body = f"""<h1>In-app notifications</h1>
<p>The bell in the corner is <code>&lt;herald-bell&gt;</code>, served by this service. It shows the unread count,
the latest ten notifications, and updates as notifications arrive, without a reload.</p>
<p>Send one from the sandbox: <a href="{html.escape(trigger)}">{html.escape(trigger)}</a>.</p>
<p>Keyboard: focus the bell, press <kbd>↓</kbd> to open it, <kbd>↑</kbd>/<kbd>↓</kbd> to move,
<kbd>Enter</kbd> to open a notification (and mark it read), <kbd>Esc</kbd> to close.</p>"""
    return _page("Herald inbox demo", user, token, body)


@web.get("/demo/inbox", response_class=HTMLResponse, summary="The full inbox page for a sample user (development only)")
async def demo_inbox(request: Request, user: Annotated[str | None, Query(description="The sample user's id")] = None) -> str:
    _, user, token = _demo_user(request, user)
    return _page("Herald inbox", user, token, "<herald-inbox></herald-inbox>")
