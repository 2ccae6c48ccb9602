"""The sender's decisions (core.send_decisions), without AWS: before the request and after a failed one."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from core.providers.base import FailureKind
from core.send_decisions import SEND, Decision, Verdict, after_the_failure, before_the_send, hold_back
from core.settings import AmbiguousSendPolicy

NOW = datetime(2027, 3, 5, 9, 0, tzinfo=UTC)
ABIDJAN = ZoneInfo("Africa/Abidjan")
QUIET = (time(20, 0), time(8, 0))
DEADLINE = NOW + timedelta(hours=10)


def test_before_the_send_cancels_what_is_not_wanted_then_expires_what_is_too_late() -> None:
    assert before_the_send(not_wanted="dose given", deadline=DEADLINE, now=NOW) == Decision(
        Verdict.CANCEL, "cancelled at send time: dose given"
    )
    assert before_the_send(not_wanted=None, deadline=NOW, now=NOW).verdict is Verdict.EXPIRE
    assert before_the_send(not_wanted=None, deadline=DEADLINE, now=NOW) == SEND


def hold(**overrides: Any) -> Decision:
    arguments: dict[str, Any] = {
        "superseded_by": None,
        "gap_hours": 12,
        "paused_until": None,
        "paused_why": "",
        "zone": ABIDJAN,
        "quiet_hours": QUIET,
        "deadline": DEADLINE,
        "now": NOW,
    } | overrides
    return hold_back(**arguments)


def test_hold_back_in_order_superseded_no_provider_quiet_hours() -> None:
    assert hold() == SEND
    superseded = hold(superseded_by="1_day_reminder", paused_until=NOW + timedelta(minutes=1))
    assert superseded == Decision(Verdict.EXPIRE, "superseded: the 1_day_reminder for the same dose is due within 12 h")
    paused = hold(paused_until=NOW + timedelta(minutes=1), paused_why="orange outage")
    assert paused == Decision(Verdict.DEFER, "no provider can take it: orange outage", NOW + timedelta(minutes=1))
    evening = NOW.replace(hour=21)
    assert hold(now=evening, deadline=evening + timedelta(days=2)) == Decision(
        Verdict.DEFER, "quiet hours", NOW.replace(hour=8) + timedelta(days=1)
    )


def test_a_wait_that_reaches_the_deadline_expires_instead() -> None:
    evening = NOW.replace(hour=21)
    decided = hold(now=evening, deadline=evening + timedelta(hours=2))
    assert decided == Decision(Verdict.EXPIRE, "quiet hours; next try would be past the deadline")
    assert hold(paused_until=DEADLINE, paused_why="x").verdict is Verdict.EXPIRE


def failure(kind: FailureKind, **overrides: Any) -> Decision:
    arguments: dict[str, Any] = {
        "kind": kind,
        "error": "transient 503/5",
        "attempt": 1,
        "retry_floor": 0,
        "max_retries": 3,
        "policy": AmbiguousSendPolicy.ASSUME_SENT,
        "delay": timedelta(minutes=5),
        "zone": ABIDJAN,
        "quiet_hours": QUIET,
        "deadline": DEADLINE,
        "now": NOW,
    } | overrides
    return after_the_failure(**arguments)


def test_a_transient_failure_is_retried_after_its_delay_out_of_quiet_hours() -> None:
    assert failure(FailureKind.TRANSIENT) == Decision(Verdict.RETRY, "transient 503/5", NOW + timedelta(minutes=5))
    late = NOW.replace(hour=19, minute=58)
    retried = failure(FailureKind.TRANSIENT, now=late, deadline=late + timedelta(days=1))
    assert retried.until == NOW.replace(hour=8) + timedelta(days=1)


def test_retries_end_in_a_dead_letter_counted_from_the_redrive() -> None:
    """max_retries=3: the first attempt and three retries, the third retry included."""
    assert failure(FailureKind.TRANSIENT, attempt=3).verdict is Verdict.RETRY
    assert failure(FailureKind.TRANSIENT, attempt=4).verdict is Verdict.DEAD_LETTER
    assert failure(FailureKind.TRANSIENT, attempt=4).reason == "retries exhausted: transient 503/5"
    assert failure(FailureKind.TRANSIENT, attempt=7, retry_floor=4).verdict is Verdict.RETRY
    assert failure(FailureKind.TRANSIENT, attempt=8, retry_floor=4).verdict is Verdict.DEAD_LETTER


def test_a_retry_past_the_deadline_expires() -> None:
    decided = failure(FailureKind.TRANSIENT, deadline=NOW + timedelta(minutes=4))
    assert decided == Decision(Verdict.EXPIRE, "transient 503/5; next try would be past the deadline")


def test_a_permanent_refusal_fails_at_once_whatever_is_left() -> None:
    assert failure(FailureKind.PERMANENT, error="permanent 400/SVC0004") == Decision(
        Verdict.FAIL, "permanent 400/SVC0004"
    )


@pytest.mark.parametrize(
    ("policy", "verdict"),
    [
        (AmbiguousSendPolicy.ASSUME_SENT, Verdict.RECORD_SENT),
        (AmbiguousSendPolicy.DEAD_LETTER, Verdict.DEAD_LETTER),
        (AmbiguousSendPolicy.RETRY, Verdict.RETRY),
    ],
)
def test_an_ambiguous_send_follows_the_policy(policy: AmbiguousSendPolicy, verdict: Verdict) -> None:
    assert failure(FailureKind.AMBIGUOUS, policy=policy, error="read_timeout").verdict is verdict
    # Even with its retries spent, an ambiguous send the policy records or parks is not a plain dead letter.
    spent = failure(FailureKind.AMBIGUOUS, policy=policy, error="read_timeout", attempt=9)
    assert spent.reason.startswith("ambiguous") or spent.reason.startswith("retries exhausted")
