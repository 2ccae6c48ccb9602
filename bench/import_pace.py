"""Figure 8: `rappel import`'s pace, one row after another against patients imported at once (`--workers`).

The demo's synthetic register (`rappel_demo.register.generate_register`) is imported through `import_rows` into
fresh tables on AWS's DynamoDB Local: once with one worker, then with `--workers`' default, each into tables of its
own. Both must end with the same report and the same items: the differential check that
`tests/contract/test_import_on_dynamodb_local.py` makes with the same `import_into_fresh_tables`, at the bench's
size. moto is not used: in this process it answers under the importer's own GIL, so it measures nothing but
contention.

Each import runs twice: on DynamoDB Local as it answers here (under a millisecond of network), then with
`LINK_MS` added to every request (a sleep before it is sent, which frees the GIL as waiting on the network does),
as a stand-in for an operator's link to the region. The figures are each import's wall and CPU time and the ratio of
the two imports in each setting. DynamoDB Local shares this machine's two cores with the importer, and DynamoDB
does not: what concurrency gains on AWS lies between the two settings' ratios, bounded by the importer's own CPU
per row.

`python -m bench.import_pace --children 100` runs it alone and prints JSON; `python -m bench.run --only import`
runs it alone with the bench's table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from unittest import mock

import boto3
from botocore.endpoint import Endpoint

from core import clock, store
from core.clock import VirtualClock
from core.settings import Settings, build_settings
from rappel_cli.cli import DEFAULT_IMPORT_WORKERS
from rappel_cli.importer import ImportReport, RegisterRow, import_rows
from rappel_demo.register import generate_register
from rappel_local import dynamodb_local
from rappel_local.embedded import quiet_logs
from rappel_local.local import FAKE_AWS
from rappel_local.stack import create_stack

# The added round trip of the second setting: an operator's link to the region (a district office's, 50 ms).
LINK_MS = 50.0


@contextmanager
def round_trip(milliseconds: float) -> Iterator[None]:
    """Every AWS request waits `milliseconds` before it is sent, as it would on a slower network."""
    send = Endpoint._send

    def delayed(self: Endpoint, request: Any) -> Any:
        time.sleep(milliseconds / 1000)
        return send(self, request)

    with mock.patch.object(Endpoint, "_send", delayed):
        yield


def _register(children: int, seed: int, start_day: Any) -> list[RegisterRow]:
    rows = generate_register(children, seed=seed, start=start_day, days=60)
    return [RegisterRow(i + 2, row.to_csv()) for i, row in enumerate(rows)]


def _contents(settings: Settings, endpoint: str) -> dict[str, list[Any]]:
    client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    tables = {
        "patients": settings.PATIENTS_TABLE,
        "appointments": settings.APPOINTMENTS_TABLE,
        "messages": settings.MESSAGES_TABLE,
        "ops": settings.OPS_TABLE,
    }
    scans = {name: client.get_paginator("scan").paginate(TableName=table) for name, table in tables.items()}
    return {name: sorted((item for page in scan for item in page["Items"]), key=repr) for name, scan in scans.items()}


def import_into_fresh_tables(
    register: list[RegisterRow], endpoint: str, workers: int
) -> tuple[dict[str, float], tuple[ImportReport, dict[str, list[Any]]]]:
    """One import into fresh tables on DynamoDB Local at `endpoint` (a virtual clock installed): its wall and CPU
    seconds, and what it reported and left in each table (patients, appointments, messages, ops)."""
    stack = create_stack(prefix=f"b{uuid.uuid4().hex[:8]}", endpoint_url=endpoint, services=("dynamodb",))
    settings = build_settings(**stack.environment())
    store.unbind()
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        with quiet_logs():
            report = import_rows(register, settings, as_of=clock.now() - timedelta(hours=1), workers=workers)
        timing = {"wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}
        return timing, (report, _contents(settings, endpoint))
    finally:
        store.unbind()


def run_import_pace(children: int, seed: int, workers: int = DEFAULT_IMPORT_WORKERS) -> dict[str, Any]:
    """Import one register four times (one worker and `workers`, with and without the link); the figures."""
    virtual = VirtualClock(clock.now().replace(hour=6, minute=0, second=0, microsecond=0))
    register = _register(children, seed, virtual.now().date() + timedelta(days=3))
    settings: dict[str, Any] = {}
    previous = clock.install(virtual)
    # DynamoDB Local takes any credentials, but botocore signs with some.
    try:
        with mock.patch.dict(os.environ, FAKE_AWS), dynamodb_local.running() as endpoint:
            for name, delay in (("dynamodb_local", 0.0), ("over_a_link", LINK_MS)):
                with round_trip(delay):
                    alone, alone_outcome = import_into_fresh_tables(register, endpoint, 1)
                    together, together_outcome = import_into_fresh_tables(register, endpoint, workers)
                settings[name] = {
                    "round_trip_ms_added": delay,
                    "one_worker": alone,
                    "workers": together,
                    "speedup": alone["wall_seconds"] / together["wall_seconds"],
                    "cpu_ratio": together["cpu_seconds"] / alone["cpu_seconds"],
                    "rows_per_second": {
                        "one_worker": len(register) / alone["wall_seconds"],
                        "workers": len(register) / together["wall_seconds"],
                    },
                    "same_outcome": alone_outcome == together_outcome,
                    "errors": len(alone_outcome[0].errors),
                    "reminders_created": alone_outcome[0].created,
                }
    finally:
        clock.install(previous)
    return {"children": children, "rows": len(register), "workers": workers, **settings}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.import_pace", description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    figures = run_import_pace(args.children, args.seed)
    print(json.dumps(figures, indent=2))
    return 0 if all(figures[name]["same_outcome"] for name in ("dynamodb_local", "over_a_link")) else 1


if __name__ == "__main__":
    raise SystemExit(main())
