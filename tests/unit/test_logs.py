"""The node's log filter: a library's repeated complaints are held back, the node's own are not."""

from __future__ import annotations

import logging

from sockudo.node.logs import RepeatFilter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_alike_library_lines_pass_once_per_window_and_the_next_counts_the_held_back() -> None:
    clock = Clock()
    f = RepeatFilter(("aiokafka",), window_s=10.0, clock=clock)
    template = "Unable connect to node with id %s: %s"
    first = record("aiokafka", template, 1, "[Errno 111] Connection refused")
    assert f.filter(first)
    assert first.getMessage() == "Unable connect to node with id 1: [Errno 111] Connection refused"
    passed = 0
    for i in range(200):  # an outage's burst, with other arguments each time
        clock.now += 0.04
        passed += f.filter(record("aiokafka", template, i % 3, f"[Errno {i}] x"))
    assert passed == 0
    clock.now = 112.0
    later = record("aiokafka", template, 1, "[Errno 111] Connection refused")
    assert f.filter(later)
    assert later.getMessage() == (
        "Unable connect to node with id 1: [Errno 111] Connection refused"
        " (200 alike held back in the 12 s before this)"
    )
    # The window starts again from that line, and nothing was held back since.
    clock.now = 123.0
    quiet = record("aiokafka", template, 2, "refused")
    assert f.filter(quiet)
    assert quiet.getMessage() == "Unable connect to node with id 2: refused"


def test_kinds_are_told_apart_and_other_loggers_are_never_held_back() -> None:
    clock = Clock()
    f = RepeatFilter(("aiokafka",), window_s=10.0, clock=clock)
    assert f.filter(record("aiokafka.conn", "Unable connect to node with id %s", 1))
    assert f.filter(record("aiokafka.cluster", "Unable connect to node with id %s", 1))
    assert f.filter(record("aiokafka.conn", "Unable to update metadata from %s", [1]))
    warning = record("aiokafka.conn", "Unable connect to node with id %s", 1, level=logging.WARN)
    assert f.filter(warning)
    assert not f.filter(record("aiokafka.conn", "Unable connect to node with id %s", 2))
    # Not under the prefix (a look-alike name included): every line passes.
    for name in ("sockudo.http.errors", "aiokafkaesque", "uvicorn.error"):
        assert all(f.filter(record(name, "answered %s", "service_unavailable")) for _ in range(5))


def test_a_percent_sign_in_a_held_back_message_survives() -> None:
    clock = Clock()
    f = RepeatFilter(("aiokafka",), window_s=1.0, clock=clock)
    assert f.filter(record("aiokafka", "100%% of %s failed", "fetches"))
    assert not f.filter(record("aiokafka", "100%% of %s failed", "fetches"))
    clock.now += 2
    line = record("aiokafka", "100%% of %s failed", "fetches")
    assert f.filter(line)
    assert line.getMessage() == "100% of fetches failed (1 alike held back in the 2 s before this)"
