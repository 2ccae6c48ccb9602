"""`rappel invoke FUNCTION EVENT.json`: one function's *built* handler on an event file, without Docker.

What `sam local invoke -e EVENT.json` does in a container, done with this machine's Python: the artifact that
`sam build` made (the function's code folder and its layers, as the built template names them) is run by
`lambda_runtime.py` in an isolated interpreter that sees nothing else, with the function's environment: the
embedded stack's (`--local`) or the deployed function's own configuration.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from rappel_cli.target import region_of
from rappel_local.stack import load_template

RUNTIME_SHIM = Path(__file__).with_name("lambda_runtime.py")
# What the receipt and reply samples carry where the stack's receipt token goes: `rappel invoke` puts the token in.
RECEIPT_TOKEN_PLACEHOLDER = "REPLACE_WITH_RECEIPT_TOKEN"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# `make build-host`: the same template built for this machine's architecture, so the built code can execute here.
HOST_BUILD_DIR = Path(".aws-sam") / "build-host"
_HOST_ARCHITECTURE = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


class InvokeError(Exception):
    """The function or its build cannot be found; the message says what to do."""


@dataclass(frozen=True)
class BuiltFunction:
    """One function of a `sam build` folder: where its code and layers are, and how Lambda would run it."""

    logical_id: str
    handler: str
    code_dir: Path
    layer_dirs: tuple[Path, ...]
    architecture: str
    memory_mb: int
    timeout_seconds: int


@dataclass(frozen=True)
class Invocation:
    """What one invocation gave: the handler's response or error, and everything it wrote (logs and EMF)."""

    response: Any
    error: dict[str, Any] | None
    logs: str


def shift_dates(text: str, days: int) -> str:
    """Every YYYY-MM-DD date in an event's text moved by `days` (its times of day kept)."""
    return _DATE.sub(lambda m: (date.fromisoformat(m.group(0)) + timedelta(days=days)).isoformat(), text)


def days_to_today(text: str, now: datetime) -> int:
    """How far to move an event's dates so that its `time` falls on the latest day it is not after `now` (today, or
    yesterday for a time of day still to come): a sample stamped in 2027 would be refused as ahead of the clock. 0 for
    an event without an ISO `time`."""
    event = json.loads(text)
    stamped = event.get("time") if isinstance(event, dict) else None
    try:
        at = datetime.fromisoformat(stamped.replace("Z", "+00:00")) if isinstance(stamped, str) else None
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        return 0
    days = (now.astimezone(UTC).date() - at.astimezone(UTC).date()).days
    return days - 1 if at + timedelta(days=days) > now else days


def with_receipt_token(text: str, environment: dict[str, str]) -> str:
    """The event with the token its gateway would carry where a sample has its placeholder: the route's own for Orange
    and replies, the SMS's own for a Kannel DLR (derived from the stack's secret, read as the function reads it)."""
    if RECEIPT_TOKEN_PLACEHOLDER not in text:
        return text
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client(
        "secretsmanager",
        region_name=environment.get("AWS_REGION") or None,
        endpoint_url=environment.get("AWS_ENDPOINT_URL") or None,
        # The embedded stack's environment names its own (fake) credentials; a deployed one's, none: yours are used.
        aws_access_key_id=environment.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=environment.get("AWS_SECRET_ACCESS_KEY") or None,
        aws_session_token=environment.get("AWS_SESSION_TOKEN") or None,
    )
    try:
        token = client.get_secret_value(SecretId=environment["RECEIPT_TOKEN_SECRET"])["SecretString"]
    except (BotoCoreError, ClientError, KeyError) as exc:
        raise InvokeError(f"the event needs the stack's receipt token, which could not be read: {exc}") from None
    return text.replace(RECEIPT_TOKEN_PLACEHOLDER, _token_for(json.loads(text), str(token)))


def _token_for(event: Any, secret: str) -> str:
    from core.receipts import Route, kannel_dlr_token, route_token

    path = str(event.get("rawPath", "")).strip("/") if isinstance(event, dict) else ""
    if path == "kannel":
        return kannel_dlr_token(secret, str((event.get("queryStringParameters") or {}).get("message_id", "")))
    if path in {route.value for route in Route}:
        return route_token(secret, Route(path))
    return secret


def host_architecture() -> str:
    """This machine's architecture in Lambda's words (x86_64 or arm64)."""
    machine = platform.machine().lower()
    if machine not in _HOST_ARCHITECTURE:
        raise InvokeError(f"no Lambda architecture for this machine ({machine})")
    return _HOST_ARCHITECTURE[machine]


def built_functions(build_dir: Path) -> dict[str, BuiltFunction]:
    """Every function of a build folder, by its short name (`send_sms`, from `handlers.send_sms.lambda_handler`)."""
    built_template = build_dir / "template.yaml"
    if not built_template.exists():
        raise InvokeError(f"no build in {build_dir}: run `make build-host` first")
    template = load_template(built_template)
    defaults = template.get("Globals", {}).get("Function", {})
    resources: dict[str, Any] = template.get("Resources", {})
    functions = {}
    for logical_id, resource in resources.items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        properties = {**defaults, **resource.get("Properties", {})}
        layers = tuple(
            build_dir / resources[layer["Ref"]]["Properties"]["ContentUri"] / "python"
            for layer in properties.get("Layers", [])
            if isinstance(layer, dict) and layer.get("Ref") in resources
        )
        handler = str(properties["Handler"])
        functions[handler.split(".")[-2]] = BuiltFunction(
            logical_id=logical_id,
            handler=handler,
            code_dir=build_dir / str(properties["CodeUri"]),
            layer_dirs=layers,
            architecture=str((properties.get("Architectures") or ["x86_64"])[0]),
            memory_mb=int(properties.get("MemorySize", 128)),
            timeout_seconds=int(properties.get("Timeout", 3)),
        )
    return functions


def find_function(build_dir: Path, name: str) -> BuiltFunction:
    """A function by short name (`send_sms`) or logical id (`SendSmsFunction`)."""
    functions = built_functions(build_dir)
    for short, function in functions.items():
        if name in (short, function.logical_id):
            return function
    raise InvokeError(f"no function {name!r} in {build_dir}; expected one of {', '.join(sorted(functions))}")


def invoke_built(function: BuiltFunction, event: Any, environment: dict[str, str]) -> Invocation:
    """Run the built handler on `event` in an isolated interpreter with `environment` (and nothing else of ours)."""
    if function.architecture != host_architecture():
        raise InvokeError(
            f"{function.logical_id} is built for {function.architecture}, this machine is {host_architecture()}: "
            "use the host build (`make build-host`, --build-dir .aws-sam/build-host)"
        )
    name = f"rappel-{function.logical_id}"
    lambda_environment = {
        # What the Lambda runtime itself sets, then the function's configuration.
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        "LAMBDA_TASK_ROOT": str(function.code_dir),
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_mb),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "_HANDLER": function.handler,
        # No X-Ray daemon here: Powertools' documented switch for running outside Lambda.
        "POWERTOOLS_TRACE_DISABLED": "true",
        **environment,
    }
    with tempfile.TemporaryDirectory(prefix="rappel-invoke-") as scratch:
        request_path = Path(scratch) / "request.json"
        result_path = Path(scratch) / "result.json"
        request = {
            "code": str(function.code_dir.resolve()),
            "layers": [str(path.resolve()) for path in function.layer_dirs],
            "handler": function.handler,
            "event": event,
            "function_name": name,
            "memory_mb": function.memory_mb,
            "timeout_seconds": function.timeout_seconds,
            "result": str(result_path),
        }
        request_path.write_text(json.dumps(request))
        completed = subprocess.run(
            [sys.executable, "-I", "-S", str(RUNTIME_SHIM), str(request_path)],
            env=lambda_environment,
            cwd=scratch,
            capture_output=True,
            text=True,
            timeout=function.timeout_seconds + 30,
            check=False,
        )
        logs = completed.stdout + completed.stderr
        if not result_path.exists():
            return Invocation(None, {"errorType": "Runtime.ExitError", "errorMessage": logs[-2000:]}, logs)
        result = json.loads(result_path.read_text())
    if "response" in result:
        return Invocation(result["response"], None, logs)
    return Invocation(None, result, logs)


def deployed_environment(function: BuiltFunction, stack: str, region: str | None) -> dict[str, str]:
    """The deployed function's own environment variables (and region), read from Lambda."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        region = region_of(region)
        cloudformation = boto3.client("cloudformation", region_name=region)
        resource = cloudformation.describe_stack_resource(StackName=stack, LogicalResourceId=function.logical_id)
        physical = resource["StackResourceDetail"]["PhysicalResourceId"]
        lambda_client = boto3.client("lambda", region_name=region)
        configuration = lambda_client.get_function_configuration(FunctionName=physical)
    except (BotoCoreError, ClientError) as exc:
        raise InvokeError(f"stack {stack!r}, {function.logical_id}: {exc}") from None
    variables = dict(configuration.get("Environment", {}).get("Variables", {}))
    variables["AWS_REGION"] = lambda_client.meta.region_name
    variables["AWS_DEFAULT_REGION"] = lambda_client.meta.region_name
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "HOME"):
        if key in os.environ:  # the operator's credentials stand in for the function's role
            variables[key] = os.environ[key]
    return variables
