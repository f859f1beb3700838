"""A real Apache Kafka broker for the test suite, without Docker (spec 05 §2, §4).

``resolve_kafka`` decides where the session's broker comes from (§4.1):

1. ``SOCKUDO_KAFKA_BOOTSTRAP`` — use it, manage nothing; unreachable within 30 s is an error.
2. Docker (``SOCKUDO_KAFKA_MODE`` auto/docker) — a testcontainers ``KafkaContainer`` when
   ``docker info`` works within 5 s.
3. Local (auto/local) — ``LocalKafkaBroker``: a KRaft JVM started from the classpath cache that
   ``tools/kafka-dev.sh install`` builds from Maven Central.
4. Otherwise no broker: callers skip with ``SKIP_REASON`` (or fail when Kafka is required).

Everything here is synchronous; the few aiokafka calls run on a private event loop in a worker
thread so they never touch the event loops pytest-asyncio manages.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import concurrent.futures
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.support.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_DEV_SCRIPT = REPO_ROOT / "tools" / "kafka-dev.sh"
DEFAULT_KAFKA_VERSION = "4.0.2"
DEFAULT_KAFKA_IMAGE = "confluentinc/cp-kafka:7.9.0"
SKIP_REASON = (
    "no Kafka broker: set SOCKUDO_KAFKA_BOOTSTRAP, run tools/kafka-dev.sh install, or enable Docker"
)
OFF_REASON = "Kafka disabled: SOCKUDO_KAFKA_MODE=off"
START_TIMEOUT_S = 90.0
BOOTSTRAP_TIMEOUT_S = 30.0
FORMAT_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
READY_TOPIC = "__sockudo_ready"
_ATTEMPT_MARK = b"=== sockudo: starting kafka.Kafka ==="

# Spec 05 §2.7: a small heap and C1-only JIT start fastest on a 2-core machine; the provider
# property pins slf4j-simple even if another SLF4J binding slipped onto the classpath.
JVM_OPTS = (
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    "-Djava.net.preferIPv4Stack=true",
    "-Dslf4j.provider=org.slf4j.simple.SimpleServiceProvider",
    "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.log.org.apache.kafka=warn",
)
# The formatter is a short-lived JVM; it only needs to start quickly.
_TOOL_JVM_OPTS = (
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Dslf4j.provider=org.slf4j.simple.SimpleServiceProvider",
)

# Spec 05 §2.6, verbatim, shared with tools/kafka-dev.sh. Placeholders: {PORT}, {CPORT}, {DATA}.
SERVER_PROPERTIES = (REPO_ROOT / "tools" / "kafka-dev" / "server.properties").read_text()

T = TypeVar("T")


class KafkaSetupError(RuntimeError):
    """A broker was configured or should have started, but is not usable (an error, not a skip)."""


class _PortInUse(KafkaSetupError):
    """The broker could not bind one of its ports; retrying with new ports may help."""


class _BrokerExited(KafkaSetupError):
    """The JVM exited while we were waiting for it to become ready."""


# -- small helpers ---------------------------------------------------------------------------


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on a fresh event loop in a worker thread and return its result.

    A new thread keeps ``asyncio.run`` away from the main thread's event-loop state, which
    pytest-asyncio owns.
    """
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kafka-setup") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def kafka_version(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("SOCKUDO_KAFKA_VERSION") or DEFAULT_KAFKA_VERSION


def kafka_cache_dir(version: str, env: Mapping[str, str] | None = None) -> Path:
    """``${SOCKUDO_KAFKA_CACHE:-~/.cache/sockudo-kafka}/kafka-$V`` (outside the repository)."""
    env = os.environ if env is None else env
    root = env.get("SOCKUDO_KAFKA_CACHE") or str(Path.home() / ".cache" / "sockudo-kafka")
    return Path(root) / f"kafka-{version}"


def installed_lib(version: str, env: Mapping[str, str] | None = None) -> Path | None:
    """The classpath folder, but only once ``install`` completed (``COMPLETE`` marker)."""
    cache = kafka_cache_dir(version, env)
    return cache / "lib" if (cache / "COMPLETE").is_file() else None


def required_java_major(version: str) -> int:
    """Kafka 4.x servers need Java 17; the 3.9 fallback still runs on 11."""
    return 11 if version.startswith("3.") else 17


def find_java(env: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    home = env.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    return shutil.which("java", path=env.get("PATH"))


def java_major(java: str) -> int | None:
    """Major version from ``java -version`` (``"17.0.15"`` → 17, ``"1.8.0_402"`` → 8)."""
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def new_cluster_id() -> str:
    """A KRaft cluster id as ``StorageTool random-uuid`` makes: 22 base64url chars, no leading -."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def render_server_properties(port: int, controller_port: int, data_dir: Path) -> str:
    return (
        SERVER_PROPERTIES.replace("{PORT}", str(port))
        .replace("{CPORT}", str(controller_port))
        .replace("{DATA}", str(data_dir))
    )


def _split_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    hosts = []
    for item in bootstrap.split(","):
        host, _, port = item.strip().rpartition(":")
        hosts.append((host.strip("[]") or "localhost", int(port or 9092)))
    return hosts


def _tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# -- readiness (spec 05 §2.7) ------------------------------------------------------------------


async def _describe_cluster(bootstrap: str, request_timeout_ms: int) -> dict[str, Any]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=request_timeout_ms)
    try:
        await admin.start()
        cluster: dict[str, Any] = await admin.describe_cluster()
        return cluster
    finally:
        await admin.close()


async def _wait_kafka_reachable(bootstrap: str, timeout_s: float) -> dict[str, Any]:
    """Wait until ``bootstrap`` answers a Metadata request; raise ``KafkaSetupError`` otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: BaseException | None = None
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            async with asyncio.timeout(remaining):
                return await _describe_cluster(bootstrap, request_timeout_ms=3000)
        except Exception as exc:  # any failure means "not yet"; the last one is reported
            last = exc
        await asyncio.sleep(min(0.5, max(0.0, deadline - loop.time())))
    raise KafkaSetupError(
        f"Kafka at {bootstrap} (SOCKUDO_KAFKA_BOOTSTRAP) is unreachable after {timeout_s:.0f} s: "
        f"{last!r}"
    )


async def _ready_round_trip(
    bootstrap: str, timeout_s: float, alive: Callable[[], bool] = lambda: True
) -> None:
    """Steps 2 and 3 of §2.7: one broker, a topic can be created, a record round-trips.

    ``alive`` is polled between retries so a JVM that died (say, on a port clash while some
    other process answers on that port) fails fast instead of after the whole deadline.
    """
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, timeout_s)
    last: BaseException | None = None
    while True:
        if not alive():
            raise _BrokerExited(f"broker for {bootstrap} exited during start-up")
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
            if len(cluster["brokers"]) != 1:
                raise KafkaSetupError(f"expected one broker, metadata says {cluster['brokers']}")
            response = await admin.create_topics([NewTopic(READY_TOPIC, 1, 1)])
            codes = {code for _topic, code, *_ in response.topic_errors}
            if codes <= {0, TopicAlreadyExistsError.errno}:
                break
            last = RuntimeError(f"create_topics: {response}")
        except KafkaSetupError:
            raise
        except Exception as exc:  # not controller / broker not available yet: retry
            last = exc
        finally:
            await admin.close()
        if loop.time() >= deadline:
            raise KafkaSetupError(f"broker at {bootstrap} never accepted create_topics: {last!r}")
        await asyncio.sleep(0.2)

    marker = uuid.uuid4().hex.encode()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        meta = await producer.send_and_wait(READY_TOPIC, marker, partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="none",
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    try:
        tp = TopicPartition(READY_TOPIC, 0)
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        while loop.time() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            if any(r.value == marker for r in batch.get(tp, [])):
                return
        raise KafkaSetupError(f"broker at {bootstrap} never returned the readiness record")
    finally:
        await consumer.stop()


# -- the local broker (spec 05 §4.2) -------------------------------------------------------------


@dataclass
class LocalKafkaBroker:
    """One KRaft broker+controller JVM bound to 127.0.0.1, in its own working directory.

    ``start()`` renders ``server.properties`` with two free ports, formats the storage with a
    cluster id generated in Python, starts ``kafka.Kafka`` in its own session (so a Ctrl-C to
    pytest does not hit it before teardown), and waits for readiness. ``stop()`` sends SIGTERM
    to that pid only, waits up to 20 s, then SIGKILLs, and removes the working directory unless
    ``keep_dir`` (``SOCKUDO_KEEP_KAFKA_DIR=1``).
    """

    workdir: Path
    lib: Path
    java: str
    start_timeout_s: float = START_TIMEOUT_S
    keep_dir: bool = False
    port: int = 0
    controller_port: int = 0
    startup_seconds: float = 0.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def log_path(self) -> Path:
        return self.workdir / "broker.log"

    def log_tail(self, lines: int = 50) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no broker log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> str:
        """Start the broker and return its bootstrap address once it is ready."""
        began = time.monotonic()
        try:
            self._attempt()
        except _PortInUse:
            # Ports are picked by bind-and-close, so another process can grab one before the
            # JVM binds it. One retry with fresh ports, fresh data dir.
            self._attempt()
        self.startup_seconds = time.monotonic() - began
        return self.bootstrap

    def _attempt(self) -> None:
        self._kill()
        data = self.workdir / "data"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        self.port = free_port()
        self.controller_port = free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        props = self.workdir / "server.properties"
        props.write_text(render_server_properties(self.port, self.controller_port, data))
        self._format(props)
        self._launch(props)

    def crash(self) -> None:
        """SIGKILL the broker: no shutdown, its data dir as a crash leaves it."""
        proc, self._proc = self._proc, None
        if proc is not None:
            atexit.unregister(self._kill)
            proc.kill()
            proc.wait(10)

    def restart(self) -> None:
        """Start the broker again on the same ports and data (after :meth:`crash`)."""
        self._kill()
        self._launch(self.workdir / "server.properties")

    def _launch(self, props: Path) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        with self.log_path.open("ab") as log:
            log.write(_ATTEMPT_MARK + b"\n")
            log.flush()
            self._proc = subprocess.Popen(
                [self.java, *JVM_OPTS, "-cp", f"{self.lib}/*", "kafka.Kafka", str(props)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        atexit.register(self._kill)
        try:
            self._wait_listening(deadline)
            remaining = deadline - time.monotonic()
            run_async(lambda: _ready_round_trip(self.bootstrap, remaining, self._alive))
        except _BrokerExited:
            self._wait_exit(10.0)
            raise self._exited_error() from None
        except BaseException:
            self._kill()
            raise

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _wait_exit(self, timeout_s: float) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout_s)
        self._kill()

    def _exited_error(self) -> KafkaSetupError:
        tail = self.log_tail()
        # Only this attempt's output counts: the log is shared by both attempts.
        this_attempt = tail.rsplit(_ATTEMPT_MARK.decode(), 1)[-1]
        error = _PortInUse if "Address already in use" in this_attempt else KafkaSetupError
        return error(
            f"Kafka broker on {self.bootstrap} exited during start-up (log {self.log_path}):\n"
            f"{tail}"
        )

    def _format(self, props: Path) -> None:
        cmd = [
            self.java,
            *_TOOL_JVM_OPTS,
            "-cp",
            f"{self.lib}/*",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            new_cluster_id(),
            "-c",
            str(props),
        ]
        try:
            out = subprocess.run(
                cmd, capture_output=True, text=True, timeout=FORMAT_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise KafkaSetupError(f"StorageTool format timed out after {exc.timeout} s") from exc
        if out.returncode != 0:
            raise KafkaSetupError(
                f"StorageTool format exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
            )

    def _wait_listening(self, deadline: float) -> None:
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                error = self._exited_error()
                self._kill()
                raise error
            if _tcp_open("127.0.0.1", self.port, timeout=0.2):
                return
            time.sleep(0.1)
        raise KafkaSetupError(
            f"Kafka broker not listening on {self.bootstrap} within {self.start_timeout_s:.0f} s "
            f"(log {self.log_path}):\n{self.log_tail()}"
        )

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self._kill)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def stop(self) -> None:
        self._kill()
        if not self.keep_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


# -- resolution (spec 05 §4.1) ----------------------------------------------------------------


@dataclass
class KafkaResolution:
    """Where the session's broker came from; ``bootstrap`` is ``None`` when tests must skip."""

    source: str
    """``env``, ``docker``, ``local``, ``off`` or ``none``."""
    bootstrap: str | None = None
    skip_reason: str | None = None
    close: Callable[[], None] = lambda: None
    broker: LocalKafkaBroker | None = None

    @property
    def deliberate(self) -> bool:
        """Skipping was asked for (``SOCKUDO_KAFKA_MODE=off``), so it is never a failure."""
        return self.source == "off"


def docker_available(timeout_s: float = 5.0) -> bool:
    """``docker info`` exits 0 within 5 s: a client without a running engine does not count."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        result = subprocess.run(
            [docker, "info"], capture_output=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _start_container(image: str) -> KafkaResolution:
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:
        from testcontainers.kafka import KafkaContainer

    container = KafkaContainer(image=image).with_kraft()
    container.start()
    bootstrap = str(container.get_bootstrap_server())
    return KafkaResolution(source="docker", bootstrap=bootstrap, close=container.stop)


def _local_broker(
    make_workdir: Callable[[], Path], env: Mapping[str, str]
) -> KafkaResolution | None:
    version = kafka_version(env)
    java = find_java(env)
    if java is None or (java_major(java) or 0) < required_java_major(version):
        return None
    lib = installed_lib(version, env)
    if lib is None and env.get("SOCKUDO_KAFKA_AUTO_INSTALL") == "1":
        install = subprocess.run(
            [str(KAFKA_DEV_SCRIPT), "install"],
            env={**env},
            capture_output=True,
            text=True,
            timeout=int(env.get("MVN_TIMEOUT", "900")) + 120,
            check=False,
        )
        if install.returncode == 0:
            lib = installed_lib(version, env)
    if lib is None:
        return None
    broker = LocalKafkaBroker(
        workdir=make_workdir(),
        lib=lib,
        java=java,
        keep_dir=env.get("SOCKUDO_KEEP_KAFKA_DIR") == "1",
    )
    bootstrap = broker.start()
    return KafkaResolution(source="local", bootstrap=bootstrap, close=broker.stop, broker=broker)


def resolve_kafka(
    make_workdir: Callable[[], Path],
    *,
    env: Mapping[str, str] | None = None,
    bootstrap_timeout_s: float = BOOTSTRAP_TIMEOUT_S,
) -> KafkaResolution:
    """Find or start the session's broker per spec 05 §4.1.

    Returns a resolution with a bootstrap address, or one with ``skip_reason`` set. Raises
    ``KafkaSetupError`` when a broker was configured (or was started) but is unusable: those
    are errors, never skips. ``make_workdir`` is called only when a local broker starts.
    """
    env = dict(os.environ if env is None else env)
    mode = env.get("SOCKUDO_KAFKA_MODE", "auto") or "auto"
    if mode == "off":
        return KafkaResolution(source="off", skip_reason=OFF_REASON)
    if mode not in {"auto", "docker", "local"}:
        raise KafkaSetupError(f"SOCKUDO_KAFKA_MODE={mode!r}: expected auto, docker, local or off")

    bootstrap = env.get("SOCKUDO_KAFKA_BOOTSTRAP", "").strip()
    if bootstrap:
        try:
            _split_bootstrap(bootstrap)
        except ValueError as exc:
            raise KafkaSetupError(f"SOCKUDO_KAFKA_BOOTSTRAP={bootstrap!r} is malformed") from exc
        run_async(lambda: _wait_kafka_reachable(bootstrap, bootstrap_timeout_s))
        return KafkaResolution(source="env", bootstrap=bootstrap)

    if mode in {"auto", "docker"} and docker_available():
        return _start_container(env.get("SOCKUDO_KAFKA_IMAGE") or DEFAULT_KAFKA_IMAGE)

    if mode in {"auto", "local"}:
        local = _local_broker(make_workdir, env)
        if local is not None:
            return local

    return KafkaResolution(source="none", skip_reason=SKIP_REASON)


async def delete_topics_with_prefix(bootstrap: str, prefix: str) -> list[str]:
    """Delete every topic whose name starts with ``prefix``; returns the names deleted."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
        return names
    finally:
        await admin.close()
