#!/usr/bin/env bash
# bench/perftest.sh [ROUNDS] [SECONDS] -- persistent messages, Warren vs RabbitMQ, measured with
# RabbitMQ's own load generator, PerfTest (com.rabbitmq:perf-test from Maven Central; resolved
# into ~/.m2 by bench/perftest/pom.xml), so no figure depends on Warren's tools.
#
# Rows (1 producer, 1 consumer, 1 KiB persistent messages, a durable queue):
#   auto100   confirm window 100, autoack consumer
#   ack100    confirm window 100, manual ack, prefetch 100, multi-ack every 10
#   ack10     confirm window 10, the same consumer
#   ack1      confirm window 1 (each publish waits for its confirm), the same consumer
#   nocons    confirm window 100, no consumer (every message must reach the disk)
# ROWS="auto100 ack1" picks rows. Each round runs every row on both brokers, alternating;
# Warren starts fresh (empty data dir, ephemeral port) per run; RabbitMQ is the node that
# `../shared/tools/rmq-node start $RMQ_PORT` runs (default 5680), its queue deleted after
# each run. Broker CPU per message is read from /proc/PID/stat (utime + stime) around the run.
# Prints one line per run and a median table.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
DUR=${2:-10}
ROWS=${ROWS:-auto100 ack100 ack10 ack1 nocons}
RMQ_PORT=${RMQ_PORT:-5680}
WARREN=${WARREN:-target/release/warren}
CP=$(mktemp /tmp/perftest-cp.XXXXXX)
(cd bench/perftest && mvn -q -B dependency:build-classpath -Dmdep.outputFile="$CP" >/dev/null)
OUT=$(mktemp -d /tmp/warren-perftest.XXXXXX)
WPID=
trap 'kill $WPID 2>/dev/null || true; rm -rf "$OUT" "$CP"' EXIT

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

start_warren() {
  rm -rf "$OUT/data" && mkdir -p "$OUT/data"
  "$WARREN" --bind 127.0.0.1 --port 0 --data-dir "$OUT/data" --log-level warn >"$OUT/ready" 2>"$OUT/err" &
  WPID=$!
  PORT=""
  local deadline=$((SECONDS + 30))
  while [ -z "$PORT" ] && [ $SECONDS -lt $deadline ]; do
    PORT=$(sed -n 's/.*"amqp":"127\.0\.0\.1:\([0-9]*\)".*/\1/p' "$OUT/ready" | head -n1 || true)
    [ -n "$PORT" ] || { kill -0 $WPID 2>/dev/null || break; sleep 0.02; }
  done
  [ -n "$PORT" ] || { echo "warren did not start" >&2; cat "$OUT/err" >&2; exit 1; }
}

rmq_pid() { ss -ltnpH "sport = :$RMQ_PORT" | sed -n "s/.*beam.smp\",pid=\([0-9]*\).*/\1/p" | head -n1; }

args_of() {
  case $1 in
    auto100) echo "-y 1 -c 100 -a" ;;
    ack100) echo "-y 1 -c 100 -q 100 -A 10" ;;
    ack10) echo "-y 1 -c 10 -q 100 -A 10" ;;
    ack1) echo "-y 1 -c 1 -q 100 -A 10" ;;
    # PerfTest takes the first of repeated options: -y is set per row only.
    nocons) echo "-y 0 -c 100" ;;
  esac
}

run() {  # run BROKER ROW
  local broker=$1 row=$2 port pid q
  if [ "$broker" = warren ]; then start_warren; port=$PORT; pid=$WPID; else port=$RMQ_PORT; pid=$(rmq_pid); fi
  q="perftest-$row-$RANDOM"
  local t0 t1
  t0=$(ticks "$pid")
  # shellcheck disable=SC2046
  java -cp "$(cat "$CP")" com.rabbitmq.perf.PerfTest -h "amqp://guest:guest@127.0.0.1:$port" \
    -x 1 -s 1000 -f persistent -ad false -u "$q" -z "$DUR" $(args_of "$row") >"$OUT/pt" 2>&1 || true
  t1=$(ticks "$pid")
  local sent recv conf
  sent=$(sed -n 's/.*sending rate avg: \([0-9]*\) msg\/s.*/\1/p' "$OUT/pt")
  recv=$(sed -n 's/.*receiving rate avg: \([0-9]*\) msg\/s.*/\1/p' "$OUT/pt")
  conf=$(sed -n 's/.*confirm latency min\/median\/75th\/95th\/99th \([0-9]*\)\/\([0-9]*\)\/[0-9]*\/[0-9]*\/\([0-9]*\) µs.*/\2 \3/p' "$OUT/pt")
  [ -n "$sent" ] || { echo "perftest failed:" >&2; tail -5 "$OUT/pt" >&2; exit 1; }
  local us
  us=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v n="$sent" -v d="$DUR" 'BEGIN { printf "%.1f", (n > 0 ? t / hz * 1e6 / (n * d) : 0) }')
  echo "$broker $row sent=$sent recv=${recv:-0} cpu_us_per_msg=$us confirm_p50_p99_us=${conf// //}" | tee -a "$OUT/lines"
  if [ "$broker" = warren ]; then kill $WPID; wait $WPID 2>/dev/null || true; WPID=; else
    ../shared/tools/rmq-node ctl "$RMQ_PORT" delete_queue "$q" >/dev/null 2>&1 || true; fi
}

[ -n "$(rmq_pid)" ] || { echo "no RabbitMQ on $RMQ_PORT: ../shared/tools/rmq-node start $RMQ_PORT" >&2; exit 1; }
for r in $(seq 1 "$ROUNDS"); do
  for row in $ROWS; do
    run warren "$row"
    run rabbitmq "$row"
  done
done
echo
echo "median of $ROUNDS rounds, ${DUR}s each (msg/s published; broker CPU µs per message; confirm latency p50/p99 µs)"
printf '%-8s | %-28s | %-28s\n' row Warren "RabbitMQ"
for row in $ROWS; do
  line=""
  for b in warren rabbitmq; do
    med() { grep "^$b $row " "$OUT/lines" | sed -n "s/.* $1=\([^ ]*\).*/\1/p" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
    line="$line$(printf '%-28s | ' "$(med sent) msg/s $(med cpu_us_per_msg) µs $(med confirm_p50_p99_us)")"
  done
  printf '%-8s | %s\n' "$row" "$line"
done
