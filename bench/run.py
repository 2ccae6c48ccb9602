"""`make bench` (`python -m bench.run`): every figure of issue 5 from one run, side by side.

1. burst drain: --burst reminders due in the same minute, through the real pipeline in virtual time, against a
   model of the spec's algorithm;
2. nominal load: the demo's scenario for --children children, lateness;
3. engine overhead: wall and CPU time per message, ours against a minimal sender (the floor);
4. AWS requests and cost per delivered reminder, priced with bench/prices.json;
5. SMS segments per reminder, fr and en, with and without GSM-7 normalisation;
6. memory of the sender handling its largest batch;
7. the demo's scenario with the embedded stack's DynamoDB on moto, then on AWS's DynamoDB Local: wall times, their
   ratio, and whether both end the same (`--only ddb-local` runs this one alone);
8. `rappel import`'s pace on DynamoDB Local, one worker against `--workers`' default, as DynamoDB Local answers and
   over a slower link (`--only import` runs this one alone).

Writes bench/results.json and prints tables. Exits 1 only if a run breaks an invariant (the simulator's invariant
checks, or more sends in some one-second window than the rate limit), or the two stores of figure 7 or the two
imports of figure 8 end differently; figures themselves never fail the run.
Wall-clock figures are noisy on a shared machine: only ratios measured within this one run are meaningful.
A quick look is `python -m bench.run --burst 2000` (about a tenth of the burst's time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = Path(__file__).with_name("results.json")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Rappel's benchmark: burst drain against the spec's algorithm, nominal lateness, engine "
        "overhead, AWS requests and cost, SMS segments, memory. --burst 2000 is a quicker look.",
    )
    parser.add_argument("--burst", type=int, default=20000, help="reminders due in the same minute (default 20000)")
    parser.add_argument("--rate", type=float, default=25.0, help="provider limit, SMS per second (default 25)")
    parser.add_argument("--children", type=int, default=200, help="children in the nominal run (default 200)")
    parser.add_argument("--days", type=int, default=8, help="days over which their doses fall due (default 8)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument(
        "--import-children", type=int, default=100, help="children in the imported register (figure 8, default 100)"
    )
    parser.add_argument("--overhead-messages", type=int, default=200, help="messages per overhead round (200)")
    parser.add_argument("--overhead-rounds", type=int, default=2, help="alternating ours/floor rounds (2)")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where to write the results JSON (bench/results.json; with "
        "--only, bench/results-<figure>.json, so that results.json keeps one whole run)",
    )
    parser.add_argument(
        "--only",
        choices=sorted(ONLY),
        help="run one figure alone: nominal (figure 2 and its DynamoDB units by step, figure 4), ddb-local (figure 7),"
        " import (figure 8)",
    )
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = RESULTS_PATH.with_name(f"results-{args.only}.json") if args.only else RESULTS_PATH
    counts = (args.burst, args.children, args.days, args.overhead_messages, args.overhead_rounds, args.import_children)
    if min(counts) < 1:
        parser.error(
            "--burst, --children, --days, --overhead-messages, --overhead-rounds and --import-children must be >= 1"
        )
    if args.rate < 2:
        parser.error("--rate must be at least 2 (two senders, each at least once a second)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # A pipe or a log file gets a wide table rather than rich's 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    progress_console = Console(stderr=True)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "python": platform.python_version(),
        "note": "All figures from this one run. Wall-clock numbers are noisy on a shared machine; compare ratios.",
    }
    from rappel_local.moto_shortcuts import moto_shortcuts

    if args.only:
        return ONLY[args.only](args, results, console)
    with (
        moto_shortcuts(),
        Progress(
            TextColumn("[bold]{task.fields[phase]}"),
            BarColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=progress_console,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as progress,
    ):
        results["segments"] = _phase(progress, "5 segments", lambda _: _segments())
        burst, burst_meter = _phase(progress, "1 burst", lambda tick: _burst(args, tick))
        results["burst"] = burst
        results["burst_slow"] = _phase(progress, "1 burst, slow", lambda tick: _slow_burst(args, tick))
        nominal, nominal_meter, clinic_events = _phase(progress, "2 nominal", lambda tick: _nominal(args, tick))
        results["nominal"] = nominal
        results["cost"] = _cost(nominal_meter, burst_meter, nominal, burst, clinic_events)
        results["overhead"] = _phase(progress, "3 overhead", lambda _: _overhead(args))
        results["memory"] = _phase(progress, "6 memory", lambda _: _memory(args))
        results["ddb_local"] = _phase(progress, "7 DynamoDB Local", lambda _: _ddb_local(args))
        results["import_pace"] = _phase(progress, "8 import", lambda _: _import_pace(args))
    results["bench_wall_seconds"] = time.perf_counter() - started
    failures = invariant_failures(results)
    results["ok"] = not failures
    results["failures"] = failures
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print_tables(results, console)
    console.print(f"Results: {args.output}")
    for failure in failures:
        console.print(f"[red]invariant broken:[/red] {failure}")
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------------- phases

Tick = Callable[[datetime, datetime, datetime], None]


def _phase(progress: Progress, name: str, body: Callable[[Tick], Any]) -> Any:
    task: TaskID = progress.add_task("", total=1.0, phase=name)

    def tick(start: datetime, now: datetime, until: datetime) -> None:
        span = (until - start).total_seconds() or 1.0
        progress.update(
            task, completed=(now - start).total_seconds() / span, description=now.strftime("%m-%d %H:%M:%S")
        )

    value = body(tick)
    progress.update(task, completed=1.0, description="done")
    return value


def _segments() -> dict[str, Any]:
    from bench.segments import measure_segments

    return measure_segments()


def _burst(args: argparse.Namespace, tick: Tick) -> tuple[dict[str, Any], Any]:
    from bench.awscount import AwsMeter
    from bench.burst import run_burst

    meter = AwsMeter()
    with meter.install():
        figures, _ = run_burst(args.burst, args.rate, args.seed, progress=tick)
    return figures, meter


def _slow_burst(args: argparse.Namespace, tick: Tick) -> dict[str, Any]:
    from bench.burst import SLOW_LATENCY_MS, run_burst
    from rappel_local.embedded import quiet_logs

    with quiet_logs():  # no meter here to take the functions' output
        figures, _ = run_burst(args.burst, args.rate, args.seed, progress=tick, latency_ms=SLOW_LATENCY_MS)
    return figures


def _nominal(args: argparse.Namespace, tick: Tick) -> tuple[dict[str, Any], Any, int]:
    from bench.awscount import AwsMeter
    from bench.nominal import run_nominal

    meter = AwsMeter()
    with meter.install():
        figures, _ = run_nominal(args.children, args.days, args.seed, args.rate, progress=tick)
    return figures, meter, int(figures["clinic_events"])


def _cost(nominal_meter: Any, burst_meter: Any, nominal: dict[str, Any], burst: dict[str, Any], events: int) -> Any:
    from bench.cost import cost_report, load_prices
    from core.settings import Settings

    prices = load_prices()
    shards = Settings().DUE_INDEX_SHARDS
    return {
        "prices_as_of": prices["prices_as_of"],
        "prices_rechecked_online": prices["rechecked_online_from_this_machine"],
        # All-in: planning from clinic events, dispatch, send, delivery receipts; per delivered reminder.
        "nominal": cost_report(
            nominal_meter, delivered=int(nominal["delivered"]), clinic_events=events, prices=prices, shards=shards
        ),
        # Dispatch and send only (seeded, no receipts), full batches; per sent reminder.
        "burst": cost_report(burst_meter, delivered=int(burst["sent"]), clinic_events=0, prices=prices, shards=shards),
    }


def _overhead(args: argparse.Namespace) -> dict[str, Any]:
    from bench.overhead import measure_overhead

    return measure_overhead(args.overhead_messages, args.seed, rounds=args.overhead_rounds)


def _memory(args: argparse.Namespace) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.memory", str(args.seed)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        return {"error": f"bench.memory exited {completed.returncode}: {completed.stderr.strip()[-500:]}"}
    figures: dict[str, Any] = json.loads(lines[-1])
    from bench.cost import function_memory_mb

    figures["lambda_memory_mb"] = function_memory_mb().get("send_sms")
    return figures


def _ddb_local(args: argparse.Namespace) -> dict[str, Any]:
    from bench.ddb_local import run_ddb_local

    figures, _ = run_ddb_local(args.children, args.days, args.seed, args.rate)
    return figures


def _only_figure(
    args: argparse.Namespace,
    results: dict[str, Any],
    console: Console,
    key: str,
    measure: Callable[[argparse.Namespace], dict[str, Any]],
    failures_of: Callable[[dict[str, Any]], list[str]],
    table_of: Callable[[dict[str, Any]], Table],
    failed: str,
) -> int:
    """One figure alone (`--only`): measured, written to its results file, its table and failures printed."""
    started = time.perf_counter()
    results[key] = measure(args)
    results["bench_wall_seconds"] = time.perf_counter() - started
    failures = failures_of(results[key])
    results["ok"], results["failures"] = not failures, failures
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    console.print(table_of(results[key]))
    console.print(f"Results: {args.output}")
    for failure in failures:
        console.print(f"[red]{failed}:[/red] {failure}")
    return 1 if failures else 0


def _only_ddb_local(args: argparse.Namespace, results: dict[str, Any], console: Console) -> int:
    return _only_figure(
        args, results, console, "ddb_local", _ddb_local, ddb_local_failures, ddb_local_table, "stores disagree"
    )


def _only_nominal(args: argparse.Namespace, results: dict[str, Any], console: Console) -> int:
    from bench.cost import cost_report, load_prices
    from core.settings import Settings

    started = time.perf_counter()
    nominal, meter, events = _nominal(args, lambda *_: None)
    prices = load_prices()
    report = cost_report(
        meter,
        delivered=int(nominal["delivered"]),
        clinic_events=events,
        prices=prices,
        shards=Settings().DUE_INDEX_SHARDS,
    )
    results["nominal"], results["cost"] = nominal, {"prices_as_of": prices["prices_as_of"], "nominal": report}
    results["bench_wall_seconds"] = time.perf_counter() - started
    failures = invariant_failures(results)
    results["ok"], results["failures"] = not failures, failures
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    console.print(steps_table(report))
    console.print(
        f"{nominal['children']} children, {nominal['delivered']} delivered; "
        f"{report.get('aws_requests_per_delivered_reminder', 0):.1f} AWS requests per delivered reminder"
    )
    console.print(f"Results: {args.output}")
    for failure in failures:
        console.print(f"[red]invariant broken:[/red] {failure}")
    return 1 if failures else 0


def _import_pace(args: argparse.Namespace) -> dict[str, Any]:
    from bench.import_pace import run_import_pace

    return run_import_pace(args.import_children, args.seed)


def _only_import(args: argparse.Namespace, results: dict[str, Any], console: Console) -> int:
    return _only_figure(
        args, results, console, "import_pace", _import_pace, import_failures, import_table, "imports disagree"
    )


ONLY: dict[str, Callable[[argparse.Namespace, dict[str, Any], Console], int]] = {
    "ddb-local": _only_ddb_local,
    "import": _only_import,
    "nominal": _only_nominal,
}


# ---------------------------------------------------------------------------------------------- verdict


def invariant_failures(results: dict[str, Any]) -> list[str]:
    """What makes `make bench` fail: an invariant broken by the burst or the nominal run."""
    failures: list[str] = []
    rate = results["options"]["rate"]
    for run in ("burst", "burst_slow", "nominal"):
        figures = results.get(run)
        if figures is None:  # a run of one figure (--only)
            continue
        if not figures["invariants_ok"]:
            broken = {k: v for k, v in figures["invariant_violations"].items() if v}
            failures.append(f"{run}: invariants broken {broken}")
        if figures["max_sends_in_one_second"] > rate:
            failures.append(f"{run}: {figures['max_sends_in_one_second']} sends in one second, limit {rate:g}")
    if "ddb_local" in results:
        failures += ddb_local_failures(results["ddb_local"])
    if "import_pace" in results:
        failures += import_failures(results["import_pace"])
    return failures


IMPORT_SETTINGS = ("dynamodb_local", "over_a_link")


def import_failures(figures: dict[str, Any]) -> list[str]:
    """Figure 8 breaks the run when the import with workers ends otherwise than the one with one worker."""
    return [
        f"import_pace: {name}: {figures['workers']} workers end otherwise than one"
        for name in IMPORT_SETTINGS
        if not figures[name]["same_outcome"]
    ]


def ddb_local_failures(figures: dict[str, Any]) -> list[str]:
    """Figure 7 breaks the run when either store's run breaks an invariant or the two end differently."""
    failures = [f"ddb_local: invariants broken on {name}" for name, ok in figures["invariants_ok"].items() if not ok]
    differential = figures["differential"]
    if not differential["same"]:
        counts = {k: v for k, v in differential.items() if k.endswith(("outcome", "only", "differ")) and v}
        failures.append(f"ddb_local: moto and DynamoDB Local end differently {counts}: {differential['examples']}")
    return failures


# ---------------------------------------------------------------------------------------------- tables


def _s(value: float | None, unit: str = "s", digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f} {unit}".strip()


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}×"


def print_tables(results: dict[str, Any], console: Console) -> None:
    burst, nominal, overhead = results["burst"], results["nominal"], results["overhead"]
    cost, segments, memory = results["cost"], results["segments"], results["memory"]
    spec = burst["spec_model"]
    table = Table(title=f"Rappel bench — {results['generated_at']}", show_lines=True)
    table.add_column("figure")
    table.add_column("Rappel", justify="right")
    table.add_column("reference", justify="right")
    table.add_column("ratio", justify="right")
    n, rate = burst["reminders"], burst["rate_limit_per_second"]
    table.add_row(
        f"1 burst: {n:,} due at once, limit {rate:g}/s, {burst['sender_max_concurrency']} senders, "
        f"{burst['provider_latency_ms']:g} ms provider latency — makespan (last send − due)",
        f"{_s(burst['makespan_seconds'])}\n({_x(burst['makespan_over_ideal'])} ideal {_s(burst['ideal_seconds'])})",
        f"spec's algorithm: {_s(spec['makespan_seconds'])}\n({spec['cycles']} five-minute cycles)",
        f"spec/ours {_x(burst['spec_over_ours'])}",
    )
    slow = results["burst_slow"]
    table.add_row(
        f"1 burst at {slow['provider_latency_ms']:g} ms provider latency: makespan",
        f"{_s(slow['makespan_seconds'])}\n({_x(slow['makespan_over_ideal'])} ideal {_s(slow['ideal_seconds'])})",
        f"one call at a time per sender: {_s(slow['latency_bound_ideal_seconds'])}",
        f"peak {slow['max_sends_in_one_second']}/s",
    )
    table.add_row(
        "1 burst: makespan against one call at a time per sender at that latency (the old ceiling)",
        f"{_x(burst['makespan_over_latency_bound_ideal'])}",
        f"bound {burst['latency_bound_rate_per_second']:.1f}/s → {_s(burst['latency_bound_ideal_seconds'])}",
        "",
    )
    table.add_row(
        "1 burst: most sends in any one-second window",
        f"{burst['max_sends_in_one_second']} (limit {rate:g})",
        f"spec: {spec['max_sends_in_one_second']}",
        "",
    )
    table.add_row(
        "1 burst: lateness p50 / p99 (sent − scheduled)",
        f"{_s(burst['lateness']['p50_seconds'])} / {_s(burst['lateness']['p99_seconds'])}",
        f"spec: {_s(spec['lateness']['p50_seconds'])} / {_s(spec['lateness']['p99_seconds'])}",
        "",
    )
    late = nominal["lateness"]
    table.add_row(
        f"2 nominal: {nominal['children']} children, doses due over {nominal['due_dates_over_days']} days "
        f"({nominal['sends']} sends) — lateness p50 / p99 / max",
        f"{_s(late['p50_seconds'])} / {_s(late['p99_seconds'])} / {_s(late['max_seconds'])}",
        f"{nominal['catch_up_reminders']} catch-up reminders (planned after their time) left out",
        "",
    )
    table.add_row(
        "2 nominal: SMS per delivered reminder (one SMS per phone per send slot)",
        f"{nominal['sms_per_delivered_reminder']:.2f}",
        f"{nominal['sends']} SMS, {nominal['reminders_sent']} reminders sent",
        "",
    )
    for kind in ("wall", "cpu"):
        table.add_row(
            f"3 engine overhead per message, {kind} (dispatch + send on moto, {overhead['messages']} messages)",
            _s(overhead["ours"][f"{kind}_ms_per_message"], "ms"),
            f"floor: {_s(overhead['floor'][f'{kind}_ms_per_message'], 'ms')}",
            f"ours/floor {_x(overhead[f'{kind}_ratio_ours_over_floor'])}",
        )
    all_in = cost["nominal"]
    units = all_in.get("dynamodb_units_per_delivered_reminder", {})
    table.add_row(
        "4 AWS requests per delivered reminder (all-in: planning, dispatch, send, receipt)",
        f"{all_in.get('aws_requests_per_delivered_reminder', 0):.1f}",
        f"DynamoDB {units.get('write_request_units', 0):.1f} WRU (GSI {units.get('write_request_units_gsi', 0):.1f})"
        f" + {units.get('read_request_units', 0):.1f} RRU",
        "",
    )
    table.add_row(
        f"4 AWS cost per 1M delivered reminders (us-east-1, prices of {cost['prices_as_of']}, not re-checked)",
        f"${all_in.get('usd_per_million_delivered', 0):,.2f}",
        f"dominant: {all_in.get('dominant_line')} ({(all_in.get('dominant_share') or 0):.0%})",
        f"dispatch+send only: ${cost['burst'].get('usd_per_million_delivered', 0):,.2f}",
    )
    for language, figures in segments["languages"].items():
        table.add_row(
            f"5 SMS segments per reminder, {language} ({figures['raw']['reminders']} reminders over the demo register)",
            f"{figures['gsm7_normalised']['mean_segments']:.3f} normalised",
            f"{figures['raw']['mean_segments']:.3f} raw ({figures['raw']['ucs2_share']:.0%} UCS-2)",
            f"−{figures['saving']:.0%}",
        )
    if "error" in memory:
        table.add_row("6 memory", memory["error"], "", "")
    else:
        table.add_row(
            f"6 memory: send_sms on its largest batch ({memory['records']} records)",
            f"Python peak {memory['tracemalloc_peak_bytes'] / 2**20:.1f} MiB (warm, tracemalloc)\n"
            f"RSS +{memory['rss_growth_bytes'] / 2**20:.1f} MiB (first batch)",
            f"process peak RSS {memory['process_peak_rss_bytes'] / 2**20:.0f} MiB incl. moto and simulator; "
            f"Lambda MemorySize {memory['lambda_memory_mb']} MB",
            "",
        )
    console.print(table)
    console.print(steps_table(cost["nominal"]))
    lines = Table(title="4 AWS cost per 1M delivered reminders, by line (all-in nominal run)")
    lines.add_column("line")
    lines.add_column("per reminder", justify="right")
    lines.add_column("USD per 1M", justify="right")
    for line in sorted(all_in.get("lines", []), key=lambda item: -item["usd_per_million_reminders"]):
        lines.add_row(
            line["name"], f"{line['per_reminder']:.4g} {line['unit']}", f"{line['usd_per_million_reminders']:.2f}"
        )
    fixed = all_in.get("fixed_monthly_usd", {})
    lines.add_row("fixed, per month, with no reminder (schedules)", "", f"{fixed.get('total', 0):.2f}")
    console.print(lines)
    if "ddb_local" in results:
        console.print(ddb_local_table(results["ddb_local"]))
    if "import_pace" in results:
        console.print(import_table(results["import_pace"]))
    console.print(f"Bench wall time {results['bench_wall_seconds']:.0f} s (noisy: other work shares this machine).")


def steps_table(nominal_cost: dict[str, Any]) -> Table:
    """Figure 4's DynamoDB units per delivered reminder, by step."""
    steps = Table(title="4 DynamoDB units per delivered reminder, by step of its life (all-in nominal run)")
    for column in ("step (function)", "WRU table", "WRU indexes", "RRU"):
        steps.add_column(column, justify="left" if column.startswith("step") else "right")
    for step, units in nominal_cost.get("dynamodb_units_by_step_per_delivered_reminder", {}).items():
        steps.add_row(step, f"{units['wru']:.2f}", f"{units['gsi_wru']:.2f}", f"{units['rru']:.2f}")
    capacity = nominal_cost.get("dynamodb_units_per_delivered_reminder", {})
    steps.add_row(
        "all",
        f"{capacity.get('write_request_units_table', 0):.2f}",
        f"{capacity.get('write_request_units_gsi', 0):.2f}",
        f"{capacity.get('read_request_units', 0):.2f}",
    )
    return steps


def ddb_local_table(figures: dict[str, Any]) -> Table:
    """Figure 7's table."""
    table = Table(
        title=f"7 the demo's scenario ({figures['children']} children, {figures['days']} days) with DynamoDB on moto "
        "and on DynamoDB Local (SQS and the rest on moto)"
    )
    for column in ("store", "wall time", "ratio to moto", "end state"):
        table.add_column(column, justify="left" if column == "store" else "right")
    differential = figures["differential"]
    table.add_row("moto", _s(figures["moto_wall_seconds"]), "1.00×", f"{differential['messages']} messages")
    table.add_row(
        f"DynamoDB Local ({figures['dynamodb_local_jar']}; start-up {_s(figures['dynamodb_local_startup_seconds'])} "
        "not counted)",
        _s(figures["dynamodb_local_wall_seconds"]),
        _x(figures["ratio_dynamodb_local_over_moto"]),
        ("the same" if differential["same"] else "[red]different[/red]")
        + f" ({differential['messages_sent_at_another_instant']} sent at another instant, by at most "
        f"{_s(differential['largest_send_time_shift_seconds'])})",
    )
    return table


def import_table(figures: dict[str, Any]) -> Table:
    """Figure 8's table."""
    table = Table(
        title=f"8 rappel import of {figures['rows']} rows ({figures['children']} children) on DynamoDB Local:"
        f" one worker against {figures['workers']}"
    )
    for column in ("setting", "one worker", f"{figures['workers']} workers", "speed-up", "CPU ×", "end state"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for name in IMPORT_SETTINGS:
        setting = figures[name]
        added = setting["round_trip_ms_added"]
        table.add_row(
            "as DynamoDB Local answers" if not added else f"{added:g} ms added to each request",
            f"{_s(setting['one_worker']['wall_seconds'])} ({setting['rows_per_second']['one_worker']:.1f} rows/s)",
            f"{_s(setting['workers']['wall_seconds'])} ({setting['rows_per_second']['workers']:.1f} rows/s)",
            _x(setting["speedup"]),
            _x(setting["cpu_ratio"]),
            "the same" if setting["same_outcome"] else "[red]different[/red]",
        )
    return table


if __name__ == "__main__":
    sys.exit(main())
