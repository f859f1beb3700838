"""End to end: a real ``sockudo-node`` process on each log backend, driven over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sockudo.log.base import EventLog
from sockudo.log.partitioning import channel_key, partition_for
from tests.support.api import SignedClient
from tests.support.node import APP_ID, APP_KEY, APP_SECRET, NodeProcess

BACKENDS = ["embedded", pytest.param("kafka", marks=pytest.mark.kafka)]


@pytest.fixture(params=BACKENDS)
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NodeProcess]:
    backend = request.param
    if backend == "kafka":
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        n = NodeProcess(
            tmp_path / "node",
            log_backend="kafka",
            kafka_bootstrap=bootstrap,
            topic_prefix=request.getfixturevalue("topic_prefix"),
            channel_partitions=3,
        )
    else:
        n = NodeProcess(tmp_path / "node")
    n.start()
    try:
        yield n
    finally:
        n.kill()


@pytest.fixture
def api(node: NodeProcess) -> Iterator[SignedClient]:
    client = SignedClient(node.base_url, APP_ID, APP_KEY, APP_SECRET)
    yield client
    client.close()


def tools(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args, *node.tools_args()],
        env=node.tools_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def open_log(node: NodeProcess) -> EventLog:
    if node.log_backend == "kafka":
        from sockudo.log.kafka import KafkaLog

        assert node.kafka_bootstrap is not None
        return KafkaLog(node.kafka_bootstrap)
    from sockudo.log.embedded import EmbeddedLog

    return EmbeddedLog(node.data_dir / "log")


def topic(node: NodeProcess) -> str:
    return f"{node.topic_prefix}.channel-events"


def partition_of(node: NodeProcess, channel: str) -> int:
    return partition_for(channel_key(APP_ID, channel), node.channel_partitions or 1)


def publish_ok(api: SignedClient, channel: str, n: int, **extra: Any) -> dict[str, Any]:
    r = api.publish(
        {"name": "ev", "channel": channel, "data": f"m{n}", "info": "subscription_count", **extra}
    )
    assert r.status_code == 200, r.text
    ack: dict[str, Any] = r.json()["channels"][channel]
    return ack


def test_publish_acknowledges_fold_serials_and_history_serves_them(api: SignedClient) -> None:
    acks = [publish_ok(api, "orders", i) for i in range(3)]
    assert [a["history_serial"] for a in acks] == [1, 2, 3]
    assert [a["delivery_serial"] for a in acks] == [1, 2, 3]
    assert len({a["stream_id"] for a in acks}) == 1
    assert all(a["subscription_count"] == 0 for a in acks)

    page = api.history("orders").json()
    assert [i["serial"] for i in page["items"]] == [3, 2, 1]
    assert [i["message"]["data"] for i in page["items"]] == ["m2", "m1", "m0"]
    assert [i["message_id"] for i in page["items"]] == [a["message_id"] for a in reversed(acks)]
    assert page["continuity"]["retained_messages"] == 3
    assert page["continuity"]["complete"] is True
    assert page["stream_state"]["durable_state"] == "healthy"

    first = api.history("orders", direction="oldest_first", limit="2").json()
    assert [i["serial"] for i in first["items"]] == [1, 2]
    assert first["has_more"] is True
    rest = api.history(
        "orders", direction="oldest_first", limit="2", cursor=first["next_cursor"]
    ).json()
    assert [i["serial"] for i in rest["items"]] == [3]
    assert rest["has_more"] is False
    assert rest["next_cursor"] is None

    state = api.history_state("orders").json()
    assert state["stream"]["next_serial"] == 4
    assert state["stream"]["stream_id"] == acks[0]["stream_id"]

    # Without info the answer is Pusher's empty object.
    plain = api.publish({"name": "ev", "channel": "orders", "data": "x"})
    assert (plain.status_code, plain.json()) == (200, {})


def test_idempotent_publish_answers_the_original_and_conflicts_on_other_payload(
    api: SignedClient,
) -> None:
    first = publish_ok(api, "pay", 1, idempotency_key="k-1")
    again = publish_ok(api, "pay", 1, idempotency_key="k-1")
    assert again == first
    conflict = api.publish(
        {"name": "ev", "channel": "pay", "data": "other", "idempotency_key": "k-1"}
    )
    assert conflict.status_code == 409
    assert conflict.json()["code"] == "idempotency_conflict"
    assert api.history_state("pay").json()["stream"]["next_serial"] == 2


BAD_INPUTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("wrong secret", {"secret": "nope"}, 401, "auth_failed"),
    ("stale timestamp", {"timestamp": int(time.time()) - 3600}, 401, "auth_failed"),
    ("unknown key", {"key": "no-such-key"}, 404, "app_not_found"),
]


@pytest.mark.parametrize(
    ("label", "kw", "status", "code"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_rejected_signatures_append_nothing(
    api: SignedClient, label: str, kw: dict[str, Any], status: int, code: str
) -> None:
    publish_ok(api, "guarded", 0)
    r = api.publish({"name": "ev", "channel": "guarded", "data": "x"}, **kw)
    assert (r.status_code, r.json()["code"]) == (status, code), label
    assert api.history_state("guarded").json()["stream"]["next_serial"] == 2


def test_malformed_requests_get_their_error_and_the_node_keeps_serving(
    api: SignedClient, node: NodeProcess
) -> None:
    path = f"/apps/{APP_ID}/events"
    cases: list[tuple[bytes, dict[str, Any], int, str]] = [
        (b"{not json", {}, 400, "invalid_input"),
        (b'{"name":"ev","channel":"bad name!","data":"x"}', {}, 400, "invalid_input"),
        (b'{"name":"ev","data":"x"}', {}, 400, "missing_channel_info"),
        (
            json.dumps({"name": "ev", "channel": "c", "data": "x" * 200_000}).encode(),
            {},
            413,
            "payload_too_large",
        ),
        (b"x" * (10 * 1024 * 1024 + 1), {}, 413, "payload_too_large"),
        # A lone surrogate escape makes a name no error message can encode (was a 500).
        (b'{"name":"ev","channel":"s\\ud800","data":"x"}', {}, 400, "invalid_input"),
        (b'{"name":"ev","channels":["c","s\\udc00"],"data":"x"}', {}, 400, "invalid_input"),
    ]
    for body, kw, status, code in cases:
        r = api.request("POST", path, body=body, **kw)
        assert (r.status_code, r.json()["code"]) == (status, code), body[:40]
    batch = b'{"batch":[{"name":"ev","channel":"s\\ud800","data":"x"}]}'
    r = api.request("POST", f"/apps/{APP_ID}/batch_events", body=batch)
    assert (r.status_code, r.json()["code"]) == (400, "invalid_input")
    # Integers are ASCII digits: int() would take these.
    for bad in ("1_0", "\u0665", "\uff15", " 5", "+5"):
        for param in ("limit", "start_serial"):
            r = api.history("c", **{param: bad})
            assert (r.status_code, r.json()["code"]) == (400, "invalid_input"), (param, bad)
    # A body whose MD5 does not match what was signed.
    query_signed_for = b'{"name":"ev","channel":"c","data":"x"}'
    from sockudo.auth import signed_query_params

    params = signed_query_params(
        APP_KEY, APP_SECRET, "POST", path, timestamp=int(time.time()), body=query_signed_for
    )
    r = api.http.post(path, params=params, content=b'{"name":"ev","channel":"c","data":"y"}')
    assert (r.status_code, r.json()["code"]) == (401, "auth_failed")
    # Disabled app: valid signature, then 403.
    r = api.request(
        "POST",
        "/apps/disabled-app/events",
        body=b"{}",
        key="disabled-key",
        secret="disabled-secret",
    )
    assert (r.status_code, r.json()["code"]) == (403, "app_disabled")
    # Unknown route: plain-text 404.
    r = api.http.get("/nope")
    assert (r.status_code, r.text) == (404, "404 NOT FOUND")
    # A route's path with a trailing slash is another path: 404, not a redirect to the route
    # (spec 01 §1: any unmatched route), signed or not.
    for path in (f"/apps/{APP_ID}/channels/", f"/apps/{APP_ID}/events/"):
        r = api.request("GET" if path.endswith("channels/") else "POST", path, body=b"{}")
        assert (r.status_code, r.text) == (404, "404 NOT FOUND"), path
    # Nothing above reached the log: channel "c" has no stream; the node still publishes.
    assert api.history_state("c").json()["stream"]["next_serial"] is None
    assert publish_ok(api, "c", 1)["history_serial"] == 1
    assert "Traceback" not in node.log_path.read_text(errors="replace")


def test_an_idempotency_key_header_is_read_as_utf8(api: SignedClient) -> None:
    # 64 two-byte characters are 128 UTF-8 bytes: the longest key (spec 01 §5.3). Read as the
    # Latin-1 Starlette decodes headers as, they were 256 and refused.
    key = "\u00e9" * 64
    header = {"X-Idempotency-Key": key.encode()}
    first = api.publish({"name": "ev", "channel": "idem-utf8", "data": "a"}, headers=header)
    assert first.status_code == 200, first.text
    # The same key in the body is the same key: answered from the first, nothing appended.
    again = api.publish({"name": "ev", "channel": "idem-utf8", "data": "a", "idempotency_key": key})
    assert again.status_code == 200, again.text
    assert api.history_state("idem-utf8").json()["stream"]["next_serial"] == 2
    too_long = {"X-Idempotency-Key": ("\u00e9" * 64 + "x").encode()}
    r = api.publish({"name": "ev", "channel": "idem-utf8", "data": "b"}, headers=too_long)
    assert r.status_code == 400, r.text
    r = api.publish(
        {"name": "ev", "channel": "idem-utf8", "data": "b"},
        headers={
            "X-Idempotency-Key": b"\xe9" * 8  # Latin-1 bytes, not UTF-8
        },
    )
    assert (r.status_code, r.json()["code"]) == (400, "invalid_input")
    assert api.history_state("idem-utf8").json()["stream"]["next_serial"] == 2


def test_cut_short_and_malformed_requests_append_nothing_and_log_no_error(
    api: SignedClient, node: NodeProcess
) -> None:
    from urllib.parse import urlencode

    from sockudo.auth import signed_query_params

    path = f"/apps/{APP_ID}/events"
    body = b'{"name":"ev","channel":"left","data":"x"}'
    params = signed_query_params(
        APP_KEY, APP_SECRET, "POST", path, timestamp=int(time.time()), body=body
    )
    # The hot route's own error handling, then the middleware stack (a CORS request).
    for origin in ("", "Origin: http://example.com\r\n"):
        head = (
            f"POST {path}?{urlencode(params)} HTTP/1.1\r\nHost: 127.0.0.1\r\n{origin}"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", node.port)) as sock:
            sock.sendall(head.encode() + body[:10])
    # Pipelined, a request then bytes that are not HTTP: its answer, then the 400 and close.
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        sock.sendall(b"GET /up HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nNOT HTTP\r\n\r\n")
        answers = b""
        while chunk := sock.recv(65536):
            answers += chunk
    assert answers.startswith(b"HTTP/1.1 200 OK\r\n"), answers
    assert b"\r\n\r\nOKHTTP/1.1 400 Bad Request\r\n" in answers, answers
    # The node keeps serving; the half-sent publish reached nothing.
    assert publish_ok(api, "stayed", 1)["history_serial"] == 1
    assert api.history_state("left").json()["stream"]["next_serial"] is None
    log = node.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log


def run_node_cli(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``sockudo-node`` run to its end: for nodes that must refuse to start."""
    command = [sys.executable, "-m", "sockudo.node.cli"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_a_projection_another_process_holds_is_a_clear_error(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node")
    node.start()
    node.stop()
    lock = node.data_dir / "projection" / "LOCK"
    hold = (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
        "fcntl.lockf(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"
    )
    with subprocess.Popen(
        [sys.executable, "-c", hold, str(lock)], stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "held"
            proc = run_node_cli(node.env())
        finally:
            holder.kill()
    assert proc.returncode == 1, proc.stderr
    assert "sockudo-node: cannot open projection at " in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreadable_data_is_a_clear_error_for_the_node_and_the_tools(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node")
    node.start()
    node.stop()
    projection = node.data_dir / "projection"
    (projection / "CURRENT").write_bytes(b"")  # RocksDB: "CURRENT file does not end with newline"
    for args in (("inspect-stream", "--app", APP_ID, "--channel", "c"), ("rebuild", "--verify")):
        proc = subprocess.run(
            [sys.executable, "-m", "tools.cli", *args, *node.tools_args()],
            env=node.tools_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 3, (args, proc.stderr)  # spec 05 §7.8: I/O error
        assert "cannot open projection at " in proc.stderr
        assert "Traceback" not in proc.stderr
    shutil.rmtree(projection)
    projection.write_text("not a directory")
    proc = run_node_cli(node.env())
    assert proc.returncode == 1, proc.stderr
    assert "sockudo-node: cannot open projection at " in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_bad_block_in_the_log_stops_the_node_instead_of_a_shorter_history(
    tmp_path: Path,
) -> None:
    node = NodeProcess(tmp_path / "node")
    node.start()
    api = SignedClient(node.base_url, APP_ID, APP_KEY, APP_SECRET)
    try:
        for _ in range(300):  # incompressible: they span many blocks of the log's tables
            r = api.publish({"name": "ev", "channel": "c", "data": os.urandom(120).hex()})
            assert r.status_code == 200, r.text
    finally:
        api.close()
    node.stop()  # a clean stop writes the log's records into table files
    table = max((node.data_dir / "log").glob("*.sst"), key=lambda f: f.stat().st_size)
    data = bytearray(table.read_bytes())
    data[len(data) // 3] ^= 0xFF
    table.write_bytes(bytes(data))
    shutil.rmtree(node.data_dir / "projection")  # the fold must read the log again
    proc = run_node_cli(node.env())
    # Before: the node came up and served the messages before the bad block as all there were.
    assert proc.returncode == 1, proc.stderr
    assert "sockudo-node: stopped: the fold loop failed: embedded log unreadable" in proc.stderr


@pytest.mark.parametrize("taken", ["PORT", "METRICS_PORT"])
def test_an_address_in_use_is_a_clear_error_and_a_clean_exit(taken: str, tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {**node.env(), taken: str(port)}
        proc = run_node_cli(env)
    assert proc.returncode == 1, proc.stderr
    assert f"sockudo-node: cannot listen on 127.0.0.1:{port}: " in proc.stderr
    assert "address already in use" in proc.stderr
    assert "sockudo-node stopped cleanly" in proc.stderr
    assert "Traceback" not in proc.stderr
    if taken == "PORT":
        assert "listening on" not in proc.stderr


def test_a_data_dir_another_node_holds_is_a_clear_error(tmp_path: Path) -> None:
    first = NodeProcess(tmp_path / "node")
    first.start()
    try:
        second = NodeProcess(tmp_path / "node")  # same data dir, ports of its own
        proc = run_node_cli(second.env())
        assert proc.returncode == 1, proc.stderr
        assert "sockudo-node: cannot open embedded log at " in proc.stderr
        assert "Traceback" not in proc.stderr
        assert httpx.get(f"{first.base_url}/up", timeout=5).status_code == 200
    finally:
        first.kill()


def test_sigkill_during_publish_load_loses_no_acknowledged_event(
    api: SignedClient, node: NodeProcess
) -> None:
    acked: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def publisher(worker: int) -> None:
        client = SignedClient(node.base_url, APP_ID, APP_KEY, APP_SECRET)
        i = 0
        try:
            while not stop.is_set():
                try:
                    r = client.publish(
                        {
                            "name": "ev",
                            "channel": "load",
                            "data": f"{worker}-{i}",
                            "info": "subscription_count",
                        }
                    )
                except Exception:
                    return  # the node died under us: only acknowledged events count
                if r.status_code == 200:
                    ack = r.json()["channels"]["load"]
                    with lock:
                        acked[ack["message_id"]] = ack["history_serial"]
                i += 1
        finally:
            client.close()

    threads = [threading.Thread(target=publisher, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 150 and time.monotonic() < deadline:
        time.sleep(0.05)
    node.kill()  # SIGKILL while publishers are mid-request
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) >= 150

    node.start()
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"direction": "oldest_first", "limit": "100"}
        if cursor:
            params["cursor"] = cursor
        page = api.history("load", **params).json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    serials = [i["serial"] for i in items]
    assert serials == list(range(1, len(items) + 1)), "serials must be contiguous and unique"
    by_id = {i["message_id"]: i["serial"] for i in items}
    assert len(by_id) == len(items), "no message stored twice"
    missing = {m: s for m, s in acked.items() if by_id.get(m) != s}
    assert not missing, f"acknowledged events lost or renumbered: {list(missing.items())[:5]}"
    # Appends that landed without an answer still get the next serial after a restart.
    assert publish_ok(api, "load", 0)["history_serial"] == len(items) + 1


def test_sigterm_shuts_down_cleanly_and_restart_keeps_state(
    api: SignedClient, node: NodeProcess
) -> None:
    acks = [publish_ok(api, "keep", i) for i in range(5)]
    assert node.stop() == 0
    assert "stopped cleanly" in node.tail()
    node.start()
    page = api.history("keep").json()
    assert [i["message_id"] for i in page["items"]] == [a["message_id"] for a in reversed(acks)]
    assert publish_ok(api, "keep", 9)["history_serial"] == 6


def test_rebuild_verify_reports_identical_projections(api: SignedClient, node: NodeProcess) -> None:
    for i in range(60):
        publish_ok(
            api, ("a", "b", "c")[i % 3], i, **({"idempotency_key": f"k{i}"} if i % 4 == 0 else {})
        )
    reset = api.request(
        "POST",
        f"/apps/{APP_ID}/channels/a/history/reset",
        body=json.dumps(
            {"confirm_channel": "a", "confirm_operation": "reset", "reason": "t"}
        ).encode(),
    )
    assert reset.status_code == 200, reset.text
    assert reset.json()["purged_messages"] == 20
    assert publish_ok(api, "a", 99)["history_serial"] == 1
    purge = api.request(
        "POST",
        f"/apps/{APP_ID}/channels/b/history/purge",
        body=json.dumps(
            {
                "confirm_channel": "b",
                "confirm_operation": "purge",
                "reason": "t",
                "mode": "before_serial",
                "before_serial": 5,
            }
        ).encode(),
    )
    assert purge.status_code == 200, purge.text
    assert purge.json()["purged_messages"] == 4
    assert node.stop() == 0
    result = tools(node, "rebuild", "--verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "identical" in result.stdout
    assert "events replayed: " in result.stdout


def test_rebuild_replaces_the_projection_only_of_a_stopped_node(
    api: SignedClient, node: NodeProcess
) -> None:
    for i in range(1, 11):
        assert publish_ok(api, "r", i)["history_serial"] == i
    # Running: its RocksDB would go on writing into the swapped-in directory. Refused, and
    # nothing is touched.
    refused = tools(node, "rebuild")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "in use by a running node" in refused.stderr
    assert not (node.data_dir / "projection.new").exists()
    assert publish_ok(api, "r", 11)["history_serial"] == 11
    assert node.stop() == 0
    rebuilt = tools(node, "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "projection rebuilt at " in rebuilt.stdout
    node.start()
    page = api.history("r", limit="100", direction="oldest_first").json()
    assert [item["serial"] for item in page["items"]] == list(range(1, 12))
    assert publish_ok(api, "r", 12)["history_serial"] == 12


def test_inspect_stream_on_a_healthy_channel(api: SignedClient, node: NodeProcess) -> None:
    for i in range(4):
        publish_ok(api, "inspected", i)
    state = api.history_state("inspected").json()
    assert node.stop() == 0
    result = tools(node, "inspect-stream", "--app", APP_ID, "--channel", "inspected", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] == "ok"
    assert report["log"]["channel_records"] == 4
    assert report["recomputed"]["last_serial"] == 4
    assert report["stream"] == state["stream"]

    missing = tools(node, "inspect-stream", "--channel", "inspected")
    assert missing.returncode == 3


def test_log_truncation_is_reported_and_reads_fail_closed(
    api: SignedClient, node: NodeProcess
) -> None:
    for i in range(10):
        publish_ok(api, "trunc", i)
    assert node.stop() == 0

    async def truncate() -> None:
        log = open_log(node)
        await log.start()
        try:
            p = partition_of(node, "trunc")
            _start, end = await log.bounds(topic(node), p)
            await log.delete_records(topic(node), p, end - 4)
            assert (await log.bounds(topic(node), p))[0] == end - 4
        finally:
            await log.close()

    asyncio.run(truncate())

    # The projection still holds everything, but the log can no longer prove it.
    result = tools(node, "inspect-stream", "--app", APP_ID, "--channel", "trunc", "--json")
    assert result.returncode == 2, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] == "unanchored"
    assert report["gaps"][0]["kind"] == "log_truncated"

    # A node whose projection is behind the log start cannot fold the partition at all.
    shutil.rmtree(node.data_dir / "projection")
    node.start()
    r = api.history("trunc")
    assert r.status_code == 503
    body = r.json()
    assert body["code"] == "history_degraded"
    assert body["stream_state"]["durable_state"] == "degraded"
    assert body["stream_state"]["reason"] == "projection_log_truncated"
    assert body["stream_state"]["observed_source"] == "local_projection"
    state = api.history_state("trunc").json()["stream"]["state"]
    assert state["reason"] == "projection_log_truncated"
    assert api.http.get("/up").status_code == 503
    assert node.stop() == 0
    stalled = tools(node, "inspect-stream", "--app", APP_ID, "--channel", "trunc", "--json")
    assert stalled.returncode == 2
    assert json.loads(stalled.stdout)["verdict"] == "stalled"


async def test_sockets_that_stop_reading_are_closed_and_dropped(tmp_path: Path) -> None:
    """Fanout closes a socket whose send queue is full with 4100; a client that reads nothing
    cannot take that close either, and must not keep its socket (and buffers) open."""
    from tests.support.raw_ws import RawWebSocket

    node = NodeProcess(tmp_path / "node")
    node.start()
    api = SignedClient(node.base_url, APP_ID, APP_KEY, APP_SECRET)
    sockets: list[RawWebSocket] = []
    try:
        subscribe = json.dumps({"event": "sockudo:subscribe", "data": {"channel": "flood"}})
        for i in range(4):
            ws = await RawWebSocket.connect(node, "protocol=2")
            sockets.append(ws)
            if i:  # the stalled ones: a small receive buffer fills their send queue sooner
                raw = ws.writer.transport.get_extra_info("socket")
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await ws.read_frame()  # connection_established
            ws.send_text(subscribe)
            await ws.read_frame()  # subscription_succeeded
        reader, *stalled = sockets

        async def read_all(n: int) -> int:
            got = 0
            while got < n:
                _, payload = await reader.read_frame(30)
                got += b'"event":"ev"' in payload
            return got

        reading = asyncio.create_task(read_all(1000))
        pad = "x" * 20_000
        for start in range(0, 1000, 10):
            batch = [
                {"name": "ev", "channel": "flood", "data": f"{start + i}{pad}"} for i in range(10)
            ]
            body = json.dumps({"batch": batch}).encode()
            r = await asyncio.to_thread(
                api.request, "POST", f"/apps/{APP_ID}/batch_events", body=body
            )
            assert r.status_code == 200, r.text
        assert await asyncio.wait_for(reading, 60) == 1000

        def connected() -> tuple[float, int]:
            """The node's socket gauge, and its TCP connections on the port still open."""
            text = httpx.get(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5).text
            line = next(x for x in text.splitlines() if x.startswith("sockudo_connected{"))
            local = f"0100007F:{node.port:04X}"  # 127.0.0.1 as /proc/net/tcp prints it
            rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
            established = sum(1 for r in rows if r.split()[1] == local and r.split()[3] == "01")
            return float(line.rsplit(" ", 1)[1]), established

        # The close handshake gets ws_protocol.CLOSE_TIMEOUT_S (10 s), then the connection
        # is dropped, with what the client never read.
        def only_the_reader_left() -> tuple[float, int]:
            deadline = time.monotonic() + 30
            while connected() != (1, 1) and time.monotonic() < deadline:
                time.sleep(0.5)
            return connected()

        assert await asyncio.to_thread(only_the_reader_left) == (1, 1)
        log = node.log_path.read_text(errors="replace")
        assert log.count("closing slow socket") == len(stalled)
        assert "Traceback" not in log
    finally:
        for ws in sockets:
            await ws.close()
        api.close()
        node.kill()


def start_with_file_size_limit(node: NodeProcess, limit: int) -> subprocess.Popen[bytes]:
    """``node`` started with no file of its process allowed past ``limit`` bytes; once up."""
    import resource

    from tests.support.node import CONFIG

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    node.data_dir.mkdir(parents=True)
    node.config_path.write_text(
        CONFIG.format(app_id=APP_ID, app_key=APP_KEY, app_secret=APP_SECRET)
    )
    command = [sys.executable, "-m", "sockudo.node.cli", "--config", str(node.config_path)]
    with node.log_path.open("wb") as out:
        proc = subprocess.Popen(
            command, env=node.env(), stdout=out, stderr=subprocess.STDOUT, preexec_fn=limited
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{node.base_url}/live", timeout=1).status_code == 200:
                return proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"node did not come up:\n{node.tail()}")


async def test_a_node_whose_storage_fails_stops_and_a_restart_loses_nothing_acknowledged(
    tmp_path: Path,
) -> None:
    """A write its disk refuses (a file-size limit on the process here, as a full disk would)
    leaves a node unable to fold or append. It stops, exit status 1, telling its sockets to
    reconnect (4200); started again, it has every publish it acknowledged."""
    from tests.support.raw_ws import CLOSE, RawWebSocket, close_code

    node = NodeProcess(tmp_path / "node")
    proc = await asyncio.to_thread(start_with_file_size_limit, node, 3_000_000)
    api = SignedClient(node.base_url, APP_ID, APP_KEY, APP_SECRET)
    try:
        ws = await RawWebSocket.connect(node, "protocol=2")
        await ws.read_frame()
        ws.send_text(json.dumps({"event": "sockudo:subscribe", "data": {"channel": "other"}}))
        await ws.read_frame()

        acked: list[str] = []
        unknown: list[str] = []
        pad = "x" * 5_000
        for n in range(3_000):
            try:
                r = await asyncio.to_thread(
                    api.publish, {"name": "ev", "channel": "disk", "data": f"{n}:{pad}"}
                )
            except httpx.TransportError:
                break  # the node is going
            if r.status_code == 200:
                acked.append(f"{n}:{pad}")
            else:
                assert (r.status_code, r.json()["code"]) in (
                    (503, "service_unavailable"),
                    (504, "publish_outcome_unknown"),
                    (504, "fold_timeout"),
                ), r.text
                if r.status_code == 504:
                    unknown.append(f"{n}:{pad}")
            if proc.poll() is not None:
                break
        assert acked, "nothing was published before the limit"
        assert await asyncio.to_thread(proc.wait, 60) == 1
        closes = []
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                opcode, payload = await ws.read_frame(10)
                if opcode == CLOSE:
                    closes.append(close_code(payload))
                    break
        assert closes == [4200]
        await ws.close()
        log = node.log_path.read_text(errors="replace")
        assert "sockudo-node: stopped: " in log
        assert "File too large" in log

        node.start()  # no limit this time
        stored, serials, cursor = [], [], None
        while True:
            params = {"limit": "100", "direction": "oldest_first"}
            if cursor:
                params["cursor"] = cursor
            page = api.history("disk", **params).json()
            stored += [item["message"]["data"] for item in page["items"]]
            serials += [item["serial"] for item in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert serials == list(range(1, len(stored) + 1))
        assert [d for d in stored if d in set(acked)] == acked
        assert set(stored) <= set(acked) | set(unknown)
    finally:
        api.close()
        if proc.poll() is None:
            proc.kill()
        node.kill()
