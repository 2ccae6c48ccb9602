"""The operators' console of `rappel local up`: one line per event that matters, not the functions' JSON logs.

The functions log structured records (the JSON lines CloudWatch keeps); here a logging handler on the `rappel`
logger turns the records that matter into lines such as

    09:00:00 dispatch_due      claimed 12, enqueued 12
    09:00:01 send_sms          sent 12 reminders in 9 SMS
    09:00:06 delivery_receipt  delivered msg_…
    09:00:07 plan_reminders    DoseScheduled a1: 3 reminders

Records of one send_sms or delivery_receipt invocation make one line (`invocation`). `rappel local up` prints
the lines; the other `rappel … --local` commands (import, process, invoke, optout, …), which run the functions in
their own process, append theirs to the stack's feed file, which `rappel local up` prints as it grows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

Writer = Callable[[str, str, str], None]  # (at HH:MM:SS, function, text)
AGGREGATED = ("send_sms", "delivery_receipt")
_MUTED = logging.CRITICAL + 1


@dataclass(frozen=True)
class Event:
    """One record that matters: the function it belongs to, what kind of thing happened, its fields."""

    function: str
    kind: str
    data: dict[str, Any]


def _plan(data: dict[str, Any]) -> str:
    subject = data.get("appointment_id") or data.get("patient_id") or ""
    head = f"{data.get('detail_type', 'event')} {subject}".strip()
    parts = [f"{n} {word}" for word, n in _counts(data, _PLAN_WORDS) if n]
    if parts:
        return f"{head}: {', '.join(parts)}"
    return f"{head}: older than what is stored, ignored" if data.get("ignored") else f"{head}: recorded"


_PLAN_WORDS = (
    ("messages_created", "reminders"),
    ("cancelled", "cancelled"),
    ("replanned", "replanned"),
    ("revived", "revived"),
)


def _counts(data: dict[str, Any], words: tuple[tuple[str, str], ...]) -> list[tuple[str, int]]:
    return [(word, int(data.get(key) or 0)) for key, word in words]


_DISPATCH_WORDS = (
    ("claimed", "claimed"),
    ("enqueued", "enqueued"),
    ("expired", "expired"),
    ("not_enqueued", "not enqueued (left pending for the next run)"),
)


def _dispatch(data: dict[str, Any]) -> str | None:
    parts = [f"{word} {n}" for word, n in _counts(data, _DISPATCH_WORDS) if n]
    if data.get("held"):
        parts.append("provider held")
    return ", ".join(parts) or None  # an idle run is not an event


def _health(data: dict[str, Any]) -> str:
    findings = list((data.get("health") or {}).get("findings") or [])
    if not findings:
        return "healthy"
    return f"{len(findings)} finding(s): {'; '.join(findings)}"


def _reply(data: dict[str, Any]) -> str:
    outcome = str(data.get("outcome", "")).replace("_", " ")
    keyword = f" ({data['keyword']})" if data.get("keyword") else ""
    return f"reply from {data.get('from', '?')}{keyword}: {outcome}"


# record message -> (function, kind); what is not here is shown only when it is a warning or an error.
KINDS: dict[str, tuple[str, str]] = {
    "clinic event applied": ("plan_reminders", "applied"),
    "clinic event rejected": ("plan_reminders", "rejected"),
    "dispatch run": ("dispatch_due", "run"),
    "no provider can take a request: nothing dispatched": ("dispatch_due", "paused"),
    "follow-up pass": ("follow_up_pass", "pass"),
    "sms sent": ("send_sms", "sent"),
    "message settled without sending": ("send_sms", "settled"),
    "provider did not accept": ("send_sms", "refused"),
    "receipt applied": ("delivery_receipt", "receipt"),
    "receipt for an unknown provider message id": ("delivery_receipt", "unknown"),
    "reply applied": ("delivery_receipt", "reply"),
    "reply recorded, not answered": ("delivery_receipt", "reply"),
    "health check passed": ("health_check", "health"),
    "health check found problems": ("health_check", "health"),
    "daily statistics": ("daily_statistics", "statistics"),
}
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def classify(record: logging.LogRecord) -> Event | None:
    """The event a log record reports, or None when it is not one an operator watches."""
    message = record.getMessage()
    data = {k: v for k, v in vars(record).items() if k not in _STANDARD}
    if message in KINDS:
        function, kind = KINDS[message]
        return Event(function, kind, data)
    if record.levelno >= logging.WARNING:
        return Event(record.levelname.lower(), "problem", {"message": message, **data})
    return None


def _follow_up_pass(data: dict[str, Any]) -> str:
    done = ", ".join(f"{name} {data[name]}" for name in ("opened", "published", "errors") if data.get(name))
    return f"follow-up pass: looked at {data.get('looked_at')} families" + (f"; {done}" if done else "")


# The kinds whose line is worked out from their fields.
_RENDERERS: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "applied": _plan,
    "run": _dispatch,
    "pass": _follow_up_pass,
    "health": _health,
    "reply": _reply,
}


def render(event: Event) -> str | None:
    """One event's line (without time and function), or None for an event not worth a line (an idle run)."""
    data = event.data
    if event.kind in _RENDERERS:
        return _RENDERERS[event.kind](data)
    match event.kind:
        case "rejected":
            return f"event refused: {data.get('field')}: {data.get('reason')}"
        case "paused":
            return f"nothing dispatched: no provider can take a request until {data.get('until')}"
        case "unknown":
            return "receipt for an unknown provider message id"
        case "statistics":
            return f"daily statistics for {data.get('report_day')}"
        case "problem":
            detail = ", ".join(f"{k} {v}" for k, v in data.items() if k != "message")
            return f"{data['message']}" + (f" ({detail})" if detail else "")
    return Tally([event]).summary()


@dataclass
class Tally:
    """The events of one send_sms or delivery_receipt invocation, summed up in one line."""

    events: list[Event] = field(default_factory=list)

    def summary(self) -> str | None:
        sent = [e.data for e in self.events if e.kind == "sent"]
        settled = Counter(str(e.data.get("status")) for e in self.events if e.kind == "settled")
        refused = Counter(str(e.data.get("kind")) for e in self.events if e.kind == "refused")
        receipts: dict[str, list[str]] = {}
        for e in self.events:
            if e.kind == "receipt":
                receipts.setdefault(str(e.data.get("status")), []).append(str(e.data.get("message_id")))
        parts = []
        if sent:
            sms = len({d.get("sms") or d.get("message_id") for d in sent})
            parts.append(f"sent {_reminders(len(sent))} in {sms} SMS")
        parts += [f"{status} {n}" for status, n in sorted(settled.items())]
        parts += [f"provider refused {n} ({kind})" for kind, n in sorted(refused.items())]
        parts += [f"receipt {status} {', '.join(ids)}" for status, ids in sorted(receipts.items())]
        others = [line for e in self.events if e.kind not in _TALLIED and (line := render(e))]
        return "; ".join(parts + others) or None


_TALLIED = {"sent", "settled", "refused", "receipt"}


def _reminders(n: int) -> str:
    return f"{n} reminder{'s' if n != 1 else ''}"


class OperatorConsole(logging.Handler):
    """Turns the `rappel` logger's records into console lines for a writer; the JSON log handlers are muted."""

    def __init__(self, writer: Writer) -> None:
        super().__init__(logging.INFO)
        self.writer = writer
        self._open: dict[str, Tally] = {}
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        event = classify(record)
        if event is None:
            return
        with self._lock:
            tally = self._open.get(event.function)
            if tally is not None:
                tally.events.append(event)
                return
        self.write(event.function, render(event))

    def write(self, function: str, text: str | None) -> None:
        if text:
            self.writer(datetime.now().strftime("%H:%M:%S"), function, text)

    @contextlib.contextmanager
    def invocation(self, function: str) -> Iterator[None]:
        if function not in AGGREGATED:
            yield
            return
        with self._lock:
            tally = self._open[function] = Tally()
        try:
            yield
        finally:
            with self._lock:
                self._open.pop(function, None)
            self.write(function, tally.summary())


_attached: OperatorConsole | None = None


def attach(writer: Writer) -> OperatorConsole:
    """Send the `rappel` logger's records to `writer` as console lines from now on, muting its JSON output."""
    global _attached
    logger = logging.getLogger("rappel")
    for handler in logger.handlers:
        handler.setLevel(_MUTED)
    if _attached is not None:
        logger.removeHandler(_attached)
    _attached = OperatorConsole(writer)
    logger.addHandler(_attached)
    logger.setLevel(logging.INFO)
    return _attached


def attached() -> bool:
    """Whether a console takes the records (then `quiet_logs` leaves the logger's level alone)."""
    return _attached is not None


@contextlib.contextmanager
def invocation(function: str) -> Iterator[None]:
    """One function invocation: its send or receipt records make one line at its end."""
    if _attached is None:
        yield
        return
    with _attached.invocation(function):
        yield


def line(at: str, function: str, text: str) -> str:
    """How a console line reads."""
    return f"{at} {function:<17} {text}"


class Feed:
    """The file through which other processes' lines reach `rappel local up`'s terminal (JSON, one a line)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def reset(self) -> Feed:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self._offset = 0
        return self

    def append(self, at: str, function: str, text: str) -> None:
        with contextlib.suppress(OSError), self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"at": at, "function": function, "text": text}) + "\n")

    def read_new(self) -> list[tuple[str, str, str]]:
        """The complete lines appended since the last read."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except OSError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        out = []
        for raw in complete.decode("utf-8", "replace").splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                item = json.loads(raw)
                out.append((str(item["at"]), str(item["function"]), str(item["text"])))
        return out
