"""Controller for the real pusher-js client: one ``node tests/conformance/js/driver.js`` per client.

The driver speaks JSON lines (commands on stdin, events on stdout; see the header of
``driver.js``). A reader thread collects events; :meth:`PusherJs.expect` takes the first
not-yet-consumed event that matches (so events may be awaited in any order), and
:meth:`PusherJs.assert_no` checks that none arrives within a window.

Install the client with ``make js`` (``npm ci`` into ``tests/conformance/js/node_modules``).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from tests.support.auth_server import AuthServer
from tests.support.node import APP_KEY, NodeProcess

JS_DIR = Path(__file__).resolve().parents[1] / "conformance" / "js"
DRIVER = JS_DIR / "driver.js"
TIMEOUT = 10.0

Event = dict[str, Any]
Match = Callable[[Event], bool]


def unavailable_reason() -> str | None:
    """Why pusher-js cannot run here (``None`` when it can)."""
    if shutil.which("node") is None:
        return "node (Node.js >= 18) is not on PATH"
    if not (JS_DIR / "node_modules" / "pusher-js" / "package.json").exists():
        return "pusher-js is not installed: run `make js`"
    return None


def matcher(type_: str, **fields: Any) -> Match:
    """Matches events of ``type_`` whose fields equal ``fields``."""

    def match(event: Event) -> bool:
        return event.get("type") == type_ and all(event.get(k) == v for k, v in fields.items())

    return match


class PusherJs:
    """One pusher-js client in its own Node process."""

    def __init__(self, name: str = "client") -> None:
        self.name = name
        self.proc: subprocess.Popen[str] | None = None
        self.version: str | None = None
        self.socket_id: str | None = None
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._pending: list[Event] = []
        self._replies: dict[int, Event] = {}
        self._seen: collections.deque[Event] = collections.deque(maxlen=200)
        self._stderr: collections.deque[str] = collections.deque(maxlen=200)
        self._threads: list[threading.Thread] = []

    # -- process -------------------------------------------------------------------------------

    def start(self) -> PusherJs:
        node = shutil.which("node")
        assert node is not None, "node is not on PATH"
        self.proc = subprocess.Popen(
            [node, str(DRIVER)],
            cwd=JS_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        for target, stream, label in (
            (self._read_stdout, self.proc.stdout, "stdout"),
            (self._read_stderr, self.proc.stderr, "stderr"),
        ):
            thread = threading.Thread(
                target=target, args=(stream,), name=f"{self.name}-{label}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self.version = str(self.expect(matcher("ready"))["version"])
        return self

    def _read_stdout(self, stream: IO[str]) -> None:
        for line in stream:
            try:
                event = json.loads(line)
            except ValueError:
                self._stderr.append(f"[non-JSON stdout] {line.rstrip()}")
                continue
            with self._cond:
                self._seen.append(event)
                if event.get("type") in ("ack", "command_error") and event.get("id") is not None:
                    self._replies[int(event["id"])] = event
                else:
                    self._pending.append(event)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            self._stderr.append(line.rstrip())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        """Ask the driver to exit; kill its process group if it does not."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None and proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
                proc.stdin.flush()
                proc.stdin.close()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for thread in self._threads:
            thread.join(2)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> PusherJs:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def diagnostics(self) -> str:
        seen = "\n".join(json.dumps(e) for e in list(self._seen)[-40:])
        err = "\n".join(list(self._stderr)[-40:])
        return f"[{self.name}] last events:\n{seen}\n[{self.name}] stderr:\n{err}"

    # -- commands ------------------------------------------------------------------------------

    def send(self, cmd: str, timeout: float = TIMEOUT, **fields: Any) -> Event:
        """Run a driver command; its ack (a ``command_error`` raises)."""
        proc = self.proc
        assert proc is not None, "driver not started"
        assert proc.stdin is not None
        cid = next(self._ids)
        proc.stdin.write(json.dumps({"cmd": cmd, "id": cid, **fields}) + "\n")
        proc.stdin.flush()
        deadline = time.monotonic() + timeout
        with self._cond:
            while cid not in self._replies:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (not self.alive() and cid not in self._replies):
                    raise AssertionError(
                        f"no reply to {cmd} within {timeout}s\n{self.diagnostics()}"
                    )
                self._cond.wait(remaining)
            reply = self._replies.pop(cid)
        if reply["type"] == "command_error":
            raise AssertionError(f"{cmd} failed: {reply['message']}\n{self.diagnostics()}")
        return reply

    def connect(
        self,
        node: NodeProcess,
        auth: AuthServer | None = None,
        user_id: str = "anonymous",
        *,
        key: str = APP_KEY,
        wait: bool = True,
    ) -> str | None:
        """``new Pusher(key, {wsHost, wsPort, forceTLS: false, enabledTransports: ['ws'], …})``.

        Auth endpoints answer as ``user_id``. With ``wait``, returns the socket id once connected.
        """
        fields: dict[str, Any] = {
            "key": key,
            "host": "127.0.0.1",
            "port": node.port,
            "forceTLS": False,
            "enabledTransports": ["ws"],
            "disableStats": True,
        }
        if auth is not None:
            fields["authEndpoint"] = auth.channel_endpoint(user_id)
            fields["userAuthEndpoint"] = auth.user_endpoint(user_id)
        self.send("connect", **fields)
        if not wait:
            return None
        event = self.expect(matcher("state", current="connected"))
        self.socket_id = str(event["socket_id"])
        return self.socket_id

    def subscribe(self, channel: str, wait: bool = True) -> Event | None:
        """Subscribe; with ``wait`` the ``subscription_succeeded`` event (members for presence)."""
        self.send("subscribe", channel=channel)
        if not wait:
            return None
        return self.expect(
            lambda e: (
                e.get("channel") == channel
                and e.get("type") in ("subscription_succeeded", "subscription_error")
            ),
            check=matcher("subscription_succeeded", channel=channel),
        )

    def unsubscribe(self, channel: str) -> None:
        self.send("unsubscribe", channel=channel)

    def bind(self, channel: str, event: str) -> None:
        self.send("bind", channel=channel, event=event)

    def trigger(self, channel: str, event: str, data: Any) -> bool:
        return bool(self.send("trigger", channel=channel, event=event, data=data)["result"])

    def signin(self) -> None:
        self.send("signin")

    def disconnect(self) -> None:
        self.send("disconnect")

    def state(self) -> tuple[str, str | None]:
        reply = self.send("state")
        return str(reply["state"]), reply["socket_id"]

    def members(self, channel: str) -> dict[str, Any]:
        members: dict[str, Any] = self.send("members", channel=channel)["members"]
        return members

    # -- events --------------------------------------------------------------------------------

    def expect(
        self, match: Match, timeout: float = TIMEOUT, *, check: Match | None = None
    ) -> Event:
        """Consume and return the first pending event ``match`` accepts.

        With ``check``, the matched event must also satisfy it (else the assertion shows it):
        wait for "the outcome", then assert it is the good one.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, event in enumerate(self._pending):
                    if match(event):
                        del self._pending[i]
                        if check is not None and not check(event):
                            raise AssertionError(
                                f"unexpected outcome: {json.dumps(event)}\n{self.diagnostics()}"
                            )
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.alive():
                    raise AssertionError(
                        f"no matching event within {timeout}s"
                        f"{'' if self.alive() else ' (driver exited)'}\n{self.diagnostics()}"
                    )
                self._cond.wait(remaining)

    def expect_event(self, type_: str, timeout: float = TIMEOUT, **fields: Any) -> Event:
        return self.expect(matcher(type_, **fields), timeout)

    def assert_no(self, match: Match, wait: float = 0.7) -> None:
        """No pending event accepted by ``match`` arrives within ``wait`` seconds."""
        deadline = time.monotonic() + wait
        with self._cond:
            while True:
                hits = [e for e in self._pending if match(e)]
                if hits:
                    raise AssertionError(f"unexpected event: {json.dumps(hits[0])}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)

    def pending(self) -> list[Event]:
        with self._cond:
            return list(self._pending)

    def drain(self) -> list[Event]:
        """Consume every pending event."""
        with self._cond:
            events, self._pending = self._pending, []
        return events


SOCKET_ID = re.compile(r"\d+\.\d+")


@contextlib.contextmanager
def pusher_js_clients() -> Iterator[Callable[[str], PusherJs]]:
    """A factory of started clients, all closed on exit."""
    clients: list[PusherJs] = []

    def make(name: str = "client") -> PusherJs:
        client = PusherJs(name)
        clients.append(client)
        return client.start()

    try:
        yield make
    finally:
        for client in clients:
            client.close()
