#!/usr/bin/env bash
# bench/latency_floor.sh [ROUNDS] [SECONDS] -- latency at 1,000 msg/s (1 producer, 1 autoack
# consumer, 16 B) through Warren and through the out-of-process floor: warren-perf's toy echo
# broker run as a process of its own (`warren-perf --serve-echo`), i.e. a client, loopback and
# a second process that does nothing but route. IN_PROCESS=1 adds the in-process floor
# (`--fault none`: the toy broker inside the load generator). Rounds alternate; each prints
# one JSON latency line per subject. Needs target/release/{warren,warren-perf}.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-6}
DUR=${2:-8}
WARREN=${WARREN:-target/release/warren}
PERF=${PERF:-target/release/warren-perf}
OUT=$(mktemp -d /tmp/warren-latency.XXXXXX)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$OUT"' EXIT
ARGS=(--json --duration "$DUR" --rate 1000 --autoack)

wait_for() {  # wait_for FILE SED-EXPR: the first match of SED-EXPR in FILE, within 30 s
  local v="" deadline=$((SECONDS + 30))
  while [ -z "$v" ] && [ $SECONDS -lt $deadline ]; do
    v=$(sed -n "$2" "$1" 2>/dev/null | head -n1 || true)
    [ -n "$v" ] || sleep 0.02
  done
  [ -n "$v" ] || { echo "no address in $1" >&2; cat "$1" >&2; exit 1; }
  echo "$v"
}
latency() { tail -n1 | python3 -c 'import sys, json; print(json.dumps(json.loads(sys.stdin.read())["latency_us"]))'; }

for r in $(seq 1 "$ROUNDS"); do
  rm -rf "$OUT/data"
  "$WARREN" --bind 127.0.0.1 --port 0 --data-dir "$OUT/data" --log-level warn >"$OUT/ready" 2>"$OUT/err" &
  PIDS=($!)
  port=$(wait_for "$OUT/ready" 's/.*"amqp":"127\.0\.0\.1:\([0-9]*\)".*/\1/p')
  echo "round $r warren $("$PERF" --uri "amqp://guest:guest@127.0.0.1:$port/%2f" "${ARGS[@]}" 2>/dev/null | latency)"
  kill "${PIDS[@]}"; wait 2>/dev/null || true

  "$PERF" --serve-echo >"$OUT/echo" 2>&1 &
  PIDS=($!)
  addr=$(wait_for "$OUT/echo" 's/^listening on //p')
  echo "round $r out-of-process-floor $("$PERF" --uri "amqp://guest:guest@$addr/%2f" "${ARGS[@]}" 2>/dev/null | latency)"
  kill "${PIDS[@]}"; wait 2>/dev/null || true
  PIDS=()

  if [ -n "${IN_PROCESS:-}" ]; then
    echo "round $r in-process-floor $("$PERF" --fault none "${ARGS[@]}" 2>/dev/null | latency)"
  fi
done
