"""The statistics tally: the counters, kept from the tables' change streams, off the send and planning paths.

Every status change of a message and every change of an appointment's outcome state is a change of one DynamoDB
item. Lambda reads those changes from the messages and ops tables' streams and hands them to `tally_changes` in
batches (an event source mapping with a batching window). A batch's counts are summed in memory and added with one
write per counter item it moves, instead of one write per change on the path that made it. Nothing on those paths
writes a counter, so a crash there cannot lose a count: the change it made is in the stream, and the counts follow
the committed data whatever happens between the writes that made it.

Lambda retries a batch that failed with the same records. Each counter item remembers the last batch added to it
(`store.add_to_counters`), so a retry adds to the items the failed attempt did not reach. It remembers one batch:
if another shard's batch writes an item between a failed attempt and its retry, that item counts the batch twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools.utilities.parser.models import DynamoDBStreamModel

from core import clock, counters, provider_state, store
from core.lifecycle import Status
from core.observability import logger
from core.settings import Settings


@dataclass
class TallyResult:
    """What one batch of item changes did to the counters."""

    changes: int = 0
    counted: int = 0  # changes that moved a counter
    items_written: int = 0
    items_already_tallied: int = 0  # counter items a failed attempt at this batch had already reached


def tally_changes(event: DynamoDBStreamModel, settings: Settings) -> TallyResult:
    """Add what one batch of the tables' item changes moves to the status and outcome counters, and move the last
    send the health check reads forward to the batch's latest."""
    store.bind(settings)
    records = event.Records
    result = TallyResult(changes=len(records))
    counts: dict[tuple[str, str], float] = {}
    outcomes: dict[tuple[str, str], int] = {}
    now = clock.now()
    sends: list[datetime] = []
    for record in records:
        change = record.dynamodb
        old, new = _image(change.OldImage), _image(change.NewImage)
        # Any other ops item (a counter itself, a stop, a circuit) moves nothing: the event source's filter keeps
        # them out.
        if "message_id" in change.Keys:
            moved = message_counts(old, new, (change.ApproximateCreationDateTime or now).astimezone(UTC))
            _add(counts, moved)
            sends += _send_time(moved, new)
            result.counted += bool(moved)
        elif store.is_appointment_state(change.Keys):
            deltas = store.outcome_change(old, new)
            _add(outcomes, deltas)
            result.counted += bool(deltas)
    batch = batch_id(record.eventID for record in records)
    for written, reached in (store.add_to_counters(counts, batch), store.add_outcome_counts(outcomes, batch)):
        result.items_written += written
        result.items_already_tallied += reached
    if sends:
        provider_state.record_send(max(sends))
    logger.info(
        "changes tallied",
        extra={
            "batch": batch,
            "changes": result.changes,
            "counted": result.counted,
            "items_written": result.items_written,
            "items_already_tallied": result.items_already_tallied,
        },
    )
    return result


def batch_id(event_ids: Iterable[str]) -> str:
    """A name for one batch of stream records: the same records always give the same name."""
    digest = hashlib.sha256()
    for event_id in event_ids:
        digest.update(event_id.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:24]


def message_counts(
    old: dict[str, Any] | None, new: dict[str, Any] | None, fallback_at: datetime
) -> dict[tuple[str, str], float]:
    """The counter increments one change of a message item causes, from the item before (`old`, None when created)
    and after (`new`, None when deleted, which moves nothing).

    The move is timed by the message's newest history entry (the time the change was made, not the time it is
    tallied), `fallback_at` without one; what it takes back, by the item before's newest entry. What the status
    change set is read back from the item after it: a changed `attempts` marks a retry (a deferral leaves it), and
    the provider and SMS share of a send."""
    if new is None or (old is not None and old.get("status") == new.get("status")):
        return {}
    try:
        reminder_type, target = str(new["reminder_type"]), Status(new["status"])
        scheduled_at = store.parse_iso(str(new["scheduled_at"]))
    except (KeyError, ValueError) as exc:
        # A status a newer version wrote (read during a deploy, or after a rollback), or a message cut short: not
        # counted, rather than failing the batch, whose retries and `rappel retally` would fail on it again.
        extra = {"message_id": new.get("message_id"), "error": type(exc).__name__}
        logger.error("message change unreadable: not counted", extra=extra)
        return {}
    values: dict[str, Any] = {name: new[name] for name in ("sms_reminders", "provider") if new.get(name)}
    if old is not None and old.get("attempts") != new.get("attempts"):
        values["attempts"] = new.get("attempts")
    sent_at = new.get("sent_at")
    return counters.transition_counts(
        reminder_type,
        str(old["status"]) if old is not None else "",
        target,
        store.last_change_at(new) or fallback_at,
        values,
        scheduled_at,
        store.parse_iso(str(sent_at)) if sent_at else None,
        store.last_change_at(old) if old is not None else None,
    )


def _send_time(moved: dict[tuple[str, str], float], new: dict[str, Any] | None) -> list[datetime]:
    """When a provider took the message, if the counted move (`moved`) reached `sent`: the health check's last send."""
    if not moved or new is None or new.get("status") != Status.SENT.value or not new.get("sent_at"):
        return []
    return [store.parse_iso(str(new["sent_at"]))]


def _image(image: Any) -> dict[str, Any] | None:
    return dict(image) if isinstance(image, dict) else None


def _add(into: dict[tuple[str, str], Any], moves: dict[tuple[str, str], Any]) -> None:
    for key, amount in moves.items():
        into[key] = into.get(key, 0) + amount
