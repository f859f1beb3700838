"""The history route's shortcuts give what the general code gives, byte for byte.

The page envelope is formatted from a template instead of built as dicts and encoded; stored
items are cut out of their rows with C getters; JSON is encoded by a prebuilt C encoder; the
route reuses the query the signature check decoded instead of parsing it again; ``auth``
decodes queries without escapes in one piece and signs with the one-shot HMAC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
from starlette.requests import Request

from projections.folds.state import HistoryRow, StreamHead, stored_item
from projections.reads import history
from projections.reads.history import HistoryQuery, read_page, read_page_json, render_json
from projections.store import keys
from projections.store.kv import MemoryKV
from projections.store.rocks import Stall
from sockudo import auth
from sockudo.http.signed import query_params
from tests.unit.test_history_page_json import APP, CHANNEL, fold_all, pages, publish


def _head(**kw: Any) -> StreamHead:
    fields: dict[str, Any] = {
        "stream_id": "0b9f0d3c-4a7e-4f43-9d7c-1a2b3c4d5e6f",
        "generation": 3,
        "next_h": 2001,
        "next_d": 2001,
        "durable_state": "healthy",
        "reason": None,
        "last_transition_at_ms": None,
        "evicted_through_serial": None,
        "evicted_through_time_ms": None,
        "retained_count": 2000,
        "retained_bytes": 400_000,
        "oldest_serial": 1,
        "oldest_ts": 1_700_000_000_000,
        "newest_serial": 2000,
        "newest_ts": 1_700_000_009_999,
    }
    fields.update(kw)
    return StreamHead(**fields)


HEADS: list[StreamHead | None] = [
    None,
    _head(),
    _head(oldest_serial=None, newest_serial=None, oldest_ts=None, newest_ts=None),
    _head(evicted_through_serial=40, evicted_through_time_ms=1_700_000_000_400),
    _head(evicted_through_serial=40, evicted_through_time_ms=None),
    _head(stream_id='strëam "quoted" \\ 😀 \u2028', reason='réason \x01 "x"', generation=0),
    _head(retained_count=0, retained_bytes=0, last_transition_at_ms=1_700_000_000_001),
    _head(reason="recovered"),
]

QUERIES = [
    HistoryQuery(limit=100),
    HistoryQuery(limit=1, direction="oldest_first"),
    HistoryQuery(limit=7, start_serial=30),
    HistoryQuery(limit=7, start_serial=41, end_serial=90),
    HistoryQuery(limit=5, start_time_ms=1_700_000_000_300, end_time_ms=1_700_000_000_900),
    HistoryQuery(limit=5, start_time_ms=1_700_000_000_500),
    HistoryQuery(limit=5, start_serial=0, end_serial=0, start_time_ms=0, end_time_ms=0),
    HistoryQuery(limit=5, start_serial=2**63, end_time_ms=2**70),
    HistoryQuery(limit=3, cursor="whatever: the envelope does not repeat it"),
]


@pytest.mark.parametrize("head", HEADS, ids=range(len(HEADS)))
@pytest.mark.parametrize("query", QUERIES, ids=range(len(QUERIES)))
@pytest.mark.parametrize("has_more", [False, True])
@pytest.mark.parametrize(
    ("app_id", "channel"),
    [(APP, CHANNEL), ("123456", 'private-ünï "c" \\ 😀'), ("", "")],
)
def test_the_envelope_template_renders_like_the_encoded_envelope(
    head: StreamHead | None, query: HistoryQuery, has_more: bool, app_id: str, channel: str
) -> None:
    for stall in (None, Stall("projection_error", 17, "detail", 1_700_000_000_123)):
        state = history.stream_state(head, stall, "node-ü")
        for rows in ([], [(b"k" * 12 + keys.u64(1901), b"")]):
            page = history._Rows(head, state, rows, 12, has_more)
            expected = render_json(history._envelope(app_id, channel, query, page))
            assert b"{" + history._envelope_json(app_id, channel, query, page) == expected


def test_the_template_cursor_is_the_encoded_cursor() -> None:
    # Non-ASCII text in a cursor is escaped, as json.dumps does by default.
    head = _head(stream_id="strëam 😀")
    page = history._Rows(head, {}, [(keys.u64(77), b"")], 0, True)
    query = HistoryQuery(limit=2, direction="oldest_first", start_serial=5)
    envelope = json.loads(b"{" + history._envelope_json("äpp", "chän", query, page))
    cursor = envelope["next_cursor"]
    assert cursor == history.encode_cursor(
        {
            "version": 1,
            "app_id": "äpp",
            "channel": "chän",
            "stream_id": "strëam 😀",
            "serial": 77,
            "direction": "oldest_first",
            "bounds": query.bounds(),
        }
    )
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    assert raw.isascii()
    assert history.decode_cursor(cursor)["stream_id"] == "strëam 😀"


@pytest.mark.parametrize(
    "value",
    [
        {"a": [1, 2.5, -0.0, 1e300, None, True, False, 'ü "q" \\ \u2028 😀', {}]},
        [],
        "top-level ü string",
        12,
        None,
        {"nested": {"deep": [{"x": "y"}]}, "": ""},
    ],
)
def test_the_prebuilt_encoders_write_what_json_writes(value: Any) -> None:
    reference = json.JSONEncoder(
        ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    )
    assert render_json(value) == reference.encode(value).encode()
    if isinstance(value, dict):
        payload = {"version": 1, **value}
        encoded = history.encode_cursor(payload)
        raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        assert encoded == base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_the_prebuilt_encoder_refuses_what_json_refuses() -> None:
    for bad in (math.nan, {"x": math.inf}, [-math.inf]):
        with pytest.raises(ValueError, match="JSON compliant"):
            render_json(bad)
    with pytest.raises(TypeError, match="not JSON serializable"):
        render_json({"x": object()})


def test_the_row_getters_read_what_stored_item_reads() -> None:
    message = b'{"event":"e","data":"d"}'
    for prefix in (b"", b'{"stream_id":"s","message":', b"x" * 70_000):
        raw = HistoryRow(message, 7, 8, 9, prefix).encode()
        item = stored_item(raw)
        assert (history._ITEM_LENGTH(raw) == history._NO_ITEM) is (item is None)
        if item is not None:
            assert history._ITEM(raw) == item


def test_a_page_mixing_rows_with_and_without_items_renders_like_the_decoded_page() -> None:
    kv = MemoryKV()
    fold_all(kv, [publish(i) for i in range(12)])
    head = history.read_head(kv, APP, CHANNEL)
    assert head is not None
    ck = keys.channel_prefix(APP, CHANNEL)
    key = keys.history_key(ck, head.generation, 5)
    stored = kv.get(keys.HISTORY, key)
    assert stored is not None
    row = HistoryRow.decode(stored)
    # The same row without its page item: that one row takes the round trip.
    kv.put(
        keys.HISTORY, key, HistoryRow(row.message_json, row.published_at_ms, row.offset).encode()
    )
    for query in (
        HistoryQuery(limit=100),
        HistoryQuery(limit=4, direction="oldest_first"),
        HistoryQuery(limit=1, start_serial=5, end_serial=5),
    ):
        fast, slow = pages(kv, query)
        assert fast == slow
    with_items = read_page_json(kv, APP, CHANNEL, HistoryQuery(limit=3), stall=None, node_id="n")
    assert json.loads(with_items) == read_page(
        kv, APP, CHANNEL, HistoryQuery(limit=3), stall=None, node_id="n"
    )


# --- the query, decoded once ---------------------------------------------------------------


def _slow_parse(raw: bytes) -> list[tuple[str, str]]:
    """``auth.parse_query`` as it was: every component unquoted on its own."""
    pairs = []
    for part in raw.split(b"&"):
        if part:
            key, _, value = part.partition(b"=")
            pairs.append(
                tuple(unquote_to_bytes(c.replace(b"+", b" ")).decode() for c in (key, value))
            )
    return pairs  # type: ignore[return-value]


QUERY_STRINGS = [
    b"",
    b"&&a&b=",
    b"limit=100&direction=oldest_first&auth_key=k&auth_timestamp=1&auth_signature=ab",
    b"a=1&A=2&a=3&b==x=y&=v&k=",
    b"cursor=eyJhIjoxfQ&limit=5",
    b"a=x+y&b=x%2By&c=%20&d=%zz&e=%&f=%C3%A9t%C3%A9&g=100%",
    b"direction=%6fldest_first&limit=%31%30",
    b"x=\xc3\xa9t\xc3\xa9&y=plain",
]


@pytest.mark.parametrize("raw", QUERY_STRINGS)
def test_parse_query_decodes_like_component_by_component(raw: bytes) -> None:
    assert auth.parse_query(raw) == _slow_parse(raw)
    assert auth.parse_query(raw.decode()) == _slow_parse(raw)


@pytest.mark.parametrize("raw", [b"a=\xff", b"a=%FF", b"\xc3=1", b"ok=1&a=%C3"])
def test_parse_query_refuses_what_is_not_utf8_either_way(raw: bytes) -> None:
    with pytest.raises(UnicodeDecodeError):
        auth.parse_query(raw)


def test_hmac_is_the_hmac_object_digest() -> None:
    for secret, message in (("s", b""), ("sëcret", "GET\n/apps/x\na=1"), ("k" * 200, b"\xff" * 99)):
        data = message.encode() if isinstance(message, str) else message
        expected = hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()
        assert auth.hmac_sha256_hex(secret, message) == expected


def _request(query: bytes) -> Request:
    return Request({"type": "http", "method": "GET", "query_string": query, "headers": []})


@pytest.mark.parametrize("raw", [q for q in QUERY_STRINGS if q.isascii()])
def test_the_decoded_query_is_what_starlette_parses_from_an_ascii_query(raw: bytes) -> None:
    request = _request(raw)
    params = query_params(request, auth.parse_query(raw))
    assert isinstance(params, dict)
    assert params == dict(request.query_params)
    for name in ("a", "limit", "direction", "missing", "", "A"):
        assert params.get(name) == request.query_params.get(name)


def test_a_query_with_raw_non_ascii_bytes_is_parsed_by_starlette() -> None:
    # Starlette reads such bytes as Latin-1, the signature check as UTF-8: the route keeps
    # Starlette's reading (its error messages quote it).
    raw = b"direction=\xc3\xa9&limit=1"
    request = _request(raw)
    params = query_params(request, auth.parse_query(raw))
    assert params is request.query_params
    assert params["direction"] == "Ã©"
