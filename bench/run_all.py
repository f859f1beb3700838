"""Every spine benchmark in one table (``make bench``), on the embedded log and a real Kafka.

    python bench/run_all.py [--events 1000000] [--no-kafka] [--fanout-subscribers 1000]
                            [--recovery-subscribers 1000]

Starts a throwaway Kafka broker with ``tools/kafka-dev.sh`` unless ``--kafka`` names one.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


def run(script: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return f"{script} failed ({out.returncode}): {out.stderr.strip().splitlines()[-1:]}"
    return out.stdout.rstrip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000, help="events for fold/rebuild")
    ap.add_argument("--publishes", type=int, default=2000, help="publishes for latency")
    ap.add_argument(
        "--fanout-subscribers", type=int, default=1000, help="subscribers for fanout (quick: 100)"
    )
    ap.add_argument(
        "--recovery-subscribers",
        type=int,
        default=1000,
        help="V2 subscribers that drop and resume in the recovery bench (quick: 100)",
    )
    ap.add_argument("--kafka", help="use this Kafka bootstrap instead of starting one")
    ap.add_argument("--no-kafka", action="store_true")
    args = ap.parse_args()

    broker_dir: tempfile.TemporaryDirectory[str] | None = None
    bootstrap = args.kafka
    if not bootstrap and not args.no_kafka:
        broker_dir = tempfile.TemporaryDirectory()
        started = subprocess.run(
            [str(ROOT / "tools/kafka-dev.sh"), "start", "--dir", broker_dir.name],
            capture_output=True,
            text=True,
            check=True,
        )
        match = re.search(r"BOOTSTRAP=(\S+)", started.stdout)
        assert match, started.stdout
        bootstrap = match.group(1)
    kafka = ["--kafka", bootstrap] if bootstrap else []
    try:
        sections = [
            ("Log append (durable, 200-byte records)", run("log_append.py", *kafka)),
            ("Fold and rebuild", run("fold.py", "--events", str(args.events), *kafka)),
            (
                "Publish to serial (HTTP round trip, 1 client)",
                run("publish_latency.py", "--n", str(args.publishes), *kafka),
            ),
        ]
    finally:
        if broker_dir is not None:
            subprocess.run(
                [str(ROOT / "tools/kafka-dev.sh"), "stop", "--dir", broker_dir.name], check=False
            )
            broker_dir.cleanup()
    sections.append(("History pages (limit 100, embedded)", run("history_reads.py")))
    # After the broker is gone: fanout needs both cores (node, subscriber processes).
    subs = str(args.fanout_subscribers)
    sections.append(
        (
            f"Fanout (HTTP publish -> {subs} V1 subscribers of one channel, embedded)",
            run("fanout.py", "--subscribers", subs, "--rates", "5"),
        )
    )
    # 500 publishes/s to one channel of 1,000 would be 500k deliveries/s, ten times the
    # throughput target: the latency target is read as 500 publishes/s spread so that each
    # subscriber is one channel's only subscriber (plus the pacing socket on every channel).
    sections.append(
        (
            f"Fanout latency (500 publishes/s over {subs} channels, one V1 subscriber each)",
            run("fanout.py", "--subscribers", subs, "--channels", subs, "--rates", "500"),
        )
    )
    for wire in ("json", "msgpack", "protobuf"):
        sections.append(
            (
                f"Fanout (HTTP publish -> {subs} V2 {wire} subscribers of one channel)",
                run("fanout.py", "--subscribers", subs, "--wire", wire, "--rates", "5"),
            )
        )
    sections.append(
        (
            f"Recovery ({args.recovery_subscribers} V2 subscribers drop for 2 s, resume, embedded)",
            run("recovery.py", "--subscribers", str(args.recovery_subscribers)),
        )
    )
    sections.append(
        (
            "WebSocket connection cost (node vs bare uvicorn vs a minimal protocol)",
            run("ws_handshake.py", "--connections", str(args.recovery_subscribers)),
        )
    )
    for title, body in sections:
        print(f"== {title}")
        print(body)
        print()


if __name__ == "__main__":
    main()
