"""The router's OpenAPI holds for generated requests with the right credentials for each route (API key or user token)."""

from __future__ import annotations

import asyncio

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.python import asgi

from services.router.app import create_app
from services.router.settings import Settings

from ..support import api_key, bearer, make_topics, new_namespace, settings_for

CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_every_route_answers_generated_requests_without_a_server_error(infra):
    # No other service runs here: the export gathers the router's own part only (an unreachable one is a 502 by design).
    service_settings = settings_for(Settings, infra, new_namespace(), export_services=[])
    asyncio.run(make_topics(service_settings))
    app = create_app(service_settings)
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [r.ok() for r in schema.get_all_operations() if r.ok().path.startswith("/v1/")]
        assert len(operations) == 17
        reached: dict[str, set[int]] = {}
        for operation in operations:
            headers = bearer(service_settings, "u_openapi") if operation.path in ("/v1/preferences", "/v1/quiet-hours") else api_key(service_settings)
            cases = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)

            @given(case=cases)
            @settings(max_examples=40, deadline=None, database=None, derandomize=True, phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            def holds(case) -> None:
                response = case.call(headers=headers)
                reached.setdefault(operation.label, set()).add(response.status_code)
                case.validate_response(response, checks=CHECKS, headers=headers)

            holds()
        unreached = [label for label, codes in reached.items() if not any(200 <= c < 300 or c == 404 for c in codes)]
        assert not unreached, f"no generated request got past validation on {unreached}"
    finally:
        asgi.shutdown_lifespans()
