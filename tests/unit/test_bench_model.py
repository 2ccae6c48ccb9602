"""The bench's model of the spec's scheduler (bench/spec_model.py): its arithmetic, no AWS, no timing."""

import pytest

from bench.ddb_local import OUTCOME_FIELDS, compare_outcomes
from bench.spec_model import simulate_spec

pytestmark = pytest.mark.unit

LATENCY = 0.15


def test_one_full_cycle_is_five_batches_of_sequential_sends_with_four_pauses() -> None:
    run = simulate_spec(250, latency_seconds=LATENCY)
    assert run.cycles == 1
    assert run.makespan == pytest.approx(5 * (50 * LATENCY) + 4 * 2.0)
    assert len(run.send_times) == 250


def test_the_251st_message_waits_for_the_next_cycle_five_minutes_later() -> None:
    run = simulate_spec(251, latency_seconds=LATENCY)
    assert run.cycles == 2
    assert sorted(run.send_times)[249] == pytest.approx(5 * (50 * LATENCY) + 4 * 2.0)
    assert run.makespan == pytest.approx(300 + LATENCY)


def test_sends_inside_a_batch_are_one_latency_apart_and_batches_are_separated_by_the_pause() -> None:
    times = simulate_spec(100, latency_seconds=LATENCY).send_times
    assert times[0] == pytest.approx(LATENCY)
    assert times[49] - times[48] == pytest.approx(LATENCY)
    assert times[50] - times[49] == pytest.approx(2.0 + LATENCY)


def test_a_partial_last_batch_has_no_trailing_pause() -> None:
    run = simulate_spec(120, latency_seconds=LATENCY)
    assert run.makespan == pytest.approx(120 * LATENCY + 2 * 2.0)


def test_twenty_thousand_take_eighty_cycles() -> None:
    run = simulate_spec(20_000, latency_seconds=LATENCY)
    assert run.cycles == 80
    assert run.makespan == pytest.approx(79 * 300 + 5 * 50 * LATENCY + 4 * 2.0)


def test_a_cycle_longer_than_the_interval_skips_the_overlapping_cron_runs() -> None:
    # 250 sends at 2 s each take 508 s: the cron run at 300 s finds the first still processing and does nothing.
    run = simulate_spec(251, latency_seconds=2.0)
    assert run.skipped_cycles == 1
    assert run.makespan == pytest.approx(600 + 2.0)


def test_the_first_cron_run_may_come_after_the_due_instant() -> None:
    run = simulate_spec(1, latency_seconds=LATENCY, first_cycle_at=120)
    assert run.makespan == pytest.approx(120 + LATENCY)


def test_nothing_to_send() -> None:
    run = simulate_spec(0, latency_seconds=LATENCY)
    assert run.makespan == 0.0
    assert run.cycles == 0


@pytest.mark.parametrize("bad", [{"messages": -1}, {"latency_seconds": -0.1}, {"batch_size": 0}, {"cycle_seconds": 0}])
def test_rejects_nonsense(bad: dict[str, float]) -> None:
    kwargs = {"messages": 10, "latency_seconds": LATENCY, **bad}
    with pytest.raises(ValueError):
        simulate_spec(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- figure 7's check


def _message(message_id: str, status: str, sent_at: str | None) -> dict[str, object]:
    fields = dict.fromkeys(OUTCOME_FIELDS)
    return fields | {"message_id": message_id, "status": status, "sent_at": sent_at}


def _document(messages: list[dict[str, object]], sends: list[tuple[str, str, list[str]]]) -> dict[str, object]:
    return {
        "messages": messages,
        "sends": [{"at": at, "to": "+2250700000001", "text": text, "message_ids": ids} for at, text, ids in sends],
        "stats": {"by_status": {}},
    }


def test_two_runs_that_only_swap_reminders_within_a_wave_end_the_same() -> None:
    moto = _document(
        [
            _message("a", "delivered", "2027-03-08T09:00:00.300Z"),
            _message("b", "delivered", "2027-03-08T09:00:00.400Z"),
        ],
        [("2027-03-08T09:00:00.300Z", "A", ["a"]), ("2027-03-08T09:00:00.400Z", "B", ["b"])],
    )
    local = _document(
        [
            _message("a", "delivered", "2027-03-08T09:00:00.400Z"),
            _message("b", "delivered", "2027-03-08T09:00:00.300Z"),
        ],
        [("2027-03-08T09:00:00.400Z", "A", ["a"]), ("2027-03-08T09:00:00.300Z", "B", ["b"])],
    )
    differential = compare_outcomes(moto, local)
    assert differential["same"]
    assert differential["messages_sent_at_another_instant"] == 2
    assert differential["largest_send_time_shift_seconds"] == pytest.approx(0.1)


def test_a_message_in_another_state_or_another_sms_is_a_difference() -> None:
    moto = _document(
        [_message("a", "delivered", "2027-03-08T09:00:00.300Z")], [("2027-03-08T09:00:00.300Z", "A", ["a"])]
    )
    other_status = _document(
        [_message("a", "failed", "2027-03-08T09:00:00.300Z")], [("2027-03-08T09:00:00.300Z", "A", ["a"])]
    )
    other_text = _document(
        [_message("a", "delivered", "2027-03-08T09:00:00.300Z")], [("2027-03-08T09:00:00.300Z", "A2", ["a"])]
    )
    extra = _document(
        [_message("a", "delivered", "2027-03-08T09:00:00.300Z"), _message("b", "pending", None)],
        [("2027-03-08T09:00:00.300Z", "A", ["a"])],
    )
    status_check = compare_outcomes(moto, other_status)
    assert not status_check["same"]
    assert status_check["messages_with_another_outcome"] == 1
    assert status_check["examples"] == [{"status": ("delivered", "failed"), "message_id": "a"}]
    assert compare_outcomes(moto, other_text)["sms_in_one_run_only"] == 2
    assert compare_outcomes(moto, extra)["messages_in_one_run_only"] == 1
    for document in (other_text, extra):
        assert not compare_outcomes(moto, document)["same"]
