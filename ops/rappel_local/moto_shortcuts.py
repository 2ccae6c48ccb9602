"""Shorter roads through moto's slowest paths, for the embedded stack's speed; every answer stays the same.

moto is a faithful model of AWS's APIs but not a fast one: each DynamoDB Query sorts and walks the whole
table, and its key comparisons rebuild Python values on every call. `moto_shortcuts()` replaces eighteen of its
internals, and botocore's request signing (moto reads no signature), with equivalents that return the same results
in the same order (tests/unit/test_moto_shortcuts.py runs each against the original). Nothing Rappel or AWS would
see changes; Rappel's code is untouched.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.metadata
import inspect
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import botocore.signers
import moto.core.responses as core_responses
import moto.dynamodb.comparisons as moto_comparisons
import moto.dynamodb.parsing.ast_nodes as moto_ast_nodes
import moto.dynamodb.parsing.expressions as update_expressions
import moto.dynamodb.parsing.validators as moto_validators
import moto.sqs.models as sqs_models
from moto.core.serialize import BaseJSONSerializer
from moto.core.utils import unix_time
from moto.dynamodb.exceptions import ItemSizeTooLarge
from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict
from moto.dynamodb.models.table import RESULT_SIZE_LIMIT, Table
from moto.dynamodb.models.utilities import bytesize
from moto.dynamodb.responses import DynamoHandler

ast_nodes: Any = moto_ast_nodes  # mypy does not see the node classes in moto's module
validators: Any = moto_validators
comparisons: Any = moto_comparisons

# DynamoDB types whose Python value is the stored value itself (moto tests five other types first).
_VALUE_AS_IS = frozenset({"S", "B", "BOOL"})
_query_keys = threading.local()
# The moto release the shortcuts were compared against (tests/unit/test_moto_shortcuts.py); any other runs without.
SHORTCUT_MOTO_VERSION = "5.2.5"
_active = 0  # how many moto_shortcuts() blocks are open: the bench opens one around simulations that open theirs


def _fast_millis(slow: Any) -> Any:
    def unix_time_millis(dt: Any = None) -> float:
        return time.time() * 1000.0 if dt is None else float(slow(dt))

    return unix_time_millis


def _retention_from_the_queue(_: Any) -> Any:
    def is_message_valid_based_on_retention_period(self: Any, queue_name: str, message: Any) -> bool:
        # moto builds every attribute of the queue (counting its messages three times) to read this one
        retention = self.get_queue(queue_name).message_retention_period
        return bool(retention + message.sent_timestamp / 1000 > unix_time())

    return is_message_valid_based_on_retention_period


def _unsigned_for_moto(original: Any) -> Any:
    def sign(self: Any, operation_name: str, request: Any, *args: Any, **kwargs: Any) -> Any:
        # Under mock_aws every request to an AWS endpoint is answered in-process by moto, which reads no signature;
        # SigV4 costs each call a canonical request and four HMACs. Anything else (DynamoDB Local on 127.0.0.1)
        # is signed as before.
        if (urlsplit(request.url).hostname or "").endswith(".amazonaws.com"):
            return None
        return original(self, operation_name, request, *args, **kwargs)

    return sign


def _fast_cast_value(slow: Any) -> property:
    def cast_value(self: DynamoType) -> Any:
        return self.value if self.type in _VALUE_AS_IS else slow(self)

    return property(cast_value)


def _fast_size(slow: Any) -> Any:
    def size(self: DynamoType) -> int:
        kind = self.type
        if kind == "S":
            return len(self.value.encode("utf-8")) if isinstance(self.value, str) else len(self.value)
        if kind == "N":
            return len(str(self.value))
        if kind == "L":  # moto's sum of the members' sizes, with a string member's inline
            total = 0
            for member in self.value:
                scalar = member.value
                total += len(scalar.encode("utf-8")) if member.type == "S" and type(scalar) is str else member.size()
            return total
        return int(slow(self))

    return size


def _size_checked_inline(_: Any) -> Any:
    def __setitem__(self: Any, key: str, value: Any) -> None:
        # moto's LimitedSizeDict.__setitem__ (an item's attributes): the same sum of every name's and value's size
        # before each attribute is set, without building the lists of names and values and their sizes first
        current = 0
        for name, held in dict.items(self):
            current += len(name.encode("utf-8")) if type(name) is str else _bytes_of(name)
            current += _bytes_of(held)
        new = bytesize(key) + _bytes_of(value)
        if current + new > 405000:
            raise ItemSizeTooLarge
        dict.__setitem__(self, key, value)

    return __setitem__


def _bytes_of(value: Any) -> int:
    return int(value.size()) if type(value) is DynamoType else bytesize(str(value))


def _item_size(_: Any) -> Any:
    def size(self: Item) -> int:
        # moto's Item.size (attribute names plus values, in UTF-8 bytes), with the string case inline
        total = 0
        for name, value in self.attrs.items():
            scalar = value.value
            total += len(name.encode("utf-8"))
            total += len(scalar.encode("utf-8")) if value.type == "S" and isinstance(scalar, str) else value.size()
        return total

    return size


def _sorted_by_values(_: Any) -> Any:
    def sorted_items(self: Table, hash_key_attrs: list[str], range_key_attrs: list[Any], items: list[Any]) -> Any:
        # moto's Table.sorted_items, sorting on the key attributes' values instead of comparing their wrappers
        names = self._generate_attr_to_sort_by(hash_key_attrs, range_key_attrs)
        items.sort(key=lambda item: tuple(item.attrs[name].cast_value for name in names))
        cut = getattr(_query_keys, "cut", None)
        return items if cut is None else _up_to_the_first_past(items, *cut)

    return sorted_items


# The largest item moto stores (its LimitedSizeDict refuses more), for the page-size bound below.
_LARGEST_ITEM = 405_000


def _up_to_the_first_past(items: list[Any], name: str, comparison: str, bounds: list[Any]) -> list[Any]:
    """An index query's sorted partition cut after the first item past an upper bound (`<`, `<=`), ascending.

    moto then walks every item: those past the bound are skipped, but each is sized for the 1 MB page check, and
    the first one past it is where a full page ends with its LastEvaluatedKey. The items kept are the ones in range
    and that first one past, so the page and its key come out the same; and a later item could only end the page
    if the items in range with it passed 1 MB, which is checked here (then nothing is cut)."""
    for index, item in enumerate(items):
        value = item.attrs.get(name)
        if value is None or not value.compare(comparison, bounds):
            if sum(kept.size() for kept in items[:index]) + _LARGEST_ITEM > RESULT_SIZE_LIMIT:
                return items
            return items[: index + 1]
    return items


def _sort_key(item: Any) -> Any:
    return (item.hash_key.cast_value, item.range_key.cast_value) if item.range_key else item.hash_key.cast_value


def _all_items(self: Table) -> list[Any]:
    """moto's Table.all_items: every item sorted by primary key. Sorting on the keys' values, computed once
    per item, gives the order moto's pairwise comparisons give (a key attribute has one type per table).
    During a Query it hands on only the items of the queried partition, which moto would drop at its next
    step anyway: a table's partition is read from the table's own map (where moto files each item under its
    hash key, by the same equality), an index's by comparing the key attribute inline. (Not the range condition
    too: moto's paging looks one item past it.)"""
    wanted = getattr(_query_keys, "partition", None)
    if wanted is not None and wanted[0] is None:  # the table's own partition
        found = self.items.get(wanted[1])
        items = [] if found is None else list(found.values()) if self.range_key_attr else [found]
    elif wanted is not None:
        items = _index_partition(self, *wanted)
    else:
        items = _every_item(self)
    for keep in getattr(_query_keys, "tests", None) or ():
        items = [item for item in items if keep(item)]
    return sorted(items, key=_sort_key)


# Bumped before and after every DynamoDB request that is not a read: a table's items grouped by an index key
# (`_index_partition`) serve queries until the next write.
_writes = 0
_READS = frozenset({"GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems", "DescribeTable", "ListTables"})
_GROUPS = "_rappel_index_groups"  # where a table keeps its items grouped: (writes seen, {attribute: {key: items}})
_KEY_TYPES = frozenset({"S", "N", "B"})  # the types an index key attribute can have


def _every_item(table: Table) -> list[Any]:
    if table.range_key_attr:
        return [item for hash_set in table.items.values() for item in hash_set.values()]
    return list(table.items.values())


def _index_partition(table: Table, name: str, wanted: DynamoType) -> list[Any]:
    """`_with_attribute` of every item; from the second query by `name` with no write between, from the table's
    items grouped by `name` once: a dispatcher run queries the eight shards of one index in a row, and each query
    walked the table. (A lone query, a receipt's, walks it once as before: grouping would cost more.)"""
    groups: dict[str, dict[tuple[str, Any], list[Any]] | None]
    seen, groups = getattr(table, _GROUPS, (-1, {}))
    if seen != _writes:
        groups = {}
        setattr(table, _GROUPS, (_writes, groups))
    if wanted.type not in _KEY_TYPES or name not in groups:  # not an index key type, or a first query
        groups[name] = None
        return _with_attribute(_every_item(table), name, wanted)
    by_key = groups[name]
    if by_key is None:
        by_key = groups[name] = {}
        for item in _every_item(table):
            found = item.attrs.get(name)
            if found is not None and found.type in _KEY_TYPES:
                by_key.setdefault(_group_key(found), []).append(item)
    return list(by_key.get(_group_key(wanted), ()))


def _group_key(value: DynamoType) -> tuple[str, Any]:
    # DynamoType.__eq__'s terms: same type, and the same value (a number's by its cast value: "1" equals "1.0")
    return value.type, value.value if value.type in _VALUE_AS_IS else value.cast_value


def _counting_writes(original: Any) -> Any:
    def call_action(self: Any) -> Any:
        global _writes
        write = self._get_action() not in _READS
        _writes += write
        try:
            return original(self)
        finally:
            _writes += write

    return call_action


def _with_attribute(items: list[Any], name: str, wanted: DynamoType) -> list[Any]:
    """The items whose attribute `name` equals `wanted` (DynamoType.__eq__: same type, same value), inline."""
    kind = wanted.type
    if kind in _VALUE_AS_IS:
        value = wanted.value
        return [
            item
            for item in items
            if (found := item.attrs.get(name)) is not None and found.type == kind and found.value == value
        ]
    cast = wanted.cast_value
    return [
        item
        for item in items
        if (found := item.attrs.get(name)) is not None and found.type == kind and found.cast_value == cast
    ]


def _equals(name: str | None, wanted: DynamoType) -> Callable[[Any], bool]:
    as_is = wanted.type in _VALUE_AS_IS

    def keep(item: Any) -> bool:
        # DynamoType.__eq__, without rebuilding the stored value for the common string case
        found = item.hash_key if name is None else item.attrs.get(name)
        if found is None or found.type != wanted.type:
            return False
        return bool(found.value == wanted.value if as_is else found.cast_value == wanted.cast_value)

    return keep


# AttributeValue members whose JSON form is the stored value: moto's serializer would copy it unchanged after
# asking each of the ten members of the shape in turn, for every attribute of every item it returns.
_SCALAR_ATTRIBUTE_VALUES = {"S": str, "N": str, "BOOL": bool, "NULL": bool}


def _attribute_value_as_is(original: Any) -> Any:
    def serialize_structure(self: BaseJSONSerializer, serialized: Any, value: Any, shape: Any, key: str) -> None:
        if key and shape.name == "AttributeValue" and isinstance(value, dict) and len(value) == 1:
            ((kind, scalar),) = value.items()
            if isinstance(scalar, _SCALAR_ATTRIBUTE_VALUES.get(kind, ())):
                serialized[self.get_serialized_name(shape, key)] = {kind: scalar}
                return
        original(self, serialized, value, shape, key)

    return serialize_structure


# The trees `_remembered_parse` handed out, by id, each with the clauses found in it by clause types (moto asks each
# request's tree for its attribute names and values twice).
_PARSED: dict[int, tuple[Any, dict[tuple[type, ...], list[Any]]]] = {}


def _remembered_parse(slow: Any) -> Any:
    # moto parses each UpdateExpression twice per call and only ever reads the tree (its validator works on a
    # deep copy), so one tree per distinct expression serves every call.
    def make(cls: Any, expression: Any) -> Any:
        tree = slow.__func__(cls, expression)
        if len(_PARSED) >= 8192:
            _PARSED.clear()
        _PARSED[id(tree)] = (tree, {})
        return tree

    remembered: Any = functools.lru_cache(maxsize=4096)(make)
    return classmethod(remembered)


def _clauses_found_once(original: Any) -> Any:
    def find_clauses(self: Any, clause_types: Any) -> list[Any]:
        # moto's Node.find_clauses; on a remembered tree (which nothing changes), each search is made once
        entry = _PARSED.get(id(self))
        if entry is None or entry[0] is not self:
            return original(self, clause_types)  # type: ignore[no-any-return]
        try:
            key = tuple(clause_types)
            found = entry[1].get(key)
        except TypeError:
            return original(self, clause_types)  # type: ignore[no-any-return]
        if found is None:
            found = entry[1][key] = original(self, clause_types)
        return list(found)

    return find_clauses


def _upper_bound(table: Table, bound: dict[str, Any]) -> tuple[str, str, list[Any]] | None:
    """(range attribute, comparison, bounds) of an index query whose sorted partition can be cut after its range
    (`_up_to_the_first_past`): one range key, an upper bound, ascending, on a first page, no legacy QueryFilter."""
    comparison = bound.get("range_comparison")
    if (
        not bound.get("index_name")
        or comparison not in {"<", "<=", "LT", "LE"}
        or bound.get("scan_index_forward") is False
        or bound.get("exclusive_start_key")
        or bound.get("filter_kwargs")
        or len(bound.get("range_key_conditions") or ()) > 1
    ):
        return None
    index = {i.name: i for i in table.all_indexes()}.get(bound["index_name"])
    ranges = [key["AttributeName"] for key in (index.schema if index is not None else []) if key["KeyType"] == "RANGE"]
    return (ranges[0], comparison, list(bound.get("range_objs") or [])) if len(ranges) == 1 else None


def _query_with_key_filter(original: Any) -> Any:
    signature = inspect.signature(original)

    def query(self: Table, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        # By name, not position: a moto that reorders Table.query's parameters still reads the right ones.
        bound = signature.bind(self, hash_key, *args, **kwargs).arguments
        partition: tuple[str | None, DynamoType] | None = None
        tests: list[Callable[[Any], bool]] = []
        if bound.get("index_name"):
            conditions = list(bound.get("hash_key_conditions") or ())
            if conditions:
                partition, conditions = conditions[0], conditions[1:]
            tests = [_equals(name, value) for name, value in conditions]
        elif hash_key is not None:
            partition = (None, hash_key)
        _query_keys.partition, _query_keys.tests, _query_keys.cut = partition, tests, _upper_bound(self, bound)
        try:
            return original(self, hash_key, *args, **kwargs)
        finally:
            _query_keys.partition, _query_keys.tests, _query_keys.cut = None, None, None

    return query


class _NodeClasses(dict[type, bool]):
    """Whether a class is one of moto's expression nodes, by class (Node is an ABC: each isinstance goes through
    its hooks)."""

    def __missing__(self, kind: type) -> bool:
        found = self[kind] = issubclass(kind, ast_nodes.Node)
        return found


_NODE_CLASSES = _NodeClasses()
_UNSEEN = object()


# Per traverser class: its handlers by node class, and its child hook (None when it keeps moto's no-op one).
_TRAVERSALS: dict[type, tuple[dict[type, Any], Any]] = {}


def _traversal_of(traverser: Any) -> tuple[dict[type, Any], Any] | None:
    """A traverser class's (handlers by node class, child hook or None). The handler of a node class is the first
    function of the class's processing map that takes it, as DepthFirstTraverser.process picks it (or the
    traverser's own `process`, if it has one), None when it handles no such node. Every moto processor's map is a
    literal of node classes to its own methods, the same for each instance; a map of anything else is not
    remembered (None: moto's own traversal then runs)."""
    cls = type(traverser)
    found = _TRAVERSALS.get(cls)
    if found is not None:
        return found
    methods = tuple(traverser._processing_map().items())
    functions = tuple(
        (node_class, getattr(method, "__func__", None))
        for node_class, method in methods
        if getattr(method, "__self__", None) is traverser
    )
    base = ast_nodes.DepthFirstTraverser
    hook = None if cls.pre_processing_of_child is base.pre_processing_of_child else cls.pre_processing_of_child
    if len(functions) != len(methods) or cls.process is not base.process:
        return None
    handlers: dict[type, Any] = _Handlers(functions)
    found = _TRAVERSALS[cls] = (handlers, hook)
    return found


class _Handlers(dict[type, Any]):
    def __init__(self, functions: tuple[tuple[type, Any], ...]) -> None:
        super().__init__()
        self._functions = functions

    def __missing__(self, kind: type) -> Any:
        found = self[kind] = next((f for node_class, f in self._functions if issubclass(kind, node_class)), None)
        return found


def _traverse_with_types_once(original: Any) -> Any:
    def traverse_node_recursively(self: Any, node: Any, child_id: int = -1) -> Any:
        # moto's DepthFirstTraverser.traverse_node_recursively, deciding whether a node is one and which method
        # processes it once per class (of node and of traverser) instead of at every node: moto rebuilds the
        # traverser's map of node classes for every node it asks about. Children that are not nodes are skipped
        # (moto's visit returns them untouched), and moto's no-op child hook is not called.
        traversal = _traversal_of(self)
        if traversal is None:
            return original(self, node, child_id)
        handlers, hook = traversal
        node_classes = _NODE_CLASSES

        def visit(node: Any, child_id: int) -> Any:
            kind = type(node)
            parent_node = node.parent
            children = node.children
            if children is not None:
                for i, child_node in enumerate(children):
                    if hook is not None:
                        hook(self, node, i)
                    if node_classes[type(child_node)]:
                        visit(child_node, i)
            handler = handlers[kind]
            if handler is not None:
                node = handler(self, node)
                node.parent = parent_node
                if parent_node:
                    parent_node.children[child_id] = node
            return node

        return visit(node, child_id) if node_classes[type(node)] else node

    return traverse_node_recursively


# The checks of an UpdateExpression that read nothing but the expression, its attribute names and the table's keys.
_EXPRESSION_ONLY_CHECKS = ("ActionCountValidator", "OverlappingPathsValidator", "UpdateHashRangeKeyValidator")


def _remember_the_expression(original: Any) -> Any:
    def __init__(self: Any, expression: Any, *args: Any, **kwargs: Any) -> None:
        original(self, expression, *args, **kwargs)
        self.__dict__["_shortcut_expression"] = expression  # the parsed tree (remembered by the parser: see make)

    return __init__


def _expression_checks_once(_: Any) -> Any:
    passed: dict[Any, None] = {}
    pure = tuple(getattr(validators, name) for name in _EXPRESSION_ONLY_CHECKS)

    def validate(self: Any) -> Any:
        # moto's Validator.validate. Its first checks (one SET/REMOVE/ADD clause each, no overlapping paths, no key
        # updated) read only the expression tree, its attribute names and the table's key names, and change nothing:
        # once they passed for those, they pass again, so they are skipped. The others read the item and the values.
        processors = list(self.processors)
        expression = self.__dict__.get("_shortcut_expression")
        try:
            key: Any = (
                type(self),
                expression,
                tuple(sorted((self.expression_attribute_names or {}).items())),
                tuple(self.table.table_key_attrs),
            )
            hash(key)
        except (AttributeError, TypeError):
            key = None
        if expression is None:
            key = None
        leading = 0
        while leading < len(processors) and type(processors[leading]) in pure:
            leading += 1
        known = key is not None and key in passed
        n = self.node_to_validate
        for processor in processors[leading if known else 0 : leading]:
            n = processor.traverse(n)
        if key is not None and not known:
            if len(passed) >= 4096:
                passed.clear()
            passed[key] = None
        for processor in processors[leading:]:
            n = processor.traverse(n)
        return n

    return validate


def _lexed_once(original: Any) -> Any:
    parser_class = comparisons.ConditionExpressionParser

    @functools.lru_cache(maxsize=4096)
    def lexed(expression: str) -> tuple[Any, ...]:
        return tuple(original(parser_class(expression, None, None)))

    def _lex_condition_expression(self: Any) -> Any:
        # moto lexes each condition expression (twice per request) with regular expressions it compiles for every
        # token; the tokens depend on the text alone. Each call gets new tokens (each with its own empty children).
        expression = self.condition_expression
        if type(self) is not parser_class or not isinstance(expression, str):
            return original(self)
        node = self.Node
        return deque(node(t.nonterminal, t.kind, t.text, t.value, []) for t in lexed(expression))

    return _lex_condition_expression


# What copy.deepcopy returns as it is (its atomic types that a node holds).
_ATOMIC = frozenset({type(None), bool, int, float, str, bytes})


def _node_copy(self: Any, memo: dict[int, Any]) -> Any:
    """copy.deepcopy of an expression tree's node, as the generic path makes it (a new instance of the class whose
    attributes are deep copies), without the pickle protocol's detour (moto copies the tree for every update): a
    string is kept, a list copied here (once, through the memo, as deepcopy would), anything else deep-copied."""
    cls = self.__class__
    copied = cls.__new__(cls)
    memo[id(self)] = copied
    state = self.__dict__
    if state:
        fresh = {}
        for key, value in state.items():
            kind = type(value)
            if kind in _ATOMIC:
                fresh[key] = value
            elif kind is list:
                fresh[key] = _list_copy(value, memo)
            else:
                found = memo.get(id(value), _UNSEEN)
                fresh[key] = copy.deepcopy(value, memo) if found is _UNSEEN else found
        copied.__dict__.update(fresh)
    return copied


def _list_copy(items: list[Any], memo: dict[int, Any]) -> list[Any]:
    found = memo.get(id(items), _UNSEEN)
    if found is not _UNSEEN:
        return found  # type: ignore[no-any-return]
    out: list[Any] = []
    memo[id(items)] = out
    for item in items:
        kind = type(item)
        if kind in _ATOMIC:
            out.append(item)
            continue
        seen = memo.get(id(item), _UNSEEN)
        if seen is not _UNSEEN:
            out.append(seen)
        elif _COPIED_HERE[kind]:  # what deepcopy would call for it
            out.append(_node_copy(item, memo))
        else:
            out.append(copy.deepcopy(item, memo))
    return out


class _CopiedHere(dict[type, bool]):
    """Whether a class's deep copy is `_node_copy`, by class."""

    def __missing__(self, kind: type) -> bool:
        found = self[kind] = getattr(kind, "__deepcopy__", None) is _node_copy
        return found


_COPIED_HERE = _CopiedHere()


@contextlib.contextmanager
def moto_shortcuts() -> Iterator[None]:
    """Within the block, moto's slow paths are replaced by same-answer ones:

    - Requests to AWS endpoints go unsigned: moto answers them in-process and reads no signature (a request to
      any other endpoint, DynamoDB Local's, is signed as before).
    - SQS converts "now" through naive datetimes for every message on every call
      (`moto.sqs.models.unix_time_millis`); `time.time() * 1000` is the same number of milliseconds.
    - SQS checks each received message's retention by building all of the queue's attributes, which counts
      the queue's messages; it now reads the retention period alone.
    - `DynamoType.cast_value` returns a string's, binary's or boolean's value first, and `DynamoType.size`
      measures a string or a number first (moto sizes every candidate item of a Query for its 1 MB page).
    - `Table.all_items` and `Table.sorted_items` sort on key values instead of comparing wrappers pairwise,
      and during a Query `all_items` hands on only the queried partition; `Item.size` adds up strings inline.
    - The JSON response serializer copies a scalar attribute value (S, N, BOOL, NULL) as it is.
    - An UpdateExpression is parsed once, not twice per call.
    - Every request lists the method names of its service's response class; a class's names are listed once.
    - An UpdateExpression's tree is copied for each update without the pickle protocol's detour, and each of the
      ten passes over the copy finds which of its methods handles a node class once per class, not at every node.
    - The three checks of an UpdateExpression that read only the expression, its attribute names and the table's
      keys are skipped when they passed before for the same (they change nothing, and would pass again).
    - A ConditionExpression's tokens are remembered by its text (moto lexes it twice per request, compiling its
      regular expressions for every token).
    - The clauses moto looks for in a remembered UpdateExpression tree are found once per tree and clause types.
    - An item's size check before each attribute is set adds the sizes up inline; a list's size adds its string
      members inline.
    - An index query with an upper bound (`due_at <= :now`), ascending, hands moto its sorted partition cut after
      the first item past the bound: moto would size every later item for its page check and skip it.
    - An index query finds its partition in the table's items grouped by the index key, grouped once until the
      next DynamoDB request that is not a read (each request counted as DynamoHandler takes it).

    A block opened inside another changes nothing more (wrapping the shortcuts twice would only slow them).
    """
    global _active, _writes
    installed = importlib.metadata.version("moto")
    if installed != SHORTCUT_MOTO_VERSION:
        # The shortcuts reach into moto's internals: on a moto they were not checked against, run moto as it is.
        warnings.warn(
            f"moto {installed} is not {SHORTCUT_MOTO_VERSION}, the version moto_shortcuts was checked against: "
            "running without them (slower, same answers)",
            stacklevel=3,
        )
        yield
        return
    if _active:
        _active += 1
        try:
            yield
        finally:
            _active -= 1
        return
    parser = getattr(update_expressions, "UpdateExpressionParser")  # noqa: B009 - moto ships that module untyped
    replacements: list[tuple[Any, str, Callable[[Any], Any]]] = [
        (botocore.signers.RequestSigner, "sign", _unsigned_for_moto),
        (sqs_models, "unix_time_millis", _fast_millis),
        (DynamoType, "cast_value", lambda slow: _fast_cast_value(slow.fget)),
        (DynamoType, "size", _fast_size),
        (Table, "all_items", lambda _: _all_items),
        (Table, "query", _query_with_key_filter),
        (BaseJSONSerializer, "_serialize_type_structure", _attribute_value_as_is),
        (parser, "make", _remembered_parse),
        (sqs_models.SQSBackend, "is_message_valid_based_on_retention_period", _retention_from_the_queue),
        (Item, "size", _item_size),
        (Table, "sorted_items", _sorted_by_values),
        (core_responses, "method_names_from_class", functools.lru_cache(maxsize=None)),
        (ast_nodes.DepthFirstTraverser, "traverse_node_recursively", _traverse_with_types_once),
        (validators.Validator, "__init__", _remember_the_expression),
        (validators.Validator, "validate", _expression_checks_once),
        (comparisons.ConditionExpressionParser, "_lex_condition_expression", _lexed_once),
        (ast_nodes.Node, "find_clauses", _clauses_found_once),
        (LimitedSizeDict, "__setitem__", _size_checked_inline),
        (DynamoHandler, "call_action", _counting_writes),
    ]
    originals = [vars(owner)[name] for owner, name, _ in replacements]
    for (owner, name, faster), original in zip(replacements, originals, strict=True):
        setattr(owner, name, faster(original))
    # Added rather than replaced: moto's expression nodes have no __deepcopy__ of their own.
    added = [] if "__deepcopy__" in vars(ast_nodes.Node) else [(ast_nodes.Node, "__deepcopy__", _node_copy)]
    for owner, name, value in added:
        setattr(owner, name, value)
    _active = 1
    _writes += 1  # a grouping kept on a table from an earlier block is not trusted: writes between went uncounted
    try:
        yield
    finally:
        _active = 0
        _writes += 1
        for owner, name, _ in added:
            delattr(owner, name)
        for (owner, name, _), original in zip(replacements, originals, strict=True):
            setattr(owner, name, original)
