#!/usr/bin/env bash
# bench/permission_cost.sh OLD_WARREN NEW_WARREN [ROUNDS] [SECONDS] -- what permission checks cost on
# the publish path: rows 1 and 3 of bench/run.sh (1 -> 1 autoack 16 B; persistent 1 KiB with
# confirms) with warren-perf, broker CPU per message from /proc/PID/stat, alternating in each
# round between
#   old      OLD_WARREN (a build before access control), user guest
#   admin    NEW_WARREN, user guest (administrator, ".*" permissions)
#   svc-all  NEW_WARREN, user svc (no tags, ".*" permissions: the issue's row)
#   svc-re   NEW_WARREN, user svc with patterns that must run a regex on every check
#            (configure "^bench-", write "^(amq\.default|bench-.*)$", read "^bench-")
# ROWS="r1 r2 r3 r4 r5" picks rows (default r1 r3; r2 manual ack, r4 4x4, r5 fanout 10 as in
# bench/run.sh); AB_ONLY=1 runs only old and admin (a before/after comparison of two builds). CLIENT=go runs row 1 with bench/goperf (RabbitMQ's Go client,
# an independent load generator) instead of warren-perf. Every broker starts fresh (empty data dir, ephemeral port). Prints one line per run and a
# median table. Needs target/release/warren-perf.
set -euo pipefail
OLD=${1:?old warren binary}
NEW=${2:?new warren binary}
ROUNDS=${3:-5}
DUR=${4:-10}
PERF=${PERF:-target/release/warren-perf}
if [ "${CLIENT:-}" = go ]; then
  GOPERF=$(mktemp /tmp/goperf.XXXXXX)
  (cd bench/goperf && go build -o "$GOPERF" .)
fi
OUT=$(mktemp -d /tmp/warren-permcost.XXXXXX)
trap 'kill $WPID 2>/dev/null || true; rm -rf "$OUT"' EXIT
WPID=

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start() {  # start BIN PERMISSIONS_TOML
  rm -rf "$OUT/data" && mkdir -p "$OUT/data"
  printf '%s\n' "$2" > "$OUT/broker.toml"
  "$1" --config "$OUT/broker.toml" --bind 127.0.0.1 --port 0 --data-dir "$OUT/data" 2>"$OUT/err" &
  WPID=$!
  PORT=""
  for _ in $(seq 1 1000); do
    PORT=$(sed -n 's/.*listening for AMQP 0-9-1 connections on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$OUT/err" | head -n1 || true)
    [ -n "$PORT" ] && return 0
    kill -0 $WPID 2>/dev/null || break
    sleep 0.01
  done
  echo "broker did not start" >&2; cat "$OUT/err" >&2; exit 1
}

GUEST='[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]'
SVC_ALL="$GUEST
[[users]]
name = \"svc\"
password = \"svc\"
vhosts = [\"*\"]"
# An old build has no tags key; it gets the old file format.
OLD_CFG='[[users]]
name = "guest"
password = "guest"
vhosts = ["*"]'

run() {  # run LABEL BIN CONFIG USER ROW -- perf args
  local label=$1 bin=$2 cfg=$3 user=$4 row=$5; shift 6
  start "$bin" "$cfg"
  if [ "$label" = svc-re ]; then
    curl -sf -u guest:guest -X PUT -H 'content-type: application/json' \
      -d '{"configure":"^bench-","write":"^(amq\\.default|bench-.*)$","read":"^bench-"}' \
      "http://127.0.0.1:$MPORT/api/permissions/%2F/svc" >/dev/null
  fi
  local t0 t1 json
  t0=$(ticks $WPID)
  if [ "${CLIENT:-}" = go ]; then
    json=$("$GOPERF" -uri "amqp://$user:$user@127.0.0.1:$PORT/" -duration "${DUR}s" -queue bench-goperf 2>"$OUT/perf.err")
  else
    json=$("$PERF" --uri "amqp://$user:$user@127.0.0.1:$PORT/%2f" --json --duration "$DUR" "$@" 2>"$OUT/perf.err")
  fi
  t1=$(ticks $WPID)
  kill $WPID; wait $WPID 2>/dev/null || true; WPID=
  python3 - "$label" "$row" "$((t1 - t0))" "$json" <<'EOF' | tee -a "$OUT/results"
import json, sys
label, row, ticks, j = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
sent = j["sent"]
lost = j.get("lost", sent - j.get("received", 0))
print(f"{row} {label} rate={j['send_rate']:.0f} cpu_us_per_msg={ticks * 10000 / sent:.3f} lost={lost}")
EOF
}

for r in $(seq 1 "$ROUNDS"); do
  for row in ${ROWS:-r1 r3}; do
    case $row in
      r1) args="--autoack --queue bench-r1";;
      r2) args="--prefetch 100 --multi-ack 10 --queue bench-r2";;
      r3) args="--persistent --size 1024 --confirm 100 --prefetch 100 --multi-ack 10 --queue bench-r3";;
      r4) args="--producers 4 --consumers 4 --autoack --queue bench-r4";;
      r5) args="--fanout 10 --autoack --queue bench-r5";;
    esac
    # shellcheck disable=SC2086
    run old "$OLD" "$OLD_CFG" guest $row -- $args
    # shellcheck disable=SC2086
    run admin "$NEW" "$GUEST" guest $row -- $args
    [ -n "${AB_ONLY:-}" ] && continue
    # shellcheck disable=SC2086
    run svc-all "$NEW" "$SVC_ALL" svc $row -- $args
    MPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    MGMT_CFG="$SVC_ALL
[management]
enabled = true
bind = \"127.0.0.1\"
port = $MPORT"
    # shellcheck disable=SC2086
    run svc-re "$NEW" "$MGMT_CFG" svc $row -- $args
  done
done
echo
echo "medians over $ROUNDS rounds:"
python3 - "$OUT/results" <<'EOF'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    row, label, rate, cpu, _ = line.split()
    rows[(row, label)].append((float(rate.split("=")[1]), float(cpu.split("=")[1])))
print("| row | build / user | msg/s | broker CPU µs/msg |")
print("|---|---|---|---|")
for (row, label), v in sorted(rows.items()):
    print(f"| {row} | {label} | {statistics.median(x[0] for x in v):,.0f} | {statistics.median(x[1] for x in v):.2f} |")
EOF
