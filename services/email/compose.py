"""Rendering a dispatch into an email: per-locale Jinja2 templates in one branded layout, CSS inlined.

Templates live in ``templates/``: ``_layout.html`` and ``_layout.txt`` (the brand)
and one ``<locale>.yaml`` per language mapping each template name to its
``subject``, ``action`` (the button label), ``html`` and ``text``. They are read
from files only, never from event data. HTML is autoescaped; subjects and text
are not (they are not HTML), and a subject is one line whatever the data holds.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import css_inline
import yaml
from jinja2 import ChoiceLoader, DictLoader, FileSystemLoader, StrictUndefined, Template, pass_context
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from shared import TemplateError

from .logic import absolute_url, format_money, one_line

TEMPLATES = Path(__file__).with_name("templates")
_PARTS = ("subject", "action", "html", "text")
_LAYOUT_STRINGS = "_layout"


#: Headers whose values repeat from one message to the next (the MIME structure, the sender). Their
#: parsed forms are kept and shared: header objects are immutable, and a message replaces rather
#: than edits them. A multipart Content-Type carries a fresh boundary, so is not kept.
_REPEATING = frozenset({"content-type", "content-transfer-encoding", "mime-version", "from", "reply-to", "list-unsubscribe-post"})
_KEPT_AT_MOST = 512


def _repeats(name: str, value: str) -> bool:
    return name.lower() in _REPEATING and "boundary=" not in value


class _FoldedOnce:
    """A kept header folds once per policy: its value never changes, and folding (walking its
    parse tree) is most of the cost of turning a message into bytes."""

    def fold(self, *, policy: EmailPolicy) -> str:
        key = (policy.linesep, policy.max_line_length, policy.utf8, policy.refold_source)
        folds: dict[tuple[Any, ...], str] = self.__dict__.setdefault("_herald_folds", {})
        found = folds.get(key)
        if found is None:
            found = folds[key] = super().fold(policy=policy)  # type: ignore[misc]
        return found


class _CachedHeaderRegistry(HeaderRegistry):
    """The standard header registry, remembering the class it builds per header name and the
    parsed (and folded) header of every repeating value.

    The stock registry creates a new class for every header it parses, and parsing is most of
    the cost of building a message; the CR/LF check happens before the registry is asked.
    """

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}
        self._kept_classes: dict[str, type[BaseHeader]] = {}
        self._parsed: dict[tuple[str, str], BaseHeader] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        found = self._classes.get(key)
        if found is None:
            found = self._classes[key] = super().__getitem__(name)
        return found

    def __call__(self, name: str, value: Any) -> BaseHeader:
        if type(value) is not str or not _repeats(name, value):
            return self[name](name, value)
        key = (name.lower(), value)
        found = self._parsed.get(key)
        if found is None:
            if len(self._parsed) >= _KEPT_AT_MOST:
                return self[name](name, value)
            kept = self._kept_classes.get(key[0])
            if kept is None:
                base = self[name]
                kept = self._kept_classes[key[0]] = type(f"_Kept{base.__name__}", (_FoldedOnce, base), {})
            found = self._parsed[key] = kept(name, value)
        return found


#: ``email.policy.default`` (strict headers, CR/LF refused) with the caching registry.
POLICY = EmailPolicy(header_factory=_CachedHeaderRegistry())


@dataclass(frozen=True)
class Rendered:
    """One email's words: subject line, HTML (CSS inlined) and plain text."""

    subject: str
    html: str
    text: str


@pass_context
def _when(ctx: Context, value: Any) -> str:
    if value in (None, ""):
        return ""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    try:
        zone = ZoneInfo(ctx.get("_tz") or "UTC")
    except (KeyError, ValueError):
        zone = ZoneInfo("UTC")
    if moment.tzinfo is not None:
        moment = moment.astimezone(zone)
    return moment.strftime(ctx.get("_datefmt") or "%Y-%m-%d %H:%M %Z").strip()


def _money(amount: Any, currency: str) -> str:
    return format_money(int(amount), currency)


class EmailTemplates:
    """Every locale's email templates, compiled once."""

    def __init__(self, directory: Path = TEMPLATES, *, default_locale: str = "en") -> None:
        self.default_locale = default_locale
        sources: dict[str, str] = {}
        self.names: dict[str, set[str]] = {}
        for path in sorted(directory.glob("*.yaml")):
            locale = path.stem
            entries = yaml.safe_load(path.read_text()) or {}
            self.names[locale] = {name for name in entries if name != _LAYOUT_STRINGS}
            for name, parts in entries.items():
                if name == _LAYOUT_STRINGS:
                    for key, src in parts.items():
                        sources[f"{locale}/_layout.{key}"] = str(src)
                    continue
                missing = [p for p in ("subject", "html", "text") if p not in parts]
                if missing:
                    raise TemplateError(f"{path}: template {name!r} lacks {', '.join(missing)}")
                sources[f"{locale}/{name}.subject"] = str(parts["subject"])
                sources[f"{locale}/{name}.action"] = str(parts.get("action", ""))
                sources[f"{locale}/{name}.html"] = '{% extends "_layout.html" %}{% block content %}' + str(parts["html"]) + "{% endblock %}"
                sources[f"{locale}/{name}.text"] = '{% extends "_layout.txt" %}{% block content %}' + str(parts["text"]) + "{% endblock %}"
        if default_locale not in self.names:
            raise TemplateError(f"{directory} has no {default_locale}.yaml")
        self.env = ImmutableSandboxedEnvironment(
            loader=ChoiceLoader([DictLoader(sources), FileSystemLoader(directory)]),
            autoescape=lambda name: bool(name and name.endswith(".html")),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["when"] = _when
        self.env.filters["money"] = _money
        self._layout_keys = {
            locale: [key for key in sources if key.startswith(f"{locale}/_layout.") and not key.endswith(".datetime_format")] for locale in self.names
        }
        self.inliner = css_inline.CSSInliner(keep_style_tags=False, load_remote_stylesheets=False)
        self._cache: dict[str, Template] = {}

    @property
    def locales(self) -> list[str]:
        return sorted(self.names)

    def _template(self, name: str) -> Template:
        found = self._cache.get(name)
        if found is None:
            found = self._cache[name] = self.env.get_template(name)
        return found

    def locale_for(self, name: str, locale: str) -> str:
        """The locale a template is rendered in: the recipient's, its language, else the default."""
        for candidate in (locale, locale.replace("_", "-").split("-", 1)[0].lower(), self.default_locale):
            if name in self.names.get(candidate, ()):
                return candidate
        raise TemplateError(f"no email template {name!r} for locale {locale!r} or {self.default_locale!r}")

    def render(
        self,
        name: str,
        *,
        locale: str,
        data: dict[str, Any],
        url: str | None,
        frontend_url: str,
        brand: str,
        timezone: str = "UTC",
        unsubscribe_url: str | None = None,
    ) -> Rendered:
        """Subject, HTML and text of template ``name`` for ``data``; raises ``TemplateError`` when they do not fit."""
        lang = self.locale_for(name, locale)
        context: dict[str, Any] = {
            **data,
            "brand": brand,
            "url": absolute_url(frontend_url, url),
            "frontend_url": frontend_url,
            "unsubscribe_url": unsubscribe_url,
            "_tz": timezone,
        }
        try:
            context["_datefmt"] = self._template(f"{lang}/_layout.datetime_format").render(context)
            context["L"] = {key.split(".", 1)[1]: self._template(key).render(context) for key in self._layout_keys[lang]}
            subject = one_line(self._template(f"{lang}/{name}.subject").render(context))
            context["subject"] = subject
            context["action"] = one_line(self._template(f"{lang}/{name}.action").render(context))
            html = self._template(f"{lang}/{name}.html").render(context)
            text = self._template(f"{lang}/{name}.text").render(context)
        except TemplateError:
            raise
        except Exception as exc:  # jinja2 raises many kinds; all mean this data does not fit the template
            raise TemplateError(f"email template {name!r} ({lang}) failed: {type(exc).__name__}: {exc}") from None
        return Rendered(subject=subject, html=self.inliner.inline(html), text=text.strip() + "\n")


@dataclass(frozen=True)
class Email:
    """One email, checked and ready for any provider: mailboxes parsed by the email library, every
    header value on one line. SMTP turns it into an ``EmailMessage`` (``message()``); an HTTP API
    such as Resend takes its fields as JSON, so it never pays for building and re-parsing MIME."""

    sender: Address
    to: Address
    reply_to: Address | None
    subject: str
    message_id: str
    html: str
    text: str
    #: Further headers, in order (``X-Herald-Notification-Id``, ``List-Unsubscribe``, ``List-Unsubscribe-Post``).
    headers: tuple[tuple[str, str], ...]

    def message(self, *, now: datetime | None = None) -> EmailMessage:
        """A multipart/alternative message; every header is set through the email library, never concatenated."""
        message = EmailMessage(policy=POLICY)
        message["From"] = str(self.sender)  # the library's own quoting, so the parsed header can be shared
        message["To"] = self.to
        if self.reply_to is not None:
            message["Reply-To"] = str(self.reply_to)
        message["Subject"] = self.subject
        message["Date"] = format_datetime(now or datetime.now().astimezone())
        message["Message-ID"] = self.message_id
        for name, value in self.headers:
            message[name] = value
        message.set_content(self.text)
        message.add_alternative(self.html, subtype="html")
        # A random boundary of our own: the library would otherwise compile a regular expression per
        # message to prove its own boundary absent from the parts. 128 random bits cannot be guessed.
        message.set_boundary(f"=_herald_{uuid.uuid4().hex}")
        return message


def _one_header_line(name: str, value: str) -> str:
    if len(value.splitlines()) > 1:  # what the policy itself refuses: CR, LF and the other line breaks
        raise ValueError(f"header {name} value contains a linefeed or carriage return")
    return value


def compose(
    rendered: Rendered,
    *,
    to: str,
    sender: str,
    sender_name: str,
    notification_id: uuid.UUID,
    reply_to: str | None = None,
    unsubscribe_url: str | None = None,
) -> Email:
    """The email of ``rendered`` for ``to``. Raises ``ValueError`` for an address that is not one plain mailbox."""
    headers = [("X-Herald-Notification-Id", str(notification_id))]
    if unsubscribe_url:
        headers += [("List-Unsubscribe", f"<{_one_header_line('List-Unsubscribe', unsubscribe_url)}>"), ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]
    return Email(
        sender=Address(display_name=one_line(sender_name), addr_spec=sender),
        to=Address(addr_spec=to),
        reply_to=Address(addr_spec=reply_to) if reply_to else None,
        subject=one_line(rendered.subject),
        message_id=make_msgid(idstring=notification_id.hex, domain=sender.rpartition("@")[2] or None),
        html=rendered.html,
        text=rendered.text,
        headers=tuple(headers),
    )
