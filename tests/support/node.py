"""A real ``sockudo-node`` process on loopback, for integration and conformance tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.ports import free_port

APP_ID = "123456"
APP_KEY = "test-key"
APP_SECRET = "test-secret"

CONFIG = """\
[[app_manager.array.apps]]
id = "{app_id}"
key = "{app_key}"
secret = "{app_secret}"
enabled = true

[app_manager.array.apps.policy.features]
enable_client_messages = true
enable_user_authentication = true
enable_watchlist_events = true

[[app_manager.array.apps]]
id = "disabled-app"
key = "disabled-key"
secret = "disabled-secret"
enabled = false
"""


@dataclass
class NodeProcess:
    """One node process; ``start``/``stop``/``kill`` keep the same data dir and ports."""

    data_dir: Path
    log_backend: str = "embedded"
    kafka_bootstrap: str | None = None
    topic_prefix: str = "sockudo"
    channel_partitions: int | None = None
    node_id: str = "node-a"
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_config: str = ""
    """TOML appended to the config file (more apps, say)."""
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "node.toml"

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.node_id}.log"

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SOCKUDO_DEFAULT_APP", "KAFKA_BOOTSTRAP"))
        }
        env.update(
            {
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "METRICS_HOST": "127.0.0.1",
                "METRICS_PORT": str(self.metrics_port),
                "SOCKUDO_DATA_DIR": str(self.data_dir),
                "SOCKUDO_LOG": self.log_backend,
                "EVENT_LOG_TOPIC_PREFIX": self.topic_prefix,
                "NODE_ID": self.node_id,
                "SHUTDOWN_GRACE_PERIOD": "2",
            }
        )
        if self.channel_partitions is not None:
            env["EVENT_LOG_CHANNEL_PARTITIONS"] = str(self.channel_partitions)
        if self.kafka_bootstrap:
            env["KAFKA_BOOTSTRAP_SERVERS"] = self.kafka_bootstrap
        env.update(self.extra_env)
        return env

    def tools_args(self) -> list[str]:
        """Options that point ``sockudo-tools`` at this node's log and data."""
        args = ["--config", str(self.config_path), "--data-dir", str(self.data_dir)]
        if self.log_backend == "kafka":
            args += ["--log", "kafka", "--kafka-bootstrap", str(self.kafka_bootstrap)]
        return args

    def tools_env(self) -> dict[str, str]:
        env = self.env()
        for k in ("HOST", "PORT", "METRICS_PORT"):
            env.pop(k, None)
        return env

    def start(self, timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            CONFIG.format(app_id=APP_ID, app_key=APP_KEY, app_secret=APP_SECRET) + self.extra_config
        )
        with self.log_path.open("ab") as logf:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sockudo.node.cli", "--config", str(self.config_path)],
                env=self.env(),
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/live", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"node did not come up in {timeout}s:\n{self.tail()}")

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the clean shutdown path."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: the crash path."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@contextlib.contextmanager
def running_node(node: NodeProcess) -> Iterator[NodeProcess]:
    node.start()
    try:
        yield node
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.kill()
