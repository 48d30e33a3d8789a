import json

from herald import contract
from shared.events import EVENT_MODELS


def test_checked_in_schemas_match_the_models():
    stale = contract.differences()
    assert not stale, f"schemas/ is out of date for {stale}; run `herald schemas`"


def test_every_event_type_has_a_schema_with_an_example_that_validates():
    for event_type, model in EVENT_MODELS.items():
        schema = json.loads((contract.SCHEMAS_DIR / "events" / f"{event_type}.json").read_text())
        assert schema.get("examples"), f"{event_type} has no example"
        for example in schema["examples"]:
            model.model_validate(example)


def test_a_changed_model_is_detected(tmp_path):
    for relative, content in contract.event_schemas().items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(content)
    (tmp_path / "events" / "booking.created.json").write_text("{}\n")
    assert "events/booking.created.json" in [p for p in contract.differences(tmp_path) if p.startswith("events/")]


def test_env_example_lists_every_setting_of_every_service():
    text = (contract.SCHEMAS_DIR.parent / ".env.example").read_text()
    listed = {line.lstrip("#").split("=", 1)[0] for line in text.splitlines() if line.lstrip("#").startswith("HERALD_")}
    missing = set(contract.env_variables()) - listed
    assert not missing, f".env.example lacks {sorted(missing)}; run `herald env-example > .env.example`"
