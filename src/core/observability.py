"""Logging, metrics and tracing: one instance of each, configured the Powertools way.

Metrics are EMF in namespace `Rappel` with dimensions limited to reminder type and provider. They are
accumulated during an invocation and flushed once at its end, one EMF blob per dimension set; a count
is one summed value, a measure keeps every observation (Powertools' list of values).
Phone numbers never reach a log line: the formatter masks anything shaped like one.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter
from aws_lambda_powertools.metrics import MetricUnit

from core.metric_names import UNITS, MetricName
from core.phone import mask_phones

SERVICE = "rappel"
NAMESPACE = "Rappel"
warnings.filterwarnings("ignore", "No application metrics to publish*")


class _MaskingFormatter(LambdaPowertoolsFormatter):
    """Masks phone-shaped digits anywhere in the serialised record: the last guard, not the only one."""

    def serialize(self, log: Any) -> str:
        return mask_phones(super().serialize(log))


logger = Logger(service=SERVICE, logger_formatter=_MaskingFormatter())
# The AWS clients only: patching `requests` too would put a failed provider request's URL in the trace (Kannel's
# carries the sendsms password, the phone, the text and the receipt token).
tracer = Tracer(service=SERVICE, patch_modules=("botocore", "pynamodb"))

_metrics = Metrics(namespace=NAMESPACE, service=SERVICE)

Dimensions = tuple[tuple[str, str], ...]
# Per dimension set, each metric's values in this invocation: one running total for a count, every observation
# for a measure (so that CloudWatch's percentiles and averages are per observation).
_pending: dict[Dimensions, dict[MetricName, list[float]]] = defaultdict(dict)
_lock = threading.Lock()


def count(name: MetricName, value: float = 1, *, reminder_type: str | None = None, provider: str | None = None) -> None:
    """Add `value` to count `name` for this invocation (counts are summed: CloudWatch's Sum is what is read)."""
    with _lock:  # the sender's lanes record from several threads
        values = _values(name, reminder_type, provider)
        if values:
            values[0] += value
        else:
            values.append(value)


def measure(name: MetricName, value: float, *, reminder_type: str | None = None, provider: str | None = None) -> None:
    """Record one observation of `name` (seconds, percent, units...), in the unit `core.metric_names` gives it."""
    with _lock:
        _values(name, reminder_type, provider).append(value)


def _values(name: MetricName, reminder_type: str | None, provider: str | None) -> list[float]:
    dims: Dimensions = tuple(
        (key, val) for key, val in (("reminder_type", reminder_type), ("provider", provider)) if val is not None
    )
    return _pending[dims].setdefault(name, [])


def flush_metrics() -> None:
    """Write this invocation's metrics as EMF to stdout, one blob per dimension set, then forget them.

    Powertools keeps each `add_metric` value of a name in a list, and writes a blob by itself when a list reaches
    its limit of 100 values, so no observation is lost or merged.
    """
    for dims, figures in sorted(_pending.items()):
        for key, dimension in dims:
            _metrics.add_dimension(name=key, value=dimension)
        for name, values in sorted(figures.items()):
            for value in values:
                _metrics.add_metric(name=name.value, unit=MetricUnit(UNITS[name]), value=value)
        _metrics.flush_metrics()
    _pending.clear()


def discard_metrics() -> None:
    """Forget recorded metrics without writing them (tests, and runs that must not report)."""
    _pending.clear()
    _metrics.clear_metrics()


F = TypeVar("F", bound=Callable[..., Any])


def lambda_entry(correlation_id_path: str | None = None) -> Callable[[F], F]:
    """Decorate a Lambda handler: Lambda context in logs, tracing, and metrics written once at the end."""

    def decorate(handler: F) -> F:
        @functools.wraps(handler)
        def wrapper(event: Any, context: Any) -> Any:
            try:
                return handler(event, context)
            finally:
                flush_metrics()

        traced = tracer.capture_lambda_handler(capture_response=False)(wrapper)
        return logger.inject_lambda_context(correlation_id_path=correlation_id_path, log_event=False)(traced)  # type: ignore[no-any-return]

    return decorate
