"""What the generated codecs (``fastdecode``, ``fastencode``) share: a source buffer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Source:
    """Lines of one generated function and the namespace it runs in."""

    def __init__(self, ns: dict[str, Any]) -> None:
        self.ns = ns
        self.lines: list[str] = []
        self.n = 0

    def tmp(self, stem: str) -> str:
        """A fresh local name."""
        self.n += 1
        return f"{stem}{self.n}"

    def emit(self, ind: int, line: str) -> None:
        self.lines.append("    " * ind + line)

    def compile(
        self, name: str, head: list[str], tail: list[str], origin: str
    ) -> Callable[..., Any]:
        """``def`` + ``head`` + the emitted lines + ``tail``, run in the namespace; the function."""
        src = "".join(line + "\n" for line in [*head, *self.lines, *tail])
        exec(compile(src, f"<{origin} {name}>", "exec"), self.ns)
        fn: Callable[..., Any] = self.ns[name]
        return fn
