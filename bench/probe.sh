#!/usr/bin/env bash
# bench/probe.sh -- one-off measurements of a Warren build that docs/benchmarks.md quotes:
#
#   bench/probe.sh rss BINARY [COUNT] [-- WARREN FLAGS]
#       RSS per queued 16 B message: COUNT (default 1,000,000) transient messages published by
#       warren-perf to one queue with no consumer; VmRSS before and after (e.g. `-- --in-memory`).
#   bench/probe.sh threads BINARY [PERFTEST FLAGS]
#       CPU per broker thread (utime/stime ticks from /proc/PID/task over 5 s) while PerfTest
#       runs (default: the auto100 row of bench/perftest.sh); PERF_STAT=1 also counts the
#       broker's fdatasync/write/futex calls and context switches with `perf stat`.
#
# A fresh broker (empty data dir, ephemeral port) each time. Needs target/release/warren-perf
# (rss) or Maven + a JDK for PerfTest (threads, bench/perftest/pom.xml).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: bench/probe.sh rss|threads BINARY ...}
bin=${2:?usage: bench/probe.sh rss|threads BINARY ...}
shift 2
OUT=$(mktemp -d /tmp/warren-probe.XXXXXX)
WPID=
trap 'kill $WPID 2>/dev/null || true; rm -rf "$OUT"' EXIT

start() {  # start [WARREN FLAGS]: sets WPID and PORT
  "$bin" "$@" --bind 127.0.0.1 --port 0 --data-dir "$OUT/data" --log-level warn >"$OUT/ready" 2>"$OUT/err" &
  WPID=$!
  PORT=""
  local deadline=$((SECONDS + 30))
  while [ -z "$PORT" ] && [ $SECONDS -lt $deadline ] && kill -0 $WPID 2>/dev/null; do
    PORT=$(sed -n 's/.*"amqp":"127\.0\.0\.1:\([0-9]*\)".*/\1/p' "$OUT/ready" | head -n1 || true)
    [ -n "$PORT" ] || sleep 0.02
  done
  [ -n "$PORT" ] || { echo "warren did not start" >&2; cat "$OUT/err" >&2; exit 1; }
}
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$WPID/status"; }

case $mode in
  rss)
    count=1000000
    if [ $# -gt 0 ] && [ "$1" != -- ]; then count=$1; shift; fi
    [ "${1:-}" = -- ] && shift
    start "$@"
    r0=$(rss)
    target/release/warren-perf --uri "amqp://guest:guest@127.0.0.1:$PORT/%2f" --json --consumers 0 \
      --count "$count" --size 16 --keep-queues --queue probe-rss >/dev/null 2>"$OUT/perf.err"
    sleep 1
    r1=$(rss)
    echo "rss_before_kb=$r0 rss_after_kb=$r1 bytes_per_msg=$(( (r1 - r0) * 1024 / count ))"
    ;;
  threads)
    args=${*:-"-x 1 -s 1000 -f persistent -ad false -y 1 -c 100 -a"}
    cp=$OUT/cp
    (cd bench/perftest && mvn -q -B dependency:build-classpath -Dmdep.outputFile="$cp" >/dev/null)
    start
    # shellcheck disable=SC2086 # $args is a list of PerfTest flags
    java -cp "$(cat "$cp")" com.rabbitmq.perf.PerfTest -h "amqp://guest:guest@127.0.0.1:$PORT" \
      -u probe-threads -z 10 $args >"$OUT/pt" 2>&1 &
    java=$!
    sleep 3
    snap() { for t in /proc/$WPID/task/*; do echo "$(basename "$t") $(cat "$t/comm") $(awk '{print $14, $15}' "$t/stat")"; done; }
    snap >"$OUT/a"
    if [ -n "${PERF_STAT:-}" ]; then
      perf stat -e 'syscalls:sys_enter_fdatasync,syscalls:sys_enter_write,syscalls:sys_enter_futex,context-switches,task-clock' \
        -p $WPID -- sleep 5 2>&1 | grep -E 'fdatasync|write|futex|context|task-clock'
    else
      sleep 5
    fi
    snap >"$OUT/b"
    join "$OUT/a" "$OUT/b" | awk '{ u = $6 - $3; s = $7 - $4; if (u + s > 0) printf "%-8s %-18s user %5d sys %5d ticks\n", $1, $2, u, s }'
    wait $java || true
    grep -o 'sending rate avg: [0-9]* msg/s' "$OUT/pt"
    ;;
  *) echo "unknown mode $mode (rss, threads)" >&2; exit 2 ;;
esac
