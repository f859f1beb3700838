"""The real ``sockudo-http-python`` 2.2.0 server SDK against a node on both log backends.

Spec 03 §1-4 and §8.1-8.2 as the SDK drives them (§9.1): trigger acknowledgements, idempotent
trigger and batch, history paging, history state, reset and purge, error envelopes; numbered
comments name the acceptance checks of spec 03 §11 each test reproduces. The SDK never raises for
an HTTP failure: it answers with a ``Result`` whose ``status`` is ``client_error`` (4xx other
than 401/403), ``authentication_error`` (401/403) or ``server_error`` (5xx, after its retries),
and whose ``status_code`` and JSON body carry the server's answer; ``SockudoError`` is raised only
for what it refuses client-side. Where the SDK cannot express a request, ``SignedClient`` signs
it instead and a comment says why.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sockudo_http_python import (
    ChannelParams,
    ChannelsParams,
    Event,
    HistoryParams,
    MessageExtras,
    Result,
    Sockudo,
    SockudoError,
    SockudoOptions,
    Status,
    TriggerOptions,
)
from websockets.asyncio.client import connect

from sockudo.events import codec
from sockudo.events.channel import Origin, StreamStateMarked
from sockudo.log.base import EventLog
from sockudo.log.partitioning import channel_key, partition_for
from tests.support.api import SignedClient
from tests.support.node import APP_ID, APP_KEY, APP_SECRET, NodeProcess
from tests.support.ws import (
    BACKENDS,
    established,
    node_for_backend,
    nothing_more,
    recv_until,
    subscribe,
    ws_url,
)

# Two more apps: one with durable history off (check 11), one whose app-level retention keeps a
# single message while its `chat` namespace keeps three (checks 12 and 56).
HIST_OFF = ("hist-off", "hist-off-key", "hist-off-secret")
NS_APP = ("ns-app", "ns-key", "ns-secret")
EXTRA_APPS = f"""
[[app_manager.array.apps]]
id = "{HIST_OFF[0]}"
key = "{HIST_OFF[1]}"
secret = "{HIST_OFF[2]}"

[app_manager.array.apps.policy.history]
enabled = false

[[app_manager.array.apps]]
id = "{NS_APP[0]}"
key = "{NS_APP[1]}"
secret = "{NS_APP[2]}"

[app_manager.array.apps.policy.history]
max_messages_per_channel = 1

[[app_manager.array.apps.policy.channels.channel_namespaces]]
name = "chat"

[app_manager.array.apps.policy.channels.channel_namespaces.history]
max_messages_per_channel = 3
"""


@pytest.fixture(scope="module", params=BACKENDS)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    yield from node_for_backend(
        request, Path(tmp_path_factory.mktemp("sdk-http")) / "node", extra_config=EXTRA_APPS
    )


def client_for(node: NodeProcess, app_id: str, key: str, secret: str) -> Sockudo:
    return Sockudo(app_id, key, secret, options=SockudoOptions(host="127.0.0.1", port=node.port))


@pytest.fixture(scope="module")
def sdk(node: NodeProcess) -> Iterator[Sockudo]:
    client = client_for(node, APP_ID, APP_KEY, APP_SECRET)
    yield client
    client.close()


@pytest.fixture(scope="module")
def api(node: NodeProcess) -> Iterator[SignedClient]:
    client = SignedClient(node.base_url, APP_ID, APP_KEY, APP_SECRET)
    yield client
    client.close()


# ------------------------------------------------------------------------------------ helpers


def fresh(prefix: str = "sdk") -> str:
    """A channel name no other test uses (the node is shared by the module)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ok(result: Result) -> Any:
    """The JSON body of a successful answer."""
    assert (result.status, result.status_code) == (Status.SUCCESS, 200), result.message
    return result.json()


def failed(result: Result, status: int, code: str) -> dict[str, Any]:
    """Assert the SDK surfaced ``status`` with the spec 03 §0 error envelope; the body."""
    assert result.status_code == status, result.message
    if status in (401, 403):
        kind = Status.AUTHENTICATION_ERROR
    elif status < 500:
        kind = Status.CLIENT_ERROR
    else:
        kind = Status.SERVER_ERROR
    assert result.status is kind
    assert not result.ok
    body = result.json()
    assert isinstance(body, dict), result.message
    assert body["code"] == code, body
    assert body["status"] == status, body
    assert isinstance(body["error"], str), body
    assert body["error"], body
    return body


def trigger(sdk: Sockudo, channel: str, data: Any, **options: Any) -> dict[str, Any]:
    """Publish one ``ev`` with ``info`` and return this channel's acknowledgement."""
    body = ok(
        sdk.trigger(channel, "ev", data, TriggerOptions(info="subscription_count", **options))
    )
    ack: dict[str, Any] = body["channels"][channel]
    return ack


def publish_n(sdk: Sockudo, channel: str, n: int, gap_s: float = 0.0) -> list[dict[str, Any]]:
    acks = []
    for i in range(1, n + 1):
        acks.append(trigger(sdk, channel, f"m{i}"))
        if gap_s:
            time.sleep(gap_s)
    return acks


def history(sdk: Sockudo, channel: str, **params: Any) -> dict[str, Any]:
    page: dict[str, Any] = ok(sdk.get_channel_history(channel, HistoryParams(**params)))
    return page


def history_raw(sdk: Sockudo, channel: str, params: dict[str, str]) -> Result:
    """A history GET with query parameters ``HistoryParams`` has no field for, still signed by
    the SDK (its generic ``get`` percent-encodes nothing itself, so the path is encoded here)."""
    return sdk.get(f"/channels/{quote(channel, safe='')}/history", params)


def state(sdk: Sockudo, channel: str) -> dict[str, Any]:
    body: dict[str, Any] = ok(sdk.get_channel_history_state(channel))
    return body


def serials(page: dict[str, Any]) -> list[int]:
    return [item["serial"] for item in page["items"]]


def signed_post(api: SignedClient, path: str, body: dict[str, Any]) -> Result:
    """A POST the SDK cannot shape, signed by ``SignedClient``, seen as the SDK would see it."""
    response = api.request("POST", path, body=json.dumps(body).encode())
    return Result.from_response(response)


def cursor_token(payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# --------------------------------------------------------------------- publish acknowledgement


def test_trigger_with_info_acknowledges_ids_and_serials(sdk: Sockudo) -> None:
    channel = fresh()
    acks = publish_n(sdk, channel, 3)
    assert [a["history_serial"] for a in acks] == [1, 2, 3]
    assert [a["delivery_serial"] for a in acks] == [1, 2, 3]  # D = H before any mutation
    assert len({a["stream_id"] for a in acks}) == 1
    assert isinstance(acks[0]["stream_id"], str)
    assert acks[0]["stream_id"]
    assert len({a["message_id"] for a in acks}) == 3
    assert all(a["subscription_count"] == 0 for a in acks)
    # Without `info` (or `message_id`) the answer is Pusher's empty object.
    assert ok(sdk.trigger(channel, "ev", "plain")) == {}
    assert state(sdk, channel)["stream"]["next_serial"] == 5

    # One trigger to two channels: each channel gets its own stream and first serial.
    a, b = fresh(), fresh()
    body = ok(sdk.trigger([a, b], "ev", {"x": 1}, TriggerOptions(info="subscription_count")))
    assert set(body["channels"]) == {a, b}
    assert [body["channels"][c]["history_serial"] for c in (a, b)] == [1, 1]
    assert body["channels"][a]["stream_id"] != body["channels"][b]["stream_id"]
    # One message per channel: V2 clients dedupe by message_id across all their channels, so
    # a shared generated id would hide the second copy (spec 02 §4.1, §12.2).
    assert body["channels"][a]["message_id"] != body["channels"][b]["message_id"]


def test_a_supplied_message_id_is_acknowledged_and_kept(sdk: Sockudo, api: SignedClient) -> None:
    # `TriggerOptions` has no `message_id` field, so this publish is signed by SignedClient.
    channel = fresh()
    response = api.publish({"name": "ev", "channel": channel, "data": "x", "message_id": "mid-1"})
    assert response.status_code == 200, response.text
    ack = response.json()["channels"][channel]
    assert (ack["message_id"], ack["history_serial"], ack["delivery_serial"]) == ("mid-1", 1, 1)
    item = history(sdk, channel)["items"][0]
    assert item["message_id"] == item["message"]["message_id"] == "mid-1"


def test_history_off_acknowledges_delivery_serial_without_history_serial(
    node: NodeProcess,
) -> None:
    client = client_for(node, *HIST_OFF)
    try:
        channel = fresh()
        ack = trigger(client, channel, "x")
        assert ack["delivery_serial"] == 1
        assert "history_serial" not in ack
        assert trigger(client, channel, "y")["delivery_serial"] == 2
    finally:
        client.close()


# --------------------------------------------------------------------- idempotency (§8.1-8.2)


async def test_idempotent_trigger_answers_the_original_and_publishes_once(
    node: NodeProcess, sdk: Sockudo
) -> None:
    # Check 51.
    channel, other = fresh(), fresh()
    key = f"k1-{uuid.uuid4().hex}"
    async with connect(ws_url(node)) as ws:
        await established(ws)
        assert (await subscribe(ws, channel))["event"] == "pusher_internal:subscription_succeeded"
        opts = TriggerOptions(info="subscription_count", idempotency_key=key)
        first = await asyncio.to_thread(sdk.trigger, channel, "ev", "once", opts)
        again = await asyncio.to_thread(sdk.trigger, channel, "ev", "once", opts)
        assert ok(first) == ok(again)
        assert ok(first)["channels"][channel]["subscription_count"] == 1
        frame = await recv_until(ws, lambda f: f.get("event") == "ev")
        assert (frame["channel"], frame["data"]) == (channel, "once")
        await nothing_more(ws, 0.5)

        # `socket_id` and `info` are not part of the fingerprint: still the same request, and
        # the answer is rebuilt from the original outcome.
        retry = await asyncio.to_thread(
            sdk.trigger, channel, "ev", "once", TriggerOptions(idempotency_key=key)
        )
        assert ok(retry) == {}
        retry_info = await asyncio.to_thread(
            sdk.trigger,
            channel,
            "ev",
            "once",
            TriggerOptions(info="subscription_count", idempotency_key=key, socket_id="1.2"),
        )
        assert ok(retry_info) == ok(first)
        await nothing_more(ws, 0.3)

    page = history(sdk, channel)
    assert serials(page) == [1]
    assert page["items"][0]["message_id"] == ok(first)["channels"][channel]["message_id"]
    assert "idempotency_key" not in page["items"][0]["message"]

    # Keys are app-scoped: the same key for another channel is a conflict and publishes nothing.
    elsewhere = sdk.trigger(other, "ev", "once", TriggerOptions(idempotency_key=key))
    failed(elsewhere, 409, "idempotency_conflict")
    assert state(sdk, other)["stream"]["next_serial"] is None


def test_idempotency_key_conflicts_and_validation(sdk: Sockudo) -> None:
    # Check 52.
    channel = fresh()
    key = f"k-{uuid.uuid4().hex}"
    trigger(sdk, channel, "original", idempotency_key=key)
    conflict = sdk.trigger(channel, "ev", "changed", TriggerOptions(idempotency_key=key))
    failed(conflict, 409, "idempotency_conflict")
    assert serials(history(sdk, channel)) == [1]

    too_long = sdk.trigger(channel, "ev", "x", TriggerOptions(idempotency_key="k" * 129))
    body = failed(too_long, 400, "invalid_input")
    assert body["error"] == "Idempotency key exceeds maximum length of 128 characters"
    # The SDK sends an empty key in the body (and no header).
    empty = sdk.trigger(channel, "ev", "x", TriggerOptions(idempotency_key=""))
    body = failed(empty, 400, "invalid_input")
    assert body["error"] == "Idempotency key must not be empty"
    assert state(sdk, channel)["stream"]["next_serial"] == 2

    # Exactly 128 bytes is accepted.
    longest = "a" * 96 + uuid.uuid4().hex
    assert len(longest) == 128
    assert trigger(sdk, channel, "x", idempotency_key=longest)["history_serial"] == 2


def test_concurrent_duplicates_publish_once(sdk: Sockudo) -> None:
    # §8.1: duplicates racing the first request wait for its result (or get 503 backpressure,
    # which the SDK retries); the fold lets the first record win, so one row and one answer.
    channel, second = fresh(), fresh()
    key = f"race-{uuid.uuid4().hex}"
    opts = TriggerOptions(info="subscription_count", idempotency_key=key)

    def send(_: int) -> Result:
        return sdk.trigger([channel, second], "ev", "raced", opts)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(send, range(8)))
    answers = [ok(r) for r in results if r.status_code == 200]
    for r in results:
        if r.status_code != 200:
            failed(r, 503, "backpressure")
    assert answers, [r.message for r in results]
    assert all(a == answers[0] for a in answers), answers
    assert set(answers[0]["channels"]) == {channel, second}
    assert serials(history(sdk, channel)) == [1]
    assert serials(history(sdk, second)) == [1]
    # A multi-channel key is one request: one of its channels alone is other content.
    alone = sdk.trigger(channel, "ev", "raced", TriggerOptions(idempotency_key=key))
    failed(alone, 409, "idempotency_conflict")


def test_sdk_generated_idempotency_keys_are_accepted(node: NodeProcess) -> None:
    # §8.1-8.2: `idempotency_key=True` sends a UUID, `auto_idempotency` sends "{hex}:{n}" per
    # trigger and "{hex}:{n}:{index}" per batch item; each call is a new request.
    client = Sockudo(
        APP_ID,
        APP_KEY,
        APP_SECRET,
        options=SockudoOptions(host="127.0.0.1", port=node.port, auto_idempotency=True),
    )
    try:
        channel = fresh()
        assert trigger(client, channel, "same")["history_serial"] == 1
        assert trigger(client, channel, "same")["history_serial"] == 2
        assert trigger(client, channel, "same", idempotency_key=True)["history_serial"] == 3
        ok(client.trigger_batch([Event(channel, "ev", "b"), Event(channel, "ev", "b")]))
        assert state(client, channel)["stream"]["next_serial"] == 6
    finally:
        client.close()


def test_a_rejected_keyed_publish_claims_nothing(sdk: Sockudo) -> None:
    # Check 53: the SDK does not validate channel names, so the server rejects this one.
    key = f"k2-{uuid.uuid4().hex}"
    bad = sdk.trigger("bad name!", "ev", "x", TriggerOptions(idempotency_key=key))
    failed(bad, 400, "invalid_input")
    channel = fresh()
    ack = trigger(sdk, channel, "x", idempotency_key=key)
    assert ack["history_serial"] == 1
    assert [i["message"]["data"] for i in history(sdk, channel)["items"]] == ["x"]


def test_batch_items_with_a_seen_key_are_skipped(sdk: Sockudo) -> None:
    # Check 54 (and spec 01 §5.3: a skipped item's response slot is `{}`).
    channel = fresh()
    seen = f"seen-{uuid.uuid4().hex}"
    trigger(sdk, channel, "two", idempotency_key=seen)
    batch = [
        Event(channel, "ev", "one", info="subscription_count", idempotency_key=f"a-{seen}"),
        Event(channel, "ev", "two", info="subscription_count", idempotency_key=seen),
        Event(channel, "ev", "three", info="subscription_count", idempotency_key=f"c-{seen}"),
    ]
    body = ok(sdk.trigger_batch(batch))
    assert body == {"batch": [{"subscription_count": 0}, {}, {"subscription_count": 0}]}
    page = history(sdk, channel, direction="oldest_first")
    assert [i["message"]["data"] for i in page["items"]] == ["two", "one", "three"]
    assert serials(page) == [1, 2, 3]

    # Replaying the whole batch publishes nothing new.
    ok(sdk.trigger_batch(batch))
    assert state(sdk, channel)["stream"]["next_serial"] == 4

    # A seen key with other content rejects the whole batch before anything is published.
    clash = [
        Event(channel, "ev", "four", idempotency_key=f"d-{seen}"),
        Event(channel, "ev", "not two", idempotency_key=seen),
    ]
    failed(sdk.trigger_batch(clash), 409, "idempotency_conflict")
    assert state(sdk, channel)["stream"]["next_serial"] == 4


# ------------------------------------------------------------------------- history paging (§3.1)


def test_history_pages_with_cursor_in_both_directions(sdk: Sockudo) -> None:
    # Checks 1 and 2.
    channel = fresh()
    publish_n(sdk, channel, 4)
    first = history(sdk, channel, limit=2, direction="newest_first")
    assert serials(first) == [4, 3]
    assert (first["has_more"], first["direction"], first["limit"]) == (True, "newest_first", 2)
    assert isinstance(first["next_cursor"], str)
    assert first["next_cursor"]
    assert first["continuity"]["complete"] is False
    rest = history(sdk, channel, limit=2, direction="newest_first", cursor=first["next_cursor"])
    assert serials(rest) == [2, 1]
    assert (rest["has_more"], rest["next_cursor"]) == (False, None)
    assert rest["continuity"]["complete"] is True
    assert rest["continuity"]["truncated_by_retention"] is False

    oldest = history(sdk, channel, limit=2, direction="oldest_first")
    assert serials(oldest) == [1, 2]
    assert oldest["direction"] == "oldest_first"
    for alias in ("forwards", "forward", "Forwards"):
        page = history(sdk, channel, limit=2, direction=alias)
        assert (serials(page), page["direction"]) == ([1, 2], "oldest_first"), alias
    for alias in ("backwards", "reverse", "NEWEST_FIRST"):
        page = history(sdk, channel, limit=2, direction=alias)
        assert (serials(page), page["direction"]) == ([4, 3], "newest_first"), alias
    following = history(
        sdk, channel, limit=2, direction="oldest_first", cursor=oldest["next_cursor"]
    )
    assert serials(following) == [3, 4]
    assert following["has_more"] is False

    # Default direction is newest first.
    assert serials(history(sdk, channel)) == [4, 3, 2, 1]


def test_history_items_carry_the_stored_message(sdk: Sockudo) -> None:
    channel = fresh()
    ack = trigger(
        sdk,
        channel,
        {"id": "ord_1", "n": 2},  # the SDK sends non-string data as compact JSON text
        idempotency_key=f"k-{uuid.uuid4().hex}",
        socket_id="123.456",
        tags={"region": "eu"},
        extras=MessageExtras(headers={"trace": "t-1"}),
    )
    page = history(sdk, channel)
    (item,) = page["items"]
    assert item["stream_id"] == ack["stream_id"]
    assert item["serial"] == 1
    assert item["message_id"] == ack["message_id"]
    assert item["event_name"] == "ev"
    assert item["operation_kind"] == "append"
    assert isinstance(item["published_at_ms"], int)
    assert abs(item["published_at_ms"] - time.time() * 1000) < 60_000
    message = item["message"]
    assert message["event"] == "ev"
    assert message["channel"] == channel
    assert message["data"] == '{"id":"ord_1","n":2}'
    assert (message["message_id"], message["stream_id"], message["serial"]) == (
        ack["message_id"],
        ack["stream_id"],
        1,
    )
    assert message["tags"] == {"region": "eu"}
    assert message["extras"]["headers"] == {"trace": "t-1"}
    assert "idempotency_key" not in message
    assert "socket_id" not in message
    assert "user_id" not in message  # HTTP publishes have no user
    compact = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    assert item["payload_size_bytes"] == len(compact)
    continuity = page["continuity"]
    assert continuity["retained_messages"] == 1
    assert continuity["retained_bytes"] > 0
    assert continuity["oldest_available_serial"] == continuity["newest_available_serial"] == 1
    assert (
        continuity["oldest_available_published_at_ms"]
        == continuity["newest_available_published_at_ms"]
        == item["published_at_ms"]
    )
    assert page["bounds"] == {
        "start_serial": None,
        "end_serial": None,
        "start_time_ms": None,
        "end_time_ms": None,
    }
    assert page["stream_state"] == {
        "stream_id": ack["stream_id"],
        "durable_state": "healthy",
        "recovery_allowed": True,
        "reset_required": False,
        "reason": None,
        "node_id": None,
        "last_transition_at_ms": None,
        "authoritative_source": "event_log",
        "observed_source": "event_log",
    }


def test_history_limit_is_capped_and_validated(sdk: Sockudo) -> None:
    # Checks 3 and 4.
    channel = fresh()
    publish_n(sdk, channel, 2)
    assert history(sdk, channel, limit=500)["limit"] == 100
    assert history(sdk, channel)["limit"] == 100
    zero = failed(sdk.get_channel_history(channel, HistoryParams(limit=0)), 400, "invalid_input")
    assert zero["error"] == "History limit must be greater than 0"
    failed(sdk.get_channel_history(channel, HistoryParams(limit=-1)), 400, "invalid_input")
    # `HistoryParams.limit` is an int; the raw query carries the unparseable value.
    failed(history_raw(sdk, channel, {"limit": "abc"}), 400, "invalid_input")
    for name in ("start_serial", "end_serial", "start_time_ms", "end_time_ms"):
        failed(history_raw(sdk, channel, {name: "x"}), 400, "invalid_input")


def test_history_direction_is_validated(sdk: Sockudo) -> None:
    # Check 5.
    channel = fresh()
    body = failed(
        sdk.get_channel_history(channel, HistoryParams(direction="sideways")), 400, "invalid_input"
    )
    assert body["error"] == (
        "Invalid direction 'sideways'. Accepted values: newest_first, oldest_first, "
        "backwards, forwards"
    )


def test_history_parameters_are_checked_in_the_spec_order(node: NodeProcess, sdk: Sockudo) -> None:
    # Spec 03 §3.1: channel name -> history gate -> direction -> limit -> cursor decode -> bounds.
    channel = fresh()
    publish_n(sdk, channel, 1)

    def error(client: Sockudo, target: str, **params: Any) -> tuple[int | None, str]:
        result = client.get_channel_history(target, HistoryParams(**params))
        body = result.json()
        return result.status_code, body["error"]

    hist_off = client_for(node, *HIST_OFF)
    try:
        status, message = error(hist_off, "bad name!", direction="sideways")
        assert (status, message.startswith("Invalid channel name")) == (400, True), message
        status, message = error(hist_off, channel, direction="sideways")
        assert status == 422, message
    finally:
        hist_off.close()
    status, message = error(sdk, channel, direction="sideways", limit=0)
    assert (status, message.startswith("Invalid direction")) == (400, True), message
    status, message = error(sdk, channel, limit=0, cursor="not-a-cursor")
    assert (status, message) == (400, "History limit must be greater than 0")
    status, message = error(sdk, channel, cursor="not-a-cursor", start_serial=5, end_serial=2)
    assert (status, message.startswith("Invalid history cursor")) == (400, True), message


def test_history_serial_bounds(sdk: Sockudo) -> None:
    # Checks 6 and 7.
    channel = fresh()
    publish_n(sdk, channel, 5)
    page = history(sdk, channel, start_serial=2, end_serial=4, direction="oldest_first")
    assert serials(page) == [2, 3, 4]
    assert page["bounds"] == {
        "start_serial": 2,
        "end_serial": 4,
        "start_time_ms": None,
        "end_time_ms": None,
    }
    assert page["continuity"]["complete"] is True
    assert serials(history(sdk, channel, start_serial=2, end_serial=4)) == [4, 3, 2]

    # Paging inside bounds: every page repeats them.
    first = history(sdk, channel, start_serial=2, end_serial=4, limit=2)
    assert (serials(first), first["has_more"]) == ([4, 3], True)
    second = history(
        sdk, channel, start_serial=2, end_serial=4, limit=2, cursor=first["next_cursor"]
    )
    assert (serials(second), second["has_more"]) == ([2], False)

    bad = failed(
        sdk.get_channel_history(channel, HistoryParams(start_serial=5, end_serial=2)),
        400,
        "invalid_input",
    )
    assert bad["error"] == "start_serial must be less than or equal to end_serial"
    bad = failed(
        sdk.get_channel_history(channel, HistoryParams(start_time_ms=10, end_time_ms=5)),
        400,
        "invalid_input",
    )
    assert bad["error"] == "start_time_ms must be less than or equal to end_time_ms"


def test_history_time_bounds_and_http_aliases(sdk: Sockudo) -> None:
    # Check 8.
    channel = fresh()
    publish_n(sdk, channel, 3, gap_s=0.03)
    items = history(sdk, channel, direction="oldest_first")["items"]
    t = [i["published_at_ms"] for i in items]
    assert t[0] < t[1] < t[2], t

    page = history(sdk, channel, start_time_ms=t[1], end_time_ms=t[2], direction="oldest_first")
    assert serials(page) == [2, 3]
    assert serials(history(sdk, channel, start_time_ms=t[1])) == [3, 2]
    assert serials(history(sdk, channel, end_time_ms=t[1])) == [2, 1]

    # `start`/`end` are not `HistoryParams` fields: passed as raw query, still SDK-signed.
    aliased = ok(history_raw(sdk, channel, {"start": str(t[1]), "end": str(t[1])}))
    assert serials(aliased) == [2]
    assert aliased["bounds"] == {
        "start_serial": None,
        "end_serial": None,
        "start_time_ms": t[1],
        "end_time_ms": t[1],
    }
    # The `_ms` form wins over its alias.
    both = ok(history_raw(sdk, channel, {"start_time_ms": str(t[2]), "start": str(t[0])}))
    assert serials(both) == [3]


def test_history_cursor_must_match_the_request(sdk: Sockudo) -> None:
    # Check 9.
    channel, other = fresh(), fresh()
    publish_n(sdk, channel, 3)
    publish_n(sdk, other, 3)
    before = state(sdk, channel)
    page = history(sdk, channel, limit=1)
    cursor = page["next_cursor"]
    assert cursor

    def rejected(target: str, **params: Any) -> str:
        result = sdk.get_channel_history(target, HistoryParams(cursor=cursor, **params))
        message: str = failed(result, 400, "invalid_input")["error"]
        return message

    assert rejected(channel, limit=1, direction="oldest_first") == (
        "History cursor direction does not match the request"
    )
    assert rejected(channel, limit=1, start_serial=1) == (
        "History cursor bounds does not match the request"
    )
    assert rejected(other, limit=1) == "History cursor channel does not match the request"
    for junk in ("not-a-cursor", "%%%", "e30"):  # "e30" is base64url of "{}"
        result = sdk.get_channel_history(channel, HistoryParams(cursor=junk))
        body = failed(result, 400, "invalid_input")
        assert body["error"].startswith("Invalid history cursor"), (junk, body)
    version_2 = cursor_token(
        {
            "version": 2,
            "app_id": APP_ID,
            "channel": channel,
            "stream_id": before["stream"]["stream_id"],
            "serial": 2,
            "direction": "newest_first",
            "bounds": page["bounds"],
        }
    )
    result = sdk.get_channel_history(channel, HistoryParams(cursor=version_2))
    assert failed(result, 400, "invalid_input")["error"] == "Unsupported history cursor version: 2"

    # `limit` may change between pages.
    rest = history(sdk, channel, limit=5, cursor=cursor)
    assert (serials(rest), rest["has_more"]) == ([2, 1], False)
    assert state(sdk, channel) == before


def test_history_bounds_and_cursor_serials_outside_u64_are_400(sdk: Sockudo) -> None:
    # Serials are u64 parts of row keys: anything outside is bad input, not a server error.
    channel = fresh()
    publish_n(sdk, channel, 3)
    before = state(sdk, channel)
    for params in (
        {"start_serial": -1},
        {"end_serial": 1 << 64},
        {"start_time_ms": -5},
        {"end_time_ms": 1 << 70},
    ):
        result = sdk.get_channel_history(channel, HistoryParams(**params))
        name = next(iter(params))
        error = failed(result, 400, "invalid_input")["error"]
        assert error == f"{name} must be between 0 and {(1 << 64) - 1}", params
    page = history(sdk, channel, end_serial=(1 << 64) - 1, direction="oldest_first")
    assert serials(page) == [1, 2, 3]
    cursor = history(sdk, channel, limit=1, direction="oldest_first")["next_cursor"]
    payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    for serial in (1 << 64, -1, True):
        forged = cursor_token({**payload, "serial": serial})
        result = sdk.get_channel_history(
            channel, HistoryParams(cursor=forged, limit=1, direction="oldest_first")
        )
        error = failed(result, 400, "invalid_input")["error"]
        assert error == "Invalid history cursor: malformed payload", serial
    last = cursor_token({**payload, "serial": (1 << 64) - 1})
    page = history(sdk, channel, cursor=last, limit=1, direction="oldest_first")
    assert (page["items"], page["has_more"]) == ([], False)
    assert state(sdk, channel) == before


def test_history_of_a_channel_never_written(sdk: Sockudo) -> None:
    # Check 10.
    channel = fresh()
    page = history(sdk, channel)
    assert page["items"] == []
    assert (page["has_more"], page["next_cursor"]) == (False, None)
    assert page["continuity"] == {
        "stream_id": None,
        "oldest_available_serial": None,
        "newest_available_serial": None,
        "oldest_available_published_at_ms": None,
        "newest_available_published_at_ms": None,
        "retained_messages": 0,
        "retained_bytes": 0,
        "complete": True,
        "truncated_by_retention": False,
    }
    assert page["stream_state"]["stream_id"] is None
    assert page["stream_state"]["durable_state"] == "healthy"
    inspected = state(sdk, channel)
    assert inspected["channel"] == channel
    assert inspected["stream"]["stream_id"] is None
    assert inspected["stream"]["next_serial"] is None
    assert inspected["stream"]["retained"]["retained_messages"] == 0


def test_history_disabled_for_the_app_is_422_everywhere(node: NodeProcess) -> None:
    # Check 11.
    client = client_for(node, *HIST_OFF)
    try:
        channel = fresh()
        trigger(client, channel, "x")
        message = f"Durable history is disabled by policy for channel '{channel}'"
        for result in (
            client.get_channel_history(channel),
            client.get_channel_history_state(channel),
            client.reset_channel_history(channel, reason="r"),
            client.purge_channel_history(channel, mode="all", reason="r"),
        ):
            assert failed(result, 422, "feature_disabled")["error"] == message
    finally:
        client.close()


def test_namespace_retention_overrides_the_app(node: NodeProcess) -> None:
    # Check 12: namespace `chat` keeps 3 messages, the app default keeps 1.
    client = client_for(node, *NS_APP)
    try:
        chat, orders = f"chat:room-{uuid.uuid4().hex[:8]}", fresh("orders")
        publish_n(client, chat, 3)
        publish_n(client, orders, 3)
        chat_page = history(client, chat)
        assert serials(chat_page) == [3, 2, 1]
        assert chat_page["continuity"]["truncated_by_retention"] is False
        orders_page = history(client, orders)
        assert serials(orders_page) == [3]
        assert orders_page["continuity"]["truncated_by_retention"] is True
        assert orders_page["continuity"]["complete"] is False
        assert orders_page["continuity"]["oldest_available_serial"] == 3
        assert state(client, orders)["stream"]["next_serial"] == 4
    finally:
        client.close()


def test_ephemeral_trigger_keeps_no_history(sdk: Sockudo) -> None:
    # Check 13.
    channel = fresh()
    publish_n(sdk, channel, 2)
    before = state(sdk, channel)
    result = sdk.trigger(
        channel, "ev", "gone", TriggerOptions(extras=MessageExtras(ephemeral=True))
    )
    assert ok(result) == {}
    assert state(sdk, channel) == before
    assert before["stream"]["next_serial"] == 3
    assert serials(history(sdk, channel)) == [2, 1]
    assert trigger(sdk, channel, "kept")["history_serial"] == 3


# --------------------------------------------------------------------- history state (§3.2)


def test_history_state_after_three_publishes(sdk: Sockudo) -> None:
    # Check 14.
    channel = fresh()
    acks = publish_n(sdk, channel, 3)
    body = state(sdk, channel)
    assert body["channel"] == channel
    stream = body["stream"]
    assert stream["stream_id"] == acks[0]["stream_id"]
    assert stream["next_serial"] == 4
    retained = stream["retained"]
    assert retained["stream_id"] == acks[0]["stream_id"]
    assert retained["retained_messages"] == 3
    assert retained["retained_bytes"] == history(sdk, channel)["continuity"]["retained_bytes"]
    assert (retained["oldest_available_serial"], retained["newest_available_serial"]) == (1, 3)
    assert (
        retained["oldest_available_published_at_ms"] <= retained["newest_available_published_at_ms"]
    )
    assert stream["state"]["durable_state"] == "healthy"
    assert stream["state"]["recovery_allowed"] is True
    assert stream["state"]["reset_required"] is False
    assert stream["state"]["stream_id"] == acks[0]["stream_id"]


# ------------------------------------------------------------------------------ reset (§3.3)


def test_reset_confirmation_is_checked(sdk: Sockudo, api: SignedClient) -> None:
    # Check 15.
    channel = fresh()
    publish_n(sdk, channel, 2)
    before = state(sdk, channel)
    path = f"/apps/{APP_ID}/channels/{channel}/history/reset"
    # The SDK always sends `confirm_channel` = the path channel and `confirm_operation` =
    # "reset", so the two mismatches are signed by SignedClient.
    wrong_channel = signed_post(
        api, path, {"confirm_channel": "other", "confirm_operation": "reset", "reason": "r"}
    )
    body = failed(wrong_channel, 400, "invalid_input")
    assert "confirm_channel" in body["error"]
    wrong_op = signed_post(
        api, path, {"confirm_channel": channel, "confirm_operation": "purge", "reason": "r"}
    )
    assert failed(wrong_op, 400, "invalid_input")["error"] == "confirm_operation must be 'reset'"
    not_json = Result.from_response(api.request("POST", path, body=b"{not json"))
    failed(not_json, 400, "invalid_input")
    blank = sdk.reset_channel_history(channel, reason="  ")
    assert failed(blank, 400, "invalid_input")["error"] == "reason must not be empty"
    with pytest.raises(SockudoError):
        sdk.reset_channel_history(channel, reason="")  # refused client-side
    assert state(sdk, channel) == before
    assert serials(history(sdk, channel)) == [2, 1]


def test_reset_starts_a_new_generation(sdk: Sockudo) -> None:
    # Check 16.
    channel = fresh()
    acks = publish_n(sdk, channel, 2)
    old_stream = acks[0]["stream_id"]
    old_cursor = history(sdk, channel, limit=1)["next_cursor"]
    retained_bytes = state(sdk, channel)["stream"]["retained"]["retained_bytes"]

    body = ok(sdk.reset_channel_history(channel, reason="operator cleanup", requested_by="ops"))
    assert (body["ok"], body["operation"], body["channel"]) == (True, "reset", channel)
    assert (body["reason"], body["requested_by"]) == ("operator cleanup", "ops")
    assert body["previous_stream_id"] == old_stream
    new_stream = body["new_stream_id"]
    assert isinstance(new_stream, str)
    assert new_stream != old_stream
    assert (body["purged_messages"], body["purged_bytes"]) == (2, retained_bytes)
    stream = body["stream"]
    assert (stream["stream_id"], stream["next_serial"]) == (new_stream, 1)
    assert stream["retained"]["retained_messages"] == 0
    assert stream["state"]["durable_state"] == "healthy"
    assert stream["state"]["reason"] is None
    assert isinstance(stream["state"]["last_transition_at_ms"], int)

    page = history(sdk, channel)
    assert page["items"] == []
    assert page["continuity"]["stream_id"] == new_stream
    ack = trigger(sdk, channel, "after")
    assert (ack["history_serial"], ack["delivery_serial"], ack["stream_id"]) == (1, 1, new_stream)
    assert serials(history(sdk, channel)) == [1]

    stale = sdk.get_channel_history(channel, HistoryParams(limit=1, cursor=old_cursor))
    assert failed(stale, 400, "invalid_input")["error"] == (
        "Expired history cursor: channel stream changed"
    )


def test_reset_of_a_channel_never_written(sdk: Sockudo) -> None:
    channel = fresh()
    body = ok(sdk.reset_channel_history(channel, reason="prepare"))
    assert body["previous_stream_id"] is None
    assert body["requested_by"] is None
    assert body["purged_messages"] == 0
    assert body["stream"]["next_serial"] == 1
    # The reset created the generation; the first publish joins it.
    assert trigger(sdk, channel, "x")["stream_id"] == body["new_stream_id"]


# ------------------------------------------------------------------------------ purge (§3.4)


def test_purge_before_serial_keeps_continuity(sdk: Sockudo) -> None:
    # Check 18.
    channel = fresh()
    acks = publish_n(sdk, channel, 4)
    cursor_at_2 = history(sdk, channel, limit=2, direction="oldest_first")["next_cursor"]
    body = ok(
        sdk.purge_channel_history(
            channel, mode="before_serial", reason="trim old backlog", before_serial=3
        )
    )
    assert (body["ok"], body["operation"], body["mode"]) == (True, "purge", "before_serial")
    assert (body["before_serial"], body["before_time_ms"]) == (3, None)
    assert (body["reason"], body["requested_by"]) == ("trim old backlog", None)
    assert body["purged_messages"] == 2
    assert body["purged_bytes"] > 0
    stream = body["stream"]
    assert (stream["stream_id"], stream["next_serial"]) == (acks[0]["stream_id"], 5)
    assert stream["retained"]["oldest_available_serial"] == 3
    assert stream["retained"]["newest_available_serial"] == 4
    assert stream["state"]["durable_state"] == "healthy"

    stale = sdk.get_channel_history(
        channel, HistoryParams(limit=2, direction="oldest_first", cursor=cursor_at_2)
    )
    assert failed(stale, 400, "invalid_input")["error"] == (
        "Expired history cursor: cursor points before retained history"
    )
    page = history(sdk, channel)
    assert serials(page) == [4, 3]
    assert page["continuity"]["truncated_by_retention"] is True  # no start bound
    assert page["continuity"]["complete"] is False
    above = history(sdk, channel, start_serial=3)
    assert above["continuity"]["truncated_by_retention"] is False  # 3 > evicted through 2
    assert above["continuity"]["complete"] is True
    assert history(sdk, channel, start_serial=2)["continuity"]["truncated_by_retention"] is True
    assert trigger(sdk, channel, "next")["history_serial"] == 5


def test_purge_all_and_before_time(sdk: Sockudo) -> None:
    channel = fresh()
    acks = publish_n(sdk, channel, 3)
    body = ok(sdk.purge_channel_history(channel, mode="all", reason="wipe", requested_by="ops"))
    assert (body["purged_messages"], body["requested_by"]) == (3, "ops")
    assert body["stream"]["stream_id"] == acks[0]["stream_id"]
    assert body["stream"]["next_serial"] == 4
    assert body["stream"]["retained"]["retained_messages"] == 0
    page = history(sdk, channel)
    assert page["items"] == []
    assert page["continuity"]["stream_id"] == acks[0]["stream_id"]
    assert page["continuity"]["truncated_by_retention"] is True
    assert trigger(sdk, channel, "x")["history_serial"] == 4

    timed = fresh()
    publish_n(sdk, timed, 3, gap_s=0.03)
    t = [i["published_at_ms"] for i in history(sdk, timed, direction="oldest_first")["items"]]
    assert t[0] < t[1] < t[2], t
    body = ok(
        sdk.purge_channel_history(timed, mode="before_time_ms", reason="age", before_time_ms=t[2])
    )
    assert (body["mode"], body["before_time_ms"], body["before_serial"]) == (
        "before_time_ms",
        t[2],
        None,
    )
    assert body["purged_messages"] == 2
    assert body["stream"]["retained"]["oldest_available_serial"] == 3
    assert serials(history(sdk, timed)) == [3]


def test_purge_modes_are_validated(sdk: Sockudo) -> None:
    # Check 19.
    channel = fresh()
    publish_n(sdk, channel, 3)
    before = state(sdk, channel)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"mode": "all", "before_serial": 2}, "Purge mode 'all' does not accept bounds"),
        ({"mode": "before_time_ms"}, "Purge mode 'before_time_ms' requires before_time_ms only"),
        ({"mode": "before_serial"}, "Purge mode 'before_serial' requires before_serial only"),
        (
            {"mode": "before_serial", "before_serial": 2, "before_time_ms": 1},
            "Purge mode 'before_serial' requires before_serial only",
        ),
        ({"mode": "everything"}, ""),
        # Bounds travel in the purge record as Avro longs.
        (
            {"mode": "before_serial", "before_serial": 1 << 63},
            f"before_serial must be between 0 and {(1 << 63) - 1}",
        ),
        (
            {"mode": "before_serial", "before_serial": -1},
            f"before_serial must be between 0 and {(1 << 63) - 1}",
        ),
        (
            {"mode": "before_time_ms", "before_time_ms": 1 << 70},
            f"before_time_ms must be between 0 and {(1 << 63) - 1}",
        ),
    ]
    for kwargs, message in cases:
        body = failed(
            sdk.purge_channel_history(channel, reason="r", **kwargs), 400, "invalid_input"
        )
        if message:
            assert body["error"] == message, kwargs
    with pytest.raises(SockudoError):
        sdk.purge_channel_history(channel, mode="all", reason="")  # refused client-side
    assert state(sdk, channel) == before
    assert serials(history(sdk, channel)) == [3, 2, 1]


# ------------------------------------------------------- operator-marked streams (checks 20-21)


def open_log(node: NodeProcess) -> EventLog:
    if node.log_backend == "kafka":
        from sockudo.log.kafka import KafkaLog

        assert node.kafka_bootstrap is not None
        return KafkaLog(node.kafka_bootstrap)
    from sockudo.log.embedded import EmbeddedLog

    return EmbeddedLog(node.data_dir / "log")


def mark_stream(node: NodeProcess, channel: str, durable_state: str, reason: str) -> None:
    """Append an operator ``stream.state`` event (spec 03 §2.4) with the node stopped.

    There is no ``sockudo-tools mark-stream`` command and no HTTP route for it, so the event is
    appended to the channel's log partition directly, as the tool would.
    """
    assert node.stop() == 0
    try:

        async def append() -> None:
            log = open_log(node)
            await log.start()
            try:
                encoded = codec.encode(
                    StreamStateMarked(
                        event_id=str(uuid.uuid4()),
                        app_id=APP_ID,
                        channel=channel,
                        origin=Origin(node="conformance-operator"),
                        durable_state=durable_state,
                        reason=reason,
                    )
                )
                await log.append(
                    f"{node.topic_prefix}.channel-events",
                    partition_for(channel_key(APP_ID, channel), node.channel_partitions or 1),
                    channel_key(APP_ID, channel),
                    encoded.value,
                    (*encoded.headers, ("sk.node", b"conformance-operator")),
                    timeout_ms=10_000,
                )
            finally:
                await log.close()

        asyncio.run(append())
    finally:
        node.start()


def test_operator_marked_streams_fail_closed_until_reset(node: NodeProcess, sdk: Sockudo) -> None:
    # Checks 20 and 21 as DESIGN.md restates them: only an operator `stream.state` event marks
    # a stream. (The "event log unavailable" half of check 20, and check 55, need a log that
    # fails under a running node; this suite has no way to cause that.)
    channel = fresh()
    acks = publish_n(sdk, channel, 2)
    mark_stream(node, channel, "degraded", "operator drill")

    stream_state = state(sdk, channel)["stream"]["state"]
    assert stream_state["durable_state"] == "degraded"
    assert stream_state["recovery_allowed"] is False
    assert stream_state["reset_required"] is False
    assert stream_state["reason"] == "operator drill"
    assert stream_state["stream_id"] == acks[0]["stream_id"]
    assert isinstance(stream_state["last_transition_at_ms"], int)
    assert stream_state["authoritative_source"] == "event_log"
    assert stream_state["observed_source"] == "event_log"

    body = failed(sdk.get_channel_history(channel), 503, "history_degraded")
    assert body["stream_state"]["durable_state"] == "degraded"
    assert body["stream_state"]["recovery_allowed"] is False
    # Publishes are still accepted; purge answers 200 and leaves the state alone.
    assert trigger(sdk, channel, "still")["history_serial"] == 3
    purged = ok(
        sdk.purge_channel_history(channel, mode="before_serial", reason="r", before_serial=2)
    )
    assert purged["stream"]["state"]["durable_state"] == "degraded"
    reset = ok(sdk.reset_channel_history(channel, reason="recover"))
    assert reset["stream"]["state"]["durable_state"] == "healthy"
    assert reset["stream"]["state"]["recovery_allowed"] is True
    assert history(sdk, channel)["items"] == []
    assert trigger(sdk, channel, "fresh")["history_serial"] == 1

    mark_stream(node, channel, "reset_required", "operator says reset")
    stream_state = state(sdk, channel)["stream"]["state"]
    assert (stream_state["durable_state"], stream_state["reset_required"]) == (
        "reset_required",
        True,
    )
    body = failed(sdk.get_channel_history(channel), 503, "history_reset_required")
    assert body["stream_state"]["reset_required"] is True
    recovered = ok(sdk.reset_channel_history(channel, reason="recover"))["stream"]["state"]
    assert recovered["durable_state"] == "healthy"
    assert serials(history(sdk, channel)) == []


# --------------------------------------------------------- signing, channel info, errors (§0)


def test_colon_channel_signed_encoded_and_raw_is_the_same_channel(node: NodeProcess) -> None:
    # Check 56: the SDK sends `chat%3Aroom-…`; SignedClient signs the raw colon path.
    client = client_for(node, *NS_APP)
    raw = SignedClient(node.base_url, NS_APP[0], NS_APP[1], NS_APP[2])
    try:
        channel = f"chat:room-{uuid.uuid4().hex[:8]}"
        acks = publish_n(client, channel, 2)
        via_sdk = history(client, channel)
        response = raw.history(channel)
        assert response.status_code == 200, response.text
        assert serials(via_sdk) == serials(response.json()) == [2, 1]
        assert via_sdk["items"] == response.json()["items"]
        assert via_sdk["continuity"]["stream_id"] == acks[0]["stream_id"]
        raw_state = raw.history_state(channel)
        assert raw_state.status_code == 200, raw_state.text
        assert raw_state.json() == state(client, channel)
        assert ok(client.get_channel(channel)) == {"occupied": False}
        reset = ok(client.reset_channel_history(channel, reason="colon"))
        assert reset["channel"] == channel
        assert reset["purged_messages"] == 2
    finally:
        raw.close()
        client.close()


async def test_channel_info_through_the_sdk(node: NodeProcess, sdk: Sockudo) -> None:
    channel = fresh("info")
    async with connect(ws_url(node)) as ws:
        await established(ws)
        assert (await subscribe(ws, channel))["event"] == "pusher_internal:subscription_succeeded"
        info = await asyncio.to_thread(
            sdk.get_channel, channel, ChannelParams(info="subscription_count")
        )
        assert ok(info) == {"occupied": True, "subscription_count": 1}
        listed = await asyncio.to_thread(
            sdk.list_channels, ChannelsParams(filter_by_prefix=channel, info="subscription_count")
        )
        assert ok(listed) == {"channels": {channel: {"subscription_count": 1}}}
        users = await asyncio.to_thread(sdk.get_channel, channel, ChannelParams(info="user_count"))
        failed(users, 400, "invalid_input")
        ack = await asyncio.to_thread(trigger, sdk, channel, "hello")
        assert ack["subscription_count"] == 1
        frame = await recv_until(ws, lambda f: f.get("event") == "ev")
        assert (frame["channel"], frame["data"]) == (channel, "hello")


def test_bad_credentials_are_surfaced_as_sdk_errors(node: NodeProcess) -> None:
    channel = fresh()
    wrong = client_for(node, APP_ID, APP_KEY, "wrong-secret")
    unknown = client_for(node, APP_ID, "no-such-key", APP_SECRET)
    try:
        failed(wrong.trigger(channel, "ev", "x"), 401, "auth_failed")
        failed(wrong.get_channel_history(channel), 401, "auth_failed")
        failed(wrong.reset_channel_history(channel, reason="r"), 401, "auth_failed")
        failed(unknown.get_channel_history_state(channel), 404, "app_not_found")
    finally:
        wrong.close()
        unknown.close()
    bad_channel = client_for(node, APP_ID, APP_KEY, APP_SECRET)
    try:
        body = failed(bad_channel.get_channel_history("bad name!"), 400, "invalid_input")
        assert body["error"].startswith("Invalid channel name")
    finally:
        bad_channel.close()
