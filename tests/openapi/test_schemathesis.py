"""Every HTTP service's OpenAPI holds: generated requests (valid and invalid, with and without credentials) meet no 5xx and no undocumented answer."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import importlib
import json
import os

import pytest
import schemathesis
import stripe
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from schemathesis import GenerationMode
from schemathesis.python import asgi
from standardwebhooks import Webhook

from herald.stack import SERVICES, ServiceSpec

from ..support import api_key, bearer, make_topics, new_namespace, settings_for

CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.response_headers_conformance,
]
# More, and fresh random, examples per operation with HERALD_OPENAPI_EXAMPLES=500; the default run is repeatable.
EXAMPLES = int(os.environ.get("HERALD_OPENAPI_EXAMPLES", "50"))
DERANDOMIZE = "HERALD_OPENAPI_EXAMPLES" not in os.environ
STRIPE_SECRET = "whsec_openapi"
PARTNER_SECRET = "whsec_" + base64.b64encode(b"openapi partner secret").decode()
OVERRIDES = {"ingress": {"stripe_webhook_secret": STRIPE_SECRET, "webhook_secrets": f"scheduler={PARTNER_SECRET}"}}


def _app(spec: ServiceSpec, infra):
    module_name, factory = spec.app.split(":")
    settings_cls = importlib.import_module(f"services.{spec.name}.settings").Settings
    service_settings = settings_for(settings_cls, infra, new_namespace(), **OVERRIDES.get(spec.name, {}))
    asyncio.run(make_topics(service_settings))
    return getattr(importlib.import_module(module_name), factory)(service_settings), service_settings


def credentials(spec: ServiceSpec, service_settings, case) -> tuple[dict[str, str], dict]:
    """Valid credentials for the case: a key or token, or for webhooks a signature over the body sent."""
    path = case.operation.path
    if not path.startswith("/v1/webhooks/"):
        return (api_key(service_settings) if spec.name == "ingress" else bearer(service_settings, "u_openapi")), {}
    try:
        body = json.dumps(case.body)
    except (TypeError, ValueError):
        return {}, {}
    if path.endswith("/stripe"):
        headers = {"Stripe-Signature": stripe.WebhookSignature.generate_signature_header(body, STRIPE_SECRET)}
    else:
        headers = {"webhook-id": "msg_openapi", "webhook-timestamp": str(int(dt.datetime.now(dt.UTC).timestamp()))}
        headers["webhook-signature"] = Webhook(PARTNER_SECRET).sign("msg_openapi", dt.datetime.now(dt.UTC), body)
    return {**headers, "Content-Type": "application/json"}, {"data": body.encode()}


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@pytest.mark.parametrize("spec", SERVICES, ids=[s.name for s in SERVICES])
def test_the_openapi_document_holds_for_generated_requests(spec, infra):
    app, service_settings = _app(spec, infra)
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        seen: dict[str, list[int]] = {}
        assert operations, f"{spec.name} documents no operation"
        for operation in operations:
            cases = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)
            if "{partner}" in operation.path:
                cases |= operation.as_strategy(GenerationMode.POSITIVE, path_parameters={"partner": "scheduler"})
            examples = operation.get_strategies_from_examples()
            if examples:
                cases |= st.one_of(examples)

            @given(case=cases, authenticated=st.sampled_from([True, True, True, False]))
            @settings(
                max_examples=EXAMPLES, deadline=None, database=None, derandomize=DERANDOMIZE,
                phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
            )
            def holds(case, authenticated: bool) -> None:
                headers, extra = credentials(spec, service_settings, case) if authenticated else (None, {})
                response = case.call(headers=headers, **extra)
                seen.setdefault(operation.label, []).append(response.status_code)
                case.validate_response(response, checks=CHECKS, headers=headers)

            holds()
        if spec.name == "ingress":
            unreached = [label for label, codes in seen.items() if not any(200 <= code < 300 for code in codes)]
            assert not unreached, f"no generated request got past validation on {unreached}"
    finally:
        asgi.shutdown_lifespans()
