"""The tables of template.yaml, created by rappel_local.stack on AWS's DynamoDB Local, are what the code expects."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError

from rappel_local.stack import LocalStack, ResourceNotCreatedError, create_stack, load_template

pytestmark = pytest.mark.contract


@pytest.fixture
def ddb_stack(dynamodb_local_endpoint: str) -> LocalStack:
    return create_stack(prefix=f"c{uuid.uuid4().hex[:8]}", endpoint_url=dynamodb_local_endpoint, services=("dynamodb",))


def _keys(schema: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(k["AttributeName"], k["KeyType"]) for k in schema]


def test_tables_match_the_template(ddb_stack: LocalStack, dynamodb_local_client: Any) -> None:
    resources = load_template()["Resources"]
    table_ids = {k for k, v in resources.items() if v["Type"] == "AWS::DynamoDB::Table"}
    assert set(ddb_stack.tables) == table_ids
    for logical_id in table_ids:
        declared = resources[logical_id]["Properties"]
        actual = dynamodb_local_client.describe_table(TableName=ddb_stack.tables[logical_id])["Table"]
        assert actual["TableStatus"] == "ACTIVE"
        assert actual["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        assert _keys(actual["KeySchema"]) == _keys(declared["KeySchema"]), logical_id
        assert sorted(map(tuple, (a.values() for a in actual["AttributeDefinitions"]))) == sorted(
            map(tuple, (a.values() for a in declared["AttributeDefinitions"]))
        ), logical_id
        actual_indexes = {
            i["IndexName"]: (_keys(i["KeySchema"]), i["Projection"]["ProjectionType"])
            for i in actual.get("GlobalSecondaryIndexes", [])
        }
        declared_indexes = {
            i["IndexName"]: (_keys(i["KeySchema"]), i["Projection"]["ProjectionType"])
            for i in declared.get("GlobalSecondaryIndexes", [])
        }
        assert actual_indexes == declared_indexes, logical_id
        ttl = dynamodb_local_client.describe_time_to_live(TableName=ddb_stack.tables[logical_id])
        declared_ttl = declared.get("TimeToLiveSpecification")
        if declared_ttl:
            assert ttl["TimeToLiveDescription"]["TimeToLiveStatus"] == "ENABLED", logical_id
            assert ttl["TimeToLiveDescription"]["AttributeName"] == declared_ttl["AttributeName"], logical_id
        else:
            assert ttl["TimeToLiveDescription"]["TimeToLiveStatus"] == "DISABLED", logical_id


def test_messages_table_shape(ddb_stack: LocalStack, dynamodb_local_client: Any) -> None:
    table = dynamodb_local_client.describe_table(TableName=ddb_stack.messages_table)["Table"]
    indexes = {i["IndexName"]: i for i in table["GlobalSecondaryIndexes"]}
    assert _keys(table["KeySchema"]) == [("message_id", "HASH")]
    assert _keys(indexes["due"]["KeySchema"]) == [("due_shard", "HASH"), ("due_at", "RANGE")]
    assert indexes["due"]["Projection"]["ProjectionType"] == "ALL"
    assert _keys(indexes["by_provider_message_id"]["KeySchema"]) == [("provider_message_id", "HASH")]
    assert indexes["by_provider_message_id"]["Projection"]["ProjectionType"] == "KEYS_ONLY"
    assert set(indexes) == {"due", "by_provider_message_id"}
    ttl = dynamodb_local_client.describe_time_to_live(TableName=ddb_stack.messages_table)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at")


def test_conditional_put_on_an_existing_key_fails(ddb_stack: LocalStack, dynamodb_local_client: Any) -> None:
    item = {"message_id": {"S": "m1"}, "status": {"S": "pending"}}
    put = {
        "TableName": ddb_stack.messages_table,
        "Item": item,
        "ConditionExpression": "attribute_not_exists(message_id)",
    }
    dynamodb_local_client.put_item(**put)
    with pytest.raises(ClientError) as raised:
        dynamodb_local_client.put_item(**put, ReturnValuesOnConditionCheckFailure="ALL_OLD")
    assert raised.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    assert raised.value.response["Item"] == item


def test_due_index_is_sparse_and_read_eventually(ddb_stack: LocalStack, dynamodb_local_client: Any) -> None:
    table = ddb_stack.messages_table
    dynamodb_local_client.put_item(
        TableName=table,
        Item={"message_id": {"S": "due"}, "due_shard": {"S": "DUE#0"}, "due_at": {"S": "2027-03-13T09:00:00.000Z"}},
    )
    dynamodb_local_client.put_item(TableName=table, Item={"message_id": {"S": "not-due"}})
    query = {
        "TableName": table,
        "IndexName": "due",
        "KeyConditionExpression": "due_shard = :s AND due_at <= :now",
        "ExpressionAttributeValues": {":s": {"S": "DUE#0"}, ":now": {"S": "2027-03-14T00:00:00.000Z"}},
    }
    assert [i["message_id"]["S"] for i in dynamodb_local_client.query(**query)["Items"]] == ["due"]
    # Real DynamoDB (unlike some emulators) refuses strongly consistent reads on a GSI.
    with pytest.raises(ClientError) as raised:
        dynamodb_local_client.query(**query, ConsistentRead=True)
    assert raised.value.response["Error"]["Code"] == "ValidationException"


def test_dynamodb_only_stack_environment(ddb_stack: LocalStack, dynamodb_local_endpoint: str) -> None:
    environment = ddb_stack.environment()
    assert environment["MESSAGES_TABLE"] == ddb_stack.messages_table
    assert environment["AWS_ENDPOINT_URL"] == dynamodb_local_endpoint
    assert "SEND_QUEUE_URL" not in environment and "RECEIPT_TOKEN_SECRET" not in environment
    with pytest.raises(ResourceNotCreatedError):
        _ = ddb_stack.receipt_token


def test_creating_twice_needs_exist_ok(ddb_stack: LocalStack, dynamodb_local_endpoint: str) -> None:
    again = create_stack(
        prefix=ddb_stack.prefix, endpoint_url=dynamodb_local_endpoint, services=("dynamodb",), exist_ok=True
    )
    assert again.tables == ddb_stack.tables
    with pytest.raises(ClientError) as raised:
        create_stack(prefix=ddb_stack.prefix, endpoint_url=dynamodb_local_endpoint, services=("dynamodb",))
    assert raised.value.response["Error"]["Code"] == "ResourceInUseException"
