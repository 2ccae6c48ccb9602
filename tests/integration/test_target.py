"""Which stack a `rappel` command talks to: a deployed stack is found by its CloudFormation outputs (moto's)."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from moto import mock_aws

from rappel_cli.target import OPTIONAL_OUTPUTS, OUTPUT_TO_ENV, TargetError, _deployed_environment

pytestmark = pytest.mark.integration


def _stack_with_outputs(name: str, outputs: dict[str, str]) -> None:
    template = {
        "Resources": {"Queue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": f"{name}-queue"}}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()},
    }
    boto3.client("cloudformation", region_name="us-east-1").create_stack(
        StackName=name, TemplateBody=json.dumps(template)
    )


@pytest.fixture
def cloudformation(monkeypatch: pytest.MonkeyPatch) -> Any:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    with mock_aws():
        yield


def test_a_stack_deployed_before_an_optional_output_still_resolves(cloudformation: Any) -> None:
    """`rappel health --stack old` keeps working on a stack deployed before TallyFailureQueueUrl existed; only
    `rappel retally` needs it, and says so."""
    every = {key: f"value-of-{key}" for key in OUTPUT_TO_ENV}
    _stack_with_outputs("old", {k: v for k, v in every.items() if k not in OPTIONAL_OUTPUTS})
    _stack_with_outputs("new", every)

    old, new = _deployed_environment("old", "us-east-1"), _deployed_environment("new", "us-east-1")

    assert "TALLY_FAILURE_QUEUE_URL" not in old and old["SEND_QUEUE_URL"] == "value-of-SendQueueUrl"
    assert new["TALLY_FAILURE_QUEUE_URL"] == "value-of-TallyFailureQueueUrl"


def test_a_stack_without_a_required_output_is_refused_with_its_name(cloudformation: Any) -> None:
    _stack_with_outputs("other", {key: "x" for key in OUTPUT_TO_ENV if key != "SendQueueUrl"})

    with pytest.raises(TargetError, match="lacks outputs SendQueueUrl"):
        _deployed_environment("other", "us-east-1")
