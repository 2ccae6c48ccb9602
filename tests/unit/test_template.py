"""Our own checks of template.yaml, beyond what `sam validate --lint` catches.

cfn-lint does not check a queue's visibility against its consumer's timeout, MaximumConcurrency, wildcard IAM,
or that the alarms and dashboard name metrics the code emits; these tests do, on the template as decoded by
cfn-lint (intrinsics as `{"Ref": ...}` / `{"Fn::...": ...}`).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.metric_names import NAMESPACE, PER_TYPE_AND_PROVIDER, SERVICE, SERVICE_ONLY, MetricName, dimensions_of
from core.settings import Settings, build_settings
from rappel_local.stack import globals_environment, load_template, template_parameter_defaults

pytestmark = pytest.mark.unit

TEMPLATE = load_template()
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
PARAMETERS: dict[str, Any] = TEMPLATE["Parameters"]
GLOBAL_FUNCTION: dict[str, Any] = TEMPLATE["Globals"]["Function"]

DATA_TABLES = ("PatientsTable", "AppointmentsTable", "MessagesTable", "OpsTable")
HANDLERS = {
    "PlanRemindersFunction": "handlers.plan_reminders.lambda_handler",
    "DispatchDueFunction": "handlers.dispatch_due.lambda_handler",
    "FollowUpPassFunction": "handlers.follow_up_pass.lambda_handler",
    "SendSmsFunction": "handlers.send_sms.lambda_handler",
    "DeliveryReceiptFunction": "handlers.delivery_receipt.lambda_handler",
    "HealthCheckFunction": "handlers.health_check.lambda_handler",
    "DailyStatisticsFunction": "handlers.daily_statistics.lambda_handler",
    "TallyChangesFunction": "handlers.tally_changes.lambda_handler",
}
# Settings fields that are not template Parameters, and where they come from instead.
NOT_PARAMETERS = {
    "RECEIPT_BASE_URL": "SendSmsFunction's own environment (the function URL)",
    "AWS_REGION": "set by Lambda",
    "AWS_ENDPOINT_URL": "only for the embedded stack / DynamoDB Local",
    "TALLY_FAILURE_QUEUE_URL": "read by `rappel retally` (a stack output), not by the functions",
    "PLANNING_DEAD_LETTER_QUEUE_URL": "read by `rappel replay-events` (a stack output), not by the functions",
}
SAMCONFIG = tomllib.loads((Path(__file__).parents[2] / "samconfig.toml").read_text(encoding="utf-8"))


def of_type(type_name: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in RESOURCES.items() if v["Type"] == type_name}


def props(logical_id: str) -> dict[str, Any]:
    properties: dict[str, Any] = RESOURCES[logical_id].get("Properties", {})
    return properties


FUNCTIONS = of_type("AWS::Serverless::Function")
TABLES = of_type("AWS::DynamoDB::Table")
QUEUES = of_type("AWS::SQS::Queue")


def function_property(function_id: str, name: str) -> Any:
    return props(function_id).get(name, GLOBAL_FUNCTION.get(name))


def key_schema(schema: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(k["AttributeName"], k["KeyType"]) for k in schema]


def is_ref(value: Any, logical_id: str, attribute: str | None = None) -> bool:
    if attribute is None:
        return bool(value == {"Ref": logical_id})
    return value in ({"Fn::GetAtt": [logical_id, attribute]}, {"Fn::GetAtt": f"{logical_id}.{attribute}"})


# ---------------------------------------------------------------------------------------------- functions


def test_the_functions_have_their_fixed_handlers() -> None:
    assert {k: props(k)["Handler"] for k in FUNCTIONS} == HANDLERS


def test_function_globals() -> None:
    assert GLOBAL_FUNCTION["Runtime"] == "python3.11"
    assert GLOBAL_FUNCTION["Architectures"] == ["arm64"]
    assert GLOBAL_FUNCTION["Tracing"] == "Active"
    assert GLOBAL_FUNCTION["LoggingConfig"]["LogFormat"] == "JSON"
    env = GLOBAL_FUNCTION["Environment"]["Variables"]
    assert env["POWERTOOLS_SERVICE_NAME"] == SERVICE
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == NAMESPACE


def test_every_function_logs_to_its_own_log_group_with_retention() -> None:
    groups = []
    for function_id in FUNCTIONS:
        group = props(function_id)["LoggingConfig"]["LogGroup"]
        assert set(group) == {"Ref"}, function_id
        log_group = RESOURCES[group["Ref"]]
        assert log_group["Type"] == "AWS::Logs::LogGroup"
        assert log_group["Properties"]["RetentionInDays"] == 90
        groups.append(group["Ref"])
    assert len(set(groups)) == len(FUNCTIONS)


def test_dispatcher_runs_alone_on_a_schedule_valid_for_one_and_many_minutes() -> None:
    assert props("DispatchDueFunction")["ReservedConcurrentExecutions"] == 1
    assert props("DispatchDueFunction")["Timeout"] == 60
    tick = props("DispatchDueFunction")["Events"]["Tick"]
    assert tick["Type"] == "ScheduleV2"
    condition, one, many = tick["Properties"]["ScheduleExpression"]["Fn::If"]
    assert TEMPLATE["Conditions"][condition] == {"Fn::Equals": [{"Ref": "SmsProcessingIntervalMinutes"}, 1]}
    assert one == "rate(1 minute)"
    assert many == {"Fn::Sub": "rate(${SmsProcessingIntervalMinutes} minutes)"}


def test_schedules_have_stack_scoped_names() -> None:
    # SAM names a ScheduleV2 after its logical id; two stacks in one account would then collide.
    for function_id in FUNCTIONS:
        for event in props(function_id).get("Events", {}).values():
            if event["Type"] == "ScheduleV2":
                assert "${AWS::StackName}" in event["Properties"]["Name"]["Fn::Sub"], function_id


def test_daily_statistics_run_every_day_at_a_local_hour_that_exists_in_every_zone() -> None:
    """EventBridge Scheduler skips a run whose local time does not exist: at 00:00, the day Havana, Santiago,
    Beirut, Cairo or the Azores spring forward at midnight had no report. The run's hour exists every day of two
    years in every zone (the report names the day before it: `statistics.report_day`)."""
    import zoneinfo
    from datetime import UTC, datetime, timedelta

    schedule = props("DailyStatisticsFunction")["Events"]["Daily"]["Properties"]
    assert schedule["ScheduleExpressionTimezone"] == {"Ref": "AppTimezone"}
    minute, hour, *rest = schedule["ScheduleExpression"].removeprefix("cron(").removesuffix(")").split()
    assert rest == ["*", "*", "?", "*"] and minute == "0"
    skipped = []
    for name in sorted(zoneinfo.available_timezones()):
        zone = zoneinfo.ZoneInfo(name)
        day = datetime(2027, 1, 1, int(hour))
        while day.year < 2029:
            local = day.replace(tzinfo=zone)
            if local.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != day:
                skipped.append((name, day.date().isoformat()))
            day += timedelta(days=1)
    assert not skipped, skipped[:10]


def test_planning_failures_land_in_the_planning_dead_letter_queue() -> None:
    plan = props("PlanRemindersFunction")
    rule = plan["Events"]["ClinicEvents"]
    assert rule["Type"] == "EventBridgeRule"
    assert rule["Properties"]["Pattern"] == {
        "source": ["rappel.clinic"],
        "detail-type": ["PatientUpserted", "DoseScheduled", "DoseAdministered", "AppointmentCancelled"],
    }
    assert is_ref(rule["Properties"]["DeadLetterConfig"]["Arn"], "PlanningDeadLetterQueue", "Arn")
    assert rule["Properties"]["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    # Failures of the (asynchronous) invocation itself go to the same queue.
    on_failure = plan["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]
    assert on_failure["Type"] == "SQS"
    assert is_ref(on_failure["Destination"], "PlanningDeadLetterQueue", "Arn")
    # EventBridge may send to the queue, only for this rule.
    statement = props("PlanningDeadLetterQueuePolicy")["PolicyDocument"]["Statement"][0]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert is_ref(statement["Condition"]["ArnEquals"]["aws:SourceArn"], "PlanRemindersFunctionClinicEvents", "Arn")


def test_a_burst_of_clinic_events_waits_for_planning_s_reserved_concurrency_unless_it_is_0() -> None:
    """A campaign's 100,000 events ran a thousand planners at once against the tables: their throttles, past the
    async retries, sent events to the planning DLQ. Capped, the rest wait in Lambda's queue (up to 6 hours)."""
    plan = props("PlanRemindersFunction")
    assert plan["ReservedConcurrentExecutions"] == {
        "Fn::If": ["PlanningConcurrencyReserved", {"Ref": "PlanningConcurrency"}, {"Ref": "AWS::NoValue"}]
    }
    assert plan["EventInvokeConfig"]["MaximumEventAgeInSeconds"] == 21600
    assert PARAMETERS["PlanningConcurrency"]["Default"] == 20
    assert TEMPLATE["Conditions"]["PlanningConcurrencyReserved"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "PlanningConcurrency"}, 0]}]
    }


def test_delivery_receipts_come_through_a_public_function_url() -> None:
    assert props("DeliveryReceiptFunction")["FunctionUrlConfig"]["AuthType"] == "NONE"
    # Requests without the token still run it: capped, so that a flood cannot take the sender's concurrency.
    assert props("DeliveryReceiptFunction")["ReservedConcurrentExecutions"] == {"Ref": "ReceiptConcurrency"}
    receipt_env = props("SendSmsFunction")["Environment"]["Variables"]["RECEIPT_BASE_URL"]
    assert is_ref(receipt_env, "DeliveryReceiptFunctionUrl", "FunctionUrl")


def test_lambda_environment_fits_in_4_kb() -> None:
    # Lambda caps the whole environment at 4 KB; resource values estimated at their longest plausible length.
    lengths = {"Table": 70, "Queue": 120, "Secret": 110}
    total = 0
    for name, value in {**GLOBAL_FUNCTION["Environment"]["Variables"], "RECEIPT_BASE_URL": "x" * 80}.items():
        if isinstance(value, str):
            size = len(value)
        elif "Ref" in value and value["Ref"] in PARAMETERS:
            size = max(len(str(PARAMETERS[value["Ref"]]["Default"])), 24)
        else:
            size = next(n for suffix, n in lengths.items() if value["Ref"].endswith(suffix))
        total += len(name) + size
    assert total < 4096 - 512, total


# ---------------------------------------------------------------------------------------------- DynamoDB


@pytest.mark.parametrize("table_id", sorted(TABLES))
def test_every_table_is_on_demand_encrypted_and_recoverable(table_id: str) -> None:
    table = props(table_id)
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["SSESpecification"]["SSEEnabled"] is True
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True


@pytest.mark.parametrize("table_id", DATA_TABLES)
def test_data_tables_are_retained(table_id: str) -> None:
    assert RESOURCES[table_id]["DeletionPolicy"] == "Retain"
    assert RESOURCES[table_id]["UpdateReplacePolicy"] == "Retain"


def test_messages_table_has_the_sparse_due_index_and_ttl() -> None:
    table = props("MessagesTable")
    attributes = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
    indexes = {i["IndexName"]: i for i in table["GlobalSecondaryIndexes"]}
    assert key_schema(table["KeySchema"]) == [("message_id", "HASH")]
    assert key_schema(indexes["due"]["KeySchema"]) == [("due_shard", "HASH"), ("due_at", "RANGE")]
    assert indexes["due"]["Projection"]["ProjectionType"] == "ALL"
    assert key_schema(indexes["by_provider_message_id"]["KeySchema"]) == [("provider_message_id", "HASH")]
    assert indexes["by_provider_message_id"]["Projection"]["ProjectionType"] == "KEYS_ONLY"
    assert "by_patient" not in indexes  # a reminder's id follows from its appointment: read by key
    assert attributes == {"message_id": "S", "due_shard": "S", "due_at": "S", "provider_message_id": "S"}
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}


def test_other_tables_keys() -> None:
    assert key_schema(props("PatientsTable")["KeySchema"]) == [("patient_id", "HASH")]
    appointments = props("AppointmentsTable")
    assert key_schema(appointments["KeySchema"]) == [("appointment_id", "HASH")]
    (by_patient,) = appointments["GlobalSecondaryIndexes"]
    assert by_patient["IndexName"] == "by_patient"
    assert key_schema(by_patient["KeySchema"]) == [("patient_id", "HASH")]
    assert key_schema(props("OpsTable")["KeySchema"]) == [("pk", "HASH"), ("sk", "RANGE")]
    assert props("OpsTable")["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert key_schema(props("IdempotencyTable")["KeySchema"]) == [("id", "HASH")]
    assert props("IdempotencyTable")["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}


@pytest.mark.parametrize("table_id", sorted(TABLES))
def test_every_key_attribute_is_defined_and_every_definition_used(table_id: str) -> None:
    table = props(table_id)
    used = {k["AttributeName"] for k in table["KeySchema"]}
    for index in table.get("GlobalSecondaryIndexes", []):
        used |= {k["AttributeName"] for k in index["KeySchema"]}
    assert {a["AttributeName"] for a in table["AttributeDefinitions"]} == used


# ---------------------------------------------------------------------------------------------- SQS


def sqs_event_sources() -> Iterator[tuple[str, dict[str, Any]]]:
    for function_id in FUNCTIONS:
        for event in props(function_id).get("Events", {}).values():
            if event["Type"] == "SQS":
                yield function_id, event["Properties"]


def queue_of(event: dict[str, Any]) -> str:
    queue = event["Queue"]
    assert set(queue) == {"Fn::GetAtt"}, queue
    target = queue["Fn::GetAtt"]
    logical_id = target[0] if isinstance(target, list) else target.split(".")[0]
    assert logical_id in QUEUES
    return str(logical_id)


def test_there_is_a_send_queue_consumer() -> None:
    assert [(f, queue_of(e)) for f, e in sqs_event_sources()] == [("SendSmsFunction", "SendQueue")]


@pytest.mark.parametrize(("function_id", "event"), list(sqs_event_sources()))
def test_queue_visibility_is_at_least_six_function_timeouts(function_id: str, event: dict[str, Any]) -> None:
    timeout = function_property(function_id, "Timeout")
    assert props(queue_of(event))["VisibilityTimeout"] >= 6 * timeout
    assert function_id != "SendSmsFunction" or (timeout, props("SendQueue")["VisibilityTimeout"]) == (120, 720)


@pytest.mark.parametrize(("function_id", "event"), list(sqs_event_sources()))
def test_every_queue_consumer_reports_partial_failures_and_is_capped(function_id: str, event: dict[str, Any]) -> None:
    assert "ReportBatchItemFailures" in event["FunctionResponseTypes"]
    assert "MaximumConcurrency" in event["ScalingConfig"]
    assert event["MaximumBatchingWindowInSeconds"] == 5
    assert event["BatchSize"] == {"Ref": "SmsBatchSize"}
    assert event["ScalingConfig"]["MaximumConcurrency"] == {"Ref": "SmsSenderMaxConcurrency"}
    # ...and has somewhere for poison messages to go.
    assert "RedrivePolicy" in props(queue_of(event))


@pytest.mark.parametrize("queue_id", sorted(QUEUES))
def test_every_queue_is_encrypted(queue_id: str) -> None:
    queue = props(queue_id)
    assert queue.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in queue


def test_send_queue_redrives_to_the_dead_letter_queue_after_five_receives() -> None:
    redrive = props("SendQueue")["RedrivePolicy"]
    assert is_ref(redrive["deadLetterTargetArn"], "SendDeadLetterQueue", "Arn")
    assert redrive["maxReceiveCount"] == 5
    assert props("SendDeadLetterQueue")["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert props("PlanningDeadLetterQueue")["MessageRetentionPeriod"] == 14 * 24 * 3600
    # The DLQ lets only SendQueue redrive into it (named by ARN, since a GetAtt would be a cycle).
    allow = props("SendDeadLetterQueue")["RedriveAllowPolicy"]
    assert allow["redrivePermission"] == "byQueue"
    (source,) = allow["sourceQueueArns"]
    assert source["Fn::Sub"].endswith(":" + props("SendQueue")["QueueName"]["Fn::Sub"])


# ---------------------------------------------------------------------------------------------- IAM


def strings_in(value: Any) -> Iterator[str]:
    """Every literal string in an IAM Action / Resource value, including the text of Fn::Sub and Fn::Join."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)
    elif isinstance(value, dict):
        if "Fn::Sub" in value:
            sub = value["Fn::Sub"]
            yield from strings_in(sub[0] if isinstance(sub, list) else sub)
            if isinstance(sub, list):
                yield from strings_in(list(sub[1].values()))
        elif "Fn::Join" in value:
            yield from strings_in(value["Fn::Join"][1])
        elif "Fn::If" in value:
            yield from strings_in(value["Fn::If"][1:])
        # Ref / GetAtt name a single resource: no wildcard possible.


POLICY_RESOURCES = ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::SQS::QueuePolicy", "AWS::SNS::TopicPolicy")


def policy_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, document) for every policy document in the template."""
    for logical_id, resource in RESOURCES.items():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            for policy in properties.get("Policies", []):
                yield f"{logical_id}.Policies", policy
        elif resource["Type"] == "AWS::IAM::Role":
            for policy in properties.get("Policies", []):
                yield f"{logical_id}.Policies", policy["PolicyDocument"]
        elif resource["Type"] in POLICY_RESOURCES:
            yield logical_id, properties["PolicyDocument"]
        elif resource["Type"] == "AWS::KMS::Key":
            yield logical_id, properties["KeyPolicy"]


def test_function_policies_are_explicit_statements() -> None:
    # No SAM policy templates or managed policy names: each function lists what it may do.
    for function_id in FUNCTIONS:
        policies = props(function_id)["Policies"]
        assert policies, function_id
        for policy in policies:
            assert isinstance(policy, dict) and set(policy) == {"Version", "Statement"}, (function_id, policy)


def test_no_wildcard_in_any_action_or_resource() -> None:
    checked = 0
    for where, document in policy_documents():
        for statement in document["Statement"]:
            for action in strings_in(statement.get("Action", [])):
                assert "*" not in action, (where, statement.get("Sid"), action)
            assert "NotAction" not in statement and "NotResource" not in statement, where
            for resource in strings_in(statement.get("Resource", [])):
                # In a KMS key policy, Resource "*" means "this key" (it cannot name its own ARN).
                if where in of_type("AWS::KMS::Key") and resource == "*":
                    continue
                assert "*" not in resource, (where, statement.get("Sid"), resource)
            checked += 1
    assert checked >= 20


def test_index_permissions_name_each_index() -> None:
    text = json.dumps([document for _, document in policy_documents()])
    for index in ("due", "by_provider_message_id"):
        assert "${MessagesTable.Arn}/index/" + index in text
    assert "${AppointmentsTable.Arn}/index/by_patient" in text


def test_secrets_are_generated_not_written_in_the_template() -> None:
    for secret_id, secret in of_type("AWS::SecretsManager::Secret").items():
        assert "SecretString" not in secret["Properties"], secret_id
        assert "GenerateSecretString" in secret["Properties"], secret_id
    receipt = props("ReceiptTokenSecret")["GenerateSecretString"]
    assert (receipt["PasswordLength"], receipt["ExcludePunctuation"]) == (40, True)


# ---------------------------------------------------------------------------------------------- metrics


def dashboard_body() -> dict[str, Any]:
    body = props("Dashboard")["DashboardBody"]["Fn::Sub"]
    text = body[0] if isinstance(body, list) else body
    # ${...} are parameters (numbers) or names inside strings: a digit is valid JSON in both places.
    parsed: dict[str, Any] = json.loads(re.sub(r"\$\{[^}]+\}", "0", text))
    return parsed


SEARCH = re.compile(r"SEARCH\('\{(?P<schema>[^}]*)\}\s+MetricName=\"(?P<name>\w+)\"")


def dashboard_metrics() -> list[tuple[str, str, tuple[str, ...]]]:
    """(namespace, metric name, dimension names) of every metric the dashboard graphs."""
    found: list[tuple[str, str, tuple[str, ...]]] = []
    for widget in dashboard_body()["widgets"]:
        for row in widget.get("properties", {}).get("metrics", []):
            first = row[0]
            if isinstance(first, dict):
                for match in SEARCH.finditer(first["expression"]):
                    namespace, *dimensions = (s.strip() for s in match["schema"].split(","))
                    found.append((namespace, match["name"], tuple(sorted(dimensions))))
            else:
                fields = [item for item in row if not isinstance(item, dict)]
                assert first != "...", "write dashboard rows in full"
                found.append((fields[0], fields[1], tuple(sorted(fields[2::2]))))
    return found


def alarm_metrics() -> list[tuple[str, str, tuple[tuple[str, Any], ...]]]:
    found = []
    for alarm in of_type("AWS::CloudWatch::Alarm").values():
        p = alarm["Properties"]
        dimensions = tuple(sorted((d["Name"], d["Value"]) for d in p.get("Dimensions", [])))
        found.append((p["Namespace"], p["MetricName"], dimensions))
    return found


def test_alarm_metrics_exist_with_the_dimensions_they_are_emitted_with() -> None:
    ours = [(name, dims) for namespace, name, dims in alarm_metrics() if namespace == NAMESPACE]
    assert len(ours) >= 7
    for name, dims in ours:
        assert name in MetricName._value2member_map_, name
        assert MetricName(name) in SERVICE_ONLY, f"{name}: alarms match service-only metrics"
        assert dims == (("service", SERVICE),), name


def test_dashboard_metrics_exist_with_the_dimensions_they_are_emitted_with() -> None:
    for namespace, name, dimensions in dashboard_metrics():
        if namespace != NAMESPACE:
            assert namespace in ("AWS/SQS", "AWS/Lambda"), namespace
            continue
        assert name in MetricName._value2member_map_, name
        assert dimensions == tuple(sorted(d.value for d in dimensions_of(MetricName(name)))), name
        if MetricName(name) in PER_TYPE_AND_PROVIDER:
            assert dimensions == ("provider", "reminder_type", "service"), name


def test_every_metric_is_on_the_dashboard() -> None:
    graphed = {name for namespace, name, _ in dashboard_metrics() if namespace == NAMESPACE}
    assert {m.value for m in MetricName} - graphed == set()


def test_alarms_notify_the_topic_and_choose_missing_data_handling() -> None:
    alarms = of_type("AWS::CloudWatch::Alarm")
    names = {name for _, name, _ in alarm_metrics()}
    for required in (
        "ApproximateNumberOfMessagesVisible",
        "HealthUnhealthy",
        "HealthFailureRate",
        "HealthMinutesSinceLastSend",
        "HealthOldestDueLagMinutes",
        "HealthProviderBalanceUnits",
        "HealthProviderHold",
        "Errors",
        "EventsRejected",  # a clinic change refused (a bad phone, a bad date) is not applied until it is fixed
        "ReceiptsRejected",  # a stale receipt token refuses every STOP and every receipt, which no gateway retries
    ):
        assert required in names, required
    for alarm_id, alarm in alarms.items():
        p = alarm["Properties"]
        assert p["AlarmActions"] == [{"Ref": "AlarmTopic"}], alarm_id
        assert p["TreatMissingData"] in ("breaching", "notBreaching", "ignore", "missing"), alarm_id
    thresholds = {alarms[a]["Properties"]["MetricName"]: alarms[a]["Properties"]["Threshold"] for a in alarms}
    assert thresholds["HealthFailureRate"] == {"Ref": "SmsAlertFailureRate"}
    assert thresholds["HealthOldestDueLagMinutes"] == {"Ref": "SmsAlertProcessingDelayMinutes"}
    assert thresholds["HealthProviderBalanceUnits"] == {"Ref": "ProviderBalanceAlarmUnits"}


def test_the_dashboard_alarm_widget_shows_every_alarm() -> None:
    shown = set(re.findall(r"\$\{(\w+)\.Arn\}", props("Dashboard")["DashboardBody"]["Fn::Sub"]))
    assert set(of_type("AWS::CloudWatch::Alarm")) - shown == set()


def test_dashboard_searches_use_the_metric_math_form() -> None:
    text = props("Dashboard")["DashboardBody"]["Fn::Sub"]
    assert """SEARCH('{Rappel,provider,reminder_type,service} MetricName=\\"SmsSent\\"', 'Sum', 300)""" in text


# ---------------------------------------------------------------------------------------------- settings


def test_parameter_defaults_equal_the_settings_defaults() -> None:
    defaults = template_parameter_defaults()
    assert len(defaults) >= 40
    parsed = Settings(**defaults)  # type: ignore[arg-type]  # strings, as from the environment
    fields = Settings.model_fields
    for name in defaults:
        assert name in fields, f"{name} is mapped in the template but is not a setting"
        assert getattr(parsed, name) == fields[name].default, name


def test_every_setting_is_wired_into_the_template() -> None:
    environment = globals_environment()
    for name in Settings.model_fields:
        assert name in environment or name in NOT_PARAMETERS, f"{name} is neither a Parameter nor a stack resource"
    for name in environment:
        assert name in Settings.model_fields or name.startswith("POWERTOOLS_"), f"{name} is not a setting"


def test_a_parameter_pattern_is_the_pattern_its_setting_validates() -> None:
    """One rule per value: where a setting has a pattern, the template's AllowedPattern is that very pattern."""
    environment = globals_environment()
    checked = 0
    for name, field in Settings.model_fields.items():
        patterns = [getattr(m, "pattern", None) for m in field.metadata if getattr(m, "pattern", None)]
        ref = environment.get(name)
        if not patterns or not isinstance(ref, dict) or ref.get("Ref") not in PARAMETERS:
            continue
        assert PARAMETERS[ref["Ref"]].get("AllowedPattern") == patterns[0], name
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("parameter_id", sorted(PARAMETERS))
def test_parameter_defaults_satisfy_their_own_constraints(parameter_id: str) -> None:
    parameter = PARAMETERS[parameter_id]
    default = str(parameter["Default"])
    if "AllowedValues" in parameter:
        assert default in [str(v) for v in parameter["AllowedValues"]]
    if "AllowedPattern" in parameter:
        assert re.fullmatch(parameter["AllowedPattern"], default), parameter_id
    if parameter["Type"] == "Number":
        value = float(default)
        assert float(parameter.get("MinValue", value)) <= value <= float(parameter.get("MaxValue", value))


def _deployed_environment(config_env: str) -> dict[str, str]:
    """The environment `sam deploy --config-env <config_env>` gives the functions: the Parameters' defaults with the
    config's parameter_overrides on top, mapped to their variables as the template maps them."""
    overrides = dict(o.split("=", 1) for o in SAMCONFIG[config_env]["deploy"]["parameters"]["parameter_overrides"])
    unknown = set(overrides) - set(PARAMETERS)
    assert not unknown, f"{config_env} overrides Parameters the template does not have: {sorted(unknown)}"
    environment = template_parameter_defaults()
    for name, ref in globals_environment().items():
        if isinstance(ref, dict) and ref.get("Ref") in overrides:
            environment[name] = overrides[ref["Ref"]]
    return environment


@pytest.mark.parametrize("config_env", sorted(e for e, v in SAMCONFIG.items() if isinstance(v, dict) and "deploy" in v))
def test_every_samconfig_environment_deploys_valid_settings_that_use_the_whole_rate(config_env: str) -> None:
    """A config-env whose settings do not validate deploys functions that fail at every cold start; one whose
    senders' paces do not add up to the rate limit leaves part of the provider's rate unused."""
    settings = build_settings(**_deployed_environment(config_env))
    assert settings.senders_rate_per_second == settings.SMS_RATE_LIMIT_PER_SECOND


def test_the_tally_reads_both_tables_streams_whole_batches_at_a_time_and_keeps_what_it_gives_up_on() -> None:
    """A counter item remembers the last batch added to it: a retry must be the same batch, never a split one."""
    for table in ("MessagesTable", "OpsTable"):
        assert props(table)["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}
    events = props("TallyChangesFunction")["Events"]
    assert {e["Properties"]["Stream"]["Fn::GetAtt"][0] for e in events.values()} == {"MessagesTable", "OpsTable"}
    for event in events.values():
        mapping = event["Properties"]
        assert event["Type"] == "DynamoDB" and mapping["StartingPosition"] == "TRIM_HORIZON"
        assert mapping["BisectBatchOnFunctionError"] is False and mapping["MaximumRetryAttempts"] > 0
        assert mapping["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["TallyFailureQueue", "Arn"]}
    ops = events["AppointmentStateChanges"]["Properties"]
    assert "APPOINTMENT#" in ops["FilterCriteria"]["Filters"][0]["Pattern"]  # not the counters it writes itself


def test_a_function_whose_failure_nothing_queues_or_retries_has_an_errors_alarm() -> None:
    """The receipt and reply URL (a 5xx loses a family's STOP: the gateways do not retry) and the daily report (a
    scheduled run that fails its retries too) leave no dead letter behind: only their Errors alarm tells."""
    watched = {
        alarm["Properties"]["Dimensions"][0]["Value"]["Ref"]
        for alarm in of_type("AWS::CloudWatch::Alarm").values()
        if alarm["Properties"]["MetricName"] == "Errors"
    }
    assert {"DeliveryReceiptFunction", "DailyStatisticsFunction"} <= watched


def test_a_throttled_receipt_or_reply_has_an_alarm() -> None:
    """The receipt function's concurrency is capped (its URL is public): a flood of requests without the token fills
    it, and the receipts and replies throttled meanwhile (429) are lost, a family's STOP among them, since neither
    gateway retries. Nothing said so: Errors does not count a throttle."""
    watched = {
        alarm["Properties"]["Dimensions"][0]["Value"]["Ref"]
        for alarm in of_type("AWS::CloudWatch::Alarm").values()
        if alarm["Properties"]["MetricName"] == "Throttles"
    }
    assert "DeliveryReceiptFunction" in watched


def test_every_value_a_listed_parameter_allows_is_a_setting_the_functions_accept() -> None:
    """A value the template lets through and the settings refuse stops every function at start-up after a deploy
    that looked fine (SmsProviders=orange,orange did)."""
    defaults = template_parameter_defaults()
    for name, ref in globals_environment().items():
        parameter = PARAMETERS.get(ref.get("Ref")) if isinstance(ref, dict) else None
        for value in (parameter or {}).get("AllowedValues", []):
            build_settings(**{**defaults, name: str(value)})  # raises, naming the variable, if refused


def _longest_provider_request_s() -> float:
    """The longest one provider request may take under any settings the functions accept: connect + read."""

    def bound(name: str) -> float:
        return float(next(m.le for m in Settings.model_fields[name].metadata if getattr(m, "le", None) is not None))

    return bound("PROVIDER_CONNECT_TIMEOUT_SECONDS") + bound("PROVIDER_READ_TIMEOUT_SECONDS")


def test_the_health_check_outlasts_its_balance_read_at_the_longest_timeouts() -> None:
    """health_check reads the Orange balance: a token request and the contracts request, and both again when the
    token is refused (one refresh and replay). With the longest timeouts the settings allow, a slow Orange made it
    time out at 30 s and report nothing at all (no backlog, no lag): the hour without data was the only sign,
    exactly when the provider was in trouble."""
    assert function_property("HealthCheckFunction", "Timeout") >= 4 * _longest_provider_request_s() + 10
