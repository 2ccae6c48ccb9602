"""Count what a run asks of AWS: every botocore call, DynamoDB capacity units, Lambda invocations and log bytes.

Every AWS call of the process goes through `botocore.client.BaseClient._make_api_call` (boto3 clients, pynamodb's
connection and Powertools' clients alike), so wrapping that one method sees them all. Each call is attributed to
the Lambda function being invoked at the time (a context variable set around the in-process `invoke`); calls
outside any invocation belong to the simulation harness: its SQS ReceiveMessage / DeleteMessage stand in for
Lambda's SQS event source mapping (which makes those requests, billed, on AWS), everything else it does (seeding,
the virtual clock's look-ahead query, the final scan, visibility resets that AWS does by itself) is not billed.

DynamoDB capacity units are estimated from item sizes, the way DynamoDB bills on-demand requests:

* reads: ⌈size / 4 KB⌉ read request units for a strongly consistent GetItem, half for an eventually consistent
  one; a Query or Scan rounds the total size of the items it returns up to 4 KB once per request (GSI queries are
  always eventually consistent); a read that finds nothing still costs the minimum (½ or 1);
* writes: ⌈size / 1 KB⌉ write request units, size being the larger of the item before and after the write
  (images read from moto's in-process backend around the call); a conditional write that fails still costs
  ⌈size / 1 KB⌉ of the existing item (at least 1);
* global secondary indexes: a write that puts an item into an index, takes it out, or changes a projected attribute
  costs ⌈index entry / 1 KB⌉ more; one that changes the index key costs a delete plus a put (DynamoDB's GSI rules).
"""

from __future__ import annotations

import contextvars
import io
import math
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import botocore.client
from botocore.exceptions import ClientError

from core import clock

HARNESS = "harness"
ESM = "sqs_event_source"  # what Lambda's event source mapping does on AWS, done here by the harness
BILLED_ESM_OPERATIONS = {"ReceiveMessage", "DeleteMessage", "DeleteMessageBatch"}

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("bench_function", default=None)

_WRITES = {"PutItem", "UpdateItem", "DeleteItem"}


# ---------------------------------------------------------------------------------------------- item sizes


def value_size(value: dict[str, Any]) -> int:
    """Bytes DynamoDB counts for one attribute value (DynamoDB JSON), per its item-size rules."""
    (kind, raw), *_ = value.items()
    if kind == "S":
        return len(str(raw).encode())
    if kind == "N":
        return _number_size(str(raw))
    if kind == "B":
        return len(raw) if isinstance(raw, bytes | bytearray) else len(str(raw).encode())
    if kind in {"BOOL", "NULL"}:
        return 1
    if kind == "SS":
        return sum(len(str(v).encode()) for v in raw)
    if kind == "NS":
        return sum(_number_size(str(v)) for v in raw)
    if kind == "BS":
        return sum(len(v) for v in raw)
    if kind == "L":
        return 3 + sum(value_size(v) + 1 for v in raw)
    if kind == "M":
        return 3 + sum(len(k.encode()) + value_size(v) + 1 for k, v in raw.items())
    return len(str(raw).encode())


def _number_size(text: str) -> int:
    digits = Decimal(text).normalize().as_tuple().digits if text else (0,)
    return math.ceil(len(digits) / 2) + 1


def item_size(item: dict[str, Any] | None) -> int:
    """An item's size in bytes: attribute names plus values."""
    if not item:
        return 0
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


# ---------------------------------------------------------------------------------------------- moto images


@dataclass(frozen=True)
class _Index:
    name: str
    keys: tuple[str, ...]
    projection: str
    include: tuple[str, ...]


@dataclass(frozen=True)
class _TableShape:
    keys: tuple[str, ...]
    indexes: tuple[_Index, ...]


def _moto_table(name: str) -> Any:
    from moto.dynamodb.models import dynamodb_backends

    for account in list(dynamodb_backends.keys()):
        for region in ("us-east-1",):
            backend = dynamodb_backends[account][region]
            table = backend.tables.get(name)
            if table is not None:
                return table
    return None


def _shape(table: Any) -> _TableShape:
    keys = tuple(k for k in (table.hash_key_attr, table.range_key_attr) if k)
    indexes = tuple(
        _Index(
            index.name,
            tuple(k["AttributeName"] for k in index.schema),
            (index.projection or {}).get("ProjectionType", "ALL"),
            tuple((index.projection or {}).get("NonKeyAttributes", [])),
        )
        for index in (table.global_indexes or [])
    )
    return _TableShape(keys, indexes)


def _image(table: Any, key: dict[str, Any]) -> dict[str, Any] | None:
    from moto.dynamodb.models.dynamo_type import DynamoType

    try:
        hash_key = DynamoType(key[table.hash_key_attr])
        range_key = DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
        item = table.get_item(hash_key, range_key)
    except Exception:
        return None
    return dict(item.to_json()["Attributes"]) if item is not None else None


def _index_entry(index: _Index, shape: _TableShape, item: dict[str, Any] | None) -> dict[str, Any] | None:
    if not item or any(k not in item for k in index.keys):
        return None  # sparse: not in this index
    if index.projection == "ALL":
        return item
    names = set(shape.keys) | set(index.keys) | (set(index.include) if index.projection == "INCLUDE" else set())
    return {k: v for k, v in item.items() if k in names}


def _kb(size: int) -> int:
    return max(1, math.ceil(size / 1024))


def write_units(
    shape: _TableShape, before: dict[str, Any] | None, after: dict[str, Any] | None, failed: bool
) -> tuple[float, float]:
    """(table WRU, GSI WRU) of one write, from the item before and after it."""
    if failed:
        return float(_kb(item_size(before))), 0.0
    table_units = float(_kb(max(item_size(before), item_size(after))))
    index_units = 0.0
    for index in shape.indexes:
        old, new = _index_entry(index, shape, before), _index_entry(index, shape, after)
        if old is None and new is None:
            continue
        if old is None or new is None:
            index_units += _kb(item_size(old or new))
        elif any(old[k] != new[k] for k in index.keys):
            index_units += _kb(item_size(old)) + _kb(item_size(new))
        elif old != new:
            index_units += _kb(max(item_size(old), item_size(new)))
    return table_units, index_units


def read_units(operation: str, params: dict[str, Any], response: dict[str, Any]) -> float:
    """Read request units of one GetItem / Query / Scan / BatchGetItem, from the sizes of what came back."""
    consistent = bool(params.get("ConsistentRead")) and not params.get("IndexName")
    factor = 1.0 if consistent else 0.5
    if operation == "GetItem":
        return factor * max(1, math.ceil(item_size(response.get("Item")) / 4096))
    if operation in {"Query", "Scan"}:
        items = response.get("Items", [])
        total = sum(item_size(i) for i in items)
        scanned, returned = response.get("ScannedCount", len(items)), len(items)
        if returned and scanned > returned:  # filtered out after being read: still paid for
            total = total * scanned / returned
        elif scanned and not returned:
            total = scanned * 512  # nothing to measure; assume half a kilobyte each
        return factor * max(1, math.ceil(total / 4096))
    if operation == "BatchGetItem":
        # Each key is read as a GetItem would be: by its table's consistency, and a key with no item still costs
        # the minimum (keys left unprocessed were not read).
        units = 0.0
        for table, request in params.get("RequestItems", {}).items():
            table_factor = 1.0 if request.get("ConsistentRead") else 0.5
            items = response.get("Responses", {}).get(table, [])
            unprocessed = len(response.get("UnprocessedKeys", {}).get(table, {}).get("Keys", []))
            absent = max(0, len(request.get("Keys", [])) - unprocessed - len(items))
            units += table_factor * (sum(max(1, math.ceil(item_size(i) / 4096)) for i in items) + absent)
        return units
    return 0.0


# ---------------------------------------------------------------------------------------------- the meter


@dataclass
class Invocation:
    """Totals for one Lambda function."""

    count: int = 0
    virtual_seconds: float = 0.0  # provider latency and pacing sleeps, on the virtual clock
    aws_calls: int = 0
    log_bytes: int = 0


@dataclass
class AwsMeter:
    """What one run asked of AWS; `install()` while the run goes."""

    calls: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (who, service, operation)
    read_units: Counter[tuple[str, str]] = field(default_factory=Counter)  # (who, table)
    write_units: Counter[tuple[str, str]] = field(default_factory=Counter)  # (who, table)
    index_write_units: Counter[tuple[str, str]] = field(default_factory=Counter)
    invocations: dict[str, Invocation] = field(default_factory=lambda: defaultdict(Invocation))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _shapes: dict[str, _TableShape | None] = field(default_factory=dict)

    @staticmethod
    def who() -> str:
        return _current.get() or HARNESS

    def billed(self, who: str, service: str, operation: str) -> bool:
        """Whether AWS would bill this call: made by a function, or by the event source mapping."""
        return who != HARNESS

    # ---------------------------------------------------------------- hooks

    def _record_call(self, client: Any, operation: str, params: dict[str, Any], original: Any) -> Any:
        service = client.meta.service_model.service_name
        who = self.who()
        if who == HARNESS and service == "sqs" and operation in BILLED_ESM_OPERATIONS:
            who = ESM
        if service != "dynamodb" or who == HARNESS:
            response = original(client, operation, params)
            self._count(who, service, operation)
            return response
        table_name = params.get("TableName", "")
        table = _moto_table(table_name) if operation in _WRITES else None
        shape = self._shape(table_name, table)
        before = None
        if table is not None and shape is not None:
            key = params.get("Key") or {k: params["Item"][k] for k in shape.keys if k in params.get("Item", {})}
            before = _image(table, key)
        failed = False
        try:
            response = original(client, operation, params)
        except ClientError as exc:
            failed = exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"
            if failed and table is not None and shape is not None:
                self._add_write(who, table_name, *write_units(shape, before, None, True))
            self._count(who, service, operation)
            raise
        self._count(who, service, operation)
        if table is not None and shape is not None:
            key = params.get("Key") or {k: params["Item"][k] for k in shape.keys if k in params.get("Item", {})}
            after = _image(table, key) if operation != "DeleteItem" else None
            self._add_write(who, table_name, *write_units(shape, before, after, False))
        elif operation in {"GetItem", "Query", "Scan", "BatchGetItem"}:
            units = read_units(operation, params, response)
            with self._lock:
                self.read_units[(who, table_name or "batch")] += units
        elif operation in {"TransactWriteItems", "BatchWriteItem"}:
            items = params.get("TransactItems") or [i for v in params.get("RequestItems", {}).values() for i in v]
            with self._lock:
                self.write_units[(who, "transaction")] += len(items) * (2 if operation.startswith("Transact") else 1)
        return response

    def _shape(self, name: str, table: Any) -> _TableShape | None:
        if name not in self._shapes or self._shapes[name] is None:
            table = table if table is not None else _moto_table(name)
            self._shapes[name] = _shape(table) if table is not None else None
        return self._shapes[name]

    def _add_write(self, who: str, table: str, units: float, index_units: float) -> None:
        with self._lock:
            self.write_units[(who, table)] += units
            self.index_write_units[(who, table)] += index_units

    def _count(self, who: str, service: str, operation: str) -> None:
        with self._lock:
            self.calls[(who, service, operation)] += 1
            if who in self.invocations:
                self.invocations[who].aws_calls += 1

    def record_invocation(self, function: str, virtual_seconds: float) -> None:
        with self._lock:
            entry = self.invocations[function]
            entry.count += 1
            entry.virtual_seconds += virtual_seconds

    def record_log(self, nbytes: int) -> None:
        who = _current.get()
        if who is None:
            return
        with self._lock:
            self.invocations[who].log_bytes += nbytes

    # ---------------------------------------------------------------- installation

    @contextmanager
    def install(self) -> Iterator[None]:
        """Wrap botocore's one call path and the in-process Lambda invoke; capture the functions' stdout and logs."""
        import contextlib

        import rappel_local.embedded as embedded
        import rappel_local.simulate as simulate
        from core.observability import logger

        original_call = botocore.client.BaseClient._make_api_call
        original_invoke = embedded.invoke
        meter = self

        def make_api_call(client: Any, operation: str, params: dict[str, Any]) -> Any:
            return meter._record_call(client, operation, params, original_call)

        def invoke(function: str, event: dict[str, Any]) -> Any:
            token = _current.set(function)
            start = clock.now()
            try:
                return original_invoke(function, event)
            finally:
                meter.record_invocation(function, max(0.0, (clock.now() - start).total_seconds()))
                _current.reset(token)

        sink = _CountingSink(self)
        handler = logger.registered_handler
        previous_stream = getattr(handler, "stream", None)
        botocore.client.BaseClient._make_api_call = make_api_call  # type: ignore[method-assign]
        embedded.invoke = invoke
        simulate.invoke = invoke
        if hasattr(handler, "setStream"):
            handler.setStream(sink)
        try:
            with contextlib.redirect_stdout(sink):
                yield
        finally:
            botocore.client.BaseClient._make_api_call = original_call  # type: ignore[method-assign]
            embedded.invoke = original_invoke
            simulate.invoke = original_invoke
            if hasattr(handler, "setStream") and previous_stream is not None:
                handler.setStream(previous_stream)

    # ---------------------------------------------------------------- reading

    def billed_calls(self) -> dict[str, dict[str, int]]:
        """Billed calls as {"service.Operation": {who: n}}."""
        out: dict[str, dict[str, int]] = defaultdict(dict)
        for (who, service, operation), n in sorted(self.calls.items()):
            if self.billed(who, service, operation):
                out[f"{service}.{operation}"][who] = n
        return dict(out)

    def unbilled_calls(self) -> dict[str, int]:
        """Calls only the simulation makes (seeding, look-ahead, final scan): not part of the cost."""
        out: Counter[str] = Counter()
        for (who, service, operation), n in self.calls.items():
            if not self.billed(who, service, operation):
                out[f"{service}.{operation}"] += n
        return dict(sorted(out.items()))

    def capacity(self) -> dict[str, float]:
        """Billed DynamoDB read and write request units (write units include GSI writes)."""
        rru = sum(v for (who, _), v in self.read_units.items() if who != HARNESS)
        wru = sum(v for (who, _), v in self.write_units.items() if who != HARNESS)
        gsi = sum(v for (who, _), v in self.index_write_units.items() if who != HARNESS)
        return {
            "read_request_units": rru,
            "write_request_units_table": wru,
            "write_request_units_gsi": gsi,
            "write_request_units": wru + gsi,
        }

    def capacity_by_function(self) -> dict[str, dict[str, float]]:
        """Billed DynamoDB units by the function that spent them: the steps of a reminder's life (planning,
        dispatch, send, receipt) and the scheduled ones."""
        out: dict[str, dict[str, float]] = defaultdict(lambda: {"rru": 0.0, "wru": 0.0, "gsi_wru": 0.0})
        for kind, units in (("rru", self.read_units), ("wru", self.write_units), ("gsi_wru", self.index_write_units)):
            for (who, _), v in units.items():
                if who != HARNESS:
                    out[who][kind] += v
        return {k: dict(v) for k, v in sorted(out.items())}

    def capacity_by_table(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = defaultdict(lambda: {"rru": 0.0, "wru": 0.0, "gsi_wru": 0.0})
        for (who, table), v in self.read_units.items():
            if who != HARNESS:
                out[table]["rru"] += v
        for (who, table), v in self.write_units.items():
            if who != HARNESS:
                out[table]["wru"] += v
        for (who, table), v in self.index_write_units.items():
            if who != HARNESS:
                out[table]["gsi_wru"] += v
        return {k: dict(v) for k, v in sorted(out.items())}


class _CountingSink(io.TextIOBase):
    """Where the functions' stdout (EMF metrics) and JSON log lines go: counted per function, then dropped."""

    def __init__(self, meter: AwsMeter) -> None:
        self._meter = meter

    def write(self, text: str) -> int:
        self._meter.record_log(len(text.encode()))
        return len(text)

    def writable(self) -> bool:
        return True
