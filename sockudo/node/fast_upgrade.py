"""The WebSocket opening handshake of uvicorn's wsproto protocol, without h11.

wsproto parses the upgrade request and writes the 101 answer through h11 (pure Python): about
a third of the server-side CPU of a new WebSocket under uvicorn, which a reconnect storm pays
once per client (``bench/ws_handshake.py``). uvicorn's HTTP protocol has already parsed the
request with httptools and hands the WebSocket protocol a re-serialised copy (request line,
``name: value`` lines, blank line), so :class:`FastHandshake` reads that copy directly and
writes the 101 itself, then hands frames to the same ``wsproto.Connection`` wsproto would.

Only a complete, well-formed upgrade request that wsproto would accept takes that path. Any
other input (a malformed or unusual request, a missing or wrong upgrade header, a rejection
the application sends, a request still incomplete) is replayed into a real ``H11Handshake``,
which then does exactly what wsproto always did. ``tests/unit/test_fast_upgrade.py`` checks
the two give the same events and the same bytes.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.websockets.wsproto_impl import WSProtocol
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import AcceptConnection, Event, Request
from wsproto.handshake import H11Handshake, server_extensions_handshake
from wsproto.utilities import generate_accept_token, split_comma_header

__all__ = ["FastHandshake", "FastUpgradeWSProtocol", "Upgrade", "accept_head", "judge_upgrade"]

_MAX_REQUEST = 16 * 1024
"""h11's limit on an incomplete request head: a longer one is h11's to refuse."""
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(rb"[\x21-\x7e\x80-\xff]([ \t]*[\x21-\x7e\x80-\xff])*|")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_UNUSUAL = frozenset({b"content-length", b"transfer-encoding"})
"""Headers that give a GET a body: h11 reads it, so those requests take h11's path."""


class FastHandshake:
    """A server-side stand-in for ``wsproto.handshake.H11Handshake``, same interface."""

    def __init__(self) -> None:
        self._state = ConnectionState.CONNECTING
        self._connection: Connection | None = None
        self._events: deque[Event] = deque()
        self._received = b""
        self._request: Request | None = None
        self._key = b""
        self._after = b""
        """Bytes that followed the request before the answer: the first frames."""
        self._h11: H11Handshake | None = None

    @property
    def state(self) -> ConnectionState:
        return self._h11.state if self._h11 is not None else self._state

    @property
    def connection(self) -> Connection | None:
        return self._h11.connection if self._h11 is not None else self._connection

    def receive_data(self, data: bytes | None) -> None:
        if self._h11 is not None:
            self._h11.receive_data(data)
            return
        if self._request is not None:
            self._received += data or b""
            self._after += data or b""
            return
        self._received += data or b""
        end = self._received.find(b"\r\n\r\n")
        if end < 0 or end + 4 > _MAX_REQUEST:
            if data is None or len(self._received) > _MAX_REQUEST:
                self._fall_back()
            return
        request = _parse(self._received[:end])
        if request is None:
            self._fall_back()
            return
        self._request, self._key = request
        self._after = self._received[end + 4 :]
        self._events.append(self._request)

    def events(self) -> Generator[Event, None, None]:
        if self._h11 is not None:
            yield from self._h11.events()
            return
        while self._events:
            yield self._events.popleft()

    def send(self, event: Event) -> bytes:
        if self._h11 is None and isinstance(event, AcceptConnection) and not self._events:
            return self._accept(event)
        if self._h11 is None:
            # A rejection (or anything else): h11 writes it, from the request it reads again.
            self._fall_back(replay_events=False)
        assert self._h11 is not None
        return self._h11.send(event)

    def _fall_back(self, *, replay_events: bool = True) -> None:
        """Hand everything received so far to a real ``H11Handshake``."""
        self._h11 = H11Handshake(ConnectionType.SERVER)
        self._events.clear()
        self._h11.receive_data(self._received)
        if not replay_events:
            # The caller already took the Request event from this object.
            for _ in self._h11.events():
                pass

    def _accept(self, event: AcceptConnection) -> bytes:
        request = self._request
        if request is None or self._state is not ConnectionState.CONNECTING:
            self._fall_back(replay_events=False)
            assert self._h11 is not None
            return self._h11.send(event)
        if event.subprotocol is not None and event.subprotocol not in request.subprotocols:
            self._fall_back(replay_events=False)
            assert self._h11 is not None
            return self._h11.send(event)  # raises wsproto's LocalProtocolError
        extensions = b""
        if event.extensions:
            accepts = server_extensions_handshake(list(request.extensions), event.extensions)  # type: ignore[arg-type]
            extensions = accepts or b""
        head = accept_head(self._key, event.subprotocol, extensions, event.extra_headers)
        self._connection = Connection(ConnectionType.SERVER, event.extensions)
        self._state = ConnectionState.OPEN
        if self._after:
            self._connection.receive_data(self._after)
            self._after = b""
        return head


def accept_head(
    key: bytes,
    subprotocol: str | None,
    extensions: bytes,
    extra_headers: Iterable[tuple[bytes, bytes]],
) -> bytes:
    """The 101 answer to an upgrade request carrying ``key``, byte for byte as h11 writes it."""
    lines = [
        b"HTTP/1.1 101 Switching Protocols",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Accept: " + generate_accept_token(key),
    ]
    if subprotocol is not None:
        lines.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode("ascii"))
    if extensions:
        lines.append(b"Sec-WebSocket-Extensions: " + extensions)
    for name, value in extra_headers:
        lines.append(bytes(name) + b": " + bytes(value))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _parse(head: bytes) -> tuple[Request, bytes] | None:
    """The ``Request`` wsproto would make of a complete, valid upgrade request head, and its
    key; ``None`` for anything h11 or wsproto should judge."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or parts[2] != b"HTTP/1.1":
        return None
    pairs: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            return None
        pairs.append((name, value))
    upgrade = judge_upgrade(parts[1], pairs)
    if upgrade is None:
        return None
    request = Request(
        host=upgrade.host,
        target=upgrade.target,
        extensions=upgrade.extensions,
        extra_headers=upgrade.headers,
        subprotocols=upgrade.subprotocols,
    )
    return request, upgrade.key


@dataclass(slots=True)
class Upgrade:
    """A valid WebSocket upgrade request, as wsproto's ``Request`` event would describe it."""

    target: str
    host: str
    key: bytes
    subprotocols: list[str]
    extensions: list[str]
    headers: list[tuple[bytes, bytes]]
    """Lower-case names, in request order, without host, extensions and subprotocols."""


def judge_upgrade(target: bytes, pairs: Iterable[tuple[bytes, bytes]]) -> Upgrade | None:
    """The upgrade a GET HTTP/1.1 request for ``target`` with header ``pairs`` (names as sent,
    values unstripped) asks for, when h11 and wsproto would both accept it; else ``None``."""
    if not _TARGET.fullmatch(target):
        return None
    connection: list[str] | None = None
    extensions: list[str] = []
    subprotocols: list[str] = []
    host = key = version = None
    upgrade = b""
    headers: list[tuple[bytes, bytes]] = []
    for name, value in pairs:
        if not _TOKEN.fullmatch(name):
            return None  # also folded continuation lines, which start with whitespace
        value = value.strip(b" \t")
        if not _VALUE.fullmatch(value):
            return None
        name = name.lower()
        if name in _UNUSUAL:
            return None
        if name == b"connection":
            connection = split_comma_header(value)
        elif name == b"host":
            if host is not None:
                return None
            try:
                host = value.decode("idna")
            except UnicodeError:
                return None
            continue
        elif name == b"sec-websocket-extensions":
            extensions.extend(split_comma_header(value))
            continue
        elif name == b"sec-websocket-key":
            key = value
        elif name == b"sec-websocket-protocol":
            subprotocols.extend(split_comma_header(value))
            continue
        elif name == b"sec-websocket-version":
            version = value
        elif name == b"upgrade":
            upgrade = value
        headers.append((name, value))
    if (
        connection is None
        or not any(token.lower() == "upgrade" for token in connection)
        or version != b"13"
        or key is None
        or upgrade.lower() != b"websocket"
        or host is None
    ):
        return None  # wsproto's own errors, from its own path
    return Upgrade(target.decode("ascii"), host, key, subprotocols, extensions, headers)


class FastUpgradeWSProtocol(WSProtocol):
    """uvicorn's wsproto WebSocket protocol with :class:`FastHandshake` as its handshake."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn.handshake = FastHandshake()  # type: ignore[assignment]
