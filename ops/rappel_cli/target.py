"""Which stack a `rappel` command talks to: the embedded one (`rappel local up`) or a deployed one (its outputs)."""

from __future__ import annotations

import json
import os
import socket
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from core.settings import ConfigurationError, Settings, build_settings
from rappel_local import console
from rappel_local.embedded import reset_core_caches

LOCAL_STATE = Path(".rappel") / "local.json"
CONSOLE_FEED = Path(".rappel") / "console.jsonl"  # other processes' lines for `rappel local up`'s terminal

# Stack output -> the environment variable the functions read.
OUTPUT_TO_ENV = {
    "PatientsTableName": "PATIENTS_TABLE",
    "AppointmentsTableName": "APPOINTMENTS_TABLE",
    "MessagesTableName": "MESSAGES_TABLE",
    "OpsTableName": "OPS_TABLE",
    "IdempotencyTableName": "IDEMPOTENCY_TABLE",
    "SendQueueUrl": "SEND_QUEUE_URL",
    "SendDeadLetterQueueUrl": "DEAD_LETTER_QUEUE_URL",
    "TallyFailureQueueUrl": "TALLY_FAILURE_QUEUE_URL",  # optional: stacks deployed before it have none
    "PlanningDeadLetterQueueUrl": "PLANNING_DEAD_LETTER_QUEUE_URL",
    "OrangeCredentialsSecretArn": "ORANGE_CREDENTIALS_SECRET",
    "KannelCredentialsSecretArn": "KANNEL_CREDENTIALS_SECRET",
    "ReceiptTokenSecretArn": "RECEIPT_TOKEN_SECRET",
    "ReceiptEndpoint": "RECEIPT_BASE_URL",  # `rappel receipt-urls`
}


# Outputs a stack deployed by an earlier version lacks: only the command that needs one fails without it.
OPTIONAL_OUTPUTS = frozenset({"TallyFailureQueueUrl"})


class TargetError(Exception):
    """The stack cannot be reached; the message says what to do."""


def default_stack_name(config: Path = Path("samconfig.toml"), profile: str = "dev") -> str | None:
    """The stack name samconfig.toml gives for a profile."""
    if not config.exists():
        return None
    data = tomllib.loads(config.read_text())
    name = data.get(profile, {}).get("deploy", {}).get("parameters", {}).get("stack_name")
    return str(name) if name else None


def write_local_state(environment: dict[str, str], extra: dict[str, Any]) -> None:
    """Record how to reach the embedded stack (written by `rappel local up`)."""
    LOCAL_STATE.parent.mkdir(exist_ok=True)
    LOCAL_STATE.write_text(json.dumps({"environment": environment, **extra}, indent=2))


def read_local_state() -> dict[str, Any]:
    """What `rappel local up` recorded; raises TargetError when it is not running."""
    if not LOCAL_STATE.exists():
        raise TargetError(
            "no embedded stack is running from this directory: start one here with `rappel local up`"
            " (in another terminal)"
        )
    state = dict(json.loads(LOCAL_STATE.read_text()))
    endpoint = str(state.get("environment", {}).get("AWS_ENDPOINT_URL", ""))
    if not _answers(endpoint):
        # `rappel local up` was killed, not stopped: its record stayed behind.
        raise TargetError(
            f"the embedded stack recorded in {LOCAL_STATE} does not answer on {endpoint or '(no endpoint)'}:"
            " start one with `rappel local up` (in another terminal)"
        )
    return state


def _answers(endpoint: str) -> bool:
    """Whether something listens where the endpoint points (a connection, no request)."""
    address = urlsplit(endpoint)
    if not address.hostname or not address.port:
        return False
    try:
        with socket.create_connection((address.hostname, address.port), timeout=2):
            return True
    except OSError:
        return False


def resolve(*, local: bool, stack: str | None, region: str | None) -> Settings:
    """Settings for the chosen stack, with the process environment set so handlers see the same."""
    if local:
        state = read_local_state()
        environment = dict(state["environment"])
        if state.get("console_feed"):  # what the functions do here shows on `rappel local up`'s terminal too
            console.attach(console.Feed(Path(state["console_feed"])).append)
    else:
        environment = _deployed_environment(stack or default_stack_name() or "", region)
    os.environ.update(environment)
    reset_core_caches()
    try:
        return build_settings(**environment)
    except ConfigurationError as exc:  # e.g. a value this CLI's version refuses; the message names the variable
        raise TargetError(f"the stack's settings are refused: {exc}") from None


# The function whose configuration (its environment variables) a `--stack` command runs with. Every function gets
# the same settings from the template's Globals; should they differ (a function edited by hand, a half-done
# deploy), the dispatcher's are the ones that count: it is the only reader of the due index, so a reminder that
# the CLI plans, resends or revives is sent only if it lands in one of the DUE_INDEX_SHARDS shards *it* reads, and
# `rappel process` runs its code. One function, always the same, so that every command agrees.
CONFIGURATION_OUTPUT = "DispatchDueFunctionName"


def _deployed_environment(stack: str, region: str | None) -> dict[str, str]:
    """The deployed dispatcher's settings (its environment variables), with the stack's outputs on top."""
    import boto3

    if not stack:
        raise TargetError("no stack name: pass --stack NAME or deploy with samconfig.toml (profile dev)")
    with _aws_errors(f"stack {stack!r}"):
        client = boto3.client("cloudformation", region_name=region_of(region))
        described = client.describe_stacks(StackName=stack)["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    missing = sorted((set(OUTPUT_TO_ENV) | {CONFIGURATION_OUTPUT}) - set(outputs) - OPTIONAL_OUTPUTS)
    if missing:
        raise TargetError(f"stack {stack!r} lacks outputs {', '.join(missing)}: is it a Rappel stack?")
    region_name = str(client.meta.region_name)
    environment = _function_settings(stack, outputs[CONFIGURATION_OUTPUT], region_name)
    environment.update({env: outputs[key] for key, env in OUTPUT_TO_ENV.items() if key in outputs})
    environment["AWS_REGION"] = region_name
    return environment


def region_of(given: str | None) -> str | None:
    """The region a command works in: `--region`, else AWS_REGION (what Lambda and most tools set; boto3 reads only
    AWS_DEFAULT_REGION, its own fallback when this is None)."""
    return given or os.environ.get("AWS_REGION") or None


def _function_settings(stack: str, function: str, region: str) -> dict[str, str]:
    """A deployed function's environment variables that are settings (secret names and ARNs, never their values)."""
    import boto3

    where = f"stack {stack!r}: cannot read its dispatcher's configuration ({function}, lambda:GetFunctionConfiguration)"
    with _aws_errors(where):
        configuration = boto3.client("lambda", region_name=region).get_function_configuration(FunctionName=function)
    environment = configuration.get("Environment") or {}
    if environment.get("Error"):  # Lambda could not decrypt the variables (KMS): their values are not returned
        error = environment["Error"]
        raise TargetError(f"{where}: {error.get('ErrorCode', '')} {error.get('Message', '')}".rstrip())
    settings = {
        name: str(value)
        for name, value in (environment.get("Variables") or {}).items()
        if name in Settings.model_fields
    }
    if not settings:
        raise TargetError(f"stack {stack!r}: its dispatcher {function} has no environment with Rappel's settings")
    return settings


@contextmanager
def _aws_errors(where: str) -> Iterator[None]:
    """AWS's failures as TargetError, with what to do; the request's parameters are not repeated."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    try:
        yield
    except NoCredentialsError:
        raise TargetError("no AWS credentials: configure them (aws configure, AWS_PROFILE) or use --local") from None
    except NoRegionError:
        raise TargetError("no AWS region: pass --region or set AWS_DEFAULT_REGION (or AWS_REGION)") from None
    except ClientError as exc:
        raise TargetError(f"{where}: {exc.response.get('Error', {}).get('Message', exc)}") from None
    except BotoCoreError as exc:
        raise TargetError(f"cannot reach AWS: {exc}") from None
