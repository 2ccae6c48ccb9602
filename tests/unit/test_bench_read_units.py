"""The bench's read units: what DynamoDB bills a BatchGetItem, key by key (bench/awscount.py)."""

import pytest

from bench.awscount import read_units

pytestmark = pytest.mark.unit

SMALL = {"pk": {"S": "a"}}


def test_a_batch_read_bills_each_key_as_a_get_item_of_its_table_s_consistency_absent_ones_too() -> None:
    params = {
        "RequestItems": {
            "strong": {"Keys": [{"pk": {"S": k}} for k in "abc"], "ConsistentRead": True},
            "eventual": {"Keys": [{"pk": {"S": "d"}}]},
        }
    }
    response = {
        "Responses": {"strong": [SMALL], "eventual": [SMALL]},
        "UnprocessedKeys": {"strong": {"Keys": [{"pk": {"S": "c"}}]}},  # not read: not billed
    }
    # strong: one found and one absent at 1 unit each; eventual: one found at half a unit.
    assert read_units("BatchGetItem", params, response) == 2.5


def test_a_batch_read_of_a_large_item_bills_each_4_kb() -> None:
    big = {"pk": {"S": "a"}, "blob": {"S": "x" * 9000}}
    params = {"RequestItems": {"t": {"Keys": [{"pk": {"S": "a"}}], "ConsistentRead": True}}}
    assert read_units("BatchGetItem", params, {"Responses": {"t": [big]}}) == 3.0
