"""IAM least privilege, proven on the calls the functions make: moto does not enforce IAM, so this test does.

Every AWS call a handler makes while the e2e scenarios run (and while each function runs its events/ sample) is
recorded as (function, IAM action, resource ARN): botocore's one entry point for every request is wrapped, and the
handler being invoked is known from a context variable set around each handler. Each call is then evaluated
against that function's `Policies` in template.yaml, resolved to ARNs as CloudFormation would resolve them:

- every call must be allowed by a statement of its own function's role;
- every (action, resource) a statement grants must be used by some call of that function, or carry a comment
  `# Unexercised: <why>` on the action's or the resource's line (or the comment line right above it).

Calls from outside a handler (the simulator's own SQS deletes, the test's reads) are the event source mapping's
or the operator's, not the function's, and are not recorded.
"""

from __future__ import annotations

import contextvars
import fnmatch
import importlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.client
import pytest
from moto import mock_aws

from core import clock, provider_state, secrets
from core.providers import factory
from handlers import send_sms
from rappel_local.embedded import invoke, reset_core_caches
from rappel_local.orange_simulator import OrangeSimulator
from rappel_local.simulate import simulate
from rappel_local.stack import IntrinsicResolver, load_template
from tests.e2e.samples import DUE_WHENEVER_THIS_RUNS, run_every_sample
from tests.e2e.test_scenarios import (
    ABIDJAN,
    administered_event,
    at_local,
    cancelled_event,
    crash_scenario,
    dose_event,
    one_patient,
    patient_event,
    phone,
    scenario,
    z,
)

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]
TEMPLATE = ROOT / "template.yaml"
SHIPPED_SCENARIOS = ROOT / "ops" / "rappel_local" / "scenarios"
REGION, ACCOUNT, STACK = "us-east-1", "123456789012", "rappel"
JUSTIFIED = re.compile(r"#\s*Unexercised:\s*\S")

# The batch APIs are authorized as their single-message actions: there is no sqs:SendMessageBatch in IAM
# (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-api-permissions-reference.html).
IAM_ACTION = {
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
}

_current_function: contextvars.ContextVar[str | None] = contextvars.ContextVar("function", default=None)


@dataclass(frozen=True)
class Call:
    """One AWS request made by a function: what IAM evaluates."""

    function: str  # the template's logical id
    action: str  # "dynamodb:GetItem"
    resource: str  # the ARN the request acts on


# ---------------------------------------------------------------------------------------------- the template


def functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Logical id -> properties of every AWS::Serverless::Function."""
    return {
        logical_id: resource["Properties"]
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }


def _physical_name(logical_id: str) -> str:
    return f"{STACK}-{logical_id}"


def resource_arn(template: dict[str, Any], logical_id: str) -> str:
    """The ARN of a table, queue or secret as CloudFormation would name it in this test's stack."""
    kind = template["Resources"][logical_id]["Type"]
    name = _physical_name(logical_id)
    if kind == "AWS::DynamoDB::Table":
        return f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}"
    if kind == "AWS::SQS::Queue":
        return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"
    if kind == "AWS::SecretsManager::Secret":
        return f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{name}-AbCdEf"
    raise AssertionError(f"{logical_id}: no ARN rule for {kind}")


def policy_resolver(template: dict[str, Any]) -> IntrinsicResolver:
    """Resolves `!GetAtt X.Arn`, `!Sub "${X.Arn}/index/i"` and `!Ref Secret` (an ARN) as CloudFormation does."""
    resolver = IntrinsicResolver(template, stack_name=STACK, region=REGION, account_id=ACCOUNT)
    for logical_id, resource in template["Resources"].items():
        kind = resource["Type"]
        if kind == "AWS::DynamoDB::Table":
            resolver.refs[logical_id] = _physical_name(logical_id)
            resolver.attributes[(logical_id, "Arn")] = resource_arn(template, logical_id)
        elif kind == "AWS::SQS::Queue":
            resolver.refs[logical_id] = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{_physical_name(logical_id)}"
            resolver.attributes[(logical_id, "Arn")] = resource_arn(template, logical_id)
        elif kind == "AWS::SecretsManager::Secret":
            resolver.refs[logical_id] = resource_arn(template, logical_id)
    return resolver


@dataclass(frozen=True)
class Grant:
    """One (action, resource) of one Allow statement of a function's inline policy."""

    function: str
    sid: str
    action: str
    resource: str  # an ARN pattern, resolved
    resource_source: Any  # as written in the template, to find its line


def grants(template: dict[str, Any]) -> list[Grant]:
    """Every (action, resource) the template's function policies allow; anything but inline Allow is refused."""
    resolver = policy_resolver(template)
    found = []
    for function, properties in functions(template).items():
        for policy in properties.get("Policies", []):
            assert isinstance(policy, dict) and "Statement" in policy, (
                f"{function}: only inline policy documents can be checked here, not {policy!r}"
            )
            for statement in policy["Statement"]:
                assert statement["Effect"] == "Allow" and "Sid" in statement, f"{function}: {statement}"
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                written = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                for action in actions:
                    for source in written:
                        found.append(Grant(function, statement["Sid"], action, resolver.resolve(source), source))
    return found


def allows(grant: Grant, call: Call) -> bool:
    """IAM's matching for Allow statements: `*` and `?` in action (case-insensitive) and resource."""
    return (
        grant.function == call.function
        and fnmatch.fnmatchcase(call.action.lower(), grant.action.lower())
        and fnmatch.fnmatchcase(call.resource, grant.resource)
    )


def _function_block(lines: list[str], function: str) -> list[str]:
    start = lines.index(f"  {function}:")
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^  \S", lines[i])), len(lines))
    return lines[start:end]


def justified(lines: list[str], grant: Grant) -> bool:
    """Whether the grant's action line or resource line in its statement carries `# Unexercised: <why>`."""
    block = _function_block(lines, grant.function)
    start = next(i for i, line in enumerate(block) if re.search(rf"- Sid: {grant.sid}\s*$", line))
    end = next((i for i in range(start + 1, len(block)) if "- Sid:" in block[i]), len(block))
    logical_ids = re.findall(r"[A-Za-z0-9]+(?=\.Arn|\b)", json.dumps(grant.resource_source))
    wanted = [re.compile(rf"\b{re.escape(grant.action)}\b")]
    wanted += [re.compile(rf"\b{re.escape(i)}\b") for i in logical_ids if i in "".join(block[start:end])]
    for i in range(start, end):
        if any(pattern.search(block[i].split("#", 1)[0]) for pattern in wanted):
            above = block[i - 1].strip() if i > start else ""
            if JUSTIFIED.search(block[i]) or (above.startswith("#") and JUSTIFIED.search(above)):
                return True
    return False


# ---------------------------------------------------------------------------------------------- recording


def _logical_id(template: dict[str, Any], name: str) -> str:
    """The template resource a locally created table, queue URL or secret (name or ARN) belongs to."""
    tail = name.rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    for logical_id in template["Resources"]:
        if tail.endswith(f"-{logical_id}") or re.search(rf"-{logical_id}-[A-Za-z0-9]{{6}}$", tail):
            return logical_id
    raise AssertionError(f"{name!r} is no resource of template.yaml")


def resources_of(template: dict[str, Any], service: str, operation: str, params: dict[str, Any]) -> list[str]:
    """The resource ARNs IAM evaluates for one request's parameters (a batch read: each table it reads)."""
    if service == "dynamodb" and "TableName" in params:
        arn = resource_arn(template, _logical_id(template, params["TableName"]))
        return [f"{arn}/index/{params['IndexName']}" if "IndexName" in params else arn]
    if service == "dynamodb" and operation == "BatchGetItem":
        return [resource_arn(template, _logical_id(template, table)) for table in params["RequestItems"]]
    if service == "sqs" and ("QueueUrl" in params or "QueueName" in params):
        return [resource_arn(template, _logical_id(template, params.get("QueueUrl") or params["QueueName"]))]
    if service == "secretsmanager" and "SecretId" in params:
        return [resource_arn(template, _logical_id(template, params["SecretId"]))]
    if service == "events" and operation == "PutEvents":  # each entry is authorized on its bus
        buses = {entry.get("EventBusName") or "default" for entry in params["Entries"]}
        return [f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/{bus}" for bus in sorted(buses)]
    raise AssertionError(f"a function calls {service}:{operation}, which this test cannot map to a resource yet")


@pytest.fixture(scope="module")
def recorded() -> Iterator[set[Call]]:
    """Record every AWS call made inside a handler; yields the set, filled by the scenario runs."""
    template = load_template(TEMPLATE)
    calls: set[Call] = set()
    patch = pytest.MonkeyPatch()
    original = botocore.client.BaseClient._make_api_call

    def recording(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        function = _current_function.get()
        if function is not None:
            service = self.meta.service_model.signing_name
            action = f"{service}:{operation_name}"
            for resource in resources_of(template, service, operation_name, api_params):
                calls.add(Call(function, IAM_ACTION.get(action, action), resource))
        return original(self, operation_name, api_params)

    patch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    for logical_id, properties in functions(template).items():
        module = importlib.import_module(properties["Handler"].rsplit(".", 1)[0])
        patch.setattr(module, "lambda_handler", _as_function(logical_id, module.lambda_handler))
    yield calls
    patch.undo()


_last_function: list[str] = []


def _as_function(logical_id: str, handler: Callable[..., Any]) -> Callable[..., Any]:
    """The handler, run as `logical_id`: its calls are attributed to it, and it starts without another function's
    cached secrets or provider hold (each Lambda function is its own process; in-process they share caches)."""

    def wrapped(event: Any, context: Any) -> Any:
        if _last_function[-1:] != [logical_id]:
            secrets.reset()
            factory.reset()
            provider_state.forget()
            _last_function[:] = [logical_id]
        token = _current_function.set(logical_id)
        try:
            return handler(event, context)
        finally:
            _current_function.reset(token)

    return wrapped


# ---------------------------------------------------------------------------------------------- what runs


def shipped_scenarios() -> list[dict[str, Any]]:
    """The shipped scenarios but the 45-day program, which takes no path the others do not. The outage's second
    outage lasts 90 minutes instead of 11 hours, the 1-day reminder's lateness cut to match (it still expires in
    the outage): the same 33 calls (compared once), in about a seventh of the time."""
    scenarios = []
    for path in sorted(SHIPPED_SCENARIOS.glob("*.json")):
        if "program" in path.name:
            continue
        data = json.loads(path.read_text())
        if path.name == "outage.json":
            data["settings"]["REMINDER_1_DAY_MAX_LATENESS_HOURS"] = 1
            long_outage = data["provider"]["faults"][1]
            assert long_outage["from"] == "2027-03-11T08:59:00Z", "outage.json changed: shorten it anew"
            long_outage["until"] = "2027-03-11T10:30:00Z"
        scenarios.append(data)
    return scenarios


def fault_scenarios() -> list[dict[str, Any]]:
    """The paths the shipped scenarios do not take: every failure the send path classifies, a provider hold,
    a throttled provider, an ambiguous send dead-lettered, a reschedule, a cancellation, a dose given before
    its schedule."""
    due = "2027-03-12"
    seven = at_local("2027-03-05", 9, ABIDJAN)
    no_bundle = [{"from": z(seven), "until": z(at_local("2027-03-05", 10, ABIDJAN, 10)), "status": 403}]
    ambiguous = [{"from": z(seven), "until": z(at_local("2027-03-05", 9, ABIDJAN, 1)), "timeout": "after_send"}]
    moved = [
        *one_patient(due, number=4),
        dose_event("2027-03-07T10:00:00Z", "a4", "p4", "2027-03-19"),
        cancelled_event("2027-03-08T12:00:00Z", "a4"),
        # A dose given before its (older) schedule arrives.
        administered_event("2027-03-02T08:00:00Z", "a5", "2027-03-02"),
        {**dose_event("2027-03-02T09:00:00Z", "a5", "p4", due), "time": "2027-03-01T09:00:00Z"},
    ]
    renewed = patient_event("2027-03-03T08:00:00Z", "p6", phone(6), name="Awa")
    renewed["detail"]["sms_opt_in_renewed"] = True
    # Siblings on one phone (a grouped SMS), and a dose booked the day before it is due (a late 7-day reminder
    # superseded by the 1-day one).
    siblings = [
        patient_event("2027-03-01T08:00:00Z", "p6", phone(6), name="Awa"),
        patient_event("2027-03-01T08:00:00Z", "p7", phone(6), name="Kofi"),
        dose_event("2027-03-01T08:00:00Z", "a6", "p6", due),
        dose_event("2027-03-01T08:00:00Z", "a7", "p7", due),
        patient_event("2027-03-11T07:00:00Z", "p8", phone(7)),
        dose_event("2027-03-11T07:00:00Z", "a8", "p8", due),
        # The phone stopped by an operator, then the clinic's renewed consent for one child: planning lifts the
        # number's stop and replans every patient with the number (found by the by_phone index).
        {"at": "2027-03-02T08:00:00Z", "type": "OptOutByPhone", "detail": {"phone": phone(6)}},
        renewed,
    ]
    return [
        crash_scenario(),
        scenario(
            "2027-03-01T00:00:00Z",
            "2027-03-13T00:00:00Z",
            siblings,
            settings={"REMINDER_7_DAY_MAX_LATENESS_HOURS": 144},
        ),
        scenario("2027-03-01T00:00:00Z", "2027-03-07T00:00:00Z", one_patient(due), faults=no_bundle),
        scenario(
            "2027-03-01T00:00:00Z",
            "2027-03-06T00:00:00Z",
            one_patient(due),
            faults=ambiguous,
            settings={"SMS_ON_AMBIGUOUS_SEND": "dead_letter"},
        ),
        scenario(
            "2027-03-01T00:00:00Z",
            "2027-03-06T00:00:00Z",
            [e for n in range(1, 4) for e in one_patient(due, number=n)],
            settings={"SMS_RATE_LIMIT_PER_SECOND": 4, "SMS_SENDER_MAX_CONCURRENCY": 2},
            rate_limit_per_second=1,
        ),
        scenario(
            "2027-03-01T00:00:00Z",
            "2027-03-22T00:00:00Z",
            moved,
            faults=[{"to": phone(9), "status": 400, "message_id": "SVC0004"}],
            undeliverable=[phone(8)],
        ),
    ]


@pytest.fixture(scope="module")
def calls(recorded: set[Call]) -> set[Call]:
    """The recorded calls of the shipped scenarios, the fault scenarios and every function's events/ sample."""
    for data in [*shipped_scenarios(), *fault_scenarios()]:
        simulate(data)
    with pytest.MonkeyPatch.context() as patch:
        # A broken deploy of the sender: what the dispatcher then does alone (dead letters, expiries) is exercised.
        patch.setattr(send_sms, "process_send_batch", _broken_sender)
        # Its records fail until SQS's redrive policy moves them to the send DLQ: the reminder stays claimed (an
        # operator's redrive after the fix expires it), and the family's follow-up does not wait on it.
        data = scenario("2027-03-01T00:00:00Z", "2027-03-08T00:00:00Z", one_patient("2027-03-12"))
        seven_day = next(m for m in simulate(data).as_json()["messages"] if m["reminder_type"] == "7_day_reminder")
        assert seven_day["status"] == "queued", seven_day
    _run_samples()
    return recorded


def _broken_sender(*args: Any) -> Any:
    raise RuntimeError("the sender is broken")


def _run_samples() -> None:
    """health_check and daily_statistics run on schedules `rappel simulate` does not keep: their samples run here."""
    credentials = {"client_id": "rappel-iam", "client_secret": "iam-secret-not-real"}
    with mock_aws(), pytest.MonkeyPatch.context() as patch:
        from rappel_local.stack import create_stack

        stack = create_stack(prefix=STACK, endpoint_url=None, orange_credentials=credentials)
        simulator = OrangeSimulator(clock=clock.SystemClock(), **credentials).start()
        environment = {
            **stack.environment(),
            "ORANGE_API_BASE_URL": simulator.base_url,
            "RECEIPT_BASE_URL": "http://127.0.0.1:9/",
            **DUE_WHENEVER_THIS_RUNS,
        }
        for name, value in environment.items():
            patch.setenv(name, value)
        reset_core_caches()
        try:
            clients = {service: boto3.client(service, region_name=REGION) for service in ("sqs", "dynamodb")}
            run_every_sample(invoke, **clients, stack=stack, simulator=simulator)
        finally:
            simulator.stop()
            reset_core_caches()


# ---------------------------------------------------------------------------------------------- the proofs


def test_every_call_a_function_makes_is_allowed_by_its_own_policies(calls: set[Call]) -> None:
    template = load_template(TEMPLATE)
    granted = grants(template)
    assert {c.function for c in calls} == set(functions(template)), "some function made no AWS call at all"
    denied = sorted(
        f"{c.function}: {c.action} on {c.resource}" for c in calls if not any(allows(g, c) for g in granted)
    )
    assert not denied, "AccessDenied in production:\n" + "\n".join(denied)


def test_every_granted_action_is_used_or_justified(calls: set[Call]) -> None:
    template = load_template(TEMPLATE)
    lines = TEMPLATE.read_text().splitlines()
    unused = sorted(
        f"{g.function} {g.sid}: {g.action} on {g.resource}"
        for g in grants(template)
        if not any(allows(g, c) for c in calls) and not justified(lines, g)
    )
    assert not unused, "granted but never used (remove it, or say why with `# Unexercised: <why>`):\n" + "\n".join(
        unused
    )
