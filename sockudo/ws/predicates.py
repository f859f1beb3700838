"""V2 subscription predicates (spec 02 §5.4): parse once at subscribe time, match per message.

Pure: no sockets, no clock. :func:`parse_predicate` reads ``filter`` / ``tags_filter`` from a
V2 ``sockudo:subscribe`` ``data`` object, validates every part (§5.2, §5.4) and compiles it;
any problem raises :class:`PredicateError`, which the caller answers with ``sockudo:error``
4000 (``channel`` set) without creating the subscription. ``None`` means "no predicate".

:meth:`Predicate.matches` is called by fanout per (subscriber, message) against one
:class:`MessageView` built per message (:meth:`MessageView.of_delivery`). Components run
cheapest first: the event set, then the pre-compiled tag tree (closures over a ``Mapping``,
no allocation per call), then the JMESPath expression against a projection that is built once
per view and shared by every subscriber. Evaluation errors and over-large projections are
"no match" (fail closed).

An expression's evaluation is also bounded: a 256-node expression over a 64 KiB document can
otherwise run for seconds (a chain of filter projections over a long array), on the event loop
that serves every socket. Past :data:`MAX_EXPRESSION_STEPS` interpreter steps it stops and the
message does not match, like any other evaluation error.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from jmespath import functions as _jp_functions
from jmespath import parser as _jp_parser
from jmespath import visitor as _jp_visitor

from projections.folds.state import Delivery

__all__ = [
    "FUNCTION_STEPS",
    "MAX_EVENTS",
    "MAX_EVENT_CHARS",
    "MAX_EXPRESSION_BYTES",
    "MAX_EXPRESSION_DEPTH",
    "MAX_EXPRESSION_NODES",
    "MAX_EXPRESSION_STEPS",
    "MAX_PROJECTION_BYTES",
    "MAX_TAG_DEPTH",
    "MAX_TAG_KEY_BYTES",
    "MAX_TAG_NODES",
    "MAX_TAG_VALS",
    "MAX_TAG_VALUE_BYTES",
    "TAG_OPERATORS",
    "MessageView",
    "Predicate",
    "PredicateError",
    "parse_predicate",
]

MAX_EVENTS: Final = 50
MAX_EVENT_CHARS: Final = 200
MAX_TAG_NODES: Final = 128
MAX_TAG_DEPTH: Final = 16
MAX_TAG_KEY_BYTES: Final = 256
MAX_TAG_VALUE_BYTES: Final = 1024
MAX_TAG_VALS: Final = 128
MAX_EXPRESSION_BYTES: Final = 4096
MAX_EXPRESSION_NODES: Final = 256
MAX_EXPRESSION_DEPTH: Final = 32
MAX_PROJECTION_BYTES: Final = 64 * 1024
MAX_EXPRESSION_STEPS: Final = 5_000
"""Interpreter steps one evaluation may take: one per AST node visited (those of ``&expr``
arguments included), :data:`FUNCTION_STEPS` per function call, which costs about ten times as
much here. A few milliseconds at most, and far more than a filter over a few hundred items
needs."""
FUNCTION_STEPS: Final = 10

TAG_OPERATORS: Final = frozenset(
    ("eq", "neq", "in", "nin", "ex", "nex", "sw", "ew", "ct", "gt", "gte", "lt", "lte")
)
_BRANCH_OPS: Final = frozenset(("and", "or", "not"))
_SET_OPS: Final = frozenset(("in", "nin"))
_PRESENCE_OPS: Final = frozenset(("ex", "nex"))
_COMPOUND_KEYS: Final = ("events", "tags", "expression")
_RESERVED_HEADER_PREFIX: Final = "sockudo_"


class _EmptyMapping(Mapping[str, Any]):
    """The shared immutable empty map (hashable, so it can be a dataclass default)."""

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "{}"


_EMPTY: Final[Mapping[str, Any]] = _EmptyMapping()
_UNSET: Final[Any] = object()
_decode: Final[Callable[[str], Any]] = json.JSONDecoder().decode
_COMPACT: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

TagTest = Callable[[Mapping[str, str]], bool]
"""A compiled tag-filter node: the message's tags (empty map when it has none) → match."""


class PredicateError(ValueError):
    """An invalid or over-limit subscription filter (answered with ``sockudo:error`` 4000)."""


# --- message view ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class MessageView:
    """The parts of one channel message that predicates see (spec 02 §5.4).

    ``data`` is the V2-typed value (§2.4): a JSON value as itself, a string holding a JSON
    object/array parsed, any other string as the string. ``headers`` should not carry
    ``sockudo_*`` keys (they are removed again from the expression projection regardless).
    Build one view per message and share it between subscribers: the expression projection is
    computed on first use and cached on the view.
    """

    event: str
    channel: str
    data: Any = None
    name: str | None = None
    user_id: str | None = None
    tags: Mapping[str, str] = _EMPTY
    headers: Mapping[str, Any] = _EMPTY
    message_id: str | None = None
    stream_id: str | None = None
    serial: int | None = None
    action: str | None = None
    _document: Any = field(default=_UNSET, init=False, repr=False)

    @classmethod
    def of_delivery(cls, d: Delivery) -> MessageView:
        """The view of a committed message as a V2 subscriber receives it."""
        return cls(
            event=d.event,
            channel=d.channel,
            data=_v2_value(d.data, d.data_is_json),
            user_id=d.user_id,
            tags=d.tags if d.tags else _EMPTY,
            headers=_headers_of(d.extras_json),
            message_id=d.message_id or None,
            stream_id=d.stream_id,
            serial=d.serial,
            action=None,
        )

    def projection(self) -> dict[str, Any] | None:
        """The expression document of §5.4 (keys exactly as the spec shows), or ``None`` when
        its compact JSON exceeds 64 KiB or it cannot be serialised (predicates then fail
        closed). Computed once per view."""
        doc = self._document
        if doc is _UNSET:
            doc = self._build_projection()
            object.__setattr__(self, "_document", doc)
        result: dict[str, Any] | None = doc
        return result

    def _build_projection(self) -> dict[str, Any] | None:
        data = self.data
        if isinstance(data, bytes | bytearray | memoryview):
            data = list(bytes(data))  # binary on JSON: an array of integers 0-255 (§2.4)
        headers = self.headers
        if any(k.startswith(_RESERVED_HEADER_PREFIX) for k in headers):
            headers = {
                k: v for k, v in headers.items() if not k.startswith(_RESERVED_HEADER_PREFIX)
            }
        doc = {
            "event": self.event,
            "channel": self.channel,
            "data": data,
            "name": self.name,
            "userId": self.user_id,
            "tags": dict(self.tags),
            "headers": dict(headers),
            "messageId": self.message_id,
            "streamId": self.stream_id,
            "serial": self.serial,
            "action": self.action,
        }
        try:
            text = _COMPACT(doc)
        except (TypeError, ValueError, RecursionError):
            return None
        if len(text) > MAX_PROJECTION_BYTES:
            return None
        if not text.isascii() and len(text.encode("utf-8")) > MAX_PROJECTION_BYTES:
            return None
        return doc


def _v2_value(data: str, is_json: bool) -> Any:
    """Spec 02 §2.4, V2 column, as a Python value (mirrors ``egress.v2_data``)."""
    if is_json:
        return _decode(data)
    head = data[:1]
    if head.isspace():
        head = data.lstrip()[:1]
    if head == "{" or head == "[":
        try:
            return _decode(data)
        except ValueError:
            return data
    return data


def _headers_of(extras_json: str | None) -> Mapping[str, Any]:
    if not extras_json:
        return _EMPTY
    try:
        extras = _decode(extras_json)
    except ValueError:
        return _EMPTY
    headers = extras.get("headers") if isinstance(extras, dict) else None
    if not isinstance(headers, dict) or not headers:
        return _EMPTY
    return {k: v for k, v in headers.items() if not k.startswith(_RESERVED_HEADER_PREFIX)}


# --- predicate ------------------------------------------------------------------------------


class Predicate:
    """A compiled subscription predicate: the AND of its present components."""

    __slots__ = ("_ast", "_tags", "events", "expression")

    events: frozenset[str] | None
    """Accepted event names (exact, case-sensitive); ``None`` = no event constraint."""
    expression: str | None
    """The JMESPath source, when the predicate has an expression."""

    def __init__(
        self,
        events: frozenset[str] | None,
        tags: TagTest | None,
        expression: str | None,
        ast: dict[str, Any] | None,
    ) -> None:
        self.events = events
        self._tags = tags
        self.expression = expression
        self._ast = ast

    @property
    def has_tags(self) -> bool:
        return self._tags is not None

    @property
    def needs_projection(self) -> bool:
        """Whether :meth:`matches` may evaluate the (per-view, cached) expression projection."""
        return self._ast is not None

    def matches(self, m: MessageView) -> bool:
        events = self.events
        if events is not None and m.event not in events:
            return False
        tags = self._tags
        if tags is not None and not tags(m.tags):
            return False
        ast = self._ast
        if ast is None:
            return True
        doc = m.projection()
        if doc is None:
            return False
        interpreter = getattr(_INTERPRETERS, "interpreter", None) or _new_interpreter()
        interpreter.steps_left = MAX_EXPRESSION_STEPS
        try:
            result = interpreter.visit(ast, doc)
        except Exception:  # any evaluation failure is "no match" (fail closed)
            return False
        return _truthy(result)

    def __repr__(self) -> str:
        return (
            f"Predicate(events={sorted(self.events) if self.events is not None else None!r}, "
            f"tags={self.has_tags}, expression={self.expression!r})"
        )


def _truthy(value: Any) -> bool:
    """JMESPath truthiness: false, null, "", [] and {} are false; everything else (0 too) true."""
    if value is None or value is False:
        return False
    if isinstance(value, str | list | dict):
        return len(value) > 0
    return True


class _OverBudget(Exception):
    """An evaluation ran out of steps."""


class _BudgetedInterpreter(_jp_visitor.TreeInterpreter):  # type: ignore[misc]
    """jmespath's interpreter, counting down one step per node it visits."""

    def __init__(self) -> None:
        super().__init__()
        self.steps_left = 0

    def visit(self, node: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        kind = node["type"]
        left = self.steps_left - (FUNCTION_STEPS if kind == "function_expression" else 1)
        if left < 0:
            raise _OverBudget
        self.steps_left = left
        method = self._method_cache.get(kind)
        if method is None:
            method = self._method_cache[kind] = getattr(self, f"visit_{kind}", self.default_visit)
        return method(node, *args, **kwargs)


_INTERPRETERS = threading.local()
"""One interpreter per thread: the step count is per evaluation, and rewinds evaluate
predicates on reader threads while the event loop evaluates them for fanout."""


def _new_interpreter() -> _BudgetedInterpreter:
    interpreter = _INTERPRETERS.interpreter = _BudgetedInterpreter()
    return interpreter


# --- parsing --------------------------------------------------------------------------------


def parse_predicate(options: Mapping[str, Any]) -> Predicate | None:
    """The predicate of a V2 subscribe ``data`` object, or ``None`` when it sets none.

    Placement (§5.4): ``filter`` if present (JSON ``null`` counts as absent), else
    ``tags_filter``. A ``filter`` with any of ``events``/``tags``/``expression`` is compound;
    otherwise the whole value is a tag-filter node. Raises :class:`PredicateError`.
    """
    raw = options.get("filter")
    if raw is None:
        legacy = options.get("tags_filter")
        if legacy is None:
            return None
        tags = _compile_tag_root(legacy, "tags_filter")
        return None if tags is None else Predicate(None, tags, None, None)
    if not isinstance(raw, Mapping):
        raise PredicateError("filter must be an object")
    if not any(key in raw for key in _COMPOUND_KEYS):
        tags = _compile_tag_root(raw, "filter")
        return None if tags is None else Predicate(None, tags, None, None)
    events = _parse_events(raw.get("events"))
    tags = _compile_tag_root(raw.get("tags"), "filter.tags")
    source, ast = _compile_expression(raw.get("expression"))
    if events is None and tags is None and ast is None:
        return None
    return Predicate(events, tags, source, ast)


def _parse_events(raw: Any) -> frozenset[str] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise PredicateError("filter.events must be an array of event names")
    if len(raw) > MAX_EVENTS:
        raise PredicateError(f"filter.events has more than {MAX_EVENTS} names")
    for name in raw:
        if not isinstance(name, str) or not name:
            raise PredicateError("filter.events must contain non-empty strings")
        if len(name) > MAX_EVENT_CHARS:
            raise PredicateError(f"filter.events name longer than {MAX_EVENT_CHARS} characters")
    return frozenset(raw) if raw else None


# --- tag filter -----------------------------------------------------------------------------


def _compile_tag_root(raw: Any, where: str) -> TagTest | None:
    """A top-level tag filter; ``null`` or ``{}`` is "no constraint"."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise PredicateError(f"{where} must be a filter node object")
    if not raw:
        return None
    counter = [0]
    return _compile_node(raw, 1, counter, where)


def _compile_node(node: Any, depth: int, counter: list[int], where: str) -> TagTest:
    if not isinstance(node, Mapping):
        raise PredicateError(f"{where}: a filter node must be an object")
    counter[0] += 1
    if counter[0] > MAX_TAG_NODES:
        raise PredicateError(f"{where}: more than {MAX_TAG_NODES} filter nodes")
    if depth > MAX_TAG_DEPTH:
        raise PredicateError(f"{where}: filter nested deeper than {MAX_TAG_DEPTH}")
    op = node.get("op")
    if op is not None:
        return _compile_branch(op, node.get("nodes"), depth, counter, where)
    return _compile_leaf(node, where)


def _compile_branch(op: Any, nodes: Any, depth: int, counter: list[int], where: str) -> TagTest:
    if not isinstance(op, str) or op not in _BRANCH_OPS:
        raise PredicateError(f"{where}: unknown op {op!r} (expected and, or, not)")
    if nodes is None:
        nodes = []
    if not isinstance(nodes, list):
        raise PredicateError(f"{where}: nodes must be an array")
    if op == "not":
        if len(nodes) != 1:
            raise PredicateError(f"{where}: not takes exactly 1 node, got {len(nodes)}")
        child = _compile_node(nodes[0], depth + 1, counter, where)
        return lambda tags: not child(tags)
    if not nodes:
        raise PredicateError(f"{where}: {op} needs at least 1 node")
    children = tuple(_compile_node(n, depth + 1, counter, where) for n in nodes)
    if len(children) == 1:
        return children[0]
    if op == "and":
        if len(children) == 2:
            a, b = children
            return lambda tags: a(tags) and b(tags)

        def all_of(tags: Mapping[str, str]) -> bool:
            # A plain loop: all() over a generator would allocate per call.
            for child in children:  # noqa: SIM110
                if not child(tags):
                    return False
            return True

        return all_of
    if len(children) == 2:
        a, b = children
        return lambda tags: a(tags) or b(tags)

    def any_of(tags: Mapping[str, str]) -> bool:
        for child in children:  # noqa: SIM110
            if child(tags):
                return True
        return False

    return any_of


def _compile_leaf(node: Mapping[str, Any], where: str) -> TagTest:
    key = node.get("key")
    if not isinstance(key, str) or not key:
        raise PredicateError(f"{where}: a leaf needs a non-empty string key")
    if len(key.encode("utf-8")) > MAX_TAG_KEY_BYTES:
        raise PredicateError(f"{where}: key longer than {MAX_TAG_KEY_BYTES} bytes")
    cmp = node.get("cmp")
    if cmp is None:
        raise PredicateError(f"{where}: a leaf needs cmp")
    if not isinstance(cmp, str) or cmp not in TAG_OPERATORS:
        raise PredicateError(f"{where}: unknown cmp {cmp!r}")
    if cmp in _PRESENCE_OPS:
        if cmp == "ex":
            return lambda tags: key in tags
        return lambda tags: key not in tags
    if cmp in _SET_OPS:
        raw_vals = node.get("vals")
        if raw_vals is None:
            raise PredicateError(f"{where}: {cmp} needs vals")
        if not isinstance(raw_vals, list):
            raise PredicateError(f"{where}: vals must be an array")
        if not raw_vals:
            raise PredicateError(f"{where}: {cmp} needs non-empty vals")
        if len(raw_vals) > MAX_TAG_VALS:
            raise PredicateError(f"{where}: more than {MAX_TAG_VALS} vals")
        vals = frozenset(_tag_value(v, where) for v in raw_vals)
        if cmp == "in":
            return lambda tags: tags.get(key) in vals
        return lambda tags: tags.get(key) not in vals
    raw_val = node.get("val")
    if raw_val is None:
        raise PredicateError(f"{where}: {cmp} needs val")
    val = _tag_value(raw_val, where)
    if not val:
        raise PredicateError(f"{where}: {cmp} needs a non-empty val")
    if cmp == "eq":
        return lambda tags: tags.get(key) == val
    if cmp == "neq":
        return lambda tags: tags.get(key) != val
    if cmp == "sw":
        return lambda tags: (t := tags.get(key)) is not None and t.startswith(val)
    if cmp == "ew":
        return lambda tags: (t := tags.get(key)) is not None and t.endswith(val)
    if cmp == "ct":
        return lambda tags: (t := tags.get(key)) is not None and val in t
    return _numeric_leaf(key, cmp, _parse_number(val))


def _numeric_leaf(key: str, cmp: str, bound: float | None) -> TagTest:
    if bound is None:  # val is not a number: the comparison is never true (§5.4)
        return lambda tags: False
    b: float = bound

    def number(tags: Mapping[str, str]) -> float | None:
        t = tags.get(key)
        return None if t is None else _parse_number(t)

    if cmp == "gt":
        return lambda tags: (x := number(tags)) is not None and x > b
    if cmp == "gte":
        return lambda tags: (x := number(tags)) is not None and x >= b
    if cmp == "lt":
        return lambda tags: (x := number(tags)) is not None and x < b
    return lambda tags: (x := number(tags)) is not None and x <= b


def _parse_number(text: str) -> float | None:
    """A float in the plain grammar (sign, digits, point, exponent, inf/nan): no surrounding
    whitespace, no ``_`` separators and no non-ASCII digits, which Python's ``float`` would
    otherwise accept."""
    if not text or not text.isascii() or "_" in text or text[0].isspace() or text[-1].isspace():
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _tag_value(raw: Any, where: str) -> str:
    """``val``/``vals`` member: a string, or a number/bool converted to its JSON text."""
    if isinstance(raw, str):
        text = raw
    elif isinstance(raw, bool):
        text = "true" if raw else "false"
    elif isinstance(raw, int | float):
        text = json.dumps(raw)
    else:
        raise PredicateError(f"{where}: filter values must be strings, numbers or booleans")
    if len(text.encode("utf-8")) > MAX_TAG_VALUE_BYTES:
        raise PredicateError(f"{where}: value longer than {MAX_TAG_VALUE_BYTES} bytes")
    return text


# --- expression -----------------------------------------------------------------------------

_FUNCTION_TABLE: Final[Mapping[str, Any]] = _jp_functions.Functions().FUNCTION_TABLE


def _compile_expression(raw: Any) -> tuple[str | None, dict[str, Any] | None]:
    if raw is None:
        return None, None
    if isinstance(raw, str):
        source = raw
    elif isinstance(raw, Mapping):
        language = raw.get("language")
        if language is not None and (
            not isinstance(language, str) or language.lower() != "jmespath"
        ):
            raise PredicateError(f"filter.expression: unsupported language {language!r}")
        raw_source = raw.get("source")
        if not isinstance(raw_source, str):
            raise PredicateError("filter.expression.source must be a string")
        source = raw_source
    else:
        raise PredicateError("filter.expression must be a string or {language, source}")
    if not source.strip():
        raise PredicateError("filter.expression is empty")
    if len(source.encode("utf-8")) > MAX_EXPRESSION_BYTES:
        raise PredicateError(f"filter.expression longer than {MAX_EXPRESSION_BYTES} bytes")
    try:
        parsed = _jp_parser.Parser().parse(source)
    except RecursionError:
        raise PredicateError("filter.expression nested too deeply") from None
    except Exception as exc:  # LexerError, ParseError, IncompleteExpressionError, ...
        raise PredicateError(f"filter.expression is not valid JMESPath: {exc}") from None
    ast: dict[str, Any] = parsed.parsed
    _check_ast(ast)
    return source, ast


def _check_ast(root: dict[str, Any]) -> None:
    """AST limits (≤256 nodes, depth ≤32, root at depth 1) and known functions with a valid
    argument count (Python's jmespath only finds those at evaluation time)."""
    count = 0
    stack: list[tuple[dict[str, Any], int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_EXPRESSION_NODES:
            raise PredicateError(f"filter.expression has more than {MAX_EXPRESSION_NODES} nodes")
        if depth > MAX_EXPRESSION_DEPTH:
            raise PredicateError(f"filter.expression nested deeper than {MAX_EXPRESSION_DEPTH}")
        children = [c for c in node.get("children", ()) if isinstance(c, dict)]
        if node.get("type") == "function_expression":
            _check_function(node.get("value"), len(children))
        stack.extend((c, depth + 1) for c in children)


def _check_function(name: Any, argc: int) -> None:
    spec = _FUNCTION_TABLE.get(name) if isinstance(name, str) else None
    if spec is None:
        raise PredicateError(f"filter.expression: unknown function {name!r}")
    signature = spec["signature"]
    variadic = bool(signature) and bool(signature[-1].get("variadic"))
    if (variadic and argc < len(signature)) or (not variadic and argc != len(signature)):
        raise PredicateError(f"filter.expression: wrong number of arguments to {name}()")
