"""The state machine refuses illegal moves and never lets a status go backwards."""

import itertools
import re
from pathlib import Path

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


def _documented_transitions() -> set[tuple[str, str]]:
    """Every move docs/lifecycle.md's Transitions section names: its table's first column ("`a` / `b` → `c`", several
    to a cell) and a move named in its prose ("`dead_letter → expired`")."""
    text = (Path(__file__).parents[2] / "docs" / "lifecycle.md").read_text(encoding="utf-8")
    section = text.split("## Transitions", 1)[1].split("\n## ", 1)[0]
    side = r"((?:`\w+`\s*/\s*)*`\w+`)"
    moves: set[tuple[str, str]] = set()
    for row in (line for line in section.splitlines() if line.startswith("| ")):
        for sources, targets in re.findall(side + r"\s*→\s*" + side, row.split("|")[1]):
            moves |= set(itertools.product(re.findall(r"`(\w+)`", sources), re.findall(r"`(\w+)`", targets)))
    return moves | set(re.findall(r"`(\w+) → (\w+)`", section))


def test_the_allowed_moves_are_exactly_those_the_lifecycle_document_explains() -> None:
    """A move added, or dropped, in one place and not the other fails here: the table is the one the operators read."""
    allowed = {(source.value, target.value) for source, targets in ALLOWED.items() for target in targets}
    documented = _documented_transitions()
    assert ("pending", "queued") in documented and ("dead_letter", "expired") in documented  # both ways parsed
    assert allowed == documented
