"""The stack's data resources, created on an AWS-compatible endpoint from template.yaml itself.

Tables (key schema, attribute definitions, GSIs, TTL), queues (attributes, redrive policies) and secrets are read
from the template's `AWS::DynamoDB::Table`, `AWS::SQS::Queue` and `AWS::SecretsManager::Secret` resources, so the
embedded stack and the test stacks cannot drift from the deployed one. Works in-process under `moto.mock_aws`
(`endpoint_url=None`), against `ThreadedMotoServer`, and against DynamoDB Local (`services=("dynamodb",)`).

Local names are `f"{prefix}-{LogicalId}"` for every resource. The environment the functions would get
(`LocalStack.environment()`) is derived from the template's `Globals.Function.Environment`: each variable there
that is a `Ref` to one of these resources maps to its local name (table), URL (queue) or name (secret). It also
carries what only the operator commands read (`OPERATOR_RESOURCES`, which a deployed stack gives as outputs).

Not Lambda code: it needs cfn-lint (the `ops` extra).
"""

from __future__ import annotations

import copy
import functools
import json
import re
import secrets
import string
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

__all__ = [
    "ALL_SERVICES",
    "LocalStack",
    "ResourceNotCreatedError",
    "TemplateError",
    "create_stack",
    "default_template_path",
    "globals_environment",
    "load_template",
    "template_parameter_defaults",
]

ALL_SERVICES: tuple[str, ...] = ("dynamodb", "sqs", "secretsmanager")

_TABLE = "AWS::DynamoDB::Table"
_QUEUE = "AWS::SQS::Queue"
_SECRET = "AWS::SecretsManager::Secret"

# CloudFormation AWS::SQS::Queue properties that are SQS queue attributes of the same name.
_QUEUE_ATTRIBUTES = (
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "DelaySeconds",
    "FifoQueue",
    "FifoThroughputLimit",
    "KmsDataKeyReusePeriodSeconds",
    "KmsMasterKeyId",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "RedrivePolicy",
    "SqsManagedSseEnabled",
    "VisibilityTimeout",
)

# Environment variables (Settings names) whose secret gets caller-supplied JSON credentials.
_ORANGE_SECRET_ENV = "ORANGE_CREDENTIALS_SECRET"
_KANNEL_SECRET_ENV = "KANNEL_CREDENTIALS_SECRET"
_RECEIPT_SECRET_ENV = "RECEIPT_TOKEN_SECRET"
# Resources only the operator commands read (a deployed stack gives them as outputs), by the variable naming them.
OPERATOR_RESOURCES = {
    "TALLY_FAILURE_QUEUE_URL": "TallyFailureQueue",
    "PLANNING_DEAD_LETTER_QUEUE_URL": "PlanningDeadLetterQueue",
}


class TemplateError(ValueError):
    """template.yaml could not be read, or uses something this module cannot reproduce locally."""


class ResourceNotCreatedError(LookupError):
    """The resource exists in the template but was not created (its service was not in `services`)."""


# ---------------------------------------------------------------------------------------------- template


def default_template_path() -> Path:
    """template.yaml at the repository root (this file is ops/rappel_local/stack.py), else in the working directory."""
    beside_sources = Path(__file__).resolve().parents[2] / "template.yaml"
    if beside_sources.is_file():
        return beside_sources
    return Path.cwd() / "template.yaml"


def _plain(value: Any) -> Any:
    """cfn-lint's node classes as plain dicts, lists and scalars."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> dict[str, Any]:
    from cfnlint.decode import decode  # the ops extra; imported here so that importing this module is cheap

    template, matches = decode(path)
    if matches or template is None:
        raise TemplateError(f"cannot parse {path}: " + "; ".join(str(m) for m in matches))
    plain: dict[str, Any] = _plain(template)
    return plain


def load_template(template_path: str | Path | None = None) -> dict[str, Any]:
    """template.yaml parsed with cfn-lint's decoder (intrinsics as `{"Ref": ...}` / `{"Fn::...": ...}`); a copy."""
    path = Path(template_path) if template_path is not None else default_template_path()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise TemplateError(f"cannot read {path}: {exc}") from exc
    return copy.deepcopy(_load(str(path.resolve()), mtime))


def globals_environment(template_path: str | Path | None = None) -> dict[str, Any]:
    """`Globals.Function.Environment.Variables` as decoded (values are strings or intrinsics)."""
    template = load_template(template_path)
    variables = template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    return dict(variables)


def template_parameter_defaults(template_path: str | Path | None = None) -> dict[str, str]:
    """Environment variable name -> the default of the template Parameter it is mapped from (`!Ref Param`)."""
    template = load_template(template_path)
    parameters: dict[str, Any] = template.get("Parameters", {})
    defaults: dict[str, str] = {}
    for name, value in globals_environment(template_path).items():
        if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in parameters:
            parameter = parameters[value["Ref"]]
            if "Default" not in parameter:
                raise TemplateError(f"parameter {value['Ref']} (for {name}) has no Default")
            defaults[name] = _scalar(parameter["Default"])
    return defaults


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise TemplateError(f"expected a scalar, got {value!r}")


# ---------------------------------------------------------------------------------------------- intrinsics

_SUB_VARIABLE = re.compile(r"\$\{([^}!][^}]*)\}")


class IntrinsicResolver:
    """Resolves the intrinsics the data resources use, with parameter defaults and the local physical ids."""

    def __init__(self, template: Mapping[str, Any], *, stack_name: str, region: str, account_id: str) -> None:
        self._parameters: dict[str, Any] = template.get("Parameters", {})
        self._conditions: dict[str, Any] = template.get("Conditions", {})
        self._resources: dict[str, Any] = template.get("Resources", {})
        self._pseudo = {
            "AWS::Region": region,
            "AWS::AccountId": account_id,
            "AWS::Partition": "aws",
            "AWS::StackName": stack_name,
            "AWS::StackId": f"arn:aws:cloudformation:{region}:{account_id}:stack/{stack_name}/local",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": None,
        }
        self.refs: dict[str, str] = {}  # logical id -> what Ref returns locally
        self.attributes: dict[tuple[str, str], str] = {}  # (logical id, attribute) -> value

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [item for item in (self.resolve(v) for v in value) if item is not None]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, argument),) = value.items()
            if key == "Ref":
                return self._ref(argument)
            if key == "Fn::GetAtt":
                return self._get_att(argument)
            if key == "Fn::Sub":
                return self._sub(argument)
            if key == "Fn::Join":
                separator, items = argument
                return str(separator).join(str(self.resolve(i)) for i in items)
            if key == "Fn::If":
                condition, when_true, when_false = argument
                return self.resolve(when_true if self._condition(condition) else when_false)
            if key.startswith("Fn::"):
                raise TemplateError(f"{key} is not supported in locally created resources")
        resolved = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not None}

    def _ref(self, name: str) -> Any:
        if name in self._pseudo:
            return self._pseudo[name]
        if name in self._parameters:
            return _scalar(self._parameters[name].get("Default", ""))
        if name in self.refs:
            return self.refs[name]
        if name in self._resources:
            raise TemplateError(f"Ref {name}: that resource is not created locally (yet)")
        raise TemplateError(f"Ref {name}: unknown name")

    def _get_att(self, argument: Any) -> str:
        logical_id, attribute = argument.split(".", 1) if isinstance(argument, str) else argument
        try:
            return self.attributes[(logical_id, attribute)]
        except KeyError:
            raise TemplateError(f"GetAtt {logical_id}.{attribute}: not available locally") from None

    def _sub(self, argument: Any) -> str:
        if isinstance(argument, list):
            text, variables = argument
            local = {k: self.resolve(v) for k, v in variables.items()}
        else:
            text, local = argument, {}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in local:
                return str(local[name])
            if "." in name and name.split(".", 1)[0] in self._resources:
                return self._get_att(name)
            return str(self._ref(name))

        return _SUB_VARIABLE.sub(replace, str(text)).replace("${!", "${")

    def _condition(self, name: str) -> bool:
        if name not in self._conditions:
            raise TemplateError(f"unknown condition {name}")
        return self._evaluate(self._conditions[name])

    def _evaluate(self, expression: Any) -> bool:
        if isinstance(expression, dict) and len(expression) == 1:
            ((key, argument),) = expression.items()
            if key == "Fn::Equals":
                left, right = (self.resolve(a) for a in argument)
                return _scalar(left) == _scalar(right)
            if key == "Fn::Not":
                return not self._evaluate(argument[0])
            if key == "Fn::And":
                return all(self._evaluate(a) for a in argument)
            if key == "Fn::Or":
                return any(self._evaluate(a) for a in argument)
            if key == "Condition":
                return self._condition(argument)
        raise TemplateError(f"unsupported condition {expression!r}")


# ---------------------------------------------------------------------------------------------- the stack


@dataclass(frozen=True)
class LocalStack:
    """What `create_stack` made; resource maps are keyed by the template's logical ids."""

    prefix: str
    region: str
    endpoint_url: str | None
    services: tuple[str, ...]
    tables: dict[str, str] = field(default_factory=dict)  # logical id -> table name
    table_arns: dict[str, str] = field(default_factory=dict)
    queue_urls: dict[str, str] = field(default_factory=dict)
    queue_arns: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)  # logical id -> secret name
    secret_values: dict[str, str] = field(default_factory=dict)  # logical id -> SecretString
    # Environment variable -> logical id, from Globals.Function.Environment (`!Ref` to a created resource).
    environment_refs: dict[str, str] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        """The variables Settings reads for these resources (PATIENTS_TABLE, SEND_QUEUE_URL, ...), plus the region
        (AWS_REGION, AWS_DEFAULT_REGION) and AWS_ENDPOINT_URL when the stack is on an explicit endpoint."""
        env: dict[str, str] = {}
        for name, logical_id in self.environment_refs.items():
            for created in (self.tables, self.queue_urls, self.secrets):
                if logical_id in created:
                    env[name] = created[logical_id]
        for name, logical_id in OPERATOR_RESOURCES.items():
            if logical_id in self.queue_urls:
                env[name] = self.queue_urls[logical_id]
        env["AWS_REGION"] = self.region
        env["AWS_DEFAULT_REGION"] = self.region
        if self.endpoint_url:
            env["AWS_ENDPOINT_URL"] = self.endpoint_url
        return env

    def _by_env(self, name: str, created: Mapping[str, str], what: str) -> str:
        logical_id = self.environment_refs.get(name)
        if logical_id is None:
            raise ResourceNotCreatedError(f"{name} does not refer to a {what} in the template's Globals")
        try:
            return created[logical_id]
        except KeyError:
            raise ResourceNotCreatedError(
                f"{logical_id} ({name}) was not created: services were {', '.join(self.services)}"
            ) from None

    @property
    def patients_table(self) -> str:
        return self._by_env("PATIENTS_TABLE", self.tables, "table")

    @property
    def appointments_table(self) -> str:
        return self._by_env("APPOINTMENTS_TABLE", self.tables, "table")

    @property
    def messages_table(self) -> str:
        return self._by_env("MESSAGES_TABLE", self.tables, "table")

    @property
    def ops_table(self) -> str:
        return self._by_env("OPS_TABLE", self.tables, "table")

    @property
    def idempotency_table(self) -> str:
        return self._by_env("IDEMPOTENCY_TABLE", self.tables, "table")

    @property
    def send_queue_url(self) -> str:
        return self._by_env("SEND_QUEUE_URL", self.queue_urls, "queue")

    @property
    def send_queue_arn(self) -> str:
        return self._by_env("SEND_QUEUE_URL", self.queue_arns, "queue")

    @property
    def dead_letter_queue_url(self) -> str:
        return self._by_env("DEAD_LETTER_QUEUE_URL", self.queue_urls, "queue")

    @property
    def dead_letter_queue_arn(self) -> str:
        return self._by_env("DEAD_LETTER_QUEUE_URL", self.queue_arns, "queue")

    @property
    def orange_credentials_secret(self) -> str:
        return self._by_env(_ORANGE_SECRET_ENV, self.secrets, "secret")

    @property
    def kannel_credentials_secret(self) -> str:
        return self._by_env(_KANNEL_SECRET_ENV, self.secrets, "secret")

    @property
    def receipt_token_secret(self) -> str:
        return self._by_env(_RECEIPT_SECRET_ENV, self.secrets, "secret")

    @property
    def receipt_token(self) -> str:
        return self._by_env(_RECEIPT_SECRET_ENV, self.secret_values, "secret")

    @property
    def orange_credentials(self) -> dict[str, str]:
        value: dict[str, str] = json.loads(self._by_env(_ORANGE_SECRET_ENV, self.secret_values, "secret"))
        return value

    @property
    def kannel_credentials(self) -> dict[str, str]:
        value: dict[str, str] = json.loads(self._by_env(_KANNEL_SECRET_ENV, self.secret_values, "secret"))
        return value


def create_stack(
    *,
    prefix: str,
    endpoint_url: str | None,
    region: str = "us-east-1",
    orange_credentials: Mapping[str, str] | None = None,
    kannel_credentials: Mapping[str, str] | None = None,
    services: Collection[str] = ALL_SERVICES,
    template_path: str | Path | None = None,
    session: boto3.session.Session | None = None,
    exist_ok: bool = False,
) -> LocalStack:
    """Create the template's tables, queues and secrets named `f"{prefix}-{LogicalId}"`.

    `endpoint_url=None` uses boto3's default endpoints (what `moto.mock_aws` intercepts). `services` limits what is
    created: `("dynamodb",)` on DynamoDB Local. Secrets get local values: the Orange / Kannel credentials passed in
    (else the template's GenerateSecretString shape with a random secret) and a random receipt token.
    With `exist_ok`, resources that already exist are kept (and existing secret values read back).
    """
    unknown = set(services) - set(ALL_SERVICES)
    if unknown:
        raise ValueError(f"unknown services {sorted(unknown)}; expected some of {ALL_SERVICES}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", prefix):
        raise ValueError(f"prefix must be 1-40 characters of [A-Za-z0-9_.-], got {prefix!r}")

    template = load_template(template_path)
    resources: dict[str, Any] = template.get("Resources", {})
    boto = session or boto3.session.Session(region_name=region)
    account_id = "000000000000"
    if "sqs" in services or "secretsmanager" in services:
        account_id = _account_id(boto, region, endpoint_url)
    resolver = IntrinsicResolver(template, stack_name=prefix, region=region, account_id=account_id)

    stack = LocalStack(prefix=prefix, region=region, endpoint_url=endpoint_url, services=tuple(services))

    def client(service: str) -> Any:
        return boto.client(service, region_name=region, endpoint_url=endpoint_url)

    if "dynamodb" in services:
        _create_tables(client("dynamodb"), resources, resolver, stack, exist_ok=exist_ok)
    if "sqs" in services:
        _create_queues(client("sqs"), resources, resolver, stack)
    env_refs = {
        name: value["Ref"]
        for name, value in globals_environment(template_path).items()
        if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in resources
    }
    stack.environment_refs.update(env_refs)
    if "secretsmanager" in services:
        overrides: dict[str, Mapping[str, str]] = {}
        for env_name, credentials in (
            (_ORANGE_SECRET_ENV, orange_credentials),
            (_KANNEL_SECRET_ENV, kannel_credentials),
        ):
            if credentials is not None and env_name in env_refs:
                overrides[env_refs[env_name]] = credentials
        _create_secrets(client("secretsmanager"), resources, resolver, stack, overrides, exist_ok=exist_ok)
    return stack


def _account_id(session: boto3.session.Session, region: str, endpoint_url: str | None) -> str:
    try:
        sts = session.client("sts", region_name=region, endpoint_url=endpoint_url)
        return str(sts.get_caller_identity()["Account"])
    except Exception:  # an endpoint without STS (only used to build ARNs for pseudo parameters)
        return "000000000000"


def _of_type(resources: Mapping[str, Any], type_name: str) -> list[tuple[str, dict[str, Any]]]:
    return [(logical_id, r) for logical_id, r in resources.items() if r.get("Type") == type_name]


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


# ---------------------------------------------------------------------------------------------- DynamoDB


def _create_tables(
    dynamodb: Any, resources: Mapping[str, Any], resolver: IntrinsicResolver, stack: LocalStack, *, exist_ok: bool
) -> None:
    for logical_id, resource in _of_type(resources, _TABLE):
        props = resolver.resolve(resource.get("Properties", {}))
        name = f"{stack.prefix}-{logical_id}"
        request: dict[str, Any] = {
            "TableName": name,
            "AttributeDefinitions": props["AttributeDefinitions"],
            "KeySchema": props["KeySchema"],
        }
        billing = props.get("BillingMode", "PROVISIONED")
        request["BillingMode"] = billing
        if billing == "PROVISIONED":
            request["ProvisionedThroughput"] = props["ProvisionedThroughput"]
        for kind in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
            if props.get(kind):
                request[kind] = [_index(index, billing) for index in props[kind]]
        if props.get("StreamSpecification"):
            request["StreamSpecification"] = {"StreamEnabled": True, **props["StreamSpecification"]}
        try:
            description = dynamodb.create_table(**request)["TableDescription"]
        except ClientError as exc:
            if not (exist_ok and _error_code(exc) == "ResourceInUseException"):
                raise
            description = dynamodb.describe_table(TableName=name)["Table"]
        dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        ttl = props.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            _enable_ttl(dynamodb, name, ttl["AttributeName"])
        stack.tables[logical_id] = name
        stack.table_arns[logical_id] = description["TableArn"]
        resolver.refs[logical_id] = name
        resolver.attributes[(logical_id, "Arn")] = description["TableArn"]


def _index(index: Mapping[str, Any], billing: str) -> dict[str, Any]:
    result = {key: index[key] for key in ("IndexName", "KeySchema", "Projection")}
    if billing == "PROVISIONED" and "ProvisionedThroughput" in index:
        result["ProvisionedThroughput"] = index["ProvisionedThroughput"]
    return result


def _enable_ttl(dynamodb: Any, table_name: str, attribute: str) -> None:
    current = dynamodb.describe_time_to_live(TableName=table_name)["TimeToLiveDescription"]
    if current.get("TimeToLiveStatus") in ("ENABLED", "ENABLING") and current.get("AttributeName") == attribute:
        return
    dynamodb.update_time_to_live(
        TableName=table_name, TimeToLiveSpecification={"Enabled": True, "AttributeName": attribute}
    )


# ---------------------------------------------------------------------------------------------- SQS


def _queue_dependencies(props: Mapping[str, Any], queue_ids: Iterable[str]) -> set[str]:
    """Queues this queue's properties (other than RedriveAllowPolicy) refer to."""
    text = json.dumps({k: v for k, v in props.items() if k != "RedriveAllowPolicy"})
    return {q for q in queue_ids if f'"{q}"' in text or f"${{{q}." in text or f"${{{q}}}" in text}


def _attribute_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _create_queues(sqs: Any, resources: Mapping[str, Any], resolver: IntrinsicResolver, stack: LocalStack) -> None:
    queues = dict(_of_type(resources, _QUEUE))
    pending = {q: _queue_dependencies(r.get("Properties", {}), set(queues) - {q}) for q, r in queues.items()}
    names: dict[str, str] = {}
    for logical_id, resource in queues.items():
        fifo = bool(resource.get("Properties", {}).get("FifoQueue"))
        names[logical_id] = f"{stack.prefix}-{logical_id}" + (".fifo" if fifo else "")

    redrive_allow: dict[str, dict[str, Any]] = {}
    while pending:
        ready = [q for q, deps in pending.items() if deps <= set(stack.queue_urls)]
        if not ready:
            raise TemplateError(f"queues refer to each other in a cycle: {sorted(pending)}")
        for logical_id in sorted(ready):
            del pending[logical_id]
            props = resolver.resolve(
                {k: v for k, v in queues[logical_id].get("Properties", {}).items() if k != "RedriveAllowPolicy"}
            )
            attributes = {k: _attribute_value(props[k]) for k in _QUEUE_ATTRIBUTES if k in props}
            url = sqs.create_queue(QueueName=names[logical_id], Attributes=attributes)["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            stack.queue_urls[logical_id] = url
            stack.queue_arns[logical_id] = arn
            resolver.refs[logical_id] = url
            resolver.attributes[(logical_id, "Arn")] = arn
            resolver.attributes[(logical_id, "QueueName")] = names[logical_id]
            resolver.attributes[(logical_id, "QueueUrl")] = url
            allow = queues[logical_id].get("Properties", {}).get("RedriveAllowPolicy")
            if allow is not None:
                redrive_allow[logical_id] = allow

    # A byQueue RedriveAllowPolicy names the deployed source queues (by a constructed ARN, to avoid a cycle);
    # locally it names the local queues whose RedrivePolicy targets this one.
    for logical_id, allow in redrive_allow.items():
        policy = dict(allow)
        if policy.get("redrivePermission") == "byQueue":
            arn = stack.queue_arns[logical_id]
            policy["sourceQueueArns"] = [
                stack.queue_arns[source]
                for source, resource in queues.items()
                if _queue_dependencies({"r": resource.get("Properties", {}).get("RedrivePolicy")}, [logical_id])
                and source != logical_id
            ] or [arn]
        else:
            policy = resolver.resolve(policy)
        sqs.set_queue_attributes(
            QueueUrl=stack.queue_urls[logical_id], Attributes={"RedriveAllowPolicy": _attribute_value(policy)}
        )


# ---------------------------------------------------------------------------------------------- secrets


def _random_string(length: int, *, punctuation: bool) -> str:
    alphabet = string.ascii_letters + string.digits + (string.punctuation if punctuation else "")
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _secret_value(props: Mapping[str, Any], override: Mapping[str, str] | None) -> str:
    if override is not None:
        return json.dumps(dict(override))
    if "SecretString" in props:
        return str(props["SecretString"])
    generate = props.get("GenerateSecretString", {})
    generated = _random_string(
        int(generate.get("PasswordLength", 32)), punctuation=not generate.get("ExcludePunctuation", False)
    )
    if "SecretStringTemplate" in generate:
        document = json.loads(generate["SecretStringTemplate"])
        document[generate["GenerateStringKey"]] = generated
        return json.dumps(document)
    return generated


def _create_secrets(
    client: Any,
    resources: Mapping[str, Any],
    resolver: IntrinsicResolver,
    stack: LocalStack,
    overrides: Mapping[str, Mapping[str, str]],
    *,
    exist_ok: bool,
) -> None:
    for logical_id, resource in _of_type(resources, _SECRET):
        props = resolver.resolve(resource.get("Properties", {}))
        name = f"{stack.prefix}-{logical_id}"
        value = _secret_value(props, overrides.get(logical_id))
        try:
            client.create_secret(Name=name, SecretString=value, Description=str(props.get("Description", ""))[:2048])
        except ClientError as exc:
            if not (exist_ok and _error_code(exc) == "ResourceExistsException"):
                raise
            if logical_id in overrides:
                client.put_secret_value(SecretId=name, SecretString=value)
            else:
                value = client.get_secret_value(SecretId=name)["SecretString"]
        stack.secrets[logical_id] = name
        stack.secret_values[logical_id] = value
        resolver.refs[logical_id] = name


def send_queue_visibility_timeout(template_path: str | Path | None = None) -> int:
    """The send queue's visibility timeout in seconds, as the template sets it (the simulator honours it)."""
    value = load_template(template_path)["Resources"]["SendQueue"]["Properties"]["VisibilityTimeout"]
    return int(value)
