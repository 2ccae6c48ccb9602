"""The `rappel` command: run the demo and simulations, and operate a stack (embedded or deployed)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from rappel_cli.target import TargetError, resolve

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Rappel: immunization SMS reminders.")
local_app = typer.Typer(no_args_is_help=True, help="The embedded stack on this machine.")
app.add_typer(local_app, name="local")
# No markup and no emoji codes: what is printed quotes clinics, ids and files as they were written. A bracket in a
# clinic's name ("PMI [site 2]", "[/annexe]") is text, not a style (Rich dropped it from the call list, or raised),
# and a patient id "CI:x:0042" is not "CI❌0042". Styles are set with Text.
console = Console(stderr=True, markup=False, emoji=False)
# Errors listed one per line on the console (a register's, a scenario's events'); --json has them all.
MAX_LISTED = 20
out = Console(markup=False, emoji=False)


def _error(message: str, label: str = "error") -> None:
    """`label: message` on the console, the label in red."""
    console.print(Text.assemble((f"{label}:", "red"), " ", message), soft_wrap=True)


Local = Annotated[bool, typer.Option("--local", help="Talk to the embedded stack started by `rappel local up`.")]
Stack = Annotated[str | None, typer.Option(help="Deployed stack name (default: samconfig.toml's dev stack).")]
Region = Annotated[str | None, typer.Option(help="AWS region of the deployed stack.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print data as JSON.")]


def _not_empty(what: str) -> Callable[[str | None], str | None]:
    """A callback that takes an id as given and refuses it empty (an empty `$ID` in a script is an error naming
    what was expected, not a DynamoDB traceback)."""

    def check(value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise typer.BadParameter(f"empty: {what}")
        return value

    return check


_message_id = _not_empty("a message id (msg_…)")
MessageId = Annotated[str, typer.Argument(callback=_message_id)]


def _settings(local: bool, stack: str | None, region: str | None) -> Any:
    try:
        return resolve(local=local, stack=stack, region=region)
    except TargetError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None


def _emit(data: Any, as_json: bool, table: Table | None = None) -> None:
    if as_json or table is None:
        out.print_json(json.dumps(data, default=str))
    else:
        out.print(table)


@app.command()
def demo(
    children: Annotated[int, typer.Option(min=1, max=20000, help="Children in the synthetic register.")] = 500,
    days: Annotated[int, typer.Option(min=1, max=365, help="Days to simulate.")] = 60,
    seed: Annotated[int, typer.Option(help="Random seed (register, faults, jitter).")] = 7,
    rate: Annotated[float, typer.Option(min=2, help="Provider rate limit, SMS per second (at least 2).")] = 5.0,
    report: Annotated[Path, typer.Option(help="Where to write the HTML report.")] = Path("out/report.html"),
    scenario_out: Annotated[
        Path | None, typer.Option(help="Only write the scenario as `rappel simulate` JSON to this file.")
    ] = None,
) -> None:
    """Simulate a national program's weeks on the embedded stack and write an HTML report (`make run`)."""
    from rappel_demo.demo import build_scenario, run_demo

    if scenario_out is not None:
        scenario_out.write_text(json.dumps(build_scenario(children, days, seed, rate), ensure_ascii=False) + "\n")
        console.print(f"scenario written to {scenario_out}")
        return

    summary = run_demo(children=children, days=days, seed=seed, rate=rate, report_path=report, console=console)
    raise typer.Exit(0 if summary.invariants_ok else 1)


@app.command()
def simulate(
    scenario: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Scenario JSON file.")],
    as_json: AsJson = False,
) -> None:
    """Run a scenario through the whole pipeline in virtual time (the contract in docs/simulation.md)."""
    from core.settings import ConfigurationError
    from rappel_local.scenario import ScenarioError
    from rappel_local.simulate import simulate as run

    try:
        data = json.loads(scenario.read_text())
    except json.JSONDecodeError as exc:
        _error(f"{scenario}: not JSON ({exc})")
        raise typer.Exit(2) from None
    try:
        with _quiet():
            result = run(data)
    except (ScenarioError, ValueError, ConfigurationError) as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    document = result.as_json()
    if as_json:
        sys.stdout.write(json.dumps(document, default=str) + "\n")
        return
    table = Table(title="Messages by type and status")
    table.add_column("reminder type")
    statuses = sorted(document["stats"]["by_status"])
    for status in statuses:
        table.add_column(status, justify="right")
    for reminder_type, counts in sorted(document["stats"]["by_type"].items()):
        table.add_row(reminder_type, *(str(counts.get(s, 0)) for s in statuses))
    out.print(table)
    invariants = document["stats"]["invariants"]
    out.print(f"sends: {len(document['sends'])}; invariants: {'hold' if invariants['ok'] else 'VIOLATED'}")
    events = document["stats"]["events"]
    out.print(
        f"events: {events['applied']} applied, {events['ignored']} ignored, {events['rejected']} refused"
        + (f", {events['after_until']} after until (never run)" if events["after_until"] else "")
    )
    for refused in events["errors"][:MAX_LISTED]:
        out.print(f"  {refused['at']} {refused['type']}: {refused['error']}")
    if len(events["errors"]) > MAX_LISTED:
        out.print(f"  … and {len(events['errors']) - MAX_LISTED} more (--json lists them all)")


# `rappel import --workers`: patients imported at once, each patient's rows in order on one worker, as clinic events
# reach concurrent Lambda invocations. Each worker mostly waits for DynamoDB; the bound is the importer's own CPU, on
# one core whatever the threads (bench/README, figure 8). At most pynamodb's pool of 10 HTTP connections a client.
# One with --local: moto's server answers requests in threads, and its tables are not safe to write while a query
# walks them (a row would fail now and then, to be imported again), for little gain on one machine.
DEFAULT_IMPORT_WORKERS = 8
MAX_IMPORT_WORKERS = 10


@app.command("import")
def import_register(
    register: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Register CSV file.")],
    local: Local = False,
    stack: Stack = None,
    region: Region = None,
    as_json: AsJson = False,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="Required: when the register was exported (ISO 8601, e.g. 2027-03-01T08:00:00Z). Its events are"
            " stamped with it, so a later clinic event (an opt-out, a dose given) is never undone.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_IMPORT_WORKERS,
            help=f"Patients imported at once (each patient's rows in order; default {DEFAULT_IMPORT_WORKERS}, 1 with"
            " --local). 1 imports one patient after another.",
        ),
    ] = None,
) -> None:
    """Load a register (patient and appointment columns) through the same validation and planning as events; exit 1
    when some rows were refused (each is listed with the field it got wrong)."""
    from rich.progress import Progress

    from rappel_cli.importer import FAILURES_IN_A_ROW_TO_STOP, import_rows, read_csv
    from rappel_cli.operations import parse_instant

    if not as_of:
        # Not the file's modification time: a copy or a download resets it, and an old register stamped now would
        # undo every opt-out, dose given and reschedule recorded since its export.
        _error("--as-of: required: when the register was exported (ISO 8601), which its events are stamped with")
        raise typer.Exit(2)
    try:
        exported = parse_instant(as_of, "--as-of")
        if exported > datetime.now(UTC) + timedelta(minutes=5):
            # Its events would be stamped now (a clinic event may not come from the future): a mistyped year, said.
            raise ValueError(f"--as-of: {exported.isoformat()} is in the future; when was the register exported?")
        rows = read_csv(register)
    except ValueError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    settings = _settings(local, stack, region)
    with _quiet(), Progress(console=console, transient=True) as progress:
        task = progress.add_task("importing", total=len(rows))
        report = import_rows(
            rows,
            settings,
            progress=lambda n: progress.update(task, completed=n),
            as_of=exported,
            workers=workers or (1 if local else DEFAULT_IMPORT_WORKERS),
        )
    data = {
        "as_of": exported.isoformat(),
        "rows": report.rows,
        "patients": report.patients,
        "appointments": report.appointments,
        "reminders_created": report.created,
        "ignored_rows": report.ignored,
        "errors": [{"row": r, "error": e} for r, e in report.errors],
        "stopped_at_row": report.stopped_at,
        "rows_not_tried": report.not_tried,
    }
    table = Table(title=f"Imported {register.name}", show_header=False)
    for key in ("rows", "patients", "appointments", "reminders_created"):
        table.add_row(key, str(data[key]))
    table.add_row("ignored", str(len(report.ignored)))  # older than what is stored
    table.add_row("errors", str(len(report.errors)))
    _emit(data, as_json, table)
    for row, error in report.errors[:MAX_LISTED]:
        console.print(f"row {row}: {error}")
    if len(report.errors) > MAX_LISTED:
        console.print(f"… and {len(report.errors) - MAX_LISTED} more (--json lists them all)")
    if report.stopped_at is not None:
        console.print(
            f"stopped: {FAILURES_IN_A_ROW_TO_STOP} rows in a row failed on the way; {len(report.not_tried)} rows were"
            f" not tried, the first of them row {report.stopped_at} (--json lists them all). Import the register"
            " again once that is mended: the rows already applied change nothing the second time."
        )
    if report.errors:
        raise typer.Exit(1)


@app.command()
def process(local: Local = False, stack: Stack = None, region: Region = None, as_json: AsJson = False) -> None:
    """One dispatch and send cycle now (the spec's sms:process)."""
    from rappel_cli.operations import process_now

    settings = _settings(local, stack, region)
    with _quiet():
        data = process_now(settings, drain=local)
    rows = {k: v for k, v in data.items() if k != "reminders"}
    rows.update({f"reminders {name}": count for name, count in (data.get("reminders") or {}).items()})
    _emit(data, as_json, _key_values("Process cycle", rows))


@app.command()
def health(local: Local = False, stack: Stack = None, region: Region = None, as_json: AsJson = False) -> None:
    """The scheduler's health (the spec's sms:health); exit 1 when unhealthy."""
    from core import clock
    from core.health import check_health

    settings = _settings(local, stack, region)
    with _quiet():
        report = check_health(settings, clock.now(), operator=True)
    data = report.as_dict()
    if as_json:
        _emit(data, True)
    else:
        out.print(Text("healthy", "green") if report.healthy else Text("unhealthy", "red"))
        for finding in report.findings:
            out.print(f" - {finding}")
        for advice in report.advice:
            out.print(Text.assemble(" ", ("advice", "yellow"), f": {advice}"))
        out.print(_key_values("Figures", {k: v for k, v in data.items() if k not in {"findings", "advice"}}))
    raise typer.Exit(0 if report.healthy else 1)


@app.command()
def replies(
    day: Annotated[
        datetime | None, typer.Option(formats=["%Y-%m-%d"], help="The day (YYYY-MM-DD, UTC); today by default.")
    ] = None,
    local: Local = False,
    stack: Stack = None,
    region: Region = None,
    as_json: AsJson = False,
) -> None:
    """The day's replies that changed nothing (no keyword, a number no patient has, a service's SMS), with the
    patients of the number: a `Please stop` is for an operator to act on (`rappel optout --patient ID`)."""
    from core import clock, store
    from core.replies import recorded_replies

    settings = _settings(local, stack, region)
    store.bind(settings)
    rows = recorded_replies((day or clock.now()).strftime("%Y-%m-%d"))
    columns = ["at", "outcome", "from", "patient_ids", "text"]
    table = Table(title=f"Replies recorded: {len(rows)}")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(", ".join(row.get(c) or []) if c == "patient_ids" else _fmt(row.get(c)) for c in columns))
    _emit(rows, as_json, table)


@app.command("receipt-urls")
def receipt_urls(local: Local = False, stack: Stack = None, region: Region = None, as_json: AsJson = False) -> None:
    """The URLs to give the gateways: Orange's receipt URL and Kannel's sms-service get-url, each with its own token."""
    from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

    from rappel_cli.operations import registered_urls

    settings = _settings(local, stack, region)
    try:
        urls = registered_urls(settings)
    except (ValueError, GetParameterError) as exc:  # no receipt URL named; the secret not readable with your rights
        _error(str(exc))
        raise typer.Exit(2) from None
    if as_json:
        _emit(urls, True)
        return
    out.print("Register with Orange (SMS API contact form, real-time SMS DR):")
    out.print(urls["orange_receipts"], soft_wrap=True)
    out.print("Kannel's catch-all sms-service, get-url (with max-messages = 0):")
    out.print(f'get-url = "{urls["kannel_sms_service_get_url"]}"', soft_wrap=True)


@app.command()
def stats(
    since: Annotated[str, typer.Option(help="hour, day or week.")] = "day",
    outcomes: Annotated[
        bool,
        typer.Option(
            "--outcomes",
            help="Did the reminders work: per clinic and reminder type, doses given by the due date, later or not "
            "given, for families reached (a reminder delivered) and not reached.",
        ),
    ] = False,
    local: Local = False,
    stack: Stack = None,
    region: Region = None,
    as_json: AsJson = False,
) -> None:
    """Sent, delivered, failed, expired, cancelled, pending per reminder type; delivery time and lateness."""
    from core import clock
    from core.statistics import statistics

    if since not in {"hour", "day", "week"}:
        _error("--since must be hour, day or week")
        raise typer.Exit(2)
    settings = _settings(local, stack, region)
    if outcomes:
        _outcomes(settings, as_json)
        return
    report = statistics(since, settings, clock.now())  # type: ignore[arg-type]
    data = report.as_dict()
    table = Table(title=f"Statistics, last {since}")
    headers = {
        "planned": "planned",
        "sent": "sent",
        "sms_sent": "SMS",
        "delivered": "deliv.",
        "failed": "failed",
        "dead_lettered": "dead",
        "expired": "expired",
        "cancelled": "cancel.",
        "pending": "pending",
        "delivery_rate": "deliv. rate",
        "delivery_time_avg_seconds": "deliv. s avg",
        "delivery_time_p95_seconds": "deliv. s p95",
        "lateness_avg_seconds": "late s avg",
        "lateness_p95_seconds": "late s p95",
    }
    columns = list(headers)
    table.add_column("type")
    for column in columns:
        table.add_column(headers[column], justify="right")
    rows = {**data.get("by_type", {}), "total": data.get("total", {})}
    for name, figures in rows.items():
        table.add_row(name, *(_fmt(figures.get(c)) for c in columns))
    _emit(data, as_json, table)


def _outcomes(settings: Any, as_json: bool) -> None:
    from core.followup import LABELS, outcome_report

    data = outcome_report(settings)
    table = Table(title="Did the reminders work (doses since the counters began, per clinic)")
    for column in ("clinic", "family", "reached by", "appointments", "given by due date", "given later", "not given"):
        table.add_column(column, justify="left" if column in {"clinic", "family", "reached by"} else "right")
    figures = ("appointments", "given_by_due_date", "given_later", "not_given")
    for row in data["by_clinic"]:
        family = "reached" if row["group"] == "reached" else "not reached"
        by = LABELS.get(row["reminder_type"], "-")
        table.add_row(row["clinic"], family, by, *(str(row[f]) for f in figures))
    for group in ("reached", "not_reached"):
        table.add_row("all", group.replace("_", " "), "", *(str(data[group][f]) for f in figures))
    _emit(data, as_json, table)


def _as_text(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: one starting with = + - @ (or a tab or carriage return) would be run as
    a formula (a clinic named `=HYPERLINK(…)` in a call list), so it gets a leading apostrophe, as Excel itself
    marks text."""
    return "'" + value if isinstance(value, str) and value.startswith(("=", "+", "-", "@", "\t", "\r")) else value


@app.command()
def followup(
    clinic: Annotated[str | None, typer.Option(help="Only this clinic.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only follow-ups opened at or after this date (YYYY-MM-DD) or ISO instant.")
    ] = None,
    csv_file: Annotated[Path | None, typer.Option("--csv", help="Also write them to this CSV file.")] = None,
    local: Local = False,
    stack: Stack = None,
    region: Region = None,
    as_json: AsJson = False,
) -> None:
    """Families to call: the open follow-ups (an overdue dose no reminder reached), oldest first."""
    import csv

    from core.followup import families_in, follow_up_row, open_follow_ups, parse_since

    settings = _settings(local, stack, region)
    try:
        start = parse_since(since) if since else None
    except ValueError:
        _error(f"--since {since!r} is neither a date (YYYY-MM-DD) nor an ISO instant")
        raise typer.Exit(2) from None
    rows = [follow_up_row(state) for state in open_follow_ups(settings, clinic=clinic, since=start)]
    columns = ["at", "clinic", "patient_id", "appointment_id", "due_date", "phone", "reasons"]
    if csv_file is not None and not csv_file.parent.is_dir():
        _error(f"--csv: no such folder {csv_file.parent}")
        raise typer.Exit(2)
    if csv_file is not None:
        # For a spreadsheet: a byte order mark (Excel reads UTF-8 without one as its local code page: "Abobo-TÃ©"),
        # and no cell it would run as a formula.
        with csv_file.open("w", newline="", encoding="utf-8-sig") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(
                {c: _as_text(v) for c, v in {**row, "reasons": "; ".join(row["reasons"])}.items()} for row in rows
            )
        console.print(f"{len(rows)} follow-ups written to {csv_file}")
    table = Table(title=f"Families to call: {families_in(rows)} ({len(rows)} open follow-ups)")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(("\n".join(row[c]) if c == "reasons" else str(row[c] or "-")) for c in columns))
    _emit(rows, as_json, table)


@app.command()
def messages(
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    patient: Annotated[str | None, typer.Option(help="Only this patient id.")] = None,
    since: Annotated[str | None, typer.Option(help="Only messages scheduled at or after this ISO instant.")] = None,
    changed_since: Annotated[
        str | None,
        typer.Option(help="Only messages whose status last changed at or after this ISO instant (what failed lately)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1)] = 200,
    message_id: Annotated[
        str | None,
        typer.Option("--id", callback=_message_id, help="One message, with its history (each status change and why)."),
    ] = None,
    local: Local = False,
    stack: Stack = None,
    region: Region = None,
    as_json: AsJson = False,
) -> None:
    """Inspect messages."""
    from rappel_cli.operations import list_messages

    settings = _settings(local, stack, region)
    if message_id is not None:
        _one_message(settings, message_id, as_json)
        return
    try:
        rows = list_messages(
            settings, status=status, patient=patient, since=since, limit=limit, changed_since=changed_since
        )
    except ValueError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    table = Table(title=f"{len(rows)} messages")
    columns = [
        "message_id",
        "patient_id",
        "reminder_type",
        "status",
        "scheduled_at",
        "sent_at",
        "attempts",
        "last_error",
    ]
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_fmt(row.get(c)) for c in columns))
    _emit(rows, as_json, table)


def _one_message(settings: Any, message_id: str, as_json: bool) -> None:
    from rappel_cli.operations import message_detail

    found = message_detail(settings, message_id)
    if found is None:
        _error(f"no message {message_id}")
        raise typer.Exit(1)
    if as_json:
        _emit(found, True)
        return
    changes = len(found["history"])
    history = Table(title=f"History ({changes} status change{'' if changes == 1 else 's'}, oldest first)")
    for column in ("at", "from", "to", "reason"):
        history.add_column(column, overflow="fold")
    for entry in found["history"]:
        history.add_row(*(_fmt(entry[c]) for c in ("at", "from", "to", "reason")))
    out.print(_key_values(f"Message {message_id}", {k: v for k, v in found.items() if k != "history"}))
    out.print(history)


@app.command()
def redrive(local: Local = False, stack: Stack = None, region: Region = None, as_json: AsJson = False) -> None:
    """Move the dead letter queue back to the send queue (a message past its deadline then expires)."""
    from core.queue import redrive as run

    settings = _settings(local, stack, region)
    result = run(settings)
    data = {"method": result.method, "moved": result.moved, "task_handle": result.task_handle}
    _emit(data, as_json, _key_values("Redrive", data))


@app.command()
def resend(
    message_id: MessageId,
    local: Local = False,
    stack: Stack = None,
    region: Region = None,
    as_json: AsJson = False,
) -> None:
    """Send one dead letter again, knowingly: an ambiguous one (its SMS may have gone out) is never sent again by a
    redrive, only by this; exit 1 when the message is not a dead letter before its deadline."""
    from core.sending import resend_dead_letter

    settings = _settings(local, stack, region)
    with _quiet():
        resent = resend_dead_letter(message_id, settings)
    _decision(message_id, "resent", resent, "a dead letter before its deadline", as_json)


@app.command("assume-sent")
def assume_sent(
    message_id: MessageId,
    local: Local = False,
    stack: Stack = None,
    region: Region = None,
    as_json: AsJson = False,
) -> None:
    """Record an ambiguous dead letter as sent: the operator judges its SMS went out (the other choice is `resend`),
    so it no longer waits for a decision; exit 1 when the message is not an ambiguous dead letter."""
    from core.sending import assume_sent as record

    settings = _settings(local, stack, region)
    with _quiet():
        recorded = record(message_id, settings)
    _decision(message_id, "recorded_sent", recorded, "an ambiguous dead letter", as_json)


def _decision(message_id: str, done: str, applied: bool, expected: str, as_json: bool) -> None:
    """Print what an operator's decision on one message did; exit 1, saying why, when it did not apply."""
    data = {"message_id": message_id, done: applied}
    _emit(data, as_json, _key_values(done.replace("_", " ").capitalize(), data))
    if not applied:
        from core import store

        found = store.get_message(message_id)
        why = "no such message" if found is None else f"it is {found.status}, not {expected}"
        _error(f"{message_id}: {why}", label=f"not {done.replace('_', ' ')}")
        raise typer.Exit(1)


@app.command()
def retally(
    local: Local = False,
    stack: Stack = None,
    region: Region = None,
    as_json: AsJson = False,
    drop_gone: Annotated[
        bool,
        typer.Option(
            "--drop-gone",
            help="Delete the records of batches the stream no longer holds (kept 24 hours): they can never be"
            " counted, and their counts stay missing.",
        ),
    ] = False,
) -> None:
    """Count the statistics batches tally_changes gave up on (TallyFailureQueue), read again from the streams."""
    from rappel_cli.operations import retally as run

    settings = _settings(local, stack, region)
    try:
        with _quiet():  # the tally's own log lines stay off the output
            rows = run(settings, drop_gone=drop_gone)
    except ValueError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    table = Table(title=f"Failed statistics batches: {len(rows)}")
    for column in ("shard", "first", "last", "changes", "result", "why"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_fmt(row.get(c)) for c in ("shard", "first", "last", "changes", "result", "why")))
    _emit(rows, as_json, table)
    if any(row["result"] == "left" for row in rows):
        raise typer.Exit(1)


@app.command("replay-events")
def replay_events(local: Local = False, stack: Stack = None, region: Region = None, as_json: AsJson = False) -> None:
    """Apply again the clinic events planning failed on (the planning dead letter queue), once the cause is fixed;
    exit 1 when one is left on the queue or refused."""
    from rappel_cli.operations import replay_clinic_events

    settings = _settings(local, stack, region)
    try:
        with _quiet():  # planning's own log lines stay off the output
            rows = replay_clinic_events(settings)
    except ValueError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    columns = ("event_id", "type", "time", "result", "why")
    table = Table(title=f"Clinic events replayed: {len(rows)}")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_fmt(row.get(c)) for c in columns))
    _emit(rows, as_json, table)
    if any(row["result"] != "applied" for row in rows):
        raise typer.Exit(1)


Phone = Annotated[str | None, typer.Argument(help="The phone number (or give --patient).")]


OfPatient = Annotated[
    str | None,
    typer.Option(
        "--patient",
        callback=_not_empty("a patient id (as `rappel replies` lists it)"),
        help="The phone number of this patient (an id `rappel replies` lists).",
    ),
]


@app.command()
def optout(
    phone: Phone = None,
    patient: OfPatient = None,
    local: Local = False,
    stack: Stack = None,
    region: Region = None,
    as_json: AsJson = False,
) -> None:
    """Stop all reminders to a phone number (its pending reminders are cancelled)."""
    _consent(phone, patient, False, local, stack, region, as_json)


@app.command()
def optin(
    phone: Phone = None,
    patient: OfPatient = None,
    local: Local = False,
    stack: Stack = None,
    region: Region = None,
    as_json: AsJson = False,
) -> None:
    """Allow reminders to a phone number again (reminders not yet created are planned)."""
    _consent(phone, patient, True, local, stack, region, as_json)


def _consent(
    phone: str | None,
    patient_id: str | None,
    opt_in: bool,
    local: bool,
    stack: str | None,
    region: str | None,
    as_json: bool,
) -> None:
    from core import store
    from core.phone import InvalidPhoneNumber, mask_phone
    from core.planning import set_consent

    if (phone is None) == (patient_id is None):
        _error("give a phone number or --patient: one of the two")
        raise typer.Exit(2)
    settings = _settings(local, stack, region)
    if patient_id is not None:
        store.bind(settings)
        patient = store.get_patient(patient_id)
        if patient is None:
            _error(f"--patient: no patient {patient_id}")
            raise typer.Exit(2)
        phone = patient.phone
    assert phone is not None
    try:
        with _quiet():
            change = set_consent(phone, opt_in, settings)
    except InvalidPhoneNumber as exc:
        _error(f"phone: {exc}")
        raise typer.Exit(2) from None
    # The number's own stop is what an opt-out writes first, patients or not: say what became of it.
    stop = ("lifted" if opt_in else "written") if change.stop_changed else "unchanged"
    data = {
        "number": mask_phone(change.number),
        "number_stop": stop,
        "patients": len(change.patients),
        "cancelled": change.result.cancelled,
        "revived": change.result.revived,
        "created": change.result.created,
    }
    _emit(data, as_json, _key_values("Opt-in" if opt_in else "Opt-out", data))
    if not change.patients and not opt_in and change.stop_changed:
        console.print("No patient has this number yet: any patient registered on it later gets no reminders.")
    if not change.patients and not change.stop_changed:
        raise typer.Exit(1)  # nothing changed


@app.command("release-hold")
def release_hold(local: Local = False, stack: Stack = None, region: Region = None, as_json: AsJson = False) -> None:
    """Close every provider's circuit now (after buying a bundle, fixing credentials or an outage's end) instead of
    waiting for its next probe."""
    from core import provider_state, store

    settings = _settings(local, stack, region)
    store.bind(settings)
    closed = [c for c in provider_state.release() if c.is_open]
    data = {
        "closed": [
            {
                "provider": c.provider,
                "kind": c.kind.value if c.kind else None,
                "next_probe_was": c.retry_at.isoformat() if c.retry_at else None,
                "reason": c.reason,
            }
            for c in closed
        ]
    }
    lines = {c.provider: f"{c.kind} ({c.reason})" for c in closed} or {"circuits": "none was open"}
    _emit(data, as_json, _key_values("Provider circuits closed", lines))


@app.command()
def replan(local: Local = False, stack: Stack = None, region: Region = None, as_json: AsJson = False) -> None:
    """Bring every reminder waiting to be sent to the timing rules as they are now: run it after deploying new zone
    rules (a tzdata release) or a new REMINDER_*_TIME, quiet hours or lateness setting."""
    from core import clock, store
    from core.planning import replan_waiting

    settings = _settings(local, stack, region)
    store.bind(settings)
    with _quiet():
        result = replan_waiting(settings, clock.now())
    data = {name: getattr(result, name) for name in ("replanned", "created", "cancelled", "revived")}
    _emit(data, as_json, _key_values("Replan", data))


@app.command()
def cleanup(local: Local = False, stack: Stack = None, region: Region = None, as_json: AsJson = False) -> None:
    """Delete ended messages past their retention now (what DynamoDB TTL does within ~2 days on AWS)."""
    from rappel_cli.operations import cleanup_now

    settings = _settings(local, stack, region)
    data = cleanup_now(settings)
    _emit(data, as_json, _key_values("Cleanup", data))


@app.command()
def invoke(
    function: Annotated[
        str, typer.Argument(help="send_sms, plan_reminders, ... (or the logical id, SendSmsFunction).")
    ],
    event: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Event JSON file (see events/).")],
    local: Local = False,
    stack: Stack = None,
    region: Region = None,
    build_dir: Annotated[
        Path, typer.Option(help="A `sam build` folder for this machine's architecture (`make build-host`).")
    ] = Path(".aws-sam/build-host"),
    today: Annotated[
        bool,
        typer.Option(
            "--today",
            help="Move the event's dates so that its `time` is today (the events/ samples are stamped 2027, and a"
            " clinic event ahead of the clock is refused).",
        ),
    ] = False,
) -> None:
    """Run one function's built handler on an event file, as `sam local invoke` would, without Docker. A sample's
    receipt-token placeholder is replaced by the target stack's token."""
    from rappel_cli.invoke import (
        InvokeError,
        days_to_today,
        deployed_environment,
        find_function,
        invoke_built,
        shift_dates,
        with_receipt_token,
    )
    from rappel_cli.target import default_stack_name, read_local_state

    text = event.read_text()
    try:
        if today:
            text = shift_dates(text, days_to_today(text, datetime.now(UTC)))
        json.loads(text)
    except json.JSONDecodeError as exc:
        _error(f"{event}: not JSON ({exc})")
        raise typer.Exit(2) from None
    try:
        built = find_function(build_dir, function)
        if local:
            environment = dict(read_local_state()["environment"])
        else:
            environment = deployed_environment(built, stack or default_stack_name() or "", region)
        payload = json.loads(with_receipt_token(text, environment))
        result = invoke_built(built, payload, environment)
    except (InvokeError, TargetError) as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    sys.stderr.write(result.logs)  # the function's JSON log lines and EMF, unwrapped
    _emit(result.response if result.error is None else result.error, as_json=True)
    raise typer.Exit(0 if result.error is None else 1)


@local_app.command("up")
def local_up(
    rate: Annotated[float, typer.Option(min=2, help="Provider rate limit, SMS per second (at least 2).")] = 5.0,
    port: Annotated[int, typer.Option(help="Port of the embedded AWS endpoint.")] = 5000,
) -> None:
    """Run the embedded stack in the foreground until Ctrl-C: AWS emulation, Orange simulator, receipts, schedules."""
    from rappel_local.local import PortInUse, serve

    try:
        serve(rate=rate, port=port, console=console)
    except PortInUse as exc:
        _error(str(exc))
        raise typer.Exit(2) from None


def _key_values(title: str, data: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False)
    for key, value in data.items():
        table.add_row(str(key), _fmt(value))
    return table


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if value < 1 else f"{value:,.1f}"
    return str(value)


def _quiet() -> Any:
    from rappel_local.embedded import quiet_logs

    return quiet_logs()
