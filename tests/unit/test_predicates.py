"""V2 subscription predicates (spec 02 §5.4): placement, validation, limits, matching.

Also feeds :func:`parse_predicate` the exact ``filter`` / ``tags_filter`` values that the real
Python client (``sockudo-python`` 2.2.0) builds: ``Filter.*`` helpers → ``FilterNode.to_dict()``
and ``SockudoChannel.subscribe()`` (the subscribe payload it sends), captured by replacing the
client's ``send_event``.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from sockudo_python import (
    Filter,
    FilterNode,
    SockudoClient,
    SockudoOptions,
    SubscriptionOptions,
    validate_filter,
)

from projections.folds.state import Delivery
from sockudo.ws.predicates import (
    FUNCTION_STEPS,
    MAX_EXPRESSION_STEPS,
    MAX_PROJECTION_BYTES,
    TAG_OPERATORS,
    MessageView,
    Predicate,
    PredicateError,
    parse_predicate,
)


def leaf(key: str, cmp: str, val: Any = None, vals: Any = None) -> dict[str, Any]:
    node: dict[str, Any] = {"key": key, "cmp": cmp}
    if val is not None:
        node["val"] = val
    if vals is not None:
        node["vals"] = vals
    return node


def compile_tags(node: Any) -> Predicate:
    p = parse_predicate({"tags_filter": node})
    assert p is not None
    return p


def tags_match(node: Any, tags: dict[str, str] | None) -> bool:
    view = MessageView("ev", "orders") if tags is None else MessageView("ev", "orders", tags=tags)
    return compile_tags(node).matches(view)


def expr(source: Any, **view: Any) -> bool:
    p = parse_predicate({"filter": {"expression": source}})
    assert p is not None
    view.setdefault("event", "ev")
    view.setdefault("channel", "orders")
    return p.matches(MessageView(**view))


def delivery(**over: Any) -> Delivery:
    base: dict[str, Any] = {
        "app_id": "app",
        "channel": "orders",
        "event": "order.updated",
        "data": '{"id":7,"total":120}',
        "data_is_json": False,
        "message_id": "m-1",
        "stream_id": "s-1",
        "serial": 42,
        "history_serial": 42,
        "published_at_ms": 0,
        "exclude_socket_id": None,
        "user_id": "u-1",
        "client_event": False,
        "extras_json": None,
        "tags": {"region": "eu"},
    }
    base.update(over)
    return Delivery(**base)


# --- operators --------------------------------------------------------------------------------

OPERATOR_CASES = [
    # (node, tags, expected)
    (leaf("r", "eq", "eu"), {"r": "eu"}, True),
    (leaf("r", "eq", "eu"), {"r": "EU"}, False),
    (leaf("r", "eq", "eu"), {"r": "us"}, False),
    (leaf("r", "eq", "eu"), {}, False),
    (leaf("r", "neq", "eu"), {"r": "eu"}, False),
    (leaf("r", "neq", "eu"), {"r": "us"}, True),
    (leaf("r", "neq", "eu"), {}, True),
    (leaf("r", "neq", "eu"), {"other": "eu"}, True),
    (leaf("r", "in", vals=["eu", "us"]), {"r": "us"}, True),
    (leaf("r", "in", vals=["eu", "us"]), {"r": "ap"}, False),
    (leaf("r", "in", vals=["eu", "us"]), {}, False),
    (leaf("r", "nin", vals=["eu", "us"]), {"r": "eu"}, False),
    (leaf("r", "nin", vals=["eu", "us"]), {"r": "ap"}, True),
    (leaf("r", "nin", vals=["eu", "us"]), {}, True),
    (leaf("r", "ex"), {"r": ""}, True),
    (leaf("r", "ex"), {"x": "r"}, False),
    (leaf("r", "nex"), {"r": "eu"}, False),
    (leaf("r", "nex"), {}, True),
    (leaf("r", "sw", "eu-"), {"r": "eu-west"}, True),
    (leaf("r", "sw", "eu-"), {"r": "us-eu-"}, False),
    (leaf("r", "sw", "eu-"), {}, False),
    (leaf("r", "ew", "-1"), {"r": "eu-1"}, True),
    (leaf("r", "ew", "-1"), {"r": "1-eu"}, False),
    (leaf("r", "ew", "-1"), {}, False),
    (leaf("r", "ct", "west"), {"r": "eu-west-1"}, True),
    (leaf("r", "ct", "west"), {"r": "eu-east-1"}, False),
    (leaf("r", "ct", "west"), {}, False),
    (leaf("n", "gt", "10"), {"n": "11"}, True),
    (leaf("n", "gt", "10"), {"n": "10"}, False),
    (leaf("n", "gt", "10"), {"n": "9.5"}, False),
    (leaf("n", "gt", "10"), {"n": "1e2"}, True),
    (leaf("n", "gt", "10"), {}, False),
    (leaf("n", "gte", "10"), {"n": "10.0"}, True),
    (leaf("n", "gte", "10"), {"n": "9.99"}, False),
    (leaf("n", "lt", "10"), {"n": "-5"}, True),
    (leaf("n", "lt", "10"), {"n": "10"}, False),
    (leaf("n", "lt", "10"), {}, False),
    (leaf("n", "lte", "10"), {"n": "10"}, True),
    (leaf("n", "lte", "10"), {"n": "10.5"}, False),
    (leaf("n", "lte", "10"), {}, False),
    # numeric comparisons with non-numeric operands are false, never errors
    (leaf("n", "gt", "10"), {"n": "abc"}, False),
    (leaf("n", "lt", "10"), {"n": "abc"}, False),
    (leaf("n", "lte", "10"), {"n": ""}, False),
    (leaf("n", "lt", "10"), {"n": " 5"}, False),
    (leaf("n", "lt", "10"), {"n": "5_0"}, False),
    (leaf("n", "lt", "10"), {"n": "\u0665"}, False),  # Arabic-Indic digit five
    (leaf("n", "gt", "abc"), {"n": "abc"}, False),
    (leaf("n", "gte", "abc"), {"n": "zzz"}, False),
    (leaf("n", "lte", "abc"), {"n": "5"}, False),
    (leaf("n", "lt", "NaN"), {"n": "5"}, False),
]


@pytest.mark.parametrize(("node", "tags", "expected"), OPERATOR_CASES)
def test_operator(node: dict[str, Any], tags: dict[str, str], expected: bool) -> None:
    assert tags_match(node, tags) is expected


def test_operator_cases_cover_all_13_operators() -> None:
    assert {case[0]["cmp"] for case in OPERATOR_CASES} == TAG_OPERATORS
    assert len(TAG_OPERATORS) == 13


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        (leaf("r", "neq", "eu"), True),
        (leaf("r", "nin", vals=["eu"]), True),
        (leaf("r", "nex"), True),
        (leaf("r", "ex"), False),
        (leaf("r", "eq", "eu"), False),
        (leaf("r", "gt", "1"), False),
    ],
)
def test_message_without_tags_is_an_empty_map(node: dict[str, Any], expected: bool) -> None:
    assert tags_match(node, None) is expected
    assert compile_tags(node).matches(MessageView.of_delivery(delivery(tags=None))) is expected


@pytest.mark.parametrize(
    ("val", "tag", "expected"),
    [
        (5, "5", True),
        (5, "5.0", False),
        (2.5, "2.5", True),
        (True, "true", True),
        (False, "false", True),
        (True, "True", False),
    ],
)
def test_val_numbers_and_bools_become_json_text(val: Any, tag: str, expected: bool) -> None:
    assert tags_match(leaf("k", "eq", val), {"k": tag}) is expected


def test_vals_numbers_and_bools_become_json_text() -> None:
    node = leaf("k", "in", vals=[1, False, "x"])
    assert tags_match(node, {"k": "1"})
    assert tags_match(node, {"k": "false"})
    assert tags_match(node, {"k": "x"})
    assert not tags_match(node, {"k": "0"})


def test_numeric_val_compares_numerically() -> None:
    assert tags_match(leaf("n", "gt", 10), {"n": "10.5"})
    assert not tags_match(leaf("n", "gt", 10), {"n": "9"})
    assert tags_match(leaf("n", "lte", 0.5), {"n": "0.25"})


# --- and / or / not -----------------------------------------------------------------------------

SPEC_NODE = {
    "op": "and",
    "nodes": [
        {"key": "region", "cmp": "eq", "val": "eu"},
        {"op": "not", "nodes": [{"key": "tier", "cmp": "in", "vals": ["free", "trial"]}]},
    ],
}


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"region": "eu", "tier": "pro"}, True),
        ({"region": "eu"}, True),
        ({"region": "eu", "tier": "free"}, False),
        ({"region": "eu", "tier": "trial"}, False),
        ({"region": "us", "tier": "pro"}, False),
        ({}, False),
    ],
)
def test_spec_example_node(tags: dict[str, str], expected: bool) -> None:
    assert tags_match(SPEC_NODE, tags) is expected


@pytest.mark.parametrize(
    ("tags", "expected_and", "expected_or"),
    [
        ({"a": "1", "b": "1", "c": "1"}, True, True),
        ({"a": "1", "b": "1"}, False, True),
        ({"c": "1"}, False, True),
        ({}, False, False),
    ],
)
def test_and_or_with_three_children(
    tags: dict[str, str], expected_and: bool, expected_or: bool
) -> None:
    children = [leaf(k, "eq", "1") for k in ("a", "b", "c")]
    assert tags_match({"op": "and", "nodes": children}, tags) is expected_and
    assert tags_match({"op": "or", "nodes": children}, tags) is expected_or


@pytest.mark.parametrize("op", ["and", "or"])
def test_single_child_branch_is_the_child(op: str) -> None:
    node = {"op": op, "nodes": [leaf("a", "eq", "1")]}
    assert tags_match(node, {"a": "1"})
    assert not tags_match(node, {"a": "2"})


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"a": "1", "b": "2"}, True),  # or: first alternative
        ({"c": "x"}, True),  # or: second alternative (not(nex c))
        ({"a": "1", "b": "3"}, False),
        ({"a": "2", "b": "2", "d": "1"}, False),
    ],
)
def test_nested_branches(tags: dict[str, str], expected: bool) -> None:
    node = {
        "op": "or",
        "nodes": [
            {"op": "and", "nodes": [leaf("a", "eq", "1"), leaf("b", "eq", "2")]},
            {"op": "not", "nodes": [{"op": "or", "nodes": [leaf("c", "nex"), leaf("d", "ex")]}]},
        ],
    }
    assert tags_match(node, tags) is expected


def test_branch_ignores_leaf_members_and_leaf_ignores_nodes() -> None:
    branch = {"op": "not", "key": "ignored", "cmp": "bogus", "nodes": [leaf("a", "ex")]}
    assert tags_match(branch, {})
    assert not tags_match(branch, {"a": "1"})
    lone = {"key": "a", "cmp": "ex", "nodes": "ignored"}
    assert tags_match(lone, {"a": "1"})


# --- placement ----------------------------------------------------------------------------------


def test_legacy_tags_filter() -> None:
    p = parse_predicate({"channel": "orders", "tags_filter": leaf("region", "eq", "eu")})
    assert p is not None
    assert p.events is None
    assert p.expression is None
    assert p.matches(MessageView("any", "orders", tags={"region": "eu"}))
    assert not p.matches(MessageView("any", "orders", tags={"region": "us"}))


def test_legacy_whole_filter_is_a_node() -> None:
    p = parse_predicate({"filter": SPEC_NODE})
    assert p is not None
    assert p.matches(MessageView("e", "c", tags={"region": "eu"}))
    assert not p.matches(MessageView("e", "c", tags={"region": "eu", "tier": "free"}))


def test_filter_wins_over_tags_filter() -> None:
    p = parse_predicate({"filter": {"events": ["a"]}, "tags_filter": leaf("region", "eq", "eu")})
    assert p is not None
    assert p.matches(MessageView("a", "c", tags={"region": "us"}))
    legacy = parse_predicate({"filter": leaf("x", "ex"), "tags_filter": leaf("y", "ex")})
    assert legacy is not None
    assert legacy.matches(MessageView("a", "c", tags={"x": "1"}))
    assert not legacy.matches(MessageView("a", "c", tags={"y": "1"}))


def test_filter_null_falls_back_to_tags_filter() -> None:
    p = parse_predicate({"filter": None, "tags_filter": leaf("y", "ex")})
    assert p is not None
    assert p.matches(MessageView("a", "c", tags={"y": "1"}))
    assert not p.matches(MessageView("a", "c", tags={"x": "1"}))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"channel": "orders", "auth": ""},
        {"filter": None},
        {"tags_filter": None},
        {"filter": {}},
        {"tags_filter": {}},
        {"filter": {"events": []}},
        {"filter": {"events": None, "tags": None, "expression": None}},
        {"filter": {"events": [], "tags": {}}},
    ],
)
def test_nothing_means_no_predicate(options: dict[str, Any]) -> None:
    assert parse_predicate(options) is None


def test_empty_events_is_no_event_constraint() -> None:
    p = parse_predicate({"filter": {"events": [], "tags": leaf("r", "eq", "eu")}})
    assert p is not None
    assert p.events is None
    assert p.matches(MessageView("whatever", "c", tags={"r": "eu"}))
    assert not p.matches(MessageView("whatever", "c", tags={"r": "us"}))


def test_events_filter_is_exact_and_case_sensitive() -> None:
    p = parse_predicate({"filter": {"events": ["order.created", "sockudo:message.update"]}})
    assert p is not None
    assert p.events == frozenset({"order.created", "sockudo:message.update"})
    assert p.matches(MessageView("order.created", "c"))
    assert p.matches(MessageView("sockudo:message.update", "c"))
    assert not p.matches(MessageView("Order.Created", "c"))
    assert not p.matches(MessageView("order.created.v2", "c"))
    assert not p.matches(MessageView("sockudo:message.delete", "c"))


@pytest.mark.parametrize(
    ("event", "tags", "total", "expected"),
    [
        ("updated", {"tenant": "acme"}, 101, True),
        ("created", {"tenant": "acme"}, 101, False),
        ("updated", {"tenant": "other"}, 101, False),
        ("updated", {"tenant": "acme"}, 99, False),
    ],
)
def test_compound_components_are_anded(
    event: str, tags: dict[str, str], total: int, expected: bool
) -> None:
    p = parse_predicate(
        {
            "filter": {
                "events": ["updated"],
                "tags": leaf("tenant", "eq", "acme"),
                "expression": "data.total > `100`",
            }
        }
    )
    assert p is not None
    assert p.needs_projection
    assert p.matches(MessageView(event, "c", data={"total": total}, tags=tags)) is expected


# --- expression ---------------------------------------------------------------------------------


def test_expression_on_data_object() -> None:
    assert expr("data.total > `100`", data={"total": 120})
    assert not expr("data.total > `100`", data={"total": 80})
    assert not expr("data.total > `100`", data={"total": "120"})  # string vs number: null


def test_expression_object_form() -> None:
    source = {"language": "jmespath", "source": "data.kind == 'x'"}
    assert expr(source, data={"kind": "x"})
    assert not expr(source, data={"kind": "y"})
    assert expr({"source": "data.kind == 'x'"}, data={"kind": "x"})  # language defaults


def test_expression_on_tags_and_headers() -> None:
    assert expr("tags.region == 'eu'", tags={"region": "eu"})
    assert not expr("tags.region == 'eu'", tags={"region": "us"})
    assert expr("headers.priority == 'high'", headers={"priority": "high"})
    assert expr("headers.n > `2`", headers={"n": 3})
    assert not expr("headers.priority == 'high'")


def test_expression_hides_sockudo_headers() -> None:
    headers = {"tenant": "acme", "sockudo_version_serial": "3"}
    assert expr("headers.tenant == 'acme'", headers=headers)
    assert not expr("headers.sockudo_version_serial", headers=headers)
    assert expr("length(keys(headers)) == `1`", headers=headers)
    d = delivery(
        extras_json=json.dumps(
            {"headers": {"tenant": "acme", "sockudo_action": "update"}, "idempotency_key": "k"}
        )
    )
    view = MessageView.of_delivery(d)
    assert dict(view.headers) == {"tenant": "acme"}
    p = parse_predicate({"filter": {"expression": "headers.sockudo_action || extras"}})
    assert p is not None
    assert not p.matches(view)
    q = parse_predicate({"filter": {"expression": "headers.tenant == 'acme'"}})
    assert q is not None
    assert q.matches(view)


def test_projection_has_exactly_the_spec_keys() -> None:
    view = MessageView(
        event="order.updated",
        channel="orders",
        data={"id": 7},
        user_id="u1",
        tags={"region": "eu"},
        headers={"priority": "high"},
        message_id="m1",
        stream_id="s1",
        serial=42,
        action="update",
    )
    keys = sorted(
        [
            "event",
            "channel",
            "data",
            "name",
            "userId",
            "tags",
            "headers",
            "messageId",
            "streamId",
            "serial",
            "action",
        ]
    )
    checks = [
        f"sort(keys(@)) == `{json.dumps(keys)}`",
        "event == 'order.updated'",
        "channel == 'orders'",
        "data.id == `7`",
        "name == null",
        "userId == 'u1'",
        "tags.region == 'eu'",
        "headers.priority == 'high'",
        "messageId == 'm1'",
        "streamId == 's1'",
        "serial == `42`",
        "action == 'update'",
    ]
    for source in checks:
        p = parse_predicate({"filter": {"expression": source}})
        assert p is not None
        assert p.matches(view), source


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (0, True),  # JMESPath: 0 is truthy
        (0.0, True),
        ("a", True),
        ([0], True),
        ({"a": None}, True),
        (True, True),
        (False, False),
        (None, False),
        ("", False),
        ([], False),
        ({}, False),
    ],
)
def test_jmespath_truthiness(data: Any, expected: bool) -> None:
    assert expr("data", data=data) is expected


def test_evaluation_error_fails_closed() -> None:
    # abs() of a string raises a type error; if errors were read as null, !null would match.
    assert not expr("!abs(data)", data="x")
    assert not expr("abs(data) || `true`", data="x")
    assert expr("abs(data) || `true`", data=-1)  # evaluates fine on a number


def test_an_evaluation_past_its_step_budget_fails_closed() -> None:
    # A filter projection takes four steps an item (comparator, @, literal, the item).
    source = "length(data[?@ >= `0`]) > `0`"
    assert expr(source, data=list(range(MAX_EXPRESSION_STEPS // 8)))
    assert not expr(source, data=list(range(MAX_EXPRESSION_STEPS // 2)))
    # A chain of projections over one array: each link walks it again.
    chain = "length(data" + " | [?@ >= `0`]" * 8 + ") > `0`"
    assert expr(chain, data=list(range(100)))
    assert not expr(chain, data=list(range(1000)))


def test_function_calls_weigh_more_in_the_step_budget() -> None:
    # The call and its argument: FUNCTION_STEPS + 1 an item; plain projection: 1 an item.
    items = 3 * MAX_EXPRESSION_STEPS // (2 * (FUNCTION_STEPS + 1))
    assert expr("length(data[*]) > `0`", data=list(range(items)))
    assert not expr("length(data[*].to_string(@)) > `0`", data=list(range(items)))
    assert expr("length(data[*].to_string(@)) > `0`", data=list(range(items // 2)))


def test_the_step_budget_is_per_evaluation_and_per_thread() -> None:
    p = parse_predicate({"filter": {"expression": "length(data[?@ >= `0`]) > `0`"}})
    assert p is not None
    view = MessageView("ev", "c", data=list(range(MAX_EXPRESSION_STEPS // 8)))
    assert all(p.matches(view) for _ in range(5))  # each evaluation starts afresh
    results: list[bool] = []
    worker = threading.Thread(target=lambda: results.append(p.matches(view)))
    worker.start()
    worker.join()
    assert results == [True]


def test_unserialisable_data_fails_closed_for_expressions_only() -> None:
    view = MessageView("ev", "c", data={1, 2})
    p = parse_predicate({"filter": {"expression": "event == 'ev'"}})
    assert p is not None
    assert not p.matches(view)
    events_only = parse_predicate({"filter": {"events": ["ev"]}})
    assert events_only is not None
    assert events_only.matches(view)


def _base_projection_bytes() -> int:
    empty = {
        "event": "ev",
        "channel": "c",
        "data": "",
        "name": None,
        "userId": None,
        "tags": {},
        "headers": {},
        "messageId": None,
        "streamId": None,
        "serial": None,
        "action": None,
    }
    return len(json.dumps(empty, separators=(",", ":")).encode())


def test_projection_limit_is_64_kib_exactly() -> None:
    assert MAX_PROJECTION_BYTES == 65536
    p = parse_predicate({"filter": {"expression": "event == 'ev'"}})
    assert p is not None
    pad = MAX_PROJECTION_BYTES - _base_projection_bytes()
    assert p.matches(MessageView("ev", "c", data="x" * pad))
    assert not p.matches(MessageView("ev", "c", data="x" * (pad + 1)))


def test_projection_limit_counts_utf8_bytes() -> None:
    p = parse_predicate({"filter": {"expression": "event == 'ev'"}})
    assert p is not None
    # 100 two-byte characters: 65537 bytes but only 65437 characters.
    data = "\u00e9" * 100 + "x" * (MAX_PROJECTION_BYTES + 1 - _base_projection_bytes() - 200)
    assert not p.matches(MessageView("ev", "c", data=data))
    data_ok = "\u00e9" * 100 + "x" * (MAX_PROJECTION_BYTES - _base_projection_bytes() - 200)
    assert p.matches(MessageView("ev", "c", data=data_ok))


def test_oversize_message_still_passes_non_expression_filters() -> None:
    p = parse_predicate({"filter": {"events": ["ev"], "tags": leaf("r", "ex")}})
    assert p is not None
    assert p.matches(MessageView("ev", "c", data="x" * 100_000, tags={"r": "1"}))


# --- MessageView.of_delivery -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "is_json", "expected"),
    [
        ('{"id":7}', False, {"id": 7}),
        (" [1, 2] ", False, [1, 2]),
        ("plain", False, "plain"),
        ("[1", False, "[1"),
        ("42", False, "42"),  # a string holding a non-object/array stays a string
        ("42", True, 42),
        ('"s"', True, "s"),
        ('{"a":[1]}', True, {"a": [1]}),
    ],
)
def test_of_delivery_data_is_v2_typed(data: str, is_json: bool, expected: Any) -> None:
    assert MessageView.of_delivery(delivery(data=data, data_is_json=is_json)).data == expected


def test_of_delivery_fields() -> None:
    d = delivery(extras_json=json.dumps({"ephemeral": True}))
    view = MessageView.of_delivery(d)
    assert view.event == "order.updated"
    assert view.channel == "orders"
    assert view.user_id == "u-1"
    assert dict(view.tags) == {"region": "eu"}
    assert dict(view.headers) == {}
    assert view.message_id == "m-1"
    assert view.stream_id == "s-1"
    assert view.serial == 42
    assert view.action is None
    assert view.name is None
    p = parse_predicate({"filter": {"expression": "data.total > `100` && serial == `42`"}})
    assert p is not None
    assert p.matches(view)


# --- validation errors --------------------------------------------------------------------------

BAD_OPTIONS = [
    {"filter": "region=eu"},
    {"filter": ["a"]},
    {"filter": 1},
    {"tags_filter": "x"},
    {"tags_filter": []},
    {"filter": {"events": "order.created"}},
    {"filter": {"events": {"a": 1}}},
    {"filter": {"events": [""]}},
    {"filter": {"events": ["ok", 1]}},
    {"filter": {"events": [None]}},
    {"filter": {"tags": "x"}},
    {"filter": {"tags": [leaf("a", "ex")]}},
    # tag-filter node shape
    {"tags_filter": {"op": "AND", "nodes": [leaf("a", "ex")]}},
    {"tags_filter": {"op": "xor", "nodes": [leaf("a", "ex")]}},
    {"tags_filter": {"op": 1, "nodes": [leaf("a", "ex")]}},
    {"tags_filter": {"op": "and", "nodes": []}},
    {"tags_filter": {"op": "and"}},
    {"tags_filter": {"op": "or", "nodes": []}},
    {"tags_filter": {"op": "not", "nodes": []}},
    {"tags_filter": {"op": "not", "nodes": [leaf("a", "ex"), leaf("b", "ex")]}},
    {"tags_filter": {"op": "and", "nodes": leaf("a", "ex")}},
    {"tags_filter": {"op": "and", "nodes": ["a"]}},
    {"tags_filter": {"op": "and", "nodes": [{}]}},
    {"tags_filter": {"cmp": "eq", "val": "x"}},
    {"tags_filter": {"key": "", "cmp": "eq", "val": "x"}},
    {"tags_filter": {"key": 1, "cmp": "eq", "val": "x"}},
    {"tags_filter": {"key": "a", "val": "x"}},
    {"tags_filter": leaf("a", "regex", "x")},
    {"tags_filter": leaf("a", "EQ", "x")},
    {"tags_filter": {"key": "a", "cmp": 1, "val": "x"}},
    {"filter": leaf("a", "eq")},
    {"filter": leaf("a", "eq", "")},
    {"filter": leaf("a", "neq", "")},
    {"filter": leaf("a", "sw", "")},
    {"filter": leaf("a", "ew")},
    {"filter": leaf("a", "ct", "")},
    {"filter": leaf("a", "gt")},
    {"filter": leaf("a", "lte", "")},
    {"filter": leaf("a", "eq", {"x": 1})},
    {"filter": leaf("a", "eq", ["x"])},
    {"filter": leaf("a", "in")},
    {"filter": leaf("a", "in", vals=[])},
    {"filter": leaf("a", "nin", vals=[])},
    {"filter": leaf("a", "in", vals="x")},
    {"filter": leaf("a", "in", vals=["x", None])},
    {"filter": leaf("a", "nin", vals=[{"x": 1}])},
    {"filter": leaf("a", "in", val="x")},  # val instead of vals
    {"filter": {"tags": {"op": "and", "nodes": [leaf("a", "bogus", "x")]}}},
    # expression
    {"filter": {"expression": ""}},
    {"filter": {"expression": "   "}},
    {"filter": {"expression": 1}},
    {"filter": {"expression": ["data"]}},
    {"filter": {"expression": {"language": "jsonata", "source": "data"}}},
    {"filter": {"expression": {"language": 1, "source": "data"}}},
    {"filter": {"expression": {"language": "jmespath", "source": ""}}},
    {"filter": {"expression": {"language": "jmespath", "source": 1}}},
    {"filter": {"expression": {"language": "jmespath"}}},
    {"filter": {"expression": "data.["}},
    {"filter": {"expression": "length("}},
    {"filter": {"expression": "a ==="}},
    {"filter": {"expression": "`{bad json`"}},
    {"filter": {"expression": "nope(@)"}},
    {"filter": {"expression": "length(@, @)"}},
    {"filter": {"expression": "length()"}},
    {"filter": {"expression": "not_null()"}},
    {"filter": {"expression": "(" * 2000 + "a" + ")" * 2000}},
    {"filter": {"expression": "!" * 4000 + "a"}},
]


@pytest.mark.parametrize("options", BAD_OPTIONS)
def test_invalid_filter_raises(options: dict[str, Any]) -> None:
    with pytest.raises(PredicateError) as info:
        parse_predicate(options)
    assert str(info.value)
    assert isinstance(info.value, ValueError)


def test_valid_variadic_and_known_functions_compile() -> None:
    assert expr("not_null(data.a, data.b) == `1`", data={"b": 1})
    assert expr("length(data) == `2`", data=[1, 2])
    assert expr("contains(keys(tags), 'r')", tags={"r": "1"})


# --- limits: the boundary accepted, one more rejected ------------------------------------------


def _events(n: int, length: int = 5) -> dict[str, Any]:
    return {"filter": {"events": [f"{i:0{length}d}" for i in range(n)]}}


def test_events_limits() -> None:
    p = parse_predicate(_events(50))
    assert p is not None
    assert p.matches(MessageView("00049", "c"))
    with pytest.raises(PredicateError):
        parse_predicate(_events(51))
    name = "e" * 200
    long_ok = parse_predicate({"filter": {"events": [name]}})
    assert long_ok is not None
    assert long_ok.matches(MessageView(name, "c"))
    with pytest.raises(PredicateError):
        parse_predicate({"filter": {"events": ["e" * 201]}})
    # characters, not bytes: 200 two-byte characters are accepted
    assert parse_predicate({"filter": {"events": ["\u00e9" * 200]}}) is not None


def _or_of_leaves(n: int) -> dict[str, Any]:
    return {"op": "or", "nodes": [leaf(f"k{i}", "ex") for i in range(n)]}


def test_tag_node_count_limit() -> None:
    p = compile_tags(_or_of_leaves(127))  # 128 nodes
    assert p.matches(MessageView("e", "c", tags={"k126": "1"}))
    assert not p.matches(MessageView("e", "c", tags={"k127": "1"}))
    with pytest.raises(PredicateError):
        parse_predicate({"tags_filter": _or_of_leaves(128)})  # 129 nodes


def _nots(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = leaf("a", "ex")
    for _ in range(depth - 1):
        node = {"op": "not", "nodes": [node]}
    return node


def test_tag_depth_limit() -> None:
    p = compile_tags(_nots(16))  # 15 nots around a leaf: depth 16, odd count of nots
    assert p.matches(MessageView("e", "c"))
    assert not p.matches(MessageView("e", "c", tags={"a": "1"}))
    with pytest.raises(PredicateError):
        parse_predicate({"tags_filter": _nots(17)})


def test_tag_key_limit_in_bytes() -> None:
    assert tags_match(leaf("k" * 256, "ex"), {"k" * 256: "1"})
    with pytest.raises(PredicateError):
        parse_predicate({"tags_filter": leaf("k" * 257, "ex")})
    assert tags_match(leaf("\u00e9" * 128, "ex"), {"\u00e9" * 128: "1"})  # 256 bytes
    with pytest.raises(PredicateError):
        parse_predicate({"tags_filter": leaf("\u00e9" * 129, "ex")})  # 258 bytes


@pytest.mark.parametrize("cmp", ["eq", "sw", "ct"])
def test_tag_value_limit_in_bytes(cmp: str) -> None:
    assert tags_match(leaf("k", cmp, "v" * 1024), {"k": "v" * 1024})
    with pytest.raises(PredicateError):
        parse_predicate({"tags_filter": leaf("k", cmp, "v" * 1025)})
    with pytest.raises(PredicateError):
        parse_predicate({"tags_filter": leaf("k", cmp, "\u00e9" * 513)})  # 1026 bytes


def test_tag_vals_limits() -> None:
    ok = leaf("k", "in", vals=[str(i) for i in range(128)])
    assert tags_match(ok, {"k": "127"})
    with pytest.raises(PredicateError):
        parse_predicate({"tags_filter": leaf("k", "in", vals=[str(i) for i in range(129)])})
    assert tags_match(leaf("k", "nin", vals=["v" * 1024]), {"k": "x"})
    with pytest.raises(PredicateError):
        parse_predicate({"tags_filter": leaf("k", "nin", vals=["a", "v" * 1025])})


def _padded_source(total_bytes: int) -> str:
    head = "data == '"
    return head + "a" * (total_bytes - len(head) - 1) + "'"


def test_expression_source_limit_in_bytes() -> None:
    source = _padded_source(4096)
    assert len(source.encode()) == 4096
    assert expr(source, data="a" * (4096 - 10))
    with pytest.raises(PredicateError):
        parse_predicate({"filter": {"expression": _padded_source(4097)}})
    source = "data == '" + "\u00e9" * 2044 + "'"
    assert len(source) < 4096 < len(source.encode())  # 2054 characters, 4098 bytes
    with pytest.raises(PredicateError):
        parse_predicate({"filter": {"expression": source}})


def _multi_select(fields: int) -> str:
    return "[" + ",".join(["data"] * fields) + "]"


def test_expression_ast_node_limit() -> None:
    # multi_select_list + one field per element (Python jmespath's AST)
    assert expr(_multi_select(255), data=1)  # 256 nodes
    with pytest.raises(PredicateError):
        parse_predicate({"filter": {"expression": _multi_select(256)}})  # 257 nodes


def test_expression_ast_depth_limit() -> None:
    # 31 not_expression nodes around a field: depth 32; an odd count of ! on a truthy value
    assert not expr("!" * 31 + "data", data=1)
    assert expr("!" * 31 + "data", data=None)
    with pytest.raises(PredicateError):
        parse_predicate({"filter": {"expression": "!" * 32 + "data"}})


# --- the Python client's own filter builders ----------------------------------------------------

CLIENT_CASES = [
    (Filter.eq("region", "eu"), {"region": "eu"}, {"region": "us"}),
    (Filter.neq("region", "eu"), {}, {"region": "eu"}),
    (Filter.inside("tier", ["pro", "team"]), {"tier": "team"}, {"tier": "free"}),
    (Filter.not_in("tier", ["free"]), {}, {"tier": "free"}),
    (Filter.exists("vip"), {"vip": ""}, {}),
    (Filter.not_exists("vip"), {}, {"vip": "1"}),
    (Filter.starts_with("sku", "A-"), {"sku": "A-1"}, {"sku": "B-1"}),
    (Filter.ends_with("sku", "-X"), {"sku": "1-X"}, {"sku": "X-1"}),
    (Filter.contains("sku", "mid"), {"sku": "a-mid-b"}, {"sku": "ab"}),
    (Filter.gt("price", "10"), {"price": "10.01"}, {"price": "10"}),
    (Filter.gte("price", "10"), {"price": "10"}, {"price": "9"}),
    (Filter.lt("price", "10"), {"price": "9"}, {"price": "x"}),
    (Filter.lte("price", "10"), {"price": "10"}, {"price": "11"}),
    (
        Filter.and_(Filter.eq("region", "eu"), Filter.not_(Filter.inside("tier", ["free"]))),
        {"region": "eu", "tier": "pro"},
        {"region": "eu", "tier": "free"},
    ),
    (
        Filter.or_(Filter.eq("a", "1"), Filter.eq("b", "1"), Filter.exists("c")),
        {"c": "x"},
        {"a": "2"},
    ),
]


@pytest.mark.parametrize(("node", "hit", "miss"), CLIENT_CASES)
def test_client_filter_helpers(node: FilterNode, hit: dict[str, str], miss: dict[str, str]) -> None:
    assert validate_filter(node) is None
    wire = node.to_dict()
    for options in ({"tags_filter": wire}, {"filter": {"tags": wire}}, {"filter": wire}):
        p = parse_predicate(json.loads(json.dumps(options)))
        assert p is not None
        assert p.matches(MessageView("e", "c", tags=hit))
        assert not p.matches(MessageView("e", "c", tags=miss))


@pytest.mark.parametrize(
    "node",
    [Filter.and_(), Filter.or_(), Filter.eq("k", ""), Filter.inside("k", []), FilterNode(key="k")],
)
def test_client_rejected_nodes_are_rejected_here_too(node: FilterNode) -> None:
    assert validate_filter(node) is not None
    with pytest.raises(PredicateError):
        parse_predicate({"tags_filter": node.to_dict()})


async def _client_subscribe_payload(options: SubscriptionOptions) -> dict[str, Any]:
    client = SockudoClient("app-key", SockudoOptions(cluster="mt1"))
    sent: list[tuple[str, Any]] = []

    async def capture(event: str, data: Any, channel: str | None = None) -> bool:
        sent.append((event, data))
        return True

    client.send_event = capture  # type: ignore[method-assign]
    channel = client.subscribe("orders", options)  # not connected: nothing is sent yet
    assert sent == []
    await channel.subscribe()
    assert len(sent) == 1
    event, payload = sent[0]
    assert event == "sockudo:subscribe"
    assert isinstance(payload, dict)
    # what the server decodes from the client's JSON frame
    decoded: dict[str, Any] = json.loads(json.dumps(payload))
    return decoded


async def test_client_sends_tags_filter_for_a_tag_only_subscription() -> None:
    payload = await _client_subscribe_payload(
        SubscriptionOptions(filter=Filter.and_(Filter.eq("region", "eu"), Filter.gt("n", "5")))
    )
    assert "filter" not in payload
    assert "tags_filter" in payload
    p = parse_predicate(payload)
    assert p is not None
    assert p.matches(MessageView("e", "orders", tags={"region": "eu", "n": "6"}))
    assert not p.matches(MessageView("e", "orders", tags={"region": "eu", "n": "5"}))


async def test_client_sends_compound_filter_with_events_tags_and_expression() -> None:
    payload = await _client_subscribe_payload(
        SubscriptionOptions(
            filter=Filter.eq("region", "eu"),
            events=["order.updated"],
            expression={"language": "jmespath", "source": "data.total > `100`"},
        )
    )
    assert set(payload["filter"]) == {"events", "tags", "expression"}
    assert "tags_filter" not in payload
    p = parse_predicate(payload)
    assert p is not None
    view = MessageView.of_delivery(delivery())
    assert p.matches(view)
    assert not p.matches(MessageView.of_delivery(delivery(event="order.created")))
    assert not p.matches(MessageView.of_delivery(delivery(tags={"region": "us"})))
    assert not p.matches(MessageView.of_delivery(delivery(data='{"total":100}')))


async def test_client_sends_expression_string_only() -> None:
    payload = await _client_subscribe_payload(
        SubscriptionOptions(expression="headers.priority == 'high'")
    )
    assert payload["filter"] == {"expression": "headers.priority == 'high'"}
    p = parse_predicate(payload)
    assert p is not None
    high = delivery(extras_json=json.dumps({"headers": {"priority": "high"}}))
    assert p.matches(MessageView.of_delivery(high))
    assert not p.matches(MessageView.of_delivery(delivery()))


async def test_client_empty_events_list_sends_compound_filter_without_constraint() -> None:
    payload = await _client_subscribe_payload(SubscriptionOptions(events=[]))
    assert payload["filter"] == {"events": []}
    assert parse_predicate(payload) is None


async def test_client_subscription_without_filters_has_no_predicate() -> None:
    payload = await _client_subscribe_payload(SubscriptionOptions())
    assert "filter" not in payload
    assert "tags_filter" not in payload
    assert parse_predicate(payload) is None
