"""Which stack a `rappel` command talks to: the embedded one (`rappel local up`) or a deployed one (its outputs)."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from core.settings import Settings, build_settings
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
    "OrangeCredentialsSecretArn": "ORANGE_CREDENTIALS_SECRET",
    "KannelCredentialsSecretArn": "KANNEL_CREDENTIALS_SECRET",
    "ReceiptTokenSecretArn": "RECEIPT_TOKEN_SECRET",
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
        raise TargetError("no embedded stack is running: start one with `rappel local up` (in another terminal)")
    return dict(json.loads(LOCAL_STATE.read_text()))


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
    return build_settings(**environment)


def _deployed_environment(stack: str, region: str | None) -> dict[str, str]:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    if not stack:
        raise TargetError("no stack name: pass --stack NAME or deploy with samconfig.toml (profile dev)")
    try:
        client = boto3.client("cloudformation", region_name=region)
        described = client.describe_stacks(StackName=stack)["Stacks"][0]
    except NoCredentialsError:
        raise TargetError("no AWS credentials: configure them (aws configure, AWS_PROFILE) or use --local") from None
    except NoRegionError:
        raise TargetError("no AWS region: pass --region or set AWS_REGION") from None
    except ClientError as exc:
        raise TargetError(f"stack {stack!r}: {exc.response.get('Error', {}).get('Message', exc)}") from None
    except BotoCoreError as exc:
        raise TargetError(f"cannot reach AWS: {exc}") from None
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    environment = {env: outputs[key] for key, env in OUTPUT_TO_ENV.items() if key in outputs}
    missing = sorted(set(OUTPUT_TO_ENV) - set(outputs) - OPTIONAL_OUTPUTS)
    if missing:
        raise TargetError(f"stack {stack!r} lacks outputs {', '.join(missing)}: is it a Rappel stack?")
    parameters = {p["ParameterKey"]: p.get("ParameterValue", "") for p in described.get("Parameters", [])}
    environment["AWS_REGION"] = client.meta.region_name
    if "AppTimezone" in parameters:
        environment["APP_TIMEZONE"] = parameters["AppTimezone"]
    return environment
