"""The stack built from template.yaml inside moto: names, environment, redrive, sparse index, secrets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from core.settings import build_settings
from rappel_local.stack import LocalStack, ResourceNotCreatedError, create_stack, load_template

pytestmark = pytest.mark.integration

REGION = "us-east-1"
ORANGE = {"client_id": "rappel-test", "client_secret": "s3cret-test"}


@pytest.fixture
def moto_stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalStack]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield create_stack(prefix="it", endpoint_url=None, region=REGION, orange_credentials=ORANGE)


def test_every_table_queue_and_secret_of_the_template_exists(moto_stack: LocalStack) -> None:
    resources = load_template()["Resources"]
    expected = {
        kind: {k for k, v in resources.items() if v["Type"] == kind}
        for kind in ("AWS::DynamoDB::Table", "AWS::SQS::Queue", "AWS::SecretsManager::Secret")
    }
    assert set(moto_stack.tables) == expected["AWS::DynamoDB::Table"]
    assert set(moto_stack.queue_urls) == expected["AWS::SQS::Queue"]
    assert set(moto_stack.secrets) == expected["AWS::SecretsManager::Secret"]
    assert moto_stack.messages_table == "it-MessagesTable"
    assert moto_stack.send_queue_url.endswith("/it-SendQueue")

    dynamodb = boto3.client("dynamodb", region_name=REGION)
    assert sorted(dynamodb.list_tables()["TableNames"]) == sorted(moto_stack.tables.values())
    ttl = dynamodb.describe_time_to_live(TableName=moto_stack.messages_table)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at")


def test_environment_is_what_settings_reads(moto_stack: LocalStack) -> None:
    environment = moto_stack.environment()
    settings = build_settings(**environment)
    assert moto_stack.messages_table == settings.MESSAGES_TABLE
    assert moto_stack.idempotency_table == settings.IDEMPOTENCY_TABLE
    assert moto_stack.send_queue_url == settings.SEND_QUEUE_URL
    assert moto_stack.dead_letter_queue_url == settings.DEAD_LETTER_QUEUE_URL
    assert moto_stack.receipt_token_secret == settings.RECEIPT_TOKEN_SECRET
    assert {
        "PATIENTS_TABLE",
        "APPOINTMENTS_TABLE",
        "MESSAGES_TABLE",
        "OPS_TABLE",
        "IDEMPOTENCY_TABLE",
        "SEND_QUEUE_URL",
        "DEAD_LETTER_QUEUE_URL",
        "ORANGE_CREDENTIALS_SECRET",
        "KANNEL_CREDENTIALS_SECRET",
        "RECEIPT_TOKEN_SECRET",
    } <= set(environment)
    assert "AWS_ENDPOINT_URL" not in environment


def test_send_queue_attributes_come_from_the_template(moto_stack: LocalStack) -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    attributes = sqs.get_queue_attributes(QueueUrl=moto_stack.send_queue_url, AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "720"
    assert attributes["SqsManagedSseEnabled"] == "true"
    assert json.loads(attributes["RedrivePolicy"]) == {
        "deadLetterTargetArn": moto_stack.dead_letter_queue_arn,
        "maxReceiveCount": 5,
    }
    dlq = sqs.get_queue_attributes(QueueUrl=moto_stack.dead_letter_queue_url, AttributeNames=["All"])["Attributes"]
    assert dlq["MessageRetentionPeriod"] == "1209600"


def test_a_message_received_five_times_moves_to_the_dead_letter_queue(moto_stack: LocalStack) -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    sqs.send_message(QueueUrl=moto_stack.send_queue_url, MessageBody='{"message_id": "m1"}')

    receives = 0
    for _ in range(10):
        # VisibilityTimeout=0: the message is visible again at once, as if the consumer had failed.
        got = sqs.receive_message(QueueUrl=moto_stack.send_queue_url, VisibilityTimeout=0, MaxNumberOfMessages=1)
        if not got.get("Messages"):
            break
        receives += 1
    assert receives == 5

    moved = sqs.receive_message(
        QueueUrl=moto_stack.dead_letter_queue_url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
    )["Messages"]
    assert [m["Body"] for m in moved] == ['{"message_id": "m1"}']


def test_due_index_is_sparse(moto_stack: LocalStack) -> None:
    table = boto3.resource("dynamodb", region_name=REGION).Table(moto_stack.messages_table)
    table.put_item(Item={"message_id": "pending", "due_shard": "DUE#3", "due_at": "2027-03-13T09:00:00.000Z"})
    table.put_item(Item={"message_id": "sent", "patient_id": "p1", "scheduled_at": "2027-03-13T09:00:00.000Z"})
    due = table.query(
        IndexName="due",
        KeyConditionExpression="due_shard = :s AND due_at <= :now",
        ExpressionAttributeValues={":s": "DUE#3", ":now": "2027-03-14T00:00:00.000Z"},
    )["Items"]
    assert [item["message_id"] for item in due] == ["pending"]


def test_secrets_hold_local_values(moto_stack: LocalStack) -> None:
    secrets = boto3.client("secretsmanager", region_name=REGION)

    def value(secret_id: str) -> Any:
        return secrets.get_secret_value(SecretId=secret_id)["SecretString"]

    assert json.loads(value(moto_stack.orange_credentials_secret)) == ORANGE
    assert moto_stack.orange_credentials == ORANGE
    token = value(moto_stack.receipt_token_secret)
    assert token == moto_stack.receipt_token
    assert len(token) == 40 and token.isalnum()
    kannel = json.loads(value(moto_stack.kannel_credentials_secret))
    assert kannel["username"] == "CHANGE_ME" and len(kannel["password"]) == 32


def test_only_the_services_asked_for_are_created(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        stack = create_stack(prefix="ddb", endpoint_url=None, services=("dynamodb",))
        assert boto3.client("sqs", region_name=REGION).list_queues().get("QueueUrls", []) == []
        assert "SEND_QUEUE_URL" not in stack.environment()
        assert stack.environment()["OPS_TABLE"] == "ddb-OpsTable"
        with pytest.raises(ResourceNotCreatedError, match="SendQueue"):
            _ = stack.send_queue_url
        with pytest.raises(ValueError, match="unknown services"):
            create_stack(prefix="x", endpoint_url=None, services=("sns",))


def test_exist_ok_reuses_the_stack(moto_stack: LocalStack) -> None:
    again = create_stack(prefix="it", endpoint_url=None, region=REGION, exist_ok=True)
    assert again.tables == moto_stack.tables
    assert again.queue_urls == moto_stack.queue_urls
    assert again.receipt_token == moto_stack.receipt_token
    with pytest.raises(Exception, match="ResourceInUseException"):
        create_stack(prefix="it", endpoint_url=None, region=REGION)
