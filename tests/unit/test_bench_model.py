"""The bench's model of the spec's scheduler (bench/spec_model.py): its arithmetic, no AWS, no timing."""

import pytest

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
