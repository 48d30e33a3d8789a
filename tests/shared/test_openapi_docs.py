"""Service OpenAPI documents are complete: authenticated routes document 401, readiness documents its 503 body."""

from fastapi import APIRouter
from pydantic import BaseModel

from shared import HeraldSettings, TracesService, UserId, create_service


def test_routes_document_401_when_they_authenticate_403_when_they_need_a_scope_and_400_when_they_parse_a_json_body():
    api = APIRouter(prefix="/v1")

    @api.get("/mine")
    async def mine(user: UserId) -> dict:
        return {}

    @api.post("/internal")
    async def internal(service: TracesService) -> dict:
        return {}

    @api.get("/open")
    async def open_route() -> dict:
        return {}

    class Thing(BaseModel):
        name: str

    @api.put("/things")
    async def put_thing(thing: Thing) -> dict:
        return {}

    document = create_service(HeraldSettings(), title="t", api=api).openapi()
    assert "401" in document["paths"]["/v1/mine"]["get"]["responses"]
    assert "401" in document["paths"]["/v1/internal"]["post"]["responses"]
    assert "403" in document["paths"]["/v1/internal"]["post"]["responses"] and "403" not in document["paths"]["/v1/mine"]["get"]["responses"]
    assert "401" not in document["paths"]["/v1/open"]["get"]["responses"]
    assert "401" not in document["paths"]["/healthz"]["get"]["responses"]
    assert "400" in document["paths"]["/v1/things"]["put"]["responses"]
    assert "400" not in document["paths"]["/v1/mine"]["get"]["responses"]


def test_readiness_documents_both_answers_with_their_body():
    document = create_service(HeraldSettings(), title="t").openapi()
    responses = document["paths"]["/readyz"]["get"]["responses"]
    for status in ("200", "503"):
        assert responses[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Readiness"}
    assert set(document["components"]["schemas"]["Readiness"]["properties"]) == {"status", "checks"}
