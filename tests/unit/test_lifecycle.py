"""The state machine refuses illegal moves and never lets a status go backwards."""

import itertools

import pytest

from core.lifecycle import ALLOWED, SETTLED, TERMINAL, IllegalTransition, Status, check_transition

pytestmark = pytest.mark.unit


def test_terminal_statuses_go_nowhere_except_failed_to_delivered_and_a_cancellation_revived_or_found_sent() -> None:
    expected = {Status.FAILED: {Status.DELIVERED}, Status.CANCELLED: {Status.PENDING, Status.SENT}}
    for status in TERMINAL:
        assert set(ALLOWED[status]) == expected.get(status, set())


@pytest.mark.parametrize(("source", "target"), list(itertools.product(Status, Status)))
def test_check_transition_matches_the_table(source: Status, target: Status) -> None:
    if target in ALLOWED[source]:
        assert check_transition(frozenset({source}), target) == {source}
    else:
        with pytest.raises(IllegalTransition):
            check_transition(frozenset({source}), target)


def test_a_set_of_sources_is_refused_if_any_one_is_illegal() -> None:
    with pytest.raises(IllegalTransition):
        check_transition(frozenset({Status.PENDING, Status.SENT}), Status.QUEUED)


def test_nothing_settled_ever_returns_to_a_sendable_status_but_a_cancellation_to_pending() -> None:
    """A cancellation may be revived (the store then also requires that nothing was sent); nothing else comes back."""
    for status in SETTLED:
        back = ALLOWED[status] & {Status.PENDING, Status.QUEUED, Status.DEAD_LETTER}
        assert back == ({Status.PENDING} if status is Status.CANCELLED else set())


def test_delivered_is_never_downgraded() -> None:
    assert ALLOWED[Status.DELIVERED] == frozenset()
    with pytest.raises(IllegalTransition):
        check_transition(frozenset({Status.DELIVERED}), Status.FAILED)
