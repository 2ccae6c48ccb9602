"""What the sender decides for a reminder, as pure functions: before the request (may it still go, now?) and after
a failed one (fail, retry, dead-letter, or record as sent). `core.sending` reads what these need and writes what
they decide; the rules themselves are here, tested without AWS (tests/unit/test_send_decisions.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from core.providers.base import FailureKind
from core.settings import AmbiguousSendPolicy
from core.timing import next_allowed


class Verdict(StrEnum):
    """What becomes of a reminder."""

    SEND = "send"
    CANCEL = "cancel"  # no longer wanted (dose given, appointment cancelled, opted out, ...)
    EXPIRE = "expire"  # too late: past its deadline, or superseded by the next reminder of its dose
    DEFER = "defer"  # back to pending until `until`, no attempt spent (quiet hours, no provider can take it)
    FAIL = "fail"  # the provider refused it for good
    RETRY = "retry"  # back to pending until `until`, the attempt spent
    DEAD_LETTER = "dead_letter"
    RECORD_SENT = "record_sent"  # its fate is unknown and the program assumes it went out


@dataclass(frozen=True)
class Decision:
    """A verdict, why (in words, for the message's `last_error` and history), and until when for a wait."""

    verdict: Verdict
    reason: str = ""
    until: datetime | None = None


SEND = Decision(Verdict.SEND)


def before_the_send(*, not_wanted: str | None, deadline: datetime, now: datetime) -> Decision:
    """Whether a claimed reminder may still go out at all: wanted (`not_wanted` is why not), and before its deadline."""
    if not_wanted is not None:
        return Decision(Verdict.CANCEL, f"cancelled at send time: {not_wanted}")
    if deadline <= now:
        return Decision(Verdict.EXPIRE, "deadline passed before it could be sent")
    return SEND


def hold_back(
    *,
    superseded_by: str | None,
    gap_hours: int,
    paused_until: datetime | None,
    paused_why: str,
    zone: ZoneInfo,
    quiet_hours: tuple[time, time] | None,
    deadline: datetime,
    now: datetime,
) -> Decision:
    """Whether a wanted reminder must wait or give way now: superseded by a later reminder of its dose due within
    the gap (no pile-up), no provider able to take a request, or quiet hours; a wait past its deadline expires."""
    if superseded_by is not None:
        return Decision(
            Verdict.EXPIRE, f"superseded: the {superseded_by} for the same dose is due within {gap_hours} h"
        )
    if paused_until is not None:
        return wait_until(paused_until, f"no provider can take it: {paused_why}", deadline)
    allowed = next_allowed(now, zone, quiet_hours)
    if allowed != now:
        return wait_until(allowed, "quiet hours", deadline)
    return SEND


def wait_until(until: datetime, why: str, deadline: datetime) -> Decision:
    """Back to pending until `until`, or expired when that is at or past the deadline."""
    if until >= deadline:
        return Decision(Verdict.EXPIRE, f"{why}; next try would be past the deadline")
    return Decision(Verdict.DEFER, why, until)


def after_the_failure(
    *,
    kind: FailureKind,
    error: str,
    attempt: int,
    retry_floor: int,
    max_retries: int,
    policy: AmbiguousSendPolicy,
    delay: timedelta,
    zone: ZoneInfo,
    quiet_hours: tuple[time, time] | None,
    deadline: datetime,
    now: datetime,
) -> Decision:
    """What a failed request (attempt `attempt`, counted from `retry_floor` after a redrive) means for its reminder.

    Only for failures that are the message's: a throttle, a hold or an open circuit never spend an attempt and are
    decided before this. `delay` is the backoff the next attempt would wait.
    """
    if kind is FailureKind.PERMANENT:
        return Decision(Verdict.FAIL, error)
    if kind is FailureKind.AMBIGUOUS and policy is AmbiguousSendPolicy.ASSUME_SENT:
        return Decision(Verdict.RECORD_SENT, f"ambiguous: {error}")
    if kind is FailureKind.AMBIGUOUS and policy is AmbiguousSendPolicy.DEAD_LETTER:
        return Decision(Verdict.DEAD_LETTER, f"ambiguous send: {error}")
    if attempt - retry_floor > max_retries:
        return Decision(Verdict.DEAD_LETTER, f"retries exhausted: {error}")
    # Retried after an ambiguous send (the `retry` policy): the reason says so, and a receipt for that send, which
    # proves the provider took it, records it sent before the retry goes (`receipts`).
    why = f"ambiguous: {error}" if kind is FailureKind.AMBIGUOUS else error
    retry = wait_until(next_allowed(now + delay, zone, quiet_hours), why, deadline)
    return Decision(Verdict.RETRY, retry.reason, retry.until) if retry.verdict is Verdict.DEFER else retry
