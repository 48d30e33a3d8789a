"""Reading the shipped dashboard and alert rules, and naming the metrics their PromQL uses."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))

#: Series Prometheus makes itself for every target.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf", "nan"}
_SUFFIXES = ("_bucket", "_count", "_sum", "_created", "_total")


def _walk(node: object) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def dashboard_queries(path: Path) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets and template-variable queries."""
    found = []
    for node in _walk(json.loads(path.read_text())):
        if isinstance(node.get("expr"), str):
            found.append(node["expr"])
        query = node.get("query")
        if node.get("type") == "query" and isinstance(query, dict):
            found.append(query["query"])
    return found


def rule_queries(path: Path) -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def all_queries() -> list[tuple[str, str]]:
    """``(where, expr)`` for the shipped dashboards and rules."""
    return [(p.name, q) for p in DASHBOARDS for q in dashboard_queries(p)] + [(p.name, q) for p in RULE_FILES for q in rule_queries(p)]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana ``label_values`` query) selects."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    label_values = re.match(r"\s*label_values\(\s*([a-zA-Z_:][\w:]*)\s*,", text)
    if label_values:
        return {label_values.group(1)}
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", text):
        name = match.group(1)
        if name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def exported_names(exposition: str) -> set[str]:
    """Metric families a ``/metrics`` page declares (its ``# HELP`` and ``# TYPE`` lines)."""
    return {line.split()[2] for line in exposition.splitlines() if line.startswith(("# HELP ", "# TYPE "))}


def is_exported(name: str, exported: Iterable[str]) -> bool:
    """A sample name is exported when its family is (``x_bucket`` of histogram ``x``, ``x_total`` of counter ``x``)."""
    families = set(exported)
    if name in families:
        return True
    return any(name.endswith(s) and name[: -len(s)] in families for s in _SUFFIXES)
