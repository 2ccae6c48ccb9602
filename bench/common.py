"""Small helpers shared by the bench's parts."""

from __future__ import annotations

import math
from typing import Any

from core.store import parse_iso


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (the value below which `fraction` of the sorted values fall), None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def lateness_seconds(messages: list[dict[str, Any]]) -> list[float]:
    """sent_at − scheduled_at of every message that was sent, in seconds."""
    return [(parse_iso(m["sent_at"]) - parse_iso(m["scheduled_at"])).total_seconds() for m in messages if m["sent_at"]]


def lateness_summary(values: list[float]) -> dict[str, float | int | None]:
    """p50 / p99 / max of lateness values, and how many there were."""
    return {
        "count": len(values),
        "p50_seconds": percentile(values, 0.50),
        "p99_seconds": percentile(values, 0.99),
        "max_seconds": max(values) if values else None,
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator
