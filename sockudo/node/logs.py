"""The node's logging: one format, and repeated library complaints held back.

While a broker is down, aiokafka logs every failed connect and metadata refresh of each of its
clients, about a hundred ERROR lines a second, which buries the node's own one line per refused
request. :class:`RepeatFilter` lets the first line of each kind through, holds back the alike
ones for a window, and says how many it held back with the next one it lets through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NOISY_LIBRARIES = ("aiokafka",)
REPEAT_WINDOW_S = 10.0
_MAX_KINDS = 1_000


@dataclass(slots=True)
class _Run:
    since: float
    held: int = 0


class RepeatFilter(logging.Filter):
    """Passes one record per (logger, level, message template) and ``window_s`` from the
    loggers under ``prefixes``; others pass untouched.

    Alike means the same format string, whatever its arguments: an outage's lines differ only
    in addresses, node ids and errnos.
    """

    def __init__(
        self,
        prefixes: tuple[str, ...] = NOISY_LIBRARIES,
        window_s: float = REPEAT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._prefixes = tuple(p + "." for p in prefixes)
        self._names = frozenset(prefixes)
        self._window = window_s
        self._clock = clock
        self._runs: dict[tuple[str, int, str], _Run] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name not in self._names and not name.startswith(self._prefixes):
            return True
        kind = (name, record.levelno, str(record.msg))
        now = self._clock()
        run = self._runs.get(kind)
        if run is not None and now - run.since < self._window:
            run.held += 1
            return False
        if run is not None and run.held:
            # Appended after formatting so that a '%' in the note cannot meet the arguments.
            record.msg = record.getMessage() + (
                f" ({run.held} alike held back in the {now - run.since:.0f} s before this)"
            )
            record.args = None
        if len(self._runs) >= _MAX_KINDS:
            self._runs.clear()
        self._runs[kind] = _Run(now)
        return True


def configure(level: str) -> None:
    """Root logging for ``sockudo-node``: ``level``, the node's format, repeats held back."""
    logging.basicConfig(level=level.upper(), format=FORMAT)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RepeatFilter())
