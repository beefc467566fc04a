#!/usr/bin/env bash
# bench/cluster.sh [ROUNDS] [SECONDS] -- quorum queues: Warren on three nodes vs Warren on one,
# and RabbitMQ 3.10.8 on three nodes vs one, measured with RabbitMQ's PerfTest (Maven Central,
# bench/perftest/pom.xml), an independent client. Every node on this machine, loopback.
#
# Rows (1 producer, 1 consumer with manual acks, prefetch 100, multi-ack every 10, 1 KiB
# persistent messages, a quorum queue declared by PerfTest (--quorum-queue)):
#   q100   confirm window 100 (throughput)
#   q1     confirm window 1 (each publish waits for its confirm: confirm latency)
# Brokers:
#   warren1   one Warren node (a quorum queue on one node: its log synced per confirm batch)
#   warren3   three Warren nodes (scripts/cluster): the queue's Raft group on all three;
#             PerfTest connects to warren-1, which may or may not lead the queue's group
#   rabbit1   RabbitMQ on $RMQ_PORT (../shared/tools/rmq-node start $RMQ_PORT; default 5680)
#   rabbit3   RabbitMQ on 5691, 5692, 5693, clustered with join_cluster (this script starts
#             and stops them); PerfTest connects to the first (RabbitMQ puts the leader there)
# BROKERS="warren3 rabbit3" picks brokers; ROWS="q100" picks rows. Broker CPU per message is
# the sum over every node of the broker (utime + stime from /proc) around the run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
DUR=${2:-10}
ROWS=${ROWS:-q100 q1}
BROKERS=${BROKERS:-warren1 warren3 rabbit1 rabbit3}
RMQ_PORT=${RMQ_PORT:-5680}
RMQ3=(5691 5692 5693)
WARREN=${WARREN:-target/release/warren}
NODE=../shared/tools/rmq-node
CP=$(mktemp /tmp/perftest-cp.XXXXXX)
(cd bench/perftest && mvn -q -B dependency:build-classpath -Dmdep.outputFile="$CP" >/dev/null)
OUT=$(mktemp -d /tmp/warren-cluster-bench.XXXXXX)
WPID=
cleanup() {
  kill $WPID 2>/dev/null || true
  [ -f "$OUT/c/cluster.json" ] && scripts/cluster down --dir "$OUT/c" >/dev/null 2>&1 || true
  case " $BROKERS " in *" rabbit3 "*) for p in "${RMQ3[@]}"; do $NODE stop "$p" || true; done ;; esac
  rm -rf "$OUT" "$CP"
}
trap cleanup EXIT
HZ=$(getconf CLK_TCK)
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
# shellcheck source=bench/warren_node.sh
. bench/warren_node.sh
rmq_pid() { ss -ltnpH "sport = :$1" | sed -n "s/.*beam.smp\",pid=\([0-9]*\).*/\1/p" | head -n1; }

args_of() {
  local common="--quorum-queue -x 1 -y 1 -s 1000 -f persistent -q 100 -A 10"
  case $1 in
    q100) echo "$common -c 100" ;;
    q1) echo "$common -c 1" ;;
  esac
}

# Start a broker: sets PORT (where PerfTest connects) and PIDS (every process of it).
up() {
  case $1 in
    warren1)
      start_warren "$WARREN" "$OUT"
      PIDS=$WPID ;;
    warren3)
      rm -rf "$OUT/c"
      scripts/cluster up 3 --dir "$OUT/c" --bin "$WARREN" >/dev/null
      PORT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["amqp"])' "$OUT/c/cluster.json")
      PIDS=$(python3 -c 'import json,sys; print(" ".join(str(n["pid"]) for n in json.load(open(sys.argv[1]))))' "$OUT/c/cluster.json") ;;
    rabbit1)
      PORT=$RMQ_PORT
      PIDS=$(rmq_pid "$RMQ_PORT")
      [ -n "$PIDS" ] || { echo "no RabbitMQ on $RMQ_PORT: $NODE start $RMQ_PORT" >&2; exit 1; } ;;
    rabbit3)
      PORT=${RMQ3[0]}
      PIDS=""
      for p in "${RMQ3[@]}"; do PIDS="$PIDS $(rmq_pid "$p")"; done ;;
  esac
}

down() {
  case $1 in
    warren1) kill $WPID; wait $WPID 2>/dev/null || true; WPID= ;;
    warren3) scripts/cluster down --dir "$OUT/c" >/dev/null; rm -rf "$OUT/c" ;;
    rabbit1) $NODE ctl "$RMQ_PORT" delete_queue "$2" >/dev/null 2>&1 || true ;;
    rabbit3) $NODE ctl "${RMQ3[0]}" delete_queue "$2" >/dev/null 2>&1 || true ;;
  esac
}

case " $BROKERS " in
  *" rabbit3 "*)
    # Fresh nodes: a node restarted on a former cluster's data waits for its old peers.
    for p in "${RMQ3[@]}"; do $NODE stop "$p"; rm -rf "/tmp/rmq-$p"; done
    for p in "${RMQ3[@]}"; do $NODE start "$p" >/dev/null; done
    for p in "${RMQ3[@]:1}"; do
      $NODE ctl "$p" stop_app >/dev/null
      $NODE ctl "$p" join_cluster "rabbit${RMQ3[0]}@localhost" >/dev/null
      $NODE ctl "$p" start_app >/dev/null
    done
    $NODE ctl "${RMQ3[0]}" cluster_status | grep -c "rabbit${RMQ3[0]}@localhost\|rabbit${RMQ3[1]}@localhost\|rabbit${RMQ3[2]}@localhost" >/dev/null ;;
esac

run() {  # run BROKER ROW
  local b=$1 row=$2 q="cluster-$2-$RANDOM"
  up "$b"
  local t0 t1
  # shellcheck disable=SC2086
  t0=$(ticks $PIDS)
  # shellcheck disable=SC2046
  java -cp "$(cat "$CP")" com.rabbitmq.perf.PerfTest -h "amqp://guest:guest@127.0.0.1:$PORT" \
    -u "$q" -z "$DUR" $(args_of "$row") >"$OUT/pt" 2>&1 || true
  # shellcheck disable=SC2086
  t1=$(ticks $PIDS)
  local sent recv conf us
  sent=$(sed -n 's/.*sending rate avg: \([0-9]*\) msg\/s.*/\1/p' "$OUT/pt")
  recv=$(sed -n 's/.*receiving rate avg: \([0-9]*\) msg\/s.*/\1/p' "$OUT/pt")
  conf=$(sed -n 's/.*confirm latency min\/median\/75th\/95th\/99th \([0-9]*\)\/\([0-9]*\)\/[0-9]*\/[0-9]*\/\([0-9]*\) µs.*/\2 \3/p' "$OUT/pt")
  [ -n "$sent" ] || { echo "perftest failed on $b:" >&2; grep -v "^\s*at " "$OUT/pt" | tail -5 >&2; exit 1; }
  us=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v n="$sent" -v d="$DUR" 'BEGIN { printf "%.1f", (n > 0 ? t / hz * 1e6 / (n * d) : 0) }')
  echo "$b $row sent=$sent recv=${recv:-0} cpu_us_per_msg=$us confirm_p50_p99_us=${conf// //}" | tee -a "$OUT/lines"
  down "$b" "$q"
}

for r in $(seq 1 "$ROUNDS"); do
  for row in $ROWS; do
    for b in $BROKERS; do run "$b" "$row"; done
  done
done
echo
echo "median of $ROUNDS rounds, ${DUR}s each (msg/s published and received; broker CPU µs per message, all nodes; confirm latency p50/p99 µs)"
printf '%-6s' row
for b in $BROKERS; do printf ' | %-40s' "$b"; done
echo
for row in $ROWS; do
  printf '%-6s' "$row"
  for b in $BROKERS; do
    med() { grep "^$b $row " "$OUT/lines" | sed -n "s/.* $1=\([^ ]*\).*/\1/p" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
    printf ' | %-40s' "$(med sent)/$(med recv) msg/s $(med cpu_us_per_msg) µs $(med confirm_p50_p99_us)"
  done
  echo
done
