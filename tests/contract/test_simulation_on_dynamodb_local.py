"""The whole pipeline with its tables on AWS's DynamoDB Local (SQS and the rest on moto) ends as it does on moto.

A differential check of the embedded stack's store (bench figure 7 runs it on the demo's scenario and times it):
the same scenario, run once per store, must leave every message in the same state and send the same SMS.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.ddb_local import compare_outcomes
from rappel_demo.demo import build_scenario
from rappel_local.embedded import quiet_logs
from rappel_local.scenario import load_scenario
from rappel_local.simulate import Simulation

pytestmark = pytest.mark.contract


def test_the_demo_scenario_ends_the_same_on_dynamodb_local_as_on_moto(
    dynamodb_local_endpoint: str, dynamodb_local_client: Any
) -> None:
    document = build_scenario(12, 5, 3, 25.0)
    with quiet_logs():
        on_moto = Simulation(load_scenario(document)).run().as_json()
        on_local = Simulation(load_scenario(document), dynamodb_endpoint=dynamodb_local_endpoint).run().as_json()
    assert on_local["stats"]["handler_errors"] == 0
    assert on_local["stats"]["invariants"]["ok"], on_local["stats"]["invariants"]["violations"]
    assert on_local["stats"]["by_status"].get("delivered", 0) > 0  # the run sent something, on DynamoDB Local
    # ...and its messages are there, not on moto
    stored = dynamodb_local_client.scan(TableName="sim-MessagesTable", Select="COUNT")["Count"]
    assert stored == len(on_local["messages"]) > 0
    differential = compare_outcomes(on_moto, on_local)
    assert differential["same"], differential
