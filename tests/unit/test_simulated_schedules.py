"""The simulator's follow-up pass schedule (`rappel_local.simulate._Schedule`): runs on its boundaries, skipped while
nothing is due, and a boundary the loop went past while busy still runs, late, never lost."""

from datetime import UTC, datetime, timedelta

from rappel_local.simulate import _Schedule

ORIGIN = datetime(2027, 3, 8, 0, 0, tzinfo=UTC)
EVERY = timedelta(minutes=15)


def at(minutes: float) -> datetime:
    return ORIGIN + timedelta(minutes=minutes)


def test_no_run_while_nothing_is_due_then_the_first_boundary_after_the_work() -> None:
    schedule = _Schedule(EVERY, ORIGIN)
    assert schedule.plan(at(0)) is None and not schedule.fires(at(60))
    schedule.work_at = at(1)
    assert schedule.plan(at(0)) == at(15)
    assert not schedule.fires(at(14))
    assert schedule.fires(at(15))


def test_a_boundary_passed_while_the_loop_was_busy_runs_late_once() -> None:
    schedule = _Schedule(EVERY, ORIGIN, work_at=at(1))
    assert schedule.plan(at(14)) == at(15)  # planned when the round began, before a drain that ran to 00:16
    assert schedule.fires(at(16)), "late, not skipped to 00:30"
    assert not schedule.fires(at(16)), "once"
    assert schedule.plan(at(16)) == at(30)  # the state still due: the next boundary


def test_boundaries_passed_together_make_one_late_run() -> None:
    schedule = _Schedule(EVERY, ORIGIN, work_at=at(1))
    assert schedule.plan(at(10)) == at(15)
    assert schedule.fires(at(50))  # a drain went past 00:15, 00:30 and 00:45
    assert schedule.plan(at(50)) == at(60)


def test_work_that_comes_later_waits_for_its_boundary_and_unknown_work_plans_nothing() -> None:
    schedule = _Schedule(EVERY, ORIGIN, work_at=at(31))
    assert schedule.plan(at(2)) == at(45)
    assert schedule.plan(at(2), known=False) is None and not schedule.fires(at(45))
