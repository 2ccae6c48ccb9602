"""moto_shortcuts() changes moto's speed, never its answers: every call here is made with and without it."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from datetime import datetime
from typing import Any

import boto3
import botocore.exceptions
import botocore.signers
import moto.core.responses as core_responses
import moto.dynamodb.comparisons as comparisons
import moto.dynamodb.parsing.ast_nodes as ast_nodes
import moto.dynamodb.parsing.expressions as expressions
import moto.dynamodb.parsing.validators as validators
import moto.sqs.models as sqs_models
import pytest
from moto import mock_aws
from moto.core.serialize import BaseJSONSerializer
from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict
from moto.dynamodb.models.table import Table
from moto.dynamodb.responses import DynamoHandler

from rappel_local.moto_shortcuts import moto_shortcuts

pytestmark = pytest.mark.unit

TABLE = "shortcuts-test"


def _item(n: int, rng: random.Random) -> dict[str, Any]:
    item: dict[str, Any] = {
        "pk": {"S": f"P{n % 7}"},
        "sk": {"N": str(rng.randint(-50, 50) * 10 + n % 10)},
        "patient_id": {"S": f"patient-{n % 5}"},
        "text": {"S": rng.choice(["Bonjour", "Rappel: vaccin demain à 9 h", "é" * 30, ""])},
        "version": {"N": str(rng.randint(0, 9))},
        "ambiguous": {"BOOL": rng.random() < 0.5},
        "nothing": {"NULL": True},
        "nested": {"M": {"a": {"S": "x"}, "l": {"L": [{"N": "1.50"}, {"B": b"\x00\xff"}, {"SS": ["b", "a"]}]}}},
        "blob": {"B": bytes([n % 256, 1, 2])},
        "numbers": {"NS": ["1", "2.5"]},
    }
    if n % 3:  # a sparse index: only some items carry its keys
        item["due_shard"] = {"S": f"DUE#{n % 4}"}
        item["due_at"] = {"S": f"2027-03-{1 + n % 28:02d}T{n % 24:02d}:00:00+00:00"}
    return item


def _calls(client: Any) -> list[tuple[str, Callable[[], Any]]]:
    due = "due_shard = :s AND due_at <= :u"
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("get", lambda: client.get_item(TableName=TABLE, Key={"pk": {"S": "P3"}, "sk": {"N": "-7"}})),
        ("scan", lambda: client.scan(TableName=TABLE, Limit=9)),
        (
            "partition",
            lambda: client.query(
                TableName=TABLE, KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "P2"}}
            ),
        ),
        (
            "partition range",
            lambda: client.query(
                TableName=TABLE,
                KeyConditionExpression="pk = :p AND sk BETWEEN :a AND :b",
                ExpressionAttributeValues={":p": {"S": "P1"}, ":a": {"N": "-100"}, ":b": {"N": "120"}},
                ScanIndexForward=False,
            ),
        ),
        (
            "by patient",
            lambda: client.query(
                TableName=TABLE,
                IndexName="by_patient",
                KeyConditionExpression="patient_id = :p",
                ExpressionAttributeValues={":p": {"S": "patient-2"}},
            ),
        ),
        (
            "due filtered",
            lambda: client.query(
                TableName=TABLE,
                IndexName="due",
                KeyConditionExpression=due,
                FilterExpression="version > :v",
                ExpressionAttributeValues={
                    ":s": {"S": "DUE#1"},
                    ":u": {"S": "2027-03-15T00:00:00+00:00"},
                    ":v": {"N": "3"},
                },
            ),
        ),
        (
            "due prefix",
            lambda: client.query(
                TableName=TABLE,
                IndexName="due",
                KeyConditionExpression="due_shard = :s AND begins_with(due_at, :d)",
                ExpressionAttributeValues={":s": {"S": "DUE#2"}, ":d": {"S": "2027-03-1"}},
            ),
        ),
        (
            "no such partition",
            lambda: client.query(
                TableName=TABLE,
                IndexName="due",
                KeyConditionExpression="due_shard = :s",
                ExpressionAttributeValues={":s": {"S": "DUE#9"}},
            ),
        ),
    ]

    calls += _bounded_calls(client)

    def due_pages() -> list[Any]:
        pages, start = [], None
        while True:
            extra = {"ExclusiveStartKey": start} if start else {}
            page = client.query(
                TableName=TABLE,
                IndexName="due",
                KeyConditionExpression=due,
                Limit=4,
                ExpressionAttributeValues={":s": {"S": "DUE#3"}, ":u": {"S": "2027-03-20T00:00:00+00:00"}},
                **extra,
            )
            pages.append(page)
            start = page.get("LastEvaluatedKey")
            if not start:
                return pages

    calls.append(("due pages", due_pages))
    calls.append(
        (
            "update",
            lambda: client.update_item(
                TableName=TABLE,
                Key={"pk": {"S": "P0"}, "sk": {"N": "0"}},
                UpdateExpression="SET #t = :t ADD version :one",
                ExpressionAttributeNames={"#t": "text"},
                ExpressionAttributeValues={":t": {"S": "changé"}, ":one": {"N": "1"}},
                ReturnValues="ALL_NEW",
            ),
        )
    )
    updates = {
        "update nested": (
            "SET nested.a = :t, nested.l[0] = :n, #c = if_not_exists(#c, :zero) + :one REMOVE #b",
            {":t": {"S": "y"}, ":n": {"N": "2"}, ":zero": {"N": "0"}, ":one": {"N": "1"}},
            {"#c": "count", "#b": "blob"},
        ),
        "update list": ("SET #i = list_append(if_not_exists(#i, :empty), :more)", None, {"#i": "items"}),
        "update sets": ("ADD numbers :ns DELETE #s :gone", {":ns": {"NS": ["7"]}, ":gone": {"SS": ["a"]}}, None),
        "update a key": ("SET pk = :t", {":t": {"S": "other"}}, None),
        "update a missing path": ("SET version = nowhere + :one", {":one": {"N": "1"}}, None),
        "update new item": (
            "SET #t = :t, version = :one",
            {":t": {"S": "nouveau"}, ":one": {"N": "1"}},
            {"#t": "text"},
        ),
        # Refused by the checks that read the expression alone (remembered once passed, for the same names).
        "update two SET clauses": (
            "SET #t = :t SET version = :one",
            {":t": {"S": "y"}, ":one": {"N": "1"}},
            {"#t": "text"},
        ),
        "update overlapping paths": ("SET nested.a = :t, nested = :m", {":t": {"S": "y"}, ":m": {"M": {}}}, None),
        "update the same name twice": ("SET #a = :t, #b = :t", {":t": {"S": "y"}}, {"#a": "text", "#b": "text"}),
        "update names that differ": ("SET #a = :t, #b = :t", {":t": {"S": "y"}}, {"#a": "text", "#b": "version"}),
        "update a key by name": ("SET #a = :t", {":t": {"S": "y"}}, {"#a": "pk"}),
        "update by name": ("SET #a = :t", {":t": {"S": "y"}}, {"#a": "text"}),
        "update nothing there": (
            "SET #t = #missing, version = :one",
            {":one": {"N": "1"}},
            {"#t": "text", "#missing": "nowhere"},
        ),
        "update with a function on nothing": (
            "SET version = if_not_exists(#n, :one) + :one",
            {":one": {"N": "1"}},
            {"#n": "nothing_here"},
        ),
        "update a long history": (
            "SET #z = :s, #v = #v + :one, #h = list_append(if_not_exists(#h, :empty), :entry) REMOVE due_at, due_shard",
            {":s": {"S": "sent"}, ":one": {"N": "1"}, ":empty": {"L": []}, ":entry": {"L": [{"S": "x>y sent"}]}},
            {"#z": "status", "#v": "version", "#h": "history"},
        ),
    }
    # Each expression twice, on two items: a parsed expression is remembered, and must serve its second use as well.
    for n, (name, (expression, values, names)) in enumerate([*updates.items(), *updates.items()]):
        values = values or {":empty": {"L": []}, ":more": {"L": [{"S": "a"}, {"N": "1"}]}}
        if "#s" in expression:
            names = {"#s": "tags"}
        key = {"pk": {"S": "U"}, "sk": {"N": str(n)}}
        if name != "update new item":  # the others change an item with every kind of attribute
            client.put_item(TableName=TABLE, Item={**_item(n, random.Random(n)), **key, "tags": {"SS": ["a", "b"]}})
        again = " again" if n >= len(updates) else ""
        calls.append((name + again, _update(client, key, expression, values, names)))
    for n in range(len(_CONDITIONS)):
        start = {"status": {"S": "pending"}, "version": {"N": "3"}, "nested": {"M": {"a": {"S": "pending"}}}}
        client.put_item(TableName=TABLE, Item={"pk": {"S": "C"}, "sk": {"N": str(n)}, **start})
    for n, (name, (condition, values)) in enumerate([*_CONDITIONS.items(), *_CONDITIONS.items()]):
        key = {"pk": {"S": "C"}, "sk": {"N": str(n % len(_CONDITIONS))}}
        again = " again" if n >= len(_CONDITIONS) else ""
        calls.append((f"condition {name}{again}", _conditional(client, key, condition, values)))
    calls.append(("after the updates", lambda: client.scan(TableName=TABLE)))
    calls.append(("an index partition around each kind of write", _partition_around_writes(client)))
    return calls


def _partition_around_writes(client: Any) -> Callable[[], Any]:
    """The same index partition asked twice, then after each kind of write that moves an item into or out of it:
    the shortcut groups the items by partition once and must group them again after any write."""

    def ask() -> Any:
        return client.query(
            TableName=TABLE,
            IndexName="due",
            KeyConditionExpression="due_shard = :s",
            ExpressionAttributeValues={":s": {"S": "DUE#2"}},
        )

    def key(n: int) -> dict[str, Any]:
        return {"pk": {"S": "W"}, "sk": {"N": str(n)}}

    def due(n: int, shard: str = "DUE#2") -> dict[str, Any]:
        return {**key(n), "due_shard": {"S": shard}, "due_at": {"S": f"2027-03-0{n}T09:00:00+00:00"}}

    writes: list[Callable[[], Any]] = [
        lambda: client.put_item(TableName=TABLE, Item=due(1)),
        lambda: client.update_item(
            TableName=TABLE,
            Key=key(2),
            UpdateExpression="SET due_shard = :s, due_at = :a",
            ExpressionAttributeValues={":s": {"S": "DUE#2"}, ":a": {"S": "2027-03-02T09:00:00+00:00"}},
        ),
        lambda: client.update_item(
            TableName=TABLE,
            Key=key(1),
            UpdateExpression="SET due_shard = :s",
            ExpressionAttributeValues={":s": {"S": "DUE#3"}},
        ),
        lambda: client.update_item(TableName=TABLE, Key=key(2), UpdateExpression="REMOVE due_shard"),
        # an item of another partition changed in place (moto updates the stored item) into this one
        lambda: client.put_item(TableName=TABLE, Item=due(6, "DUE#3")),
        lambda: client.update_item(
            TableName=TABLE,
            Key=key(6),
            UpdateExpression="SET due_shard = :s",
            ExpressionAttributeValues={":s": {"S": "DUE#2"}},
        ),
        lambda: client.batch_write_item(RequestItems={TABLE: [{"PutRequest": {"Item": due(n)}} for n in (3, 4)]}),
        lambda: client.delete_item(TableName=TABLE, Key=key(3)),
        lambda: client.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": TABLE, "Item": due(5)}},
                {"Delete": {"TableName": TABLE, "Key": key(4)}},
                {
                    "Update": {
                        "TableName": TABLE,
                        "Key": key(1),
                        "UpdateExpression": "SET due_shard = :s",
                        "ExpressionAttributeValues": {":s": {"S": "DUE#2"}},
                    }
                },
            ]
        ),
        lambda: client.batch_write_item(RequestItems={TABLE: [{"DeleteRequest": {"Key": key(5)}}]}),
    ]

    def run() -> list[Any]:
        answers = [ask(), ask()]
        for write in writes:
            write()
            answers.append(ask())
        return answers

    return run


# Condition expressions of every token kind (each used twice: their tokens are remembered by text).
_CONDITIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "none yet": ("attribute_not_exists(pk)", {}),
    "exists now": ("attribute_exists(pk) AND #s IN (:a, :b)", {":a": {"S": "pending"}, ":b": {"S": "queued"}}),
    "comparisons": (
        "(version >= :lo AND version < :hi) OR NOT #s <> :a",
        {":lo": {"N": "1"}, ":hi": {"N": "9"}, ":a": {"S": "x"}},
    ),
    "between and size": (
        "version BETWEEN :lo AND :hi AND size(#s) > :one",
        {":lo": {"N": "0"}, ":hi": {"N": "99"}, ":one": {"N": "1"}},
    ),
    "begins with a path": ("begins_with(nested.a, :p) OR contains(#s, :p)", {":p": {"S": "pe"}}),
    "fails": ("#s = :a", {":a": {"S": "never"}}),
    "does not parse": ("#s = = :a", {":a": {"S": "x"}}),
}


def _bounded_calls(client: Any) -> list[tuple[str, Callable[[], Any]]]:
    """Index queries with an upper bound: the shortcut cuts the sorted partition after the first item past it."""

    def due_up_to(operator: str, until: str, **extra: Any) -> Callable[[], Any]:
        return lambda: client.query(
            TableName=TABLE,
            IndexName="due",
            KeyConditionExpression=f"due_shard = :s AND due_at {operator} :u",
            ExpressionAttributeValues={":s": {"S": "DUE#1"}, ":u": {"S": until}},
            **extra,
        )

    calls = [
        ("due before", due_up_to("<", "2027-03-09T09:00:00+00:00")),
        ("due at most, none", due_up_to("<=", "2027-02-01T00:00:00+00:00")),
        ("due at most, all", due_up_to("<=", "2027-04-01T00:00:00+00:00")),
        ("due at most, on an item", due_up_to("<=", "2027-03-09T08:00:00+00:00")),
        ("due at most, backwards", due_up_to("<=", "2027-03-15T00:00:00+00:00", ScanIndexForward=False)),
        ("due at most, counted", due_up_to("<=", "2027-03-15T00:00:00+00:00", Select="COUNT")),
    ]
    # 10 items are in range: a page that fills up before the last of them, on it, and one that does not fill up.
    for limit in (1, 9, 10, 11):
        calls.append((f"due at most, limit {limit}", due_up_to("<=", "2027-03-09T09:00:00+00:00", Limit=limit)))
    return calls


def _conditional(client: Any, key: dict[str, Any], condition: str, values: dict[str, Any]) -> Callable[[], Any]:
    """A conditional UpdateItem's answer, or the error it raised."""

    def call() -> Any:
        extra: dict[str, Any] = {"ExpressionAttributeNames": {"#s": "status"}} if "#s" in condition else {}
        try:
            return client.update_item(
                TableName=TABLE,
                Key=key,
                UpdateExpression="SET #s = :new, version = if_not_exists(version, :zero) + :one, nested = :nested",
                ConditionExpression=condition,
                ExpressionAttributeValues={
                    **values,
                    ":new": {"S": "pending"},
                    ":zero": {"N": "0"},
                    ":one": {"N": "1"},
                    ":nested": {"M": {"a": {"S": "pending"}}},
                },
                ExpressionAttributeNames={**extra.get("ExpressionAttributeNames", {}), "#s": "status"},
                ReturnValues="ALL_NEW",
            )
        except client.exceptions.ClientError as exc:
            return {"error": exc.response["Error"]}
        except ValueError as exc:  # moto lets a condition it cannot parse out as it is
            return {"raised": f"{type(exc).__name__}: {exc}"}

    return call


def _update(
    client: Any, key: dict[str, Any], expression: str, values: dict[str, Any], names: dict[str, str] | None
) -> Callable[[], Any]:
    """An UpdateItem's answer, or the error it raised (code and message)."""

    def call() -> Any:
        extra = {"ExpressionAttributeNames": names} if names else {}
        try:
            return client.update_item(
                TableName=TABLE,
                Key=key,
                UpdateExpression=expression,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
                **extra,
            )
        except client.exceptions.ClientError as exc:
            return {"error": exc.response["Error"]}

    return call


def _answers(shortcut: bool) -> dict[str, Any]:
    rng = random.Random(11)
    with mock_aws(), moto_shortcuts() if shortcut else contextlib.nullcontext():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName=TABLE,
            BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": n, "AttributeType": t}
                for n, t in [("pk", "S"), ("sk", "N"), ("patient_id", "S"), ("due_shard", "S"), ("due_at", "S")]
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": "due",
                    "Projection": {"ProjectionType": "ALL"},
                    "KeySchema": [
                        {"AttributeName": "due_shard", "KeyType": "HASH"},
                        {"AttributeName": "due_at", "KeyType": "RANGE"},
                    ],
                },
                {
                    "IndexName": "by_patient",
                    "Projection": {"ProjectionType": "KEYS_ONLY"},
                    "KeySchema": [{"AttributeName": "patient_id", "KeyType": "HASH"}],
                },
            ],
        )
        client.put_item(
            TableName=TABLE, Item={"pk": {"S": "P0"}, "sk": {"N": "0"}, "text": {"S": "x"}, "version": {"N": "1"}}
        )
        for n in range(1, 160):
            client.put_item(TableName=TABLE, Item=_item(n, rng))
        answers = {}
        for name, call in _calls(client):
            answer = call()
            for page in answer if isinstance(answer, list) else [answer]:
                page.pop("ResponseMetadata", None)
            answers[name] = answer
        return answers


def test_dynamodb_answers_are_the_same_with_and_without_the_shortcuts() -> None:
    plain, shortened = _answers(False), _answers(True)
    assert plain.keys() == shortened.keys()
    for name in plain:
        assert shortened[name] == plain[name], name
    assert plain["due pages"][0]["Items"], "the paged query must return something to compare"
    assert len(plain["due pages"]) > 1, "and run over more than one page"


REPLACED = [
    (botocore.signers.RequestSigner, "sign"),
    (sqs_models, "unix_time_millis"),
    (DynamoType, "cast_value"),
    (DynamoType, "size"),
    (Table, "all_items"),
    (Table, "query"),
    (BaseJSONSerializer, "_serialize_type_structure"),
    (expressions.UpdateExpressionParser, "make"),
    (sqs_models.SQSBackend, "is_message_valid_based_on_retention_period"),
    (Item, "size"),
    (Table, "sorted_items"),
    (core_responses, "method_names_from_class"),
    (ast_nodes.DepthFirstTraverser, "traverse_node_recursively"),
    (validators.Validator, "__init__"),
    (validators.Validator, "validate"),
    (comparisons.ConditionExpressionParser, "_lex_condition_expression"),
    (ast_nodes.Node, "find_clauses"),
    (LimitedSizeDict, "__setitem__"),
    (DynamoHandler, "call_action"),  # counts the writes that end a table's grouping by index key
]


def test_every_replaced_part_is_restored_afterwards() -> None:
    before = [vars(owner)[name] for owner, name in REPLACED]
    with moto_shortcuts():
        during = [vars(owner)[name] for owner, name in REPLACED]
        assert all(a is not b for a, b in zip(before, during, strict=True))
        assert "__deepcopy__" in vars(ast_nodes.Node)
    assert [vars(owner)[name] for owner, name in REPLACED] == before
    assert "__deepcopy__" not in vars(ast_nodes.Node)


def test_on_a_moto_they_were_not_checked_against_nothing_is_replaced_and_a_warning_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.metadata

    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.9.9" if name == "moto" else real_version(name))
    before = [vars(owner)[name] for owner, name in REPLACED]
    with pytest.warns(UserWarning, match="moto 9.9.9 is not"), moto_shortcuts():
        assert [vars(owner)[name] for owner, name in REPLACED] == before


def test_a_block_inside_another_keeps_the_outer_replacements_until_the_outer_ends() -> None:
    before = [vars(owner)[name] for owner, name in REPLACED]
    with moto_shortcuts():
        outer = [vars(owner)[name] for owner, name in REPLACED]
        with moto_shortcuts():
            assert [vars(owner)[name] for owner, name in REPLACED] == outer
        assert [vars(owner)[name] for owner, name in REPLACED] == outer
    assert [vars(owner)[name] for owner, name in REPLACED] == before


def test_a_remembered_update_expression_is_never_changed_by_its_use() -> None:
    text = "SET #t = :t, attempts = attempts + :one REMOVE due_at"
    with moto_shortcuts():
        tree = expressions.UpdateExpressionParser.make(text)
        shape = _shape(tree)
        _answers(True)  # updates run in between
        assert expressions.UpdateExpressionParser.make(text) is tree
        assert _shape(tree) == shape
        assert "UpdateExpressionRemoveAction" in str(shape)


def _shape(node: Any) -> Any:
    children = getattr(node, "children", None)
    if isinstance(children, list | tuple):
        return (node.type, [_shape(child) for child in children])
    return (type(node).__name__, repr(children) if children is not None else repr(node))


def _sqs_answers(shortcut: bool) -> list[list[str]]:
    from moto.core.models import DEFAULT_ACCOUNT_ID

    with mock_aws(), moto_shortcuts() if shortcut else contextlib.nullcontext():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="retention", Attributes={"MessageRetentionPeriod": "60"})["QueueUrl"]
        for n in range(6):
            sqs.send_message(QueueUrl=url, MessageBody=f"m{n}")
        queue = sqs_models.sqs_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].queues["retention"]
        for message in queue._messages[3:]:  # sent two minutes ago: past the retention period
            message.sent_timestamp -= 120_000
        rounds = []
        for _ in range(3):
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0).get("Messages", [])
            rounds.append(sorted(m["Body"] for m in got))
        return rounds


def test_sqs_receives_the_same_messages_past_and_within_retention() -> None:
    plain = _sqs_answers(False)
    assert plain[0] == ["m0", "m1", "m2"]  # moto stops at the first message past retention
    assert _sqs_answers(True) == plain


def test_sqs_clock_gives_the_same_milliseconds() -> None:
    original = sqs_models.unix_time_millis
    moment = datetime(2027, 3, 1, 9, 0, 0, 123000)
    with moto_shortcuts():
        assert sqs_models.unix_time_millis(moment) == original(moment)
        fast, slow = sqs_models.unix_time_millis(), original()
        assert abs(fast - slow) < 1000  # both "now", read a moment apart


@pytest.mark.parametrize(
    "value",
    [
        {"S": "é à"},
        {"S": ""},
        {"N": "-12.50"},
        {"B": b"\x01\x02"},
        {"BOOL": True},
        {"NULL": True},
        {"SS": ["a", "bé"]},
        {"NS": ["1", "2"]},
        {"L": [{"S": "x"}, {"N": "3"}]},
        {"M": {"k": {"S": "v"}}},
    ],
)
def test_value_and_size_of_each_attribute_type_are_the_same(value: dict[str, Any]) -> None:
    plain = DynamoType(value)
    expected = (plain.cast_value, plain.size())
    with moto_shortcuts():
        shortened = DynamoType(value)
        assert (shortened.cast_value, shortened.size()) == expected


def test_item_size_is_the_same() -> None:
    attrs = _item(5, random.Random(3))
    plain = Item(DynamoType(attrs["pk"]), DynamoType(attrs["sk"]), attrs).size()
    with moto_shortcuts():
        assert Item(DynamoType(attrs["pk"]), DynamoType(attrs["sk"]), attrs).size() == plain
    assert plain > 100


def _keyed_answers(shortcut: bool) -> dict[str, Any]:
    """Queries on a table without a range key, a number hash key and number and binary index keys."""
    with mock_aws(), moto_shortcuts() if shortcut else contextlib.nullcontext():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName="keyed",
            BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[
                {"AttributeName": n, "AttributeType": t} for n, t in [("id", "N"), ("group", "N"), ("tag", "B")]
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": "by_group",
                    "Projection": {"ProjectionType": "ALL"},
                    "KeySchema": [{"AttributeName": "group", "KeyType": "HASH"}],
                },
                {
                    "IndexName": "by_tag",
                    "Projection": {"ProjectionType": "KEYS_ONLY"},
                    "KeySchema": [{"AttributeName": "tag", "KeyType": "HASH"}],
                },
            ],
        )
        for n in range(40):
            item: dict[str, Any] = {"id": {"N": f"{n}.50" if n % 2 else str(n)}, "text": {"S": f"t{n}"}}
            if n % 3:
                item["group"] = {"N": f"{n % 4}.0" if n % 5 else str(n % 4)}
            if n % 4:
                item["tag"] = {"B": bytes([n % 3])}
            client.put_item(TableName="keyed", Item=item)
        queries = {
            "id": ("id = :v", None, {"N": "4"}),
            "id written otherwise": ("id = :v", None, {"N": "4.00"}),
            "id with a fraction": ("id = :v", None, {"N": "3.5"}),
            "no such id": ("id = :v", None, {"N": "400"}),
            "group": ("#g = :v", "by_group", {"N": "2"}),
            "group written otherwise": ("#g = :v", "by_group", {"N": "1.0"}),
            "tag": ("tag = :v", "by_tag", {"B": b"\x01"}),
            "no such tag": ("tag = :v", "by_tag", {"B": b"\x09"}),
        }
        answers = {}
        for name, (condition, index, value) in queries.items():
            extra: dict[str, Any] = {"IndexName": index} if index else {}
            if "#g" in condition:
                extra["ExpressionAttributeNames"] = {"#g": "group"}
            answer = client.query(
                TableName="keyed", KeyConditionExpression=condition, ExpressionAttributeValues={":v": value}, **extra
            )
            answer.pop("ResponseMetadata", None)
            answers[name] = answer
        answers["missing partition of a table with a range key"] = _missing_partition(client)
        return answers


def _missing_partition(client: Any) -> Any:
    client.create_table(
        TableName="ranged",
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
    )
    client.put_item(TableName="ranged", Item={"pk": {"S": "a"}, "sk": {"S": "1"}})
    answer = client.query(
        TableName="ranged", KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "b"}}
    )
    answer.pop("ResponseMetadata", None)
    return answer


def test_queries_by_number_and_binary_keys_and_on_a_table_without_range_key_are_the_same() -> None:
    plain, shortened = _keyed_answers(False), _keyed_answers(True)
    assert plain.keys() == shortened.keys()
    for name in plain:
        assert shortened[name] == plain[name], name
    assert plain["id"]["Items"] and plain["group"]["Items"] and plain["tag"]["Items"], "queries that find something"
    assert plain["id written otherwise"] == plain["id"], "a number key is found by its value"


def test_an_item_too_large_is_refused_alike() -> None:
    def attempt() -> list[str]:
        outcomes = []
        for size in (1000, 400_000, 410_000):
            attrs = LimitedSizeDict()
            try:
                attrs["a"] = DynamoType({"S": "x" * 1000})
                attrs["b"] = DynamoType({"L": [{"S": "é" * (size // 2)}, {"N": "12"}]})
                attrs["c"] = "plain"
                outcomes.append("kept")
            except Exception as exc:  # the exception itself is what is compared
                outcomes.append(type(exc).__name__)
        return outcomes

    plain = attempt()
    assert plain == ["kept", "kept", "ItemSizeTooLarge"]
    with moto_shortcuts():
        assert attempt() == plain


def test_requests_to_aws_endpoints_go_unsigned_and_others_stay_signed() -> None:
    """moto answers an unsigned request as a signed one (the answers above are compared with it on); a request to
    another endpoint, as DynamoDB Local's, still carries its SigV4 Authorization header."""
    sent: list[tuple[str, bytes | None]] = []

    def record(request: Any, **_: Any) -> None:
        sent.append((request.url, request.headers.get("Authorization")))

    with mock_aws(), moto_shortcuts():
        aws = boto3.client("dynamodb", region_name="us-east-1")
        local = boto3.client("dynamodb", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")
        for client in (aws, local):
            client.meta.events.register("before-send", record)
        aws.list_tables()
        with pytest.raises(botocore.exceptions.EndpointConnectionError):
            local.list_tables()
    assert sent[0] == ("https://dynamodb.us-east-1.amazonaws.com/", None)
    assert sent[1][0] == "http://127.0.0.1:9/"
    assert (sent[1][1] or b"").startswith(b"AWS4-HMAC-SHA256 Credential=")
