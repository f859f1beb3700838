"""``sockudo-node``: run a node on the embedded log (default) or Kafka."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

import uvloop

from sockudo import metrics
from sockudo.config import Settings, load_settings
from sockudo.errors import ConfigError, LogUnavailable, NodeFailed, ProjectionUnavailable
from sockudo.node import logs
from sockudo.node.app import build_app
from sockudo.node.cluster import ClusterService
from sockudo.node.connections import ConnectionService
from sockudo.node.fanout import Fanout
from sockudo.node.hub import Hub
from sockudo.node.replay import HotReplay
from sockudo.node.runtime import Runtime
from sockudo.node.services import ChannelService
from sockudo.node.serving import Listener, ListenError, serve
from sockudo.ws.direct import with_transport_extension

log = logging.getLogger("sockudo.node")


LISTEN_BACKLOG = 4096
"""Pending connections the main listener queues (the kernel caps it at somaxconn)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sockudo-node",
        description=(
            "A Sockudo-compatible realtime node on an append-only log. Every option also reads "
            "its environment variable (shown in brackets); command-line values win."
        ),
    )
    p.add_argument("--config", help="TOML (or JSON) configuration file")
    p.add_argument("--host", help="listen address [HOST] (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="main port [PORT] (default 6001)")
    p.add_argument("--metrics-host", help="metrics listen address [METRICS_HOST]")
    p.add_argument("--metrics-port", type=int, help="Prometheus port [METRICS_PORT] (default 9601)")
    p.add_argument(
        "--log",
        dest="log_backend",
        choices=["embedded", "kafka"],
        help="event-log backend [SOCKUDO_LOG] (default embedded)",
    )
    p.add_argument(
        "--kafka-bootstrap",
        dest="kafka_bootstrap_servers",
        help="Kafka bootstrap servers [KAFKA_BOOTSTRAP_SERVERS or SOCKUDO_KAFKA_BOOTSTRAP]",
    )
    p.add_argument(
        "--data-dir",
        help="embedded log and projection databases [SOCKUDO_DATA_DIR] (default ./data)",
    )
    p.add_argument(
        "--node-id", help="node id in cluster and stream state [NODE_ID] (default hostname)"
    )
    p.add_argument(
        "--http-server",
        choices=["uvicorn", "hypercorn"],
        help="ASGI server of the listeners [SOCKUDO_HTTP_SERVER] (default uvicorn)",
    )
    p.add_argument("--log-level", default="INFO", help="Python log level (default INFO)")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "metrics_host": args.metrics_host,
            "metrics_port": args.metrics_port,
            "log_backend": args.log_backend,
            "kafka_bootstrap_servers": args.kafka_bootstrap_servers,
            "data_dir": args.data_dir,
            "node_id": args.node_id,
            "http_server": args.http_server,
        }.items()
        if v is not None
    }
    return load_settings(args.config, overrides=overrides)


async def run_node(settings: Settings) -> None:
    metrics.configure(str(settings.port))
    hub = Hub()
    hot = HotReplay()
    fanout = Fanout(hub, hot)
    runtime = Runtime(settings, on_deliveries=fanout.deliver)
    await runtime.start()
    channels = ChannelService(runtime)
    app = build_app(channels, hub=hub, hot=hot)
    # Heartbeats start before the first socket, so every presence join comes from an
    # incarnation the cluster has heard of (spec 05 §9.3).
    cluster = ClusterService(runtime, app.state.ctx.connections, hub)
    app.state.ctx.peers = cluster
    await cluster.start()
    await declare_orphans_dead(app.state.ctx.connections, cluster)
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    failed: list[str] = []

    async def stop_when_failed() -> None:
        # A node that can no longer fold or append would answer 504s forever; stopping sends
        # its clients elsewhere (4200) and lets a supervisor start it again.
        while not stop.is_set():
            reason = runtime.fatal()
            if reason is not None:
                log.error("stopping: %s", reason)
                failed.append(reason)
                stop.set()
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FAILURE_CHECK_S)

    watchdog = asyncio.create_task(stop_when_failed())

    async def shutdown_trigger() -> None:
        await stop.wait()
        app.state.ctx.draining = True
        # Tell live sockets to reconnect elsewhere now instead of holding the graceful period.
        hub.close_all(4200, "Server shutting down")
        # uvicorn closes whatever is still open with 1012 as soon as this returns: let the
        # 4200 closes go out first (they leave the hub once written), within the grace period.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hub.wait_empty(), settings.shutdown_grace_period)

    # A node's clients reconnect all at once after a network blip or a restart: a default
    # accept queue of 100 overflows, and refused SYNs retry only after 1, 3, 7 s...
    # The server's own frame cap is only a memory guard; the endpoint enforces the configured
    # limit exactly and closes with 1009 (spec 01 §2.4).
    main = Listener(
        settings.host,
        settings.port,
        backlog=LISTEN_BACKLOG,
        websocket_max_message_size=4 * settings.websocket_max_payload_kb * 1024,
        graceful_timeout_s=float(settings.shutdown_grace_period),
    )
    # Fanout writes WebSocket frames straight to transports (sockudo/ws/direct.py).
    main_app = with_transport_extension(app)

    def listening() -> None:
        log.info(
            "sockudo-node %s listening on %s:%s (%s, log=%s, data=%s, partitions=%s)",
            runtime.incarnation,
            settings.host,
            settings.port,
            settings.http_server,
            settings.log_backend,
            settings.data_dir,
            runtime.partitions,
        )

    servers = [
        asyncio.ensure_future(
            serve(settings.http_server, main_app, main, shutdown_trigger, listening)
        )
    ]
    if settings.metrics_enabled:
        metrics_listener = Listener(settings.metrics_host, settings.metrics_port)
        metrics_asgi = metrics.asgi_app(settings.metrics_prefix)
        servers.append(
            asyncio.ensure_future(
                serve(settings.http_server, metrics_asgi, metrics_listener, stop.wait)
            )
        )
    try:
        await asyncio.gather(*servers)
    finally:
        stop.set()  # a listener that could not bind stops the others
        await asyncio.gather(*servers, watchdog, return_exceptions=True)
        # The sockets are closed and their leaves appended: announce the stop, then close.
        await cluster.stop(announce=True)
        await runtime.stop()
        if not failed:
            log.info("sockudo-node stopped cleanly")
    if failed:
        raise NodeFailed(failed[0])


FAILURE_CHECK_S = 1.0
"""How often the node asks its runtime whether it can still do its job."""

GC_THRESHOLDS = (20_000, 20, 20)
"""Young-generation size and promotion counts for the serving phase.

Every publish allocates a few hundred short-lived objects; with the default 700-object young
generation the collector runs several times per request and, every ~100 k allocations, walks
every long-lived object (all sockets, their subscriptions): tens of milliseconds with the loop
blocked, which is most of the fanout latency tail. A larger young generation collects the same
garbage in fewer passes; frozen start-up objects (modules, schemas, config) are never walked.
"""


def tune_gc() -> None:
    """Move everything alive after start-up out of the collector's sight; collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def declare_orphans_dead(connections: ConnectionService, cluster: ClusterService) -> None:
    """Presence members an earlier run of this node left behind (SIGKILL, power loss) go away.

    Runs after the fold caught up, so the projection shows every connection the log still
    holds for those incarnations (spec 05 §8.1 single-node presence hygiene).
    """
    runner = connections.runtime.runner
    if runner is not None:
        await runner.wait_caught_up(30.0)
    for incarnation in sorted(connections.orphaned_incarnations()):
        log.info("declaring earlier incarnation %s dead", incarnation)
        await cluster.declare_dead(incarnation)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.configure(args.log_level)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"sockudo-node: configuration error: {exc}", file=sys.stderr)
        return 2
    # uvloop: the event loop and its transports in C, which the fanout and HTTP paths lean on.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            runner.run(run_node(settings))
        except (ListenError, LogUnavailable, ProjectionUnavailable) as exc:
            # Where the node runs is wrong (an address taken, a broker unreachable, a data
            # directory another node holds): say so, no traceback.
            print(f"sockudo-node: {exc}", file=sys.stderr)
            return 1
        except NodeFailed as exc:
            print(f"sockudo-node: stopped: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
