"""Short per-locale message templates (title/body/text) kept as YAML, rendered with Jinja2."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from jinja2 import StrictUndefined, Template
from jinja2.sandbox import ImmutableSandboxedEnvironment

#: Fields of event data that hold a moment (ISO 8601) a person reads as a time of day.
TIME_FIELDS = ("starts_at", "ends_at", "at")


def local_times(data: dict[str, Any], timezone: str, *, fmt: str = "%Y-%m-%d %H:%M") -> dict[str, Any]:
    """``data`` with its time fields shown in the recipient's zone (UTC for an unknown zone).

    The event carries UTC; a person reading "15:00Z" in Berlin should see 16:00. A value that is
    not an ISO 8601 moment is left as it is.
    """
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    out = dict(data)
    for name in TIME_FIELDS:
        value = out.get(name)
        if isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            if moment.tzinfo is not None:
                moment = moment.astimezone(zone)
            out[name] = moment.strftime(fmt)
    return out


class TemplateError(RuntimeError):
    """A template is missing or cannot be rendered with the data it was given."""


class MessageTemplates:
    """``<directory>/<locale>.yaml`` files mapping template name → {field: Jinja2 source}.

    The locale falls back from ``pt-BR`` to ``pt`` to ``en``. Templates come from
    files only, never from event data; rendering is sandboxed and strict, so a
    missing variable is an error rather than an empty string. A template may list, under
    ``display:``, the data fields a client may see beside what it renders (``display_fields``);
    the list is the default locale's, and it is never rendered.
    """

    def __init__(self, directory: Path, *, default_locale: str = "en", autoescape: bool = False) -> None:
        self.default_locale = default_locale
        self.env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=autoescape)
        self.sources: dict[str, dict[str, dict[str, Template]]] = {}
        self.display: dict[str, tuple[str, ...]] = {}
        for path in sorted(directory.glob("*.yaml")):
            raw = yaml.safe_load(path.read_text()) or {}
            self.sources[path.stem] = {
                name: {field: self.env.from_string(str(src)) for field, src in fields.items() if field != "display"} for name, fields in raw.items()
            }
            if path.stem == default_locale:
                for name, fields in raw.items():
                    shown = fields.get("display", [])
                    if not isinstance(shown, list) or not all(isinstance(f, str) for f in shown):
                        raise TemplateError(f"{path}: {name}.display must be a list of data field names")
                    self.display[name] = tuple(shown)
        if default_locale not in self.sources:
            raise TemplateError(f"{directory} has no {default_locale}.yaml")

    def display_fields(self, name: str) -> tuple[str, ...]:
        """The data fields template ``name`` declares for display (none unless it lists them)."""
        return self.display.get(name, ())

    @property
    def locales(self) -> list[str]:
        return sorted(self.sources)

    def names(self, locale: str | None = None) -> set[str]:
        return set(self.sources[locale or self.default_locale])

    def _pick(self, name: str, locale: str) -> dict[str, Template]:
        candidates = [locale, locale.split("-", 1)[0].split("_", 1)[0], self.default_locale]
        for candidate in candidates:
            found = self.sources.get(candidate, {}).get(name)
            if found is not None:
                return found
        raise TemplateError(f"no template {name!r} for locale {locale!r} or {self.default_locale!r}")

    def render(self, name: str, locale: str, data: dict[str, Any]) -> dict[str, str]:
        """Every field of template ``name`` rendered with ``data``."""
        try:
            return {field: template.render(**data).strip() for field, template in self._pick(name, locale).items()}
        except TemplateError:
            raise
        except Exception as exc:  # jinja2 raises many kinds; all mean this data does not fit
            raise TemplateError(f"template {name!r} ({locale}) failed: {exc}") from None
