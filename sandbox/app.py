"""The sandbox: local stand-ins for the providers and a page showing what would have been sent.

Every module in this package that defines ``router`` (a FastAPI ``APIRouter``)
is mounted; one that defines ``lifespan(store)`` (an async context manager
factory) is entered at start-up, e.g. to run an SMTP server.
"""

from __future__ import annotations

import contextlib
import html
import importlib
import pkgutil
from dataclasses import asdict
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from .store import Fault, store

_CORE = {"app", "store"}


def _provider_modules() -> list[Any]:
    import sandbox

    return [importlib.import_module(f"sandbox.{m.name}") for m in pkgutil.iter_modules(sandbox.__path__) if m.name not in _CORE]


class FaultIn(BaseModel):
    provider: str
    status: int = Field(ge=0, le=599, description="HTTP status (SMTP reply code for smtp) to answer with; 0 hangs until the client gives up")
    count: int = Field(default=1, ge=1, description="How many requests it hits before it is spent")
    retry_after: int | None = None
    probability: float | None = Field(default=None, gt=0, le=1, description="Hit each request with this chance (only hits count down)")
    until_cleared: bool = Field(default=False, description="Never spent: stays until DELETE /api/faults")
    message: str | None = Field(default=None, max_length=400, description="The reply text where the protocol has one (SMTP)")


def create_app() -> FastAPI:
    modules = _provider_modules()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for module in modules:
                if hasattr(module, "lifespan"):
                    await stack.enter_async_context(module.lifespan(store))
            yield

    app = FastAPI(title="Herald sandbox", lifespan=lifespan)
    for module in modules:
        if hasattr(module, "router"):
            app.include_router(module.router)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/messages")
    async def messages(provider: str | None = None, after: int | None = None, brief: bool = False) -> list[dict[str, Any]]:
        """Every message (of ``provider``); ``after``: only those with a higher id; ``brief``: without HTML, unparsed mail left unparsed."""
        if brief or after is not None:
            found = store.list_after(after or 0, provider)
            return found if brief else [m.as_dict() for m in store.messages if m.id > (after or 0) and provider in (None, m.provider)]
        return store.list(provider)

    @app.delete("/api/messages", status_code=204)
    async def clear() -> None:
        store.clear()

    @app.post("/api/faults", status_code=204)
    async def inject(fault: FaultIn) -> None:
        store.inject(fault.provider, Fault(**fault.model_dump(exclude={"provider"})))

    @app.get("/api/faults")
    async def faults() -> dict[str, list[dict[str, Any]]]:
        return {provider: [asdict(f) for f in queue if not f.spent] for provider, queue in store.faults.items()}

    @app.delete("/api/faults")
    async def clear_faults(provider: str | None = None, status: int | None = None) -> dict[str, int]:
        """Remove injected faults: every one, or those of ``provider``, or only those with ``status``."""
        return {"removed": store.clear_faults(provider, status)}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        def row(m: dict[str, Any]) -> str:
            rendered = f'<iframe sandbox srcdoc="{html.escape(m["html"])}"></iframe>' if m["html"] else ""
            return (
                f"<tr><td>{m['id']}</td><td>{html.escape(m['provider'])}</td><td>{html.escape(m['to'])}</td>"
                f"<td>{html.escape(m['subject'])}</td><td><pre>{html.escape(m['text'])}</pre></td>"
                f"<td>{rendered}</td><td>{html.escape(m['at'])}</td></tr>"
            )

        rows = "".join(row(m) for m in reversed(store.list()))
        return (
            "<!doctype html><html><head><meta charset=utf-8><title>Herald sandbox</title>"
            "<meta http-equiv=refresh content=5>"
            "<style>body{font-family:system-ui;margin:2rem}table{border-collapse:collapse;width:100%}"
            "td,th{border:1px solid #ccc;padding:.4rem;vertical-align:top}iframe{width:28rem;height:14rem;border:0}</style>"
            "</head><body><h1>Herald sandbox</h1><p>What the provider stand-ins received (newest first).</p>"
            "<table><tr><th>#</th><th>provider</th><th>to</th><th>subject</th><th>text</th><th>html</th><th>at</th></tr>"
            f"{rows}</table></body></html>"
        )

    return app
