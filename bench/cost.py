"""Figure 4's arithmetic: what a run asked of AWS, per delivered reminder, priced with `prices.json`.

Lambda duration is not observable in-process, so it is modelled per invocation as

    billed ms = virtual ms (provider latency and pacing sleeps, on the simulation's virtual clock)
              + AWS calls × ASSUMED_AWS_CALL_MS + ASSUMED_HANDLER_MS

with the function's MemorySize from template.yaml. Log ingestion is the bytes the functions wrote (Powertools
JSON log lines and EMF metric blobs, captured during the run) plus ASSUMED_PLATFORM_LOG_BYTES per invocation for
Lambda's own start / report records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.awscount import AwsMeter

PRICES_PATH = Path(__file__).with_name("prices.json")
ASSUMED_AWS_CALL_MS = 8.0  # one DynamoDB / SQS / Secrets Manager round trip from Lambda, in-region, SDK included
ASSUMED_HANDLER_MS = 10.0  # per invocation: event parsing, Powertools wrappers, metrics flush
ASSUMED_PLATFORM_LOG_BYTES = 700  # Lambda's platform.start / platform.report JSON records per invocation
XRAY_SAMPLED_FRACTION = 0.05  # X-Ray's default rule beyond its 1 request/second reservoir
MINUTES_PER_MONTH = 30 * 24 * 60
# Invoked by EventBridge Scheduler, load or not.
SCHEDULED = {"dispatch_due", "follow_up_pass", "health_check", "daily_statistics"}
FUNCTION_FOR_HANDLER = {
    "plan_reminders": "handlers.plan_reminders.lambda_handler",
    "dispatch_due": "handlers.dispatch_due.lambda_handler",
    "follow_up_pass": "handlers.follow_up_pass.lambda_handler",
    "send_sms": "handlers.send_sms.lambda_handler",
    "delivery_receipt": "handlers.delivery_receipt.lambda_handler",
    "health_check": "handlers.health_check.lambda_handler",
    "daily_statistics": "handlers.daily_statistics.lambda_handler",
    "tally_changes": "handlers.tally_changes.lambda_handler",
}


def load_prices(path: Path = PRICES_PATH) -> dict[str, Any]:
    """prices.json as a dict."""
    return dict(json.loads(path.read_text(encoding="utf-8")))


def unit_price(prices: dict[str, Any], name: str) -> float:
    """USD for one unit of `name`."""
    item = prices["items"][name]
    return float(item["usd"]) / float(item["per"])


def function_memory_mb() -> dict[str, int]:
    """Each function's MemorySize from template.yaml (Globals, overridden per function)."""
    from rappel_local.stack import load_template

    template = load_template()
    default = int(template.get("Globals", {}).get("Function", {}).get("MemorySize", 128))
    out: dict[str, int] = {}
    for resource in template.get("Resources", {}).values():
        props = resource.get("Properties", {}) if isinstance(resource, dict) else {}
        for function, handler in FUNCTION_FOR_HANDLER.items():
            if props.get("Handler") == handler:
                memory = props.get("MemorySize", default)
                out[function] = int(memory) if isinstance(memory, int | str) and str(memory).isdigit() else default
    return out


@dataclass(frozen=True)
class Line:
    """One line of the bill: a quantity per delivered reminder and what 1M delivered reminders cost."""

    name: str
    per_reminder: float
    unit: str
    usd_per_million_reminders: float


def cost_report(
    meter: AwsMeter, *, delivered: int, clinic_events: int, prices: dict[str, Any], shards: int
) -> dict[str, Any]:
    """Requests per delivered reminder by service and operation, capacity units, and the cost per 1M reminders."""
    if delivered <= 0:
        return {"delivered": 0, "error": "nothing delivered: no per-reminder figure"}
    memory = function_memory_mb()
    per = 1 / delivered
    calls = meter.billed_calls()
    requests_per_reminder = {
        op: {who: n * per for who, n in by.items()} | {"total": sum(by.values()) * per}
        for op, by in sorted(calls.items())
    }
    capacity = meter.capacity()
    invocations = {name: inv for name, inv in meter.invocations.items() if inv.count}
    # The dispatcher's schedule fires every minute whatever the load: its invocations (and the Scheduler's) are a
    # fixed monthly cost (`fixed_monthly`); only the work a busy run does (calls, duration, logs) varies with load.
    variable_requests = sum(inv.count for name, inv in invocations.items() if name not in SCHEDULED)
    gb_seconds = 0.0
    durations: dict[str, Any] = {}
    for name, inv in invocations.items():
        billed_ms = inv.virtual_seconds * 1000 + inv.aws_calls * ASSUMED_AWS_CALL_MS + inv.count * ASSUMED_HANDLER_MS
        gb = memory.get(name, 256) / 1024
        gb_seconds += billed_ms / 1000 * gb
        durations[name] = {
            "invocations": inv.count,
            "memory_mb": memory.get(name, 256),
            "modelled_ms_per_invocation": billed_ms / inv.count,
            "virtual_ms_per_invocation": inv.virtual_seconds * 1000 / inv.count,
            "aws_calls_per_invocation": inv.aws_calls / inv.count,
            "log_bytes_per_invocation": inv.log_bytes / inv.count,
        }
    log_bytes = sum(inv.log_bytes + inv.count * ASSUMED_PLATFORM_LOG_BYTES for inv in invocations.values())
    sqs_requests = sum(n for op, by in calls.items() if op.startswith("sqs.") for n in by.values())
    secrets_calls = sum(n for op, by in calls.items() if op.startswith("secretsmanager.") for n in by.values())
    quantities = [
        ("DynamoDB writes", capacity["write_request_units"], "WRU", "dynamodb_write_request_unit"),
        ("DynamoDB reads", capacity["read_request_units"], "RRU", "dynamodb_read_request_unit"),
        ("SQS requests", sqs_requests, "requests", "sqs_standard_request"),
        ("Lambda requests (event-driven)", variable_requests, "invocations", "lambda_request"),
        ("Lambda duration (arm64)", gb_seconds, "GB-s", "lambda_arm64_gb_second"),
        ("Secrets Manager", secrets_calls, "API calls", "secrets_manager_api_call"),
        ("CloudWatch Logs ingestion", log_bytes / 2**30, "GB", "cloudwatch_logs_ingestion_gb"),
        ("EventBridge custom events (extra)", clinic_events, "events", "eventbridge_custom_event"),
        (
            "X-Ray traces (extra, 5% sampled)",
            variable_requests * XRAY_SAMPLED_FRACTION,
            "traces",
            "xray_trace_recorded",
        ),
    ]
    lines = [
        Line(name, q * per, unit, q * per * unit_price(prices, key) * 1_000_000) for name, q, unit, key in quantities
    ]
    total = sum(line.usd_per_million_reminders for line in lines)
    dominant = max(lines, key=lambda line: line.usd_per_million_reminders)
    return {
        "delivered": delivered,
        "requests_per_delivered_reminder": requests_per_reminder,
        "aws_requests_per_delivered_reminder": sum(sum(by.values()) for by in calls.values()) * per,
        "dynamodb_units_per_delivered_reminder": {k: v * per for k, v in capacity.items()},
        "dynamodb_units_by_table_per_delivered_reminder": {
            table: {k: v * per for k, v in units.items()} for table, units in meter.capacity_by_table().items()
        },
        "dynamodb_units_by_step_per_delivered_reminder": {
            step: {k: v * per for k, v in units.items()} for step, units in meter.capacity_by_function().items()
        },
        "lambda": durations,
        "lambda_invocations_per_delivered_reminder": {name: inv.count * per for name, inv in invocations.items()},
        "lines": [line.__dict__ for line in lines],
        "usd_per_million_delivered": total,
        "dominant_line": dominant.name,
        "dominant_share": dominant.usd_per_million_reminders / total if total else None,
        "fixed_monthly_usd": fixed_monthly(meter, prices, shards),
        "unbilled_harness_calls": meter.unbilled_calls(),
        "assumptions": {
            "aws_call_ms": ASSUMED_AWS_CALL_MS,
            "handler_ms_per_invocation": ASSUMED_HANDLER_MS,
            "platform_log_bytes_per_invocation": ASSUMED_PLATFORM_LOG_BYTES,
            "xray_sampled_fraction": XRAY_SAMPLED_FRACTION,
            "free_tiers_subtracted": False,
            # AWS does not bill the GetRecords calls a Lambda trigger makes on a DynamoDB stream.
            "dynamodb_stream_reads_by_lambda_billed": False,
        },
    }


def fixed_monthly(meter: AwsMeter, prices: dict[str, Any], shards: int) -> dict[str, Any]:
    """What the schedules cost with no reminder at all: every minute's dispatcher run that finds nothing, the
    follow-up pass every FOLLOW_UP_PASS_MINUTES finding nothing, the 30-minute health check and the daily statistics
    (their own DynamoDB work is not modelled here)."""
    from core.settings import Settings

    dispatch_runs = MINUTES_PER_MONTH
    pass_runs = MINUTES_PER_MONTH // Settings().FOLLOW_UP_PASS_MINUTES
    schedule_runs = dispatch_runs + pass_runs + MINUTES_PER_MONTH // 30 + 30
    # An idle dispatcher run: the provider-hold read, the queue depth, one query per shard; an idle pass: one query
    # per shard of the follow_up index (counted with the dispatcher's: same memory, same call time).
    idle_calls = 2 + shards + shards * pass_runs / dispatch_runs
    dispatch = meter.invocations.get("dispatch_due")
    log_bytes = (
        dispatch.log_bytes / dispatch.count if dispatch and dispatch.count else 1000
    ) + ASSUMED_PLATFORM_LOG_BYTES
    memory = function_memory_mb().get("dispatch_due", 256) / 1024
    xray = unit_price(prices, "xray_trace_recorded")
    rru, sqs = unit_price(prices, "dynamodb_read_request_unit"), unit_price(prices, "sqs_standard_request")
    logs = unit_price(prices, "cloudwatch_logs_ingestion_gb")
    parts = {
        "EventBridge Scheduler": schedule_runs * unit_price(prices, "eventbridge_scheduler_invocation"),
        "Lambda requests (scheduled)": schedule_runs * unit_price(prices, "lambda_request"),
        "X-Ray traces (extra, 5% sampled)": schedule_runs * XRAY_SAMPLED_FRACTION * xray,
        "Lambda duration (idle dispatcher and pass)": dispatch_runs
        * (idle_calls * ASSUMED_AWS_CALL_MS + ASSUMED_HANDLER_MS)
        / 1000
        * memory
        * unit_price(prices, "lambda_arm64_gb_second"),
        "DynamoDB reads (idle dispatcher and pass)": (dispatch_runs * (1 + shards * 0.5) + pass_runs * shards * 0.5)
        * rru,
        "SQS (queue depth)": dispatch_runs * sqs,
        "CloudWatch Logs (idle dispatcher)": dispatch_runs * log_bytes / 2**30 * logs,
    }
    return {"schedule_invocations": schedule_runs, "lines": parts, "total": sum(parts.values())}
