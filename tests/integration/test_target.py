"""Which stack a `rappel` command talks to: a deployed stack is found by its CloudFormation outputs and runs with
its functions' own configuration (moto's stack and Lambda)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any
from unittest import mock

import boto3
import pytest
from moto import mock_aws
from typer.testing import CliRunner

from rappel_cli.cli import app
from rappel_cli.target import OPTIONAL_OUTPUTS, OUTPUT_TO_ENV, TargetError, _deployed_environment, resolve
from rappel_local.embedded import reset_core_caches

pytestmark = pytest.mark.integration

# What the template's Globals give every function (a few of them), as a deploy with DueIndexShards=2 etc. would.
DEPLOYED = {
    "POWERTOOLS_SERVICE_NAME": "rappel",
    "POWERTOOLS_LOG_LEVEL": "DEBUG",
    "DUE_INDEX_SHARDS": "2",
    "APP_TIMEZONE": "Africa/Abidjan",
    "SMS_ALERT_PENDING_THRESHOLD": "50",
    "SMS_PROVIDERS": "orange,kannel",
    "KANNEL_SENDSMS_URL": "https://kannel.example:13014/cgi-bin/sendsms",
    "REMINDER_7_DAY_TIME": "10:30",
    "PATIENTS_TABLE": "from-the-function-environment",
}


def _stack(
    name: str,
    outputs: dict[str, str],
    *,
    dispatcher: dict[str, str] | None = None,
    sender: dict[str, str] | None = None,
    function_outputs: bool = True,
) -> None:
    """A stack with the given outputs and, like Rappel's, a dispatcher and a sender whose environments are given."""
    resources: dict[str, Any] = {
        "Queue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": f"{name}-queue"}},
        "Role": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "RoleName": f"{name}-role",
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "lambda.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                },
            },
        },
    }
    template_outputs: dict[str, Any] = {key: {"Value": value} for key, value in outputs.items()}
    for logical_id, variables in (("DispatchDueFunction", dispatcher), ("SendSmsFunction", sender)):
        resources[logical_id] = {
            "Type": "AWS::Lambda::Function",
            "Properties": {
                "FunctionName": f"{name}-{logical_id}",
                "Runtime": "python3.11",
                "Handler": "index.handler",
                "Role": {"Fn::GetAtt": ["Role", "Arn"]},
                "Code": {"ZipFile": "def handler(event, context):\n    return None\n"},
                "Environment": {"Variables": dict(variables if variables is not None else DEPLOYED)},
            },
        }
        if function_outputs:
            template_outputs[f"{logical_id}Name"] = {"Value": {"Ref": logical_id}}
    boto3.client("cloudformation", region_name="us-east-1").create_stack(
        StackName=name, TemplateBody=json.dumps({"Resources": resources, "Outputs": template_outputs})
    )


@pytest.fixture
def cloudformation(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    with mock.patch.dict(os.environ), mock_aws():  # resolve() exports the stack's settings: undone after the test
        yield
    reset_core_caches()


EVERY = {key: f"value-of-{key}" for key in OUTPUT_TO_ENV}


def test_a_stack_deployed_before_an_optional_output_still_resolves(cloudformation: Any) -> None:
    """`rappel health --stack old` keeps working on a stack deployed before TallyFailureQueueUrl existed; only
    `rappel retally` needs it, and says so."""
    _stack("old", {k: v for k, v in EVERY.items() if k not in OPTIONAL_OUTPUTS})
    _stack("new", EVERY)

    old, new = _deployed_environment("old", "us-east-1"), _deployed_environment("new", "us-east-1")

    assert "TALLY_FAILURE_QUEUE_URL" not in old and old["SEND_QUEUE_URL"] == "value-of-SendQueueUrl"
    assert new["TALLY_FAILURE_QUEUE_URL"] == "value-of-TallyFailureQueueUrl"


def test_a_stack_without_a_required_output_is_refused_with_its_name(cloudformation: Any) -> None:
    _stack("other", {key: "x" for key in OUTPUT_TO_ENV if key != "SendQueueUrl"})

    with pytest.raises(TargetError, match="lacks outputs SendQueueUrl"):
        _deployed_environment("other", "us-east-1")


def test_a_deployed_stack_runs_with_its_functions_settings_not_the_defaults(cloudformation: Any) -> None:
    """A stack deployed with DueIndexShards=2: `rappel import --stack` must write reminders into the two shards its
    dispatcher reads (not DUE#0..7, which it never sees), and `rappel health --stack` judge by the deployed
    thresholds and providers. The outputs still name the resources."""
    _stack("shards", EVERY)

    settings = resolve(local=False, stack="shards", region="us-east-1")

    assert settings.DUE_INDEX_SHARDS == 2
    assert settings.APP_TIMEZONE == "Africa/Abidjan"
    assert settings.SMS_ALERT_PENDING_THRESHOLD == 50
    assert settings.SMS_PROVIDERS == "orange,kannel"
    assert settings.REMINDER_7_DAY_TIME == "10:30"
    assert settings.PATIENTS_TABLE == "value-of-PatientsTableName"  # the outputs supply what they supply
    assert settings.ORANGE_CREDENTIALS_SECRET == "value-of-OrangeCredentialsSecretArn"
    assert settings.AWS_REGION == "us-east-1"
    assert os.environ["DUE_INDEX_SHARDS"] == "2"  # handlers run in this process read the same
    assert os.environ.get("POWERTOOLS_LOG_LEVEL") != "DEBUG"  # what is not a setting is not exported


def test_when_functions_disagree_the_dispatchers_configuration_wins(cloudformation: Any) -> None:
    """The dispatcher is the only reader of the due index, so its shard count decides where a reminder must go."""
    _stack("drift", EVERY, sender={**DEPLOYED, "DUE_INDEX_SHARDS": "8", "SMS_ALERT_PENDING_THRESHOLD": "9"})

    settings = resolve(local=False, stack="drift", region="us-east-1")

    assert (settings.DUE_INDEX_SHARDS, settings.SMS_ALERT_PENDING_THRESHOLD) == (2, 50)


def test_a_stack_whose_function_configuration_cannot_be_read_is_refused(cloudformation: Any) -> None:
    """Not silently the defaults: the command says why and exits 2, as without credentials or a stack."""
    _stack("gone", {**EVERY, "DispatchDueFunctionName": "no-such-function"}, function_outputs=False)

    with pytest.raises(TargetError, match="no-such-function"):
        resolve(local=False, stack="gone", region="us-east-1")

    result = CliRunner().invoke(app, ["health", "--stack", "gone", "--region", "us-east-1"])

    assert result.exit_code == 2, result.output
    assert "no-such-function" in result.output and "Traceback" not in result.output


def test_a_stack_without_its_dispatcher_output_is_refused(cloudformation: Any) -> None:
    _stack("bare", EVERY, function_outputs=False)

    with pytest.raises(TargetError, match="lacks outputs DispatchDueFunctionName"):
        resolve(local=False, stack="bare", region="us-east-1")


def test_a_function_without_settings_in_its_environment_is_refused(cloudformation: Any) -> None:
    _stack("empty", EVERY, dispatcher={})

    with pytest.raises(TargetError, match="no environment"):
        resolve(local=False, stack="empty", region="us-east-1")
