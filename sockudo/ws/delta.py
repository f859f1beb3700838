"""Delta compression for V2 JSON connections (spec 02 §6): encoders, per-channel state, options.

Pure: no sockets, no clock, no I/O.

Encoders (§6.5) turn a base text into a target text, both as UTF-8 bytes:

- :func:`fossil_delta`: the Fossil SCM delta format. One intentional detail: the trailing checksum
  is written **without** the 32-bit wrap-around. The Python client 2.2.0's ``FossilDelta.apply``
  compares against an unbounded Python sum (it never masks to 32 bits), so a wrapped checksum
  fails for every target longer than ~12 bytes; the JS client and Fossil's C decoder read the
  number modulo 2**32, which is the wrapped value, so the unwrapped number satisfies all three.
- :func:`vcdiff_delta`: RFC 3284 VCDIFF (header ``D6 C3 C4 00``, no secondary compressor, the
  default code table, one window whose source segment is the base, no Adler-32).

Both share one matcher in the spirit of Fossil's ``delta_create`` (16-byte probes of the target
looked up in the base, each hit grown forwards and backwards), written so that the byte work
happens in C: ``bytes.find`` or a dict of the base's aligned blocks for the look-up, slice
comparisons and big-integer XOR to grow a hit, never a per-byte Python loop over a match. The
output is correct Fossil/VCDIFF but not byte-identical to Fossil's or xdelta3's own encoders.

:class:`ChannelDeltaState` is the per-(connection, channel) state of §6.3/§6.4: it takes the
shared V2 JSON frame of each message (as :func:`sockudo.ws.wire.encode_json` wrote it, *without*
``sequence``) and returns the text to send, either the full form (``"sequence":k`` appended as
the last member) or a ``sockudo:delta`` frame. The body of a delta depends only on the two raw
frames, so it is memoised across connections: subscribers that saw the same previous message
share one match, whatever their own ``k``.
"""

from __future__ import annotations

import binascii
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any, Final, Literal

__all__ = [
    "DEFAULT_ALGORITHM",
    "FULL_MESSAGE_INTERVAL",
    "MIN_MESSAGE_SIZE",
    "SUPPORTED_ALGORITHMS",
    "ChannelDeltaState",
    "DeltaAlgorithm",
    "DeltaOption",
    "enabled_payload",
    "encode_delta",
    "fossil_checksum",
    "fossil_delta",
    "full_form",
    "negotiate_algorithm",
    "parse_subscribe_delta",
    "vcdiff_delta",
]

DeltaAlgorithm = Literal["fossil", "xdelta3"]
DEFAULT_ALGORITHM: Final[DeltaAlgorithm] = "fossil"
SUPPORTED_ALGORITHMS: Final[tuple[DeltaAlgorithm, ...]] = ("fossil", "xdelta3")
FULL_MESSAGE_INTERVAL: Final = 10
"""A full message after this many consecutive deltas (§6.3 ``full_message_interval``)."""
MIN_MESSAGE_SIZE: Final = 100
"""Full frames shorter than this many bytes are never delta-encoded (§6.3 ``min_message_size``)."""

_quote: Final = encode_basestring
_unpack: Final = struct.unpack


# --- the matcher ----------------------------------------------------------------------------

_NHASH: Final = 16
"""Block size: Fossil's hash window. Copies are at least this long."""
_from_bytes: Final = int.from_bytes


def _forward(a: bytes, x: int, b: bytes, y: int) -> int:
    """Length of the common prefix of ``a[x:]`` and ``b[y:]``.

    Galloping slice comparisons (C ``memcmp``) find a window holding the first difference; the
    XOR of the window read as two big-endian integers then locates it in one step.
    """
    n = min(len(a) - x, len(b) - y)
    lo, step = 0, 256
    while lo < n:
        hi = min(lo + step, n)
        wa, wb = a[x + lo : x + hi], b[y + lo : y + hi]
        if wa != wb:
            diff = _from_bytes(wa, "big") ^ _from_bytes(wb, "big")
            return hi - 1 - ((diff.bit_length() - 1) >> 3)
        lo, step = hi, step << 2
    return max(n, 0)


def _backward(a: bytes, x: int, b: bytes, y: int, limit: int) -> int:
    """Length (at most ``limit``) of the common suffix of ``a[:x]`` and ``b[:y]``."""
    lo, step = 0, 32
    while lo < limit:
        hi = min(lo + step, limit)
        wa, wb = a[x - hi : x - lo], b[y - hi : y - lo]
        if wa != wb:
            # Little-endian: the byte nearest the end of the window is the most significant.
            diff = _from_bytes(wa, "little") ^ _from_bytes(wb, "little")
            return lo + (hi - lo) - 1 - ((diff.bit_length() - 1) >> 3)
        lo, step = hi, step << 2
    return max(limit, 0)


_FIND_MAX: Final = 4096
"""Bases up to this size are searched with ``bytes.find`` (C), probing every ``_FIND_STEP``th
target position; larger ones get Fossil's aligned-block index, probing every position."""
_FIND_STEP: Final = 8


def _copies(src: bytes, tgt: bytes) -> list[tuple[int, int, int]]:
    """Copy runs ``(target_pos, src_offset, length)`` in target order, non-overlapping; the
    gaps between them are literals. Every run is at least ``_NHASH`` bytes.

    A probe looks the target's ``_NHASH`` bytes at position ``i`` up in the base and grows a hit
    both ways. Small bases (every frame in practice) are searched directly, so any common run of
    ``_NHASH + _FIND_STEP - 1`` bytes is found; large ones use Fossil's scheme (the base's
    aligned blocks indexed, first occurrence wins, every target position probed), which finds
    any common run of ``2 * _NHASH - 1`` bytes. A second candidate is the diagonal of the
    previous copy (same shift), which is what an edit inside repeated structures needs.
    """
    n_src, n_tgt = len(src), len(tgt)
    if n_src < _NHASH or n_tgt < _NHASH:
        return []
    top = n_src - _NHASH
    find: Callable[[bytes], int]
    if n_src <= _FIND_MAX:
        find, step = src.find, _FIND_STEP
    else:
        index = {src[off : off + _NHASH]: off for off in range(top - top % _NHASH, -1, -_NHASH)}
        get = index.get

        def find(block: bytes) -> int:
            return get(block, -1)

        step = 1
    out: list[tuple[int, int, int]] = []
    lit = 0  # start of the pending literal
    shift = 0  # src offset - target position of the previous copy
    i = 0
    last = n_tgt - _NHASH
    while i <= last:
        block = tgt[i : i + _NHASH]
        off = find(block)
        if off < 0:
            i += step
            continue
        fwd = _forward(src, off + _NHASH, tgt, i + _NHASH)
        back = _backward(src, off, tgt, i, min(off, i - lit))
        best_len, best_off, best_back = back + _NHASH + fwd, off - back, back
        diag = i + shift
        if diag != off and 0 <= diag <= top and src[diag : diag + _NHASH] == block:
            fwd = _forward(src, diag + _NHASH, tgt, i + _NHASH)
            back = _backward(src, diag, tgt, i, min(diag, i - lit))
            if back + _NHASH + fwd > best_len:
                best_len, best_off, best_back = back + _NHASH + fwd, diag - back, back
        start = i - best_back
        out.append((start, best_off, best_len))
        shift = best_off - start
        i = lit = start + best_len
    return out


# --- Fossil ---------------------------------------------------------------------------------

_FOSSIL_DIGITS: Final = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"
_SMALL_INTS: Final[list[bytes]] = [
    bytes((_FOSSIL_DIGITS[v],))
    if v < 64
    else bytes((_FOSSIL_DIGITS[v >> 6], _FOSSIL_DIGITS[v & 63]))
    for v in range(4096)
]


def _fossil_int(v: int) -> bytes:
    """An unsigned integer in Fossil's base-64 digits (most significant first, "0" for 0)."""
    if v < 4096:
        return _SMALL_INTS[v]
    out = bytearray()
    while v:
        out.append(_FOSSIL_DIGITS[v & 63])
        v >>= 6
    out.reverse()
    return bytes(out)


def fossil_checksum(data: bytes) -> int:
    """Fossil's checksum of ``data`` *without* the 32-bit wrap (see the module docstring).

    Fossil adds the bytes into four lanes and combines them as big-endian words, so the
    unwrapped value is the sum of the big-endian 32-bit words of ``data`` zero-padded to a
    multiple of 4; ``fossil_checksum(d) & 0xFFFFFFFF`` is Fossil's own value.
    """
    rem = len(data) & 3
    if rem:
        data = data + b"\0" * (4 - rem)
    return sum(_unpack(f">{len(data) >> 2}I", data))


def _checksum_at(data: bytes, offset: int) -> int:
    """The contribution of ``data`` to the checksum of a text where it starts at ``offset``."""
    pad = offset & 3
    return fossil_checksum(b"\0" * pad + data) if pad else fossil_checksum(data)


def _fossil_commands(tgt: bytes, copies: list[tuple[int, int, int]]) -> bytes:
    """The insert/copy commands rebuilding ``tgt`` (no size header, no checksum)."""
    parts: list[bytes] = []
    add = parts.append
    pos = 0
    for start, off, n in copies:
        if start > pos:
            add(_fossil_int(start - pos))
            add(b":")
            add(tgt[pos:start])
        add(_fossil_int(n))
        add(b"@")
        add(_fossil_int(off))
        add(b",")
        pos = start + n
    if pos < len(tgt):
        add(_fossil_int(len(tgt) - pos))
        add(b":")
        add(tgt[pos:])
    return b"".join(parts)


def fossil_delta(base: bytes, target: bytes) -> bytes:
    """A Fossil delta turning ``base`` into ``target`` (the client's ``FossilDelta.apply``)."""
    return b"".join(
        (
            _fossil_int(len(target)),
            b"\n",
            _fossil_commands(target, _copies(base, target)),
            _fossil_int(fossil_checksum(target)),
            b";",
        )
    )


# --- VCDIFF (RFC 3284) ----------------------------------------------------------------------

_VCDIFF_HEADER: Final = b"\xd6\xc3\xc4\x00\x00"  # magic, version 0, Hdr_Indicator 0
_VCD_SOURCE: Final = 0x01
_NEAR: Final = 4  # s_near of the default code table
_SAME: Final = 3 * 256  # s_same * 256
_RUN_MIN: Final = 8
"""RUN instead of ADD for a byte repeated at least this many times."""
_RUN_ZEROS: Final = b"\0" * (_RUN_MIN - 1)
_SMALL_VARINTS: Final[list[bytes]] = [bytes((v,)) for v in range(128)]
_BYTES: Final[list[bytes]] = [bytes((v,)) for v in range(256)]


def _varint(v: int) -> bytes:
    """RFC 3284 §2 integer: base 128, most significant first, high bit = more bytes follow."""
    if v < 128:
        return _SMALL_VARINTS[v]
    out = bytearray((v & 0x7F,))
    v >>= 7
    while v:
        out.append(0x80 | (v & 0x7F))
        v >>= 7
    out.reverse()
    return bytes(out)


def _vc_add(data: bytearray, inst: bytearray, chunk: bytes) -> None:
    n = len(chunk)
    if n <= 17:
        inst.append(1 + n)  # ADD size 1..17: codes 2..18
    else:
        inst.append(1)  # ADD size 0: the size follows
        inst += _varint(n)
    data += chunk


def _vc_literal(data: bytearray, inst: bytearray, tgt: bytes, start: int, end: int) -> None:
    """ADD the literal ``tgt[start:end]``, as RUNs where a byte repeats ``_RUN_MIN``+ times."""
    pos = start
    if end - start >= _RUN_MIN:
        # Byte i of `same` is 0 where chunk[i] == chunk[i + 1]: a run of _RUN_MIN equal bytes
        # is _RUN_MIN - 1 zeros, found with C-speed `find` rather than a regex per position.
        chunk = tgt[start:end]
        n = len(chunk) - 1
        same = (_from_bytes(chunk[1:], "big") ^ _from_bytes(chunk[:-1], "big")).to_bytes(n, "big")
        at = same.find(_RUN_ZEROS)
        while at >= 0:
            rest = same[at:]
            stop = at + len(rest) - len(rest.lstrip(b"\0")) + 1  # run is chunk[at:stop]
            if at + start > pos:
                _vc_add(data, inst, tgt[pos : start + at])
            inst.append(0)  # RUN size 0: the size follows
            inst += _varint(stop - at)
            data.append(chunk[at])
            pos = start + stop
            at = same.find(_RUN_ZEROS, stop)
    if pos < end:
        _vc_add(data, inst, tgt[pos:end])


def _vc_sections(
    src_len: int, tgt: bytes, copies: list[tuple[int, int, int]]
) -> tuple[bytearray, bytearray, bytearray]:
    """The data, instruction and address sections of one window (RFC 3284 §4.3, §5)."""
    data, inst, addrs = bytearray(), bytearray(), bytearray()
    near = [0] * _NEAR
    next_near = 0
    same = [0] * _SAME
    pos = 0
    for start, addr, n in copies:
        if start > pos:
            _vc_literal(data, inst, tgt, pos, start)
        # Cheapest address mode (§5.3): same cache (1 byte), else the shortest varint among
        # SELF, HERE and the near slots. The decoder updates both caches on every COPY.
        slot = addr % _SAME
        if same[slot] == addr:
            mode = 2 + _NEAR + slot // 256
            encoded = _BYTES[slot & 255]
        else:
            # Smallest value → shortest varint: SELF (addr), HERE (here - addr; addr <
            # src_len <= here), or an offset from a near slot.
            mode, value = 0, addr
            here_offset = start + src_len - addr
            if here_offset < value:
                mode, value = 1, here_offset
            for slot_index, recent in enumerate(near):
                if 0 <= addr - recent < value:
                    mode, value = 2 + slot_index, addr - recent
            encoded = _varint(value)
        if 4 <= n <= 18:
            inst.append(19 + 16 * mode + n - 3)
        else:
            inst.append(19 + 16 * mode)
            inst += _varint(n)
        addrs += encoded
        near[next_near] = addr
        next_near = (next_near + 1) % _NEAR
        same[slot] = addr
        pos = start + n
    if pos < len(tgt):
        _vc_literal(data, inst, tgt, pos, len(tgt))
    return data, inst, addrs


_Buffer = bytes | bytearray


def _vc_window(
    src_len: int, tgt_len: int, data: _Buffer, inst: _Buffer, addrs: _Buffer
) -> list[_Buffer]:
    enc: list[_Buffer] = [
        _varint(tgt_len),
        b"\x00",  # Delta_Indicator: no secondary compression of any section
        _varint(len(data)),
        _varint(len(inst)),
        _varint(len(addrs)),
        data,
        inst,
        addrs,
    ]
    enc_len = sum(map(len, enc))
    if src_len:
        head: list[_Buffer] = [
            bytes((_VCD_SOURCE,)),
            _varint(src_len),
            b"\x00",
            _varint(enc_len),
        ]
    else:
        head = [b"\x00", _varint(enc_len)]  # nothing to copy from: no source segment
    return head + enc


def vcdiff_delta(base: bytes, target: bytes) -> bytes:
    """An RFC 3284 delta turning ``base`` into ``target`` (the client's ``vcdiff_decoder``)."""
    data, inst, addrs = _vc_sections(len(base), target, _copies(base, target))
    window = _vc_window(len(base), len(target), data, inst, addrs)
    return _VCDIFF_HEADER + b"".join(window)


def encode_delta(algorithm: DeltaAlgorithm, base: bytes, target: bytes) -> bytes:
    """The delta bytes of ``algorithm`` turning ``base`` into ``target``."""
    if algorithm == "fossil":
        return fossil_delta(base, target)
    if algorithm == "xdelta3":
        return vcdiff_delta(base, target)
    raise ValueError(f"unknown delta algorithm {algorithm!r}")


# --- full form and shared delta bodies ------------------------------------------------------


def _sequence_suffix(frame: str, seq: int) -> str:
    if not frame.endswith("}"):
        raise ValueError("a V2 JSON frame must be an object")
    return (',"sequence":' if len(frame) > 2 else '"sequence":') + str(seq) + "}"


def full_form(frame: str, seq: int) -> str:
    """§6.4: the frame with ``"sequence":seq`` appended as its last top-level member.

    ``frame`` is compact JSON object text without a ``sequence`` member (``encode_json`` of an
    envelope whose ``sequence`` is ``None``): ``{...}`` becomes ``{...,"sequence":seq}``.
    """
    return frame[:-1] + _sequence_suffix(frame, seq)


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class _FossilBody:
    commands: bytes
    """Commands rebuilding the target frame minus its closing ``}`` from the base's prefix."""
    prefix_len: int
    prefix_sum: int


@dataclass(frozen=True, slots=True)
class _VcdiffBody:
    source_len: int
    """The window's source segment: the base frame minus its closing ``}`` (UTF-8 bytes)."""
    prefix_len: int
    data: bytes
    inst: bytes
    addrs: bytes


_Body = _FossilBody | _VcdiffBody
_BODY_MEMO_SIZE: Final = 64
_body_memo: dict[tuple[str, str, str], _Body] = {}


def _body(algorithm: DeltaAlgorithm, base_frame: str, frame: str) -> _Body:
    """The part of a delta that does not depend on either frame's ``sequence``: the target's
    prefix (``frame[:-1]``) rebuilt from the base's prefix, which every full form starts with.
    Memoised: fanout hands the same frame objects to every connection."""
    key = (algorithm, base_frame, frame)
    body = _body_memo.get(key)
    if body is not None:
        return body
    src = base_frame[:-1].encode("utf-8")
    tgt = frame[:-1].encode("utf-8")
    copies = _copies(src, tgt)
    if algorithm == "fossil":
        body = _FossilBody(_fossil_commands(tgt, copies), len(tgt), fossil_checksum(tgt))
    else:
        data, inst, addrs = _vc_sections(len(src), tgt, copies)
        body = _VcdiffBody(len(src), len(tgt), bytes(data), bytes(inst), bytes(addrs))
    if len(_body_memo) >= _BODY_MEMO_SIZE:
        del _body_memo[next(iter(_body_memo))]
    _body_memo[key] = body
    return body


def _finish(body: _Body, suffix: bytes) -> bytes:
    """The connection's delta: the shared body plus its own ``"sequence":k}`` as a literal."""
    if isinstance(body, _FossilBody):
        checksum = body.prefix_sum + _checksum_at(suffix, body.prefix_len)
        return b"".join(
            (
                _fossil_int(body.prefix_len + len(suffix)),
                b"\n",
                body.commands,
                _fossil_int(len(suffix)),
                b":",
                suffix,
                _fossil_int(checksum),
                b";",
            )
        )
    data = bytearray(body.data)
    inst = bytearray(body.inst)
    _vc_add(data, inst, suffix)
    window = _vc_window(body.source_len, body.prefix_len + len(suffix), data, inst, body.addrs)
    return _VCDIFF_HEADER + b"".join(window)


# --- per-(connection, channel) state --------------------------------------------------------


class ChannelDeltaState:
    """§6.3 state of one channel on one V2 JSON connection.

    Feed every delivered channel message, in order, to :meth:`next_frame`. Call :meth:`reset`
    on (re)subscribe and unsubscribe (or drop the object), :meth:`resync` on
    ``sockudo:delta_sync_error``.
    """

    __slots__ = (
        "_base_frame",
        "_delta_head",
        "_since_full",
        "algorithm",
        "bytes_sent",
        "bytes_uncompressed",
        "channel",
        "delta_messages",
        "full_message_interval",
        "full_messages",
        "min_message_size",
        "omit_algorithm",
        "seq",
    )

    def __init__(
        self,
        channel: str,
        algorithm: DeltaAlgorithm = DEFAULT_ALGORITHM,
        *,
        full_message_interval: int = FULL_MESSAGE_INTERVAL,
        min_message_size: int = MIN_MESSAGE_SIZE,
        omit_algorithm: bool = False,
    ) -> None:
        if algorithm not in SUPPORTED_ALGORITHMS:
            raise ValueError(f"unknown delta algorithm {algorithm!r}")
        self.channel = channel
        self.algorithm: DeltaAlgorithm = algorithm
        self.full_message_interval = full_message_interval
        self.min_message_size = min_message_size
        self.omit_algorithm = omit_algorithm
        self._delta_head = '{"event":"sockudo:delta","channel":' + _quote(channel) + ',"data":'
        self.seq = 0
        """The sequence the next message gets."""
        self._base_frame: str | None = None
        """Raw frame (no ``sequence``) of the last message; the base is its full form."""
        self._since_full = 0
        self.full_messages = 0
        self.delta_messages = 0
        self.bytes_uncompressed = 0
        """UTF-8 bytes of every message's full form."""
        self.bytes_sent = 0
        """UTF-8 bytes of the frames actually returned."""

    @property
    def base_text(self) -> str | None:
        """The base (§6.3): the exact full-form text of the last message, or ``None``."""
        if self._base_frame is None:
            return None
        return full_form(self._base_frame, self.seq - 1)

    def reset(self) -> None:
        """Forget the base: the next message is full with ``sequence`` 0 (subscribe,
        unsubscribe, sync error). Counters are kept."""
        self.seq = 0
        self._base_frame = None
        self._since_full = 0

    def resync(self) -> str | None:
        """``sockudo:delta_sync_error`` for this channel (§6.6): reset, then return the last
        delivered message again in full form (``sequence`` 0, same ``message_id``), or ``None``
        when nothing was delivered. The returned frame becomes the new base."""
        frame = self._base_frame
        self.reset()
        if frame is None:
            return None
        return self._send_full(frame, _sequence_suffix(frame, 0), _utf8_len(frame) - 1)

    def next_frame(
        self,
        frame: str,
        event: str,
        *,
        message_id: str | None = None,
        stream_id: str | None = None,
        serial: int | None = None,
    ) -> str:
        """The text to send for the next channel message.

        ``frame`` is the message's V2 JSON frame without a ``sequence`` member (shared between
        connections; never re-parsed); ``event``, ``message_id``, ``stream_id`` and ``serial``
        are the message's own, repeated on a ``sockudo:delta`` frame (§6.5).
        """
        k = self.seq
        suffix = _sequence_suffix(frame, k)
        prefix_len = _utf8_len(frame) - 1
        base_frame = self._base_frame
        if (
            k >= 2
            and base_frame is not None
            and self._since_full < self.full_message_interval
            and prefix_len + len(suffix) >= self.min_message_size
        ):
            delta = _finish(_body(self.algorithm, base_frame, frame), suffix.encode("ascii"))
            if len(delta) < prefix_len + len(suffix):
                out = self._delta_frame(delta, event, k, message_id, stream_id, serial)
                self._since_full += 1
                self.delta_messages += 1
                self.bytes_uncompressed += prefix_len + len(suffix)
                self.bytes_sent += _utf8_len(out)
                self._base_frame = frame
                self.seq = k + 1
                return out
        return self._send_full(frame, suffix, prefix_len)

    def _send_full(self, frame: str, suffix: str, prefix_len: int) -> str:
        self._since_full = 0
        self.full_messages += 1
        size = prefix_len + len(suffix)
        self.bytes_uncompressed += size
        self.bytes_sent += size
        self._base_frame = frame
        self.seq += 1
        return frame[:-1] + suffix

    def _delta_frame(
        self,
        delta: bytes,
        event: str,
        k: int,
        message_id: str | None,
        stream_id: str | None,
        serial: int | None,
    ) -> str:
        parts = [
            self._delta_head,
            '{"event":',
            _quote(event),
            ',"delta":"',
            binascii.b2a_base64(delta, newline=False).decode("ascii"),
            '","seq":',
            str(k),
            "" if self.omit_algorithm else ',"algorithm":"' + self.algorithm + '"',
            ',"base_index":',
            str(k - 1),
            "}",
        ]
        if message_id is not None:
            parts.append(',"message_id":' + _quote(message_id))
        if stream_id is not None:
            parts.append(',"stream_id":' + _quote(stream_id))
        if serial is not None:
            parts.append(',"serial":' + str(int(serial)))
        parts.append("}")
        return "".join(parts)


# --- negotiation (§6.2) ---------------------------------------------------------------------

_DISABLED: Final = frozenset({"disabled", "none", "false"})
_ENABLED: Final = frozenset({"true", "enabled"})


@dataclass(frozen=True, slots=True)
class DeltaOption:
    """A subscription's ``delta`` option. ``algorithm`` ``None``: the connection's negotiated
    algorithm, else the server default."""

    enabled: bool
    algorithm: DeltaAlgorithm | None = None


def _algorithm_of(value: str) -> DeltaAlgorithm:
    name = value.strip().lower()
    if name == "xdelta3":
        return "xdelta3"
    # "fossil", and any unknown name: upstream treats it as `true` with the default algorithm.
    return DEFAULT_ALGORITHM


def parse_subscribe_delta(value: Any) -> DeltaOption | None:
    """The subscribe ``delta`` option (§6.2); ``None`` when absent or of no recognised shape
    (the connection-level switch then decides).

    ``true``/``"true"`` → enabled, algorithm unset; ``false`` → disabled; ``"fossil"``/
    ``"xdelta3"`` → enabled with it; ``"disabled"``/``"none"``/``"false"`` → disabled; any other
    string (an unknown algorithm) → enabled with fossil; ``{"enabled": b, "algorithm": a}`` →
    as those members say (``enabled`` absent counts as true, ``algorithm`` absent leaves it
    unset).
    """
    if value is None:
        return None
    if value is True or value is False:
        return DeltaOption(value)
    if isinstance(value, str):
        name = value.strip().lower()
        if name in _DISABLED:
            return DeltaOption(False)
        if name in _ENABLED:
            return DeltaOption(True)
        return DeltaOption(True, _algorithm_of(name))
    if isinstance(value, dict):
        enabled = value.get("enabled", True)
        if enabled is False or (isinstance(enabled, str) and enabled.strip().lower() in _DISABLED):
            return DeltaOption(False)
        algorithm = value.get("algorithm")
        return DeltaOption(True, _algorithm_of(algorithm) if isinstance(algorithm, str) else None)
    return None


def negotiate_algorithm(data: Any) -> DeltaAlgorithm:
    """The algorithm for ``sockudo:enable_delta_compression`` (§6.2): the server default when
    ``algorithms`` is absent or lists it, else the first listed one the server supports, else
    the default. ``data`` may be the payload object or its JSON text."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return DEFAULT_ALGORITHM
    algorithms = data.get("algorithms") if isinstance(data, dict) else None
    if not isinstance(algorithms, list):
        return DEFAULT_ALGORITHM
    names = [a.strip().lower() for a in algorithms if isinstance(a, str)]
    if DEFAULT_ALGORITHM in names:
        return DEFAULT_ALGORITHM
    for name in names:
        if name == "xdelta3":
            return "xdelta3"
    return DEFAULT_ALGORITHM


def enabled_payload(
    algorithm: DeltaAlgorithm, *, enabled: bool = True, channel: str | None = None
) -> dict[str, Any]:
    """``data`` of ``sockudo:delta_compression_enabled``: ``{"enabled","algorithm"}`` and, for
    a per-subscription switch, ``"channel"`` (§6.2). Binary formats answer ``enabled=False``."""
    out: dict[str, Any] = {"enabled": enabled, "algorithm": algorithm}
    if channel is not None:
        out["channel"] = channel
    return out
