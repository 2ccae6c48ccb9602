"""The metrics the code emits are the ones template.yaml's alarms and dashboard watch, with the same dimensions."""

from __future__ import annotations

import ast
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from core.metric_names import HEALTH, Dimension, MetricName, dimensions_of

pytestmark = pytest.mark.unit
CORE = Path(__file__).parents[2] / "src" / "core"


def _emitted() -> dict[str, set[frozenset[str]]]:
    """Every `MetricName.X` named in the first argument of a `count(...)` / `measure(...)` in src/core, with the
    dimension keywords the call passes. A name written as a string fails the test: names go through MetricName."""
    found: dict[str, set[frozenset[str]]] = {}
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if node.func.id not in {"count", "measure"} or not node.args:
                continue
            first = node.args[0]
            dims = {kw.arg for kw in node.keywords if kw.arg in {"reminder_type", "provider"}}
            assert not isinstance(first, ast.Constant), f"{path.name}:{node.lineno}: use MetricName, not a string"
            for name in _names(first):
                found.setdefault(name, set()).add(frozenset({"service", *dims}))
    return found


def _names(expression: ast.expr) -> set[str]:
    return {
        MetricName[n.attr].value
        for n in ast.walk(expression)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "MetricName"
    }


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


def test_each_observation_is_its_own_value_and_counts_are_summed(capsys: pytest.CaptureFixture[str]) -> None:
    from core.observability import count, discard_metrics, flush_metrics, measure

    discard_metrics()
    for lateness in (2.0, 5.0, 11.0):
        measure(MetricName.SEND_LATENESS_SECONDS, lateness, reminder_type="1_day_reminder", provider="orange")
        count(MetricName.SMS_SENT, reminder_type="1_day_reminder", provider="orange")
    measure(MetricName.DISPATCH_LAG_SECONDS, 7.0)
    capsys.readouterr()
    flush_metrics()
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]

    by_type = next(b for b in blobs if b.get("reminder_type") == "1_day_reminder")
    assert by_type["SendLatenessSeconds"] == [2.0, 5.0, 11.0]  # not one summed 18 s: p95 and average stay true
    assert by_type["SmsSent"] == [3.0]  # three sends, one summed count
    (unit,) = [
        m["Unit"] for m in by_type["_aws"]["CloudWatchMetrics"][0]["Metrics"] if m["Name"] == "SendLatenessSeconds"
    ]
    assert unit == "Seconds"
    service_only = next(b for b in blobs if "reminder_type" not in b)
    assert service_only["DispatchLagSeconds"] == [7.0]


def test_more_than_a_hundred_observations_are_all_written() -> None:
    from core.observability import discard_metrics, flush_metrics, measure

    discard_metrics()
    for lateness in range(250):
        measure(MetricName.SEND_LATENESS_SECONDS, float(lateness), reminder_type="7_day_reminder", provider="orange")
    written = io.StringIO()
    with redirect_stdout(written):
        flush_metrics()
    values = [v for line in written.getvalue().splitlines() for v in json.loads(line).get("SendLatenessSeconds", [])]
    assert sorted(values) == [float(v) for v in range(250)]  # Powertools flushes at 100 values, loses none


def test_tracing_records_aws_calls_only_never_a_provider_request() -> None:
    """With tracing on (as in Lambda), Powertools patched every library X-Ray knows, `requests` among them: a Kannel
    request that failed without an answer put its whole URL in the trace (the sendsms user's password, the family's
    phone, the text, the receipt token in the dlr-url). Only the AWS clients are traced."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).parents[2] / "src"
    script = "import core.observability as o; from aws_xray_sdk.core import patcher; import json; "
    script += "print(json.dumps([o.tracer.disabled, sorted(patcher._PATCHED_MODULES)]))"
    env = {**os.environ, "LAMBDA_TASK_ROOT": str(src), "POWERTOOLS_TRACE_DISABLED": "false", "PYTHONPATH": str(src)}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    disabled, patched = json.loads(run.stdout.strip().splitlines()[-1])
    assert disabled is False and "botocore" in patched
    assert not {"requests", "httplib", "httpx"} & set(patched), patched


def test_libraries_never_log_below_warning_whatever_the_functions_level() -> None:
    """ApplicationLogLevel DEBUG (the usual way to troubleshoot) set the root logger to DEBUG, and urllib3 logged each
    request line, a Kannel sendsms URL with its password and the phone, through the runtime's root handler, which
    the masking formatter never sees."""
    import logging

    import core  # noqa: F401 - what every function and command imports first

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    try:
        for name in ("urllib3.connectionpool", "botocore.endpoint", "pynamodb.connection.base", "requests"):
            assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
    finally:
        root.setLevel(level)
