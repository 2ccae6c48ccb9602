"""The metrics the code emits are the ones template.yaml's alarms and dashboard watch, with the same dimensions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from core.metric_names import HEALTH, Dimension, MetricName, dimensions_of

pytestmark = pytest.mark.unit
CORE = Path(__file__).parents[2] / "src" / "core"


def _emitted() -> dict[str, set[frozenset[str]]]:
    """Every `count("Name", ...)` / `measure("Name", ...)` in src/core, with the dimension keywords it passes."""
    found: dict[str, set[frozenset[str]]] = {}
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if node.func.id not in {"count", "measure"} or not node.args:
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                dims = {kw.arg for kw in node.keywords if kw.arg in {"reminder_type", "provider"}}
                found.setdefault(first.value, set()).add(frozenset({"service", *dims}))
    return found


def test_every_emitted_metric_is_a_known_name() -> None:
    unknown = set(_emitted()) - {m.value for m in MetricName}
    assert not unknown, f"emitted but unknown to core.metric_names (and so to the template): {sorted(unknown)}"


def test_every_emitted_metric_carries_exactly_the_dimensions_its_alarms_and_graphs_expect() -> None:
    for name, dimension_sets in _emitted().items():
        expected = frozenset(d.value if isinstance(d, Dimension) else str(d) for d in dimensions_of(MetricName(name)))
        assert dimension_sets == {expected}, f"{name} emitted with {dimension_sets}, watched with {expected}"


def test_every_known_metric_is_emitted_somewhere() -> None:
    emitted = set(_emitted()) | {m.value for m in HEALTH}  # health figures go out through health.metric_values
    missing = {m.value for m in MetricName} - emitted
    assert not missing, f"watched by the template but never emitted: {sorted(missing)}"
