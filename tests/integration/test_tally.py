"""tally_changes on moto's streams: counters follow the committed data, and a retried batch counts once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import botocore.client
import pytest

from core import provider_state, store
from rappel_local.embedded import invoke
from tests.helpers import dose, patient

pytestmark = pytest.mark.integration


def _planned(aws: Any) -> dict[str, float]:
    counters = store.read_counters(aws.clock.now().strftime("%Y-%m-%d"))
    return {key: value for key, value in counters.items() if key.endswith("#planned")}


def _plan_in_two_hours(aws: Any) -> None:
    invoke("plan_reminders", patient())
    invoke("plan_reminders", dose("a1", "p1", due_date="2027-03-20"))
    aws.clock.advance_to(aws.clock.now() + timedelta(hours=1))
    invoke("plan_reminders", dose("a2", "p1", due_date="2027-03-27"))


def test_the_counters_wait_for_the_tally_then_hold_what_the_data_says(aws: Any) -> None:
    _plan_in_two_hours(aws)
    assert _planned(aws) == {}
    assert aws.tally() > 0
    assert sorted(_planned(aws).values()) == [1.0] * 6  # three types in each of two hours
    assert {key.split("#")[0] for key in _planned(aws)} == {"08", "09"}


def test_the_same_batch_delivered_twice_counts_once(aws: Any) -> None:
    _plan_in_two_hours(aws)
    batches: list[dict[str, Any]] = []

    def keep(function: str, event: dict[str, Any]) -> Any:
        batches.append(event)
        return invoke(function, event)

    aws.change_streams.drain(keep)
    first = _planned(aws)
    again = [invoke("tally_changes", event) for event in batches]
    assert _planned(aws) == first
    assert sum(result["items_written"] for result in again) == 0
    assert sum(result["items_already_tallied"] for result in again) > 0


def test_a_batch_that_failed_part_way_is_retried_and_counts_once(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _plan_in_two_hours(aws)
    original = botocore.client.BaseClient._make_api_call
    counter_writes: list[str] = []

    def second_counter_write_fails_once(client: Any, operation: str, params: dict[str, Any]) -> Any:
        pk = (params.get("Key") or {}).get("pk", {}).get("S", "")
        if operation == "UpdateItem" and pk.startswith("COUNTERS#"):
            counter_writes.append(pk)
            if len(counter_writes) == 2:
                raise RuntimeError("the function timed out after its first counter write")
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", second_counter_write_fails_once)
    aws.tally()  # the messages' batch fails after reaching one of its two hour items
    reached = _planned(aws)
    assert sorted(reached.values()) == [1.0] * 3
    aws.tally()  # the same batch again: the hour it reached is not counted twice
    assert sorted(_planned(aws).values()) == [1.0] * 6
    assert len(counter_writes) == 4  # the failed one, then the two of the retry (one refused by its condition)


def test_the_last_send_moves_forward_only(aws: Any) -> None:
    """Two shards' batches can reach the tally in any order: an earlier send never takes the mark back."""
    later = aws.clock.now() + timedelta(minutes=10)
    provider_state.record_send(later)
    provider_state.record_send(later - timedelta(minutes=5))
    assert provider_state.last_send() == later
    provider_state.record_send(later + timedelta(seconds=1))
    assert provider_state.last_send() == later + timedelta(seconds=1)
