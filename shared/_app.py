"""The service factory: a FastAPI app with its FastStream Kafka broker in the same process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import asyncpg
import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from faststream import Context
from faststream.kafka import KafkaBroker, KafkaRouter
from prometheus_client import CollectorRegistry, make_asgi_app
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel
from redis.asyncio import Redis

from ._db import create_pool
from ._exceptions import is_outage
from ._kafka import kafka_options, make_broker, start_broker
from ._lag import consumer_lag
from ._limits import BodyLimit, body_limits
from ._logging import configure_logging
from ._metrics import Metrics
from ._openapi import complete_openapi
from ._settings import REDIS_ROLES, HeraldSettings

log = logging.getLogger(__name__)


@dataclass
class Resources:
    """What a service's handlers and routes use, opened and closed by the app's lifespan."""

    settings: HeraldSettings
    broker: KafkaBroker
    metrics: Metrics
    pool: asyncpg.Pool = field(default=None)  # type: ignore[assignment]
    redis: Redis = field(default=None)  # type: ignore[assignment]
    http: httpx.AsyncClient = field(default=None)  # type: ignore[assignment]
    extra: dict[str, Any] = field(default_factory=dict)
    #: What keeps this service from doing its work right now (an outage its handlers are waiting out), by name; /readyz shows it.
    problems: dict[str, str] = field(default_factory=dict)
    #: A client per Redis role whose URL differs from the main one (``redis_for``).
    redis_roles: dict[str, Redis] = field(default_factory=dict)

    def redis_for(self, role: str) -> Redis:
        """The Redis of ``role`` (dedupe, ratelimit, cache, codes): its own server or database if configured, else the main one."""
        return self.redis_roles.get(role, self.redis)


class Readiness(BaseModel):
    """Each dependency's check, ``ok`` or ``failing``; why it failed goes to the logs and ``herald_dependency_up``."""

    status: Literal["ready", "not ready"]
    checks: dict[str, Literal["ok", "failing"]]


class OutageBackoff:
    """A handler whose dependency is down waits before its batch is handed back, longer each time, and says so in /readyz."""

    def __init__(self, name: str, *, max_pause: float) -> None:
        self.name = name
        self.max_pause = max_pause
        self.failures = 0

    async def failed(self, res: Resources, exc: BaseException) -> float:
        self.failures += 1
        pause = min(self.max_pause, 0.5 * 2 ** min(self.failures - 1, 10))
        res.problems[self.name] = f"{type(exc).__name__}: {exc}"[:300]
        res.metrics.dependency_up.labels(self.name).set(0)
        log.warning("%s: a dependency is down (%s); batch handed back, trying again in %.1fs", self.name, exc, pause)
        await asyncio.sleep(pause)
        return pause

    @contextlib.asynccontextmanager
    async def watching(self, res: Resources) -> AsyncIterator[None]:
        """Around a batch: an outage inside waits (``failed``) and re-raises, so the batch is handed back; a clean exit is ``ok``."""
        try:
            yield
        except Exception as exc:
            if is_outage(exc):
                await self.failed(res, exc)
            raise
        self.ok(res)

    def ok(self, res: Resources) -> None:
        if self.failures:
            log.info("%s: dependencies are back after %d failed batch(es)", self.name, self.failures)
        self.failures = 0
        if res.problems.pop(self.name, None) is not None:
            res.metrics.dependency_up.labels(self.name).set(1)


def periodic(what: str, run: Callable[[Resources], Any], interval: Callable[[Resources], float]):  # noqa: ANN201 - a hook for create_service
    """A service hook that runs ``run(res)`` every ``interval(res)`` seconds while the service runs (first at once).
    A pass that fails is logged (a dependency being away as a warning) and the next one comes as usual."""

    @contextlib.asynccontextmanager
    async def hook(res: Resources) -> AsyncIterator[None]:
        async def forever() -> None:
            while True:
                try:
                    await run(res)
                except Exception as exc:  # housekeeping: tried again next time
                    if is_outage(exc):
                        log.warning("%s pass failed: %s", what, exc)
                    else:
                        log.exception("%s pass failed", what)
                await asyncio.sleep(interval(res))

        task = asyncio.create_task(forever())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return hook


def _resources(request: Request) -> Resources:
    return request.app.state.resources


#: For FastAPI routes.
AppResources = Annotated[Resources, Depends(_resources)]
#: For FastStream handlers.
KafkaResources = Annotated[Resources, Context("resources")]

Hook = Callable[[Resources], contextlib.AbstractAsyncContextManager[Any]]


async def _check(name: str, probe: Any, timeout: float) -> tuple[str, str | None]:
    try:
        async with asyncio.timeout(timeout):
            ok = await probe()
        return name, None if ok is not False else "unreachable"
    except Exception as exc:  # any failure means not ready, and says why
        return name, f"{type(exc).__name__}: {exc}"[:300]


def create_service(
    settings: HeraldSettings,
    *,
    title: str,
    kafka_routers: Sequence[KafkaRouter] = (),
    api: APIRouter | None = None,
    hooks: Sequence[Hook] = (),
    description: str = "",
    export: Any = None,
) -> FastAPI:
    """Assemble a Herald service.

    ``kafka_routers`` carry the service's subscribers, ``api`` its HTTP routes,
    and each of ``hooks`` is an async context manager entered after the shared
    resources are open (and left before they close). ``export`` (a ``shared.Export``) is served as
    ``GET /v1/admin/users/{user_id}/export``: what the service holds about a user.
    """
    configure_logging(settings.service_name, level=settings.log_level, json=settings.log_json)
    registry = CollectorRegistry()
    broker = make_broker(settings, registry=registry)
    for router in kafka_routers:
        broker.include_router(router)
    resources = Resources(settings=settings, broker=broker, metrics=Metrics(registry))
    broker.context.set_global("resources", resources)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            resources.pool = await create_pool(
                settings.database_url,
                min_size=settings.database_pool_min,
                max_size=settings.database_pool_max,
                connect_timeout=settings.database_connect_timeout_seconds,
                statement_timeout=settings.database_statement_timeout_seconds,
            )
            stack.push_async_callback(resources.pool.close)
            resources.redis = Redis.from_url(settings.redis_url, decode_responses=False)
            stack.push_async_callback(resources.redis.aclose)
            by_url = {settings.redis_url: resources.redis}
            for role in REDIS_ROLES:
                url = settings.redis_url_for(role)
                if url not in by_url:
                    by_url[url] = Redis.from_url(url, decode_responses=False)
                    stack.push_async_callback(by_url[url].aclose)
                if by_url[url] is not resources.redis:
                    resources.redis_roles[role] = by_url[url]
            resources.http = httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=False)
            stack.push_async_callback(resources.http.aclose)
            await broker.connect()
            stopped = False

            async def stop_broker() -> None:
                # Drain: stop fetching, let the handlers in flight finish, record and publish
                # their outcomes and commit (up to HERALD_DRAIN_TIMEOUT_SECONDS), then close.
                nonlocal stopped
                if not stopped:
                    stopped = True
                    await broker.stop()

            stack.push_async_callback(stop_broker)
            for hook in hooks:
                await stack.enter_async_context(hook(resources))
            # Pushed after the hooks, so it runs before they close: providers outlive the drain.
            stack.push_async_callback(stop_broker)
            await start_broker(broker)
            await stack.enter_async_context(
                consumer_lag(kafka_options(settings), broker, resources.metrics, interval=settings.consumer_lag_interval_seconds)
            )
            log.info("%s ready on %s:%s", settings.service_name, settings.host, settings.port)
            yield

    app = FastAPI(title=title, description=description, lifespan=lifespan, version="0.1.0")
    app.state.settings = settings
    app.state.resources = resources

    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    reported: dict[str, str] = {}  # what the last probe found failing, so each change is logged once

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="Kafka, PostgreSQL and Redis are reachable",
        response_model=None,
        responses={
            200: {"description": "Every dependency answers", "model": Readiness},
            503: {"description": "A dependency is unreachable", "model": Readiness},
        },
    )
    async def readyz() -> JSONResponse:
        async def pg() -> bool:
            return await resources.pool.fetchval("SELECT 1", timeout=2) == 1

        roles: dict[int, list[str]] = {}  # each other Redis once, named by its roles
        for role, client in resources.redis_roles.items():
            roles.setdefault(id(client), []).append(role)
        others = {"redis-" + "-".join(names): resources.redis_roles[names[0]].ping for names in roles.values()}
        results = await asyncio.gather(
            _check("kafka", lambda: broker.ping(timeout=2.0), 2.5),
            _check("postgres", pg, 2.5),
            _check("redis", resources.redis.ping, 2.5),
            *(_check(name, ping, 2.5) for name, ping in others.items()),
        )
        failing = {name: error for name, error in results if error is not None} | resources.problems  # and outages being waited out
        for name, _ in results:
            resources.metrics.dependency_up.labels(name).set(0 if name in failing else 1)
        for name, error in failing.items():
            if reported.get(name) != error:  # once per change, not on every probe
                log.warning("not ready: %s: %s", name, error)
        for name in set(reported) - set(failing):
            log.info("ready again: %s", name)
        reported.clear()
        reported.update(failing)
        # Only names and ok/failing: hosts, versions and exception text stay in the logs and metrics.
        checks = {name: "failing" if name in failing else "ok" for name in [n for n, _ in results] + list(resources.problems)}
        ready = not failing
        return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503)

    if api is not None:
        app.include_router(api)
    if export is not None:
        from ._export import export_api

        app.include_router(export_api(settings.service_name, export))

    async def metrics(request: Request) -> Response:
        """``/metrics`` answered directly (no redirect to ``/metrics/``, which the shipped scrape configs use)."""
        encoder, content_type = choose_encoder(request.headers.get("accept"))
        return Response(encoder(registry), headers={"Content-Type": content_type})

    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    app.mount("/metrics", make_asgi_app(registry))
    # Outermost but for the error middleware: an oversized body is refused before anything parses or authenticates it.
    app.add_middleware(BodyLimit, limits=body_limits(settings.max_body_bytes, settings.body_limit_table()))
    complete_openapi(app)
    return app
