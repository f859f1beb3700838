#!/usr/bin/env bash
# Run a real single-node Apache Kafka (KRaft) broker without Docker (spec 05 §2).
#
# The broker classpath is built by Maven from Maven Central into a cache folder outside the
# repository; nothing else is ever downloaded. Subcommands:
#
#   install                          build/validate the classpath cache        exit 0|2|3|4
#   classpath                        print the cache's lib folder              exit 0|1
#   start [--dir D] [--port P]       start a broker in the background          exit 0|5
#   stop [--dir D]                   stop it (SIGTERM, 20 s, SIGKILL)          exit 0
#   status [--dir D]                 "running BOOTSTRAP=…" or "stopped"        exit 0|1
#
# Environment: SOCKUDO_KAFKA_VERSION (4.0.2), SOCKUDO_KAFKA_CACHE (~/.cache/sockudo-kafka),
# JAVA_HOME (else java on PATH), MVN (mvn), MVN_TIMEOUT (900 seconds).
set -euo pipefail

readonly V="${SOCKUDO_KAFKA_VERSION:-4.0.2}"
readonly CACHE_ROOT="${SOCKUDO_KAFKA_CACHE:-$HOME/.cache/sockudo-kafka}"
readonly CACHE="$CACHE_ROOT/kafka-$V"
readonly LIB="$CACHE/lib"
readonly SLF4J_VERSION="2.0.17"
readonly RELOAD4J_VERSION="1.2.25"
readonly SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly POM="$SCRIPT_DIR/kafka-dev/pom.xml"
readonly DEFAULT_DIR="$CACHE_ROOT/broker-$V"
readonly START_TIMEOUT_S=90

# Same options as the pytest fixture (spec 05 §2.7): small heap, fast start on 2 cores.
readonly JVM_OPTS=(
  -Xms256m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:+ExitOnOutOfMemoryError
  -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true
  -Dslf4j.provider=org.slf4j.simple.SimpleServiceProvider
  -Dorg.slf4j.simpleLogger.defaultLogLevel=info -Dorg.slf4j.simpleLogger.showDateTime=true
  -Dorg.slf4j.simpleLogger.log.org.apache.kafka=warn
)

die() {
  local code=$1
  shift
  printf 'kafka-dev: %s\n' "$*" >&2
  exit "$code"
}

is_3x() { [[ "$V" == 3.* ]]; }

# Kafka 4.x servers need Java 17; the 3.9 fallback still runs on Java 11.
required_java() { if is_3x; then echo 11; else echo 17; fi; }

find_java() {
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    echo "$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then
    command -v java
  else
    return 1
  fi
}

# Major version from `java -version` ("17.0.15" -> 17, "1.8.0_402" -> 8).
java_major() {
  local line ver
  line=$("$1" -version 2>&1 | head -n 1) || return 1
  ver=$(sed -n 's/.*version "\([^"]*\)".*/\1/p' <<<"$line")
  [[ -n "$ver" ]] || return 1
  if [[ "$ver" == 1.* ]]; then
    ver=${ver#1.}
  fi
  echo "${ver%%[.+_-]*}"
}

require_java() {
  local need java major
  need=$(required_java)
  java=$(find_java) || die 2 "Java $need or newer is required (Kafka $V): no java on PATH and JAVA_HOME is not set"
  major=$(java_major "$java") || die 2 "Java $need or newer is required (Kafka $V): cannot read the version of $java"
  ((major >= need)) || die 2 "Java $need or newer is required (Kafka $V): $java is Java $major"
  echo "$java"
}

required_jars() {
  echo "kafka_2.13-$V.jar"
  echo "kafka-clients-$V.jar"
  is_3x || echo "kafka-server-$V.jar"
  echo "slf4j-simple-$SLF4J_VERSION.jar"
  if is_3x; then echo "reload4j-$RELOAD4J_VERSION.jar"; fi
}

# Fails (and names the first missing jar) unless every jar the broker needs is in $1.
check_jars() {
  local jar
  while read -r jar; do
    [[ -f "$1/$jar" ]] || {
      echo "missing $jar in $1" >&2
      return 1
    }
  done < <(required_jars)
}

cmd_install() {
  local java mvn_cmd tmp out uuid
  java=$(require_java)
  read -r -a mvn_cmd <<<"${MVN:-mvn}"
  command -v "${mvn_cmd[0]}" >/dev/null 2>&1 || die 2 "Maven (${mvn_cmd[0]}) is not on PATH; install Maven 3.8+"

  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  # Another install of the same version may be running (parallel test workers): wait for it.
  flock -w $((${MVN_TIMEOUT:-900} + 120)) 9 || die 4 "timed out waiting for the lock $CACHE/.lock"

  if [[ -f "$CACHE/COMPLETE" ]] && check_jars "$LIB" 2>/dev/null; then
    echo "kafka-dev: Kafka $V already installed in $LIB"
    return 0
  fi

  # Never leave a COMPLETE marker next to a half-built folder.
  rm -f "$CACHE/COMPLETE"
  tmp="$CACHE/lib.partial"
  rm -rf "$tmp"
  echo "kafka-dev: resolving Kafka $V from Maven Central into $LIB (MVN_TIMEOUT=${MVN_TIMEOUT:-900}s)"
  if ! timeout "${MVN_TIMEOUT:-900}" "${mvn_cmd[@]}" -B -q -f "$POM" -Dkafka.version="$V" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" \
    >"$CACHE/mvn.log" 2>&1; then
    tail -n 30 "$CACHE/mvn.log" >&2 || true
    rm -rf "$tmp"
    die 3 "Maven could not resolve org.apache.kafka:kafka_2.13:$V from Maven Central (log: $CACHE/mvn.log)"
  fi
  if is_3x; then
    # Kafka 3.9's core references log4j-1 classes (spec 05 §2.2); the pom stays 4.x-shaped.
    if ! timeout "${MVN_TIMEOUT:-900}" "${mvn_cmd[@]}" -B -q -f "$POM" \
      dependency:copy -Dartifact="ch.qos.reload4j:reload4j:$RELOAD4J_VERSION" -DoutputDirectory="$tmp" \
      >>"$CACHE/mvn.log" 2>&1; then
      tail -n 30 "$CACHE/mvn.log" >&2 || true
      rm -rf "$tmp"
      die 3 "Maven could not resolve ch.qos.reload4j:reload4j:$RELOAD4J_VERSION from Maven Central"
    fi
  fi

  check_jars "$tmp" || {
    rm -rf "$tmp"
    die 4 "verification failed: the resolved classpath lacks a required jar"
  }
  out=$("$java" -Dslf4j.provider=org.slf4j.simple.SimpleServiceProvider -cp "$tmp/*" \
    kafka.tools.StorageTool random-uuid 2>"$CACHE/smoke.log") || {
    cat "$CACHE/smoke.log" >&2
    rm -rf "$tmp"
    die 4 "smoke check failed: kafka.tools.StorageTool random-uuid did not exit 0"
  }
  uuid=$(tail -n 1 <<<"$out")
  [[ "$uuid" =~ ^[A-Za-z0-9_][A-Za-z0-9_-]{21}$ ]] || {
    rm -rf "$tmp"
    die 4 "smoke check failed: StorageTool random-uuid printed '$out', not a 22-character id"
  }

  rm -rf "$LIB"
  mv "$tmp" "$LIB"
  (cd "$LIB" && ls -1 *.jar | LC_ALL=C sort) >"$CACHE/COMPLETE.tmp"
  mv "$CACHE/COMPLETE.tmp" "$CACHE/COMPLETE"
  echo "kafka-dev: installed Kafka $V ($(wc -l <"$CACHE/COMPLETE") jars) in $LIB"
}

cmd_classpath() {
  [[ -f "$CACHE/COMPLETE" ]] || die 1 "Kafka $V is not installed; run tools/kafka-dev.sh install"
  echo "$LIB"
}

# ---- broker process management ------------------------------------------------------------

parse_dir_port() {
  DIR="$DEFAULT_DIR"
  PORT=""
  while (($#)); do
    case "$1" in
      --dir) DIR=${2:?--dir needs a value}; shift 2 ;;
      --port) PORT=${2:?--port needs a value}; shift 2 ;;
      *) die 64 "unknown argument: $1" ;;
    esac
  done
  # broker_pid matches the absolute properties path on the JVM's command line.
  DIR=$(realpath -m "$DIR")
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  local p
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
    return
  fi
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 40000))
    port_in_use "$p" || {
      echo "$p"
      return
    }
  done
  return 1
}

# Pid of the broker in $DIR, only if that pid is still our kafka.Kafka process (pids get reused).
broker_pid() {
  local pid
  [[ -f "$DIR/broker.pid" ]] || return 1
  pid=$(<"$DIR/broker.pid")
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "kafka.Kafka $DIR/server.properties" || return 1
  echo "$pid"
}

# Spec 05 §2.6, the template the test harness renders too (tests/support/kafka_broker.py).
write_properties() {
  sed -e "s|{PORT}|$PORT|g" -e "s|{CPORT}|$CPORT|g" -e "s|{DATA}|$DIR/data|g" \
    "$SCRIPT_DIR/kafka-dev/server.properties" >"$DIR/server.properties"
}

cmd_start() {
  local java pid cluster_id deadline
  parse_dir_port "$@"
  mkdir -p "$DIR"
  if pid=$(broker_pid); then
    echo "BOOTSTRAP=$(<"$DIR/bootstrap")"
    return 0
  fi
  [[ -f "$CACHE/COMPLETE" ]] || die 5 "Kafka $V is not installed; run tools/kafka-dev.sh install"
  java=$(require_java)

  # A restarted broker keeps its data and, when still free, its port, so clients can reconnect.
  if [[ -z "$PORT" && -f "$DIR/port" ]] && ! port_in_use "$(<"$DIR/port")"; then
    PORT=$(<"$DIR/port")
  fi
  [[ -n "$PORT" ]] || PORT=$(free_port) || die 5 "no free port on 127.0.0.1"
  CPORT=$(free_port) || die 5 "no free port on 127.0.0.1"
  [[ "$CPORT" != "$PORT" ]] || CPORT=$(free_port)
  write_properties
  echo "$PORT" >"$DIR/port"
  echo "127.0.0.1:$PORT" >"$DIR/bootstrap"

  if [[ -f "$DIR/data/meta.properties" ]]; then
    cluster_id=$(sed -n 's/^cluster.id=//p' "$DIR/data/meta.properties")
  else
    cluster_id=$("$java" -cp "$LIB/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
  fi
  "$java" -Dslf4j.provider=org.slf4j.simple.SimpleServiceProvider -cp "$LIB/*" \
    kafka.tools.StorageTool format -g -t "$cluster_id" -c "$DIR/server.properties" \
    >"$DIR/format.log" 2>&1 || {
    cat "$DIR/format.log" >&2
    die 5 "StorageTool format failed"
  }

  # setsid: the broker outlives this shell and is not hit by the terminal's Ctrl-C.
  setsid "$java" "${JVM_OPTS[@]}" -cp "$LIB/*" kafka.Kafka "$DIR/server.properties" \
    >"$DIR/broker.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$DIR/broker.pid"

  deadline=$((SECONDS + START_TIMEOUT_S))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 50 "$DIR/broker.log" >&2
      rm -f "$DIR/broker.pid"
      die 5 "broker exited during start-up (log: $DIR/broker.log)"
    fi
    # The listener accepts before the broker has registered; "Kafka Server started" is logged
    # only once the broker and controller are both up.
    if port_in_use "$PORT" && grep -q "Kafka Server started" "$DIR/broker.log"; then
      echo "BOOTSTRAP=127.0.0.1:$PORT"
      return 0
    fi
    sleep 0.2
  done
  tail -n 50 "$DIR/broker.log" >&2
  stop_pid "$pid"
  die 5 "broker not ready within ${START_TIMEOUT_S}s (log: $DIR/broker.log)"
}

stop_pid() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 200; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$DIR/broker.pid"
}

cmd_stop() {
  local pid
  parse_dir_port "$@"
  if pid=$(broker_pid); then
    stop_pid "$pid"
    echo "stopped"
  else
    rm -f "$DIR/broker.pid"
    echo "not running"
  fi
}

cmd_status() {
  parse_dir_port "$@"
  if broker_pid >/dev/null; then
    echo "running BOOTSTRAP=$(<"$DIR/bootstrap")"
  else
    echo "stopped"
    return 1
  fi
}

usage() {
  sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 64
}

main() {
  local sub=${1:-}
  (($#)) && shift
  case "$sub" in
    install) cmd_install "$@" ;;
    classpath) cmd_classpath "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    *) usage ;;
  esac
}

main "$@"
