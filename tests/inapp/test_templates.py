"""Every notification the catalogue sends in-app renders a title and a body, in every locale, from the schema examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.inapp.app import TEMPLATES
from services.router.catalogue import load_catalogue
from shared import Channel, MessageTemplates
from shared.events import EVENT_MODELS

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / "events"
TEMPLATE_SET = MessageTemplates(TEMPLATES)
CASES = [
    (event_type, n.template, locale)
    for event_type, notifications in load_catalogue().entries.items()
    for n in notifications
    if Channel.inapp in n.channels
    for locale in TEMPLATE_SET.locales
]


def test_the_catalogue_sends_something_in_app():
    assert len({c[1] for c in CASES}) >= 15


@pytest.mark.parametrize(("event_type", "template", "locale"), CASES)
def test_renders_from_the_schema_examples(event_type, template, locale):
    examples = json.loads((SCHEMAS / f"{event_type}.json").read_text())["examples"]
    for example in examples:
        data = EVENT_MODELS[event_type].model_validate(example).model_dump(mode="json")
        text = TEMPLATE_SET.render(template, locale, data)
        assert set(text) == {"title", "body"}
        assert text["title"].strip() and "{{" not in text["title"] + text["body"]
