"""Every email template renders with its event type's example data, in every locale, strictly."""

import re

import pytest

from services.email.compose import EmailTemplates
from services.email.logic import event_data
from services.router.catalogue import load_catalogue
from shared import Channel, TemplateError
from shared.events import EVENT_MODELS

TEMPLATES = EmailTemplates()
CATALOGUE = load_catalogue()


def examples() -> list[tuple[str, str]]:
    """(template, event type) for every catalogue notification with the email channel."""
    found = {}
    for event_type, notifications in CATALOGUE.entries.items():
        for n in notifications:
            if Channel.email in n.channels:
                found.setdefault(n.template, event_type)
    return sorted(found.items())


def example_data(event_type: str) -> dict:
    return event_data(event_type, EVENT_MODELS[event_type].model_config["json_schema_extra"]["examples"][0])


def render(template: str, data: dict, locale: str = "en", **kw):
    options = dict(locale=locale, data=data, url="http://localhost:3000/x", frontend_url="http://localhost:3000", brand="Herald", timezone="Europe/Berlin")
    options.update(kw)
    return TEMPLATES.render(template, **options)


def test_every_catalogue_email_template_exists_in_every_locale():
    wanted = CATALOGUE.templates_for(Channel.email)
    assert {t for t, _ in examples()} == wanted
    assert TEMPLATES.locales == ["de", "en"]
    for locale in TEMPLATES.locales:
        assert wanted <= TEMPLATES.names[locale], f"{locale} lacks {sorted(wanted - TEMPLATES.names[locale])}"


@pytest.mark.parametrize("locale", ["en", "de"])
@pytest.mark.parametrize(("template", "event_type"), examples())
def test_a_template_renders_its_example_data(template, event_type, locale):
    rendered = render(template, example_data(event_type), locale, unsubscribe_url="http://127.0.0.1:8103/v1/unsubscribe?token=t")
    assert rendered.subject and "\n" not in rendered.subject
    assert "<style" not in rendered.html and 'style="' in rendered.html  # CSS inlined
    assert f'lang="{locale}"' in rendered.html
    assert 'href="http://localhost:3000/x"' in rendered.html and "http://localhost:3000/x" in rendered.text
    assert "None" not in rendered.text and "None" not in rendered.html
    assert rendered.subject in rendered.text
    assert "token=t" in rendered.text and "token=t" in rendered.html


def test_german_and_english_differ_and_dates_are_in_the_recipients_zone():
    data = example_data("booking.confirmed")
    en, de = render("booking_confirmed_student", data, "en"), render("booking_confirmed_student", data, "de")
    assert en.subject.startswith("Booking confirmed") and de.subject.startswith("Buchung bestätigt")
    assert "Tue 01 Dec 2026, 16:00 CET" in en.text and "01.12.2026, 16:00 CET" in de.text


def test_a_locale_falls_back_to_its_language_then_english():
    data = example_data("user.created")
    assert render("welcome", data, "de-AT").subject.startswith("Willkommen")
    assert render("welcome", data, "fr").subject.startswith("Welcome")
    assert TEMPLATES.locale_for("welcome", "de_CH") == "de"


def test_a_missing_variable_is_an_error_not_an_empty_string():
    data = example_data("message.received")
    del data["sender_name"]
    with pytest.raises(TemplateError, match="sender_name"):
        render("new_message", data)


def test_an_unknown_template_is_an_error():
    with pytest.raises(TemplateError, match="no email template"):
        render("no_such_template", {})


def test_html_is_autoescaped_and_text_is_not():
    data = example_data("message.received") | {"sender_name": "Eve <script>alert(1)</script> & co", "preview": "<b>hi</b>"}
    rendered = render("new_message", data)
    assert "<script>" not in rendered.html and "&lt;script&gt;" in rendered.html and "&lt;b&gt;hi&lt;/b&gt;" in rendered.html
    assert "Eve <script>alert(1)</script> & co" in rendered.text
    assert rendered.subject == "New message from Eve <script>alert(1)</script> & co"


def test_a_subject_built_from_data_with_line_breaks_is_one_line():
    data = example_data("marketing.promotion") | {"title": "Sale\r\nBcc: evil@example.com"}
    assert render("promotion", data).subject == "Sale Bcc: evil@example.com"


def test_templates_come_from_files_only_and_cannot_reach_python_internals():
    data = example_data("marketing.promotion") | {"title": "{{ ''.__class__.__mro__ }}"}
    assert render("promotion", data).subject == "{{ ''.__class__.__mro__ }}"
    assert not re.search(r"\{\{|\{%", render("promotion", example_data("marketing.promotion")).html)
