"""``sockudo-tools``: operator commands over the log and a node's projection."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from sockudo.errors import SockudoError
from sockudo.node.runtime import projection_dir
from tools.common import add_node_options, open_log_for_tools, settings_from
from tools.inspect_stream import EXIT, inspect_stream, render_text
from tools.rebuild import rebuild

USAGE_ERROR = 3


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sockudo-tools", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    inspect = sub.add_parser(
        "inspect-stream",
        help="compare one channel's log with this node's projection",
        description=(
            "Re-fold one channel from the log and compare with the projection. Exit 0 ok or "
            "lagging, 1 gaps or mismatch, 2 unanchored or stalled, 3 usage or I/O error."
        ),
    )
    inspect.add_argument("--app", required=True, help="app id")
    inspect.add_argument("--channel", required=True, help="channel name")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.add_argument("--strict", action="store_true", help="a lagging projection exits 1")
    inspect.add_argument("--from-offset", type=int, help="scan the log from this offset")
    add_node_options(inspect)

    rb = sub.add_parser(
        "rebuild",
        help="replay the whole log into a fresh projection",
        description=(
            "Replay the log into DATA_DIR/projection.new. With --verify, stop at the live "
            "projection's checkpoints and compare column family by column family (exit 1 on "
            "any difference); without it, swap the new projection in (stop the node first)."
        ),
    )
    rb.add_argument("--verify", action="store_true", help="compare instead of swapping")
    add_node_options(rb)
    return p


async def _inspect(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    event_log = open_log_for_tools(settings)
    await event_log.start()
    try:
        report = await inspect_stream(
            settings,
            event_log,
            args.app,
            args.channel,
            projection_path=Path(args.projection) if args.projection else projection_dir(settings),
            from_offset=args.from_offset,
        )
    finally:
        await event_log.close()
    print(json.dumps(report, indent=2) if args.json else render_text(report))
    code = EXIT[report["verdict"]]
    if args.strict and report["verdict"] == "lagging":
        code = 1
    return code


async def _rebuild(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    projection = Path(args.projection) if args.projection else projection_dir(settings)
    event_log = open_log_for_tools(settings)
    await event_log.start()
    try:
        report = await rebuild(settings, event_log, projection, verify=args.verify)
    finally:
        await event_log.close()
    print(
        f"events replayed: {report.events}  seconds: {report.seconds:.2f}  "
        f"events/s: {report.events_per_second:,.0f}"
    )
    for p, reason in sorted(report.stalled.items()):
        print(f"partition {p} stalled: {reason}")
    if report.differences is None:
        print(f"projection rebuilt at {projection}")
        return 0
    if report.differences:
        for cf, (live, new) in report.differences.items():
            print(f"DIFFERENT {cf}: live={live} rebuilt={new}")
        return 1
    print("verify: identical (every column family except meta)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:
        # argparse exits 2 on usage errors; spec 05 §7.8 reserves 2 for "unanchored".
        return USAGE_ERROR if exc.code else 0
    try:
        if args.command == "inspect-stream":
            return asyncio.run(_inspect(args))
        return asyncio.run(_rebuild(args))
    except (SockudoError, OSError) as exc:
        print(f"sockudo-tools: {exc}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
