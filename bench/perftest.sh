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
#   autonc    no confirms (an unthrottled publisher), autoack consumer
# and transient 16 B rows, for CPU per message with an independent client:
#   t1x1      1 producer, 1 autoack consumer, no confirms
#   t4x4      4 producers, 4 autoack consumers, one queue, no confirms
#   fan10     1 producer, fanout exchange to 10 queues (a server-named queue per consumer),
#             an autoack consumer each, no confirms
#   lat1000   1 producer at 1,000 msg/s, 1 autoack consumer: consumer latency p50/p99 (µs)
# ROWS="auto100 ack1" picks rows. Each round runs every row on both brokers, alternating;
# Warren starts fresh (empty data dir, ephemeral port) per run; RabbitMQ is the node that
# `../shared/tools/rmq-node start $RMQ_PORT` runs (default 5680), its queue deleted after
# each run. BROKERS="base=/tmp/old/warren new=target/release/warren" compares Warren builds
# instead (any NAME=PATH is a Warren binary; `warren` is $WARREN, `rabbitmq` the node), in the
# order given, alternating. Broker CPU per message is read from /proc/PID/stat (utime + stime) around the run.
# Prints one line per run and a median table.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
DUR=${2:-10}
ROWS=${ROWS:-auto100 ack100 ack10 ack1 nocons}
RMQ_PORT=${RMQ_PORT:-5680}
WARREN=${WARREN:-target/release/warren}
BROKERS=${BROKERS:-warren rabbitmq}
CP=$(mktemp /tmp/perftest-cp.XXXXXX)
(cd bench/perftest && mvn -q -B dependency:build-classpath -Dmdep.outputFile="$CP" >/dev/null)
OUT=$(mktemp -d /tmp/warren-perftest.XXXXXX)
WPID=
trap 'kill $WPID 2>/dev/null || true; rm -rf "$OUT" "$CP"' EXIT

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# shellcheck source=bench/warren_node.sh
. bench/warren_node.sh

rmq_pid() { ss -ltnpH "sport = :$RMQ_PORT" | sed -n "s/.*beam.smp\",pid=\([0-9]*\).*/\1/p" | head -n1; }

PERSISTENT="-x 1 -s 1000 -f persistent -ad false"
args_of() {
  case $1 in
    t1x1) echo "-x 1 -y 1 -s 16 -a -ad false" ;;
    t4x4) echo "-x 4 -y 4 -s 16 -a -ad false" ;;
    fan10) echo "-x 1 -y 10 -s 16 -a -e perf-fanout -t fanout" ;;
    lat1000) echo "-x 1 -y 1 -s 16 -a -ad false -r 1000" ;;
    auto100) echo "$PERSISTENT -y 1 -c 100 -a" ;;
    autonc) echo "$PERSISTENT -y 1 -a" ;;
    ack100) echo "$PERSISTENT -y 1 -c 100 -q 100 -A 10" ;;
    ack10) echo "$PERSISTENT -y 1 -c 10 -q 100 -A 10" ;;
    ack1) echo "$PERSISTENT -y 1 -c 1 -q 100 -A 10" ;;
    # PerfTest takes the first of repeated options: -y is set per row only.
    nocons) echo "$PERSISTENT -y 0 -c 100" ;;
  esac
}

binary_of() {  # the Warren binary a BROKERS entry names
  case $1 in
    warren) echo "$WARREN" ;;
    *=*) echo "${1#*=}" ;;
    *) echo "unknown broker $1 (warren, rabbitmq or NAME=PATH)" >&2; exit 2 ;;
  esac
}

run() {  # run BROKER ROW (BROKER: an entry of $BROKERS)
  local broker=${1%%=*} row=$2 port pid q
  if [ "$broker" = rabbitmq ]; then port=$RMQ_PORT; pid=$(rmq_pid); else
    start_warren "$(binary_of "$1")" "$OUT"; port=$PORT; pid=$WPID; fi
  q="perftest-$row-$RANDOM"
  local queue=(-u "$q")
  [ "$row" = fan10 ] && queue=()
  local t0 t1
  t0=$(ticks "$pid")
  # shellcheck disable=SC2046
  java -cp "$(cat "$CP")" com.rabbitmq.perf.PerfTest -h "amqp://guest:guest@127.0.0.1:$port" \
    "${queue[@]}" -z "$DUR" $(args_of "$row") >"$OUT/pt" 2>&1 || true
  t1=$(ticks "$pid")
  local sent recv conf lat
  sent=$(sed -n 's/.*sending rate avg: \([0-9]*\) msg\/s.*/\1/p' "$OUT/pt")
  recv=$(sed -n 's/.*receiving rate avg: \([0-9]*\) msg\/s.*/\1/p' "$OUT/pt")
  # Consumer latency: the median over the per-second lines after the first 2 s (PerfTest's
  # summary includes the JVM's warm-up) of each second's p50 and p99.
  lat=$(sed -n 's/.*time \([0-9]*\)\.[0-9]* s, .*consumer latency: [0-9]*\/\([0-9]*\)\/[0-9]*\/[0-9]*\/\([0-9]*\) µs.*/\1 \2 \3/p' "$OUT/pt" |
    python3 -c 'import sys, statistics as s
rows = [l.split() for l in sys.stdin if int(l.split()[0]) > 2]
if rows: print(int(s.median_low(int(r[1]) for r in rows)), int(s.median_low(int(r[2]) for r in rows)))')
  conf=$(sed -n 's/.*confirm latency min\/median\/75th\/95th\/99th \([0-9]*\)\/\([0-9]*\)\/[0-9]*\/[0-9]*\/\([0-9]*\) µs.*/\2 \3/p' "$OUT/pt")
  [ -n "$sent" ] || { echo "perftest failed:" >&2; grep -v "^\s*at " "$OUT/pt" | tail -5 >&2; exit 1; }
  local us
  us=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v n="$sent" -v d="$DUR" 'BEGIN { printf "%.1f", (n > 0 ? t / hz * 1e6 / (n * d) : 0) }')
  echo "$broker $row sent=$sent recv=${recv:-0} cpu_us_per_msg=$us confirm_p50_p99_us=${conf// //} latency_p50_p99_us=${lat// //}" | tee -a "$OUT/lines"
  if [ "$broker" != rabbitmq ]; then kill $WPID; wait $WPID 2>/dev/null || true; WPID=; else
    ../shared/tools/rmq-node ctl "$RMQ_PORT" delete_queue "$q" >/dev/null 2>&1 || true; fi
}

case " $BROKERS " in *" rabbitmq "*) [ -n "$(rmq_pid)" ] || { echo "no RabbitMQ on $RMQ_PORT: ../shared/tools/rmq-node start $RMQ_PORT" >&2; exit 1; } ;; esac
for r in $(seq 1 "$ROUNDS"); do
  for row in $ROWS; do
    for b in $BROKERS; do run "$b" "$row"; done
  done
done
echo
echo "median of $ROUNDS rounds, ${DUR}s each (msg/s published; broker CPU µs per message; confirm latency p50/p99 µs)"
header=""
for b in $BROKERS; do header="$header$(printf '%-28s | ' "${b%%=*}")"; done
printf '%-8s | %s\n' row "$header"
for row in $ROWS; do
  line=""
  for b in $BROKERS; do
    b=${b%%=*}
    med() { grep "^$b $row " "$OUT/lines" | sed -n "s/.* $1=\([^ ]*\).*/\1/p" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
    line="$line$(printf "%-28s | " "$(med sent) msg/s $(med cpu_us_per_msg) µs $(med confirm_p50_p99_us) $(med latency_p50_p99_us)")"
  done
  printf '%-8s | %s\n' "$row" "$line"
done
