"""Figure 7: the embedded stack's DynamoDB on moto against AWS's DynamoDB Local, on the demo's scenario.

The demo's own scenario (`rappel_demo.demo.build_scenario`, what `make run` simulates, provider outage included)
runs twice in this process, back to back: once with every table on moto, once with every table on DynamoDB Local
(the jar `make test` installs, started in memory; SQS, Secrets Manager and the Orange simulator stay as they are).
The figure is the wall time of each run and the ratio DynamoDB Local ÷ moto; DynamoDB Local's start-up (the JVM
until it answers ListTables) is reported apart.

It is also a differential check of the two stores: both runs must end with the same messages in the same states
(status, attempts, text, errors, revivals) and the same SMS (recipient, text, the reminders each carried). When
each was sent may differ, and is reported (`messages_sent_at_another_instant`, `largest_send_time_shift_seconds`):
DynamoDB leaves the order of index entries with equal sort keys unspecified, so the two stores may hand the
dispatcher the reminders of one send wave in another order.

`python -m bench.ddb_local --children 60 --days 10` runs it alone and prints JSON; `python -m bench.run --only
ddb-local` runs it alone with the bench's table.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from core.store import parse_iso
from rappel_demo.demo import build_scenario
from rappel_local import dynamodb_local
from rappel_local.embedded import quiet_logs
from rappel_local.scenario import load_scenario
from rappel_local.simulate import Simulation

# What each message must end with on both stores. Left out: the provider's ids (random per run) and the instants
# of the send, its queueing and its receipt, which follow the order within a wave (compared as a multiset below).
OUTCOME_FIELDS = (
    "message_id",
    "patient_id",
    "appointment_id",
    "reminder_type",
    "due_date",
    "status",
    "scheduled_at",
    "deadline",
    "attempts",
    "text",
    "segments",
    "last_error",
    "ambiguous",
    "revived",
)

Progress = Callable[[Any, Any, Any], None] | None


def _timed_run(scenario_doc: dict[str, Any], endpoint: str | None, progress: Progress) -> tuple[float, dict[str, Any]]:
    simulation = Simulation(load_scenario(scenario_doc), progress=progress, dynamodb_endpoint=endpoint)
    started = time.perf_counter()
    with quiet_logs():
        document = simulation.run().as_json()
    return time.perf_counter() - started, document


def compare_outcomes(moto: dict[str, Any], local: dict[str, Any]) -> dict[str, Any]:
    """Where two runs of one scenario disagree, as counts and a few examples; `same` when they do not."""

    def outcome(message: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(message[name] for name in OUTCOME_FIELDS)

    def sms(send: dict[str, Any]) -> tuple[Any, ...]:
        return (send["to"], send["text"], tuple(sorted(send["message_ids"])))

    left = {m["message_id"]: m for m in moto["messages"]}
    right = {m["message_id"]: m for m in local["messages"]}
    differing = sorted(i for i in left.keys() & right.keys() if outcome(left[i]) != outcome(right[i]))
    only = sorted(left.keys() ^ right.keys())
    sms_left, sms_right = Counter(map(sms, moto["sends"])), Counter(map(sms, local["sends"]))
    instants_differ = Counter(s["at"] for s in moto["sends"]) != Counter(s["at"] for s in local["sends"])
    shifts = [_shift(left[i]["sent_at"], right[i]["sent_at"]) for i in left.keys() & right.keys()]
    reordered = sum(1 for shift in shifts if shift)
    examples = [
        {name: (left[i][name], right[i][name]) for name in OUTCOME_FIELDS if left[i][name] != right[i][name]}
        | {"message_id": i}
        for i in differing[:5]
    ]
    return {
        "same": not differing and not only and sms_left == sms_right,
        "messages": len(left),
        "sms": len(moto["sends"]),
        "messages_with_another_outcome": len(differing),
        "messages_in_one_run_only": len(only),
        "sms_in_one_run_only": sum(((sms_left - sms_right) + (sms_right - sms_left)).values()),
        "send_instants_differ": instants_differ,
        "messages_sent_at_another_instant": reordered,
        "largest_send_time_shift_seconds": max(shifts, default=0.0),
        "by_status": {"moto": moto["stats"]["by_status"], "dynamodb_local": local["stats"]["by_status"]},
        "examples": examples,
    }


def _shift(left: str | None, right: str | None) -> float:
    if left == right:
        return 0.0
    if left is None or right is None:
        return float("inf")
    return abs((parse_iso(left) - parse_iso(right)).total_seconds())


def run_ddb_local(
    children: int, days: int, seed: int, rate: float, progress: Progress = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the demo's scenario on moto, then on DynamoDB Local; returns (figures, both output documents)."""
    scenario_doc = build_scenario(children, days, seed, rate)
    moto_seconds, moto_doc = _timed_run(scenario_doc, None, progress)
    started = time.perf_counter()
    with dynamodb_local.running() as endpoint:
        startup_seconds = time.perf_counter() - started
        local_seconds, local_doc = _timed_run(scenario_doc, endpoint, progress)
    figures = {
        "children": children,
        "days": days,
        "scenario": "rappel_demo.demo.build_scenario (the demo's, provider outage included)",
        "clinic_events": len(scenario_doc["events"]),
        "moto_wall_seconds": moto_seconds,
        "dynamodb_local_wall_seconds": local_seconds,
        "dynamodb_local_startup_seconds": startup_seconds,
        "ratio_dynamodb_local_over_moto": local_seconds / moto_seconds,
        "dynamodb_local_jar": str(dynamodb_local.jar_path().parent.name),
        "invariants_ok": {
            "moto": bool(moto_doc["stats"]["invariants"]["ok"]),
            "dynamodb_local": bool(local_doc["stats"]["invariants"]["ok"]),
        },
        "handler_errors": {
            "moto": moto_doc["stats"]["handler_errors"],
            "dynamodb_local": local_doc["stats"]["handler_errors"],
        },
        "differential": compare_outcomes(moto_doc, local_doc),
    }
    return figures, {"moto": moto_doc, "dynamodb_local": local_doc}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ddb_local", description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", type=int, default=200)
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rate", type=float, default=25.0)
    args = parser.parse_args(argv)
    figures, _ = run_ddb_local(args.children, args.days, args.seed, args.rate)
    print(json.dumps(figures, indent=2))
    return 0 if figures["differential"]["same"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
