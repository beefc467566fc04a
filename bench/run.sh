#!/usr/bin/env bash
# bench/run.sh -- Warren vs RabbitMQ (and optionally garagemq): the benchmark table of
# docs/benchmarks.md, reproduced end to end.
#
# Usage:  bench/run.sh [-r ROUNDS] [-d SECONDS] [-b "warren rabbitmq garagemq"] [-o OUTDIR] [ROW...]
#
#   -r ROUNDS   rounds per row; brokers alternate inside each round           (default 3)
#   -d SECONDS  publishing time of each warren-perf run                        (default 10)
#   -b BROKERS  brokers to run, space separated: warren rabbitmq garagemq      (default "warren rabbitmq")
#   -o OUTDIR   results go to OUTDIR/results.jsonl (appended), logs to OUTDIR/logs
#               (default /tmp/warren-bench); the table is printed from the whole file, so
#               re-running one row with the same OUTDIR replaces nothing: use -o NEW or delete
#               that row's lines (`grep -v '"row":"r1"'`) first.
#   ROW         any of: ceiling r1 r2 r3 r4 r5 r6 r7 r8 r9 r10 (default: all, in that order;
#               r6 needs r1's results for the "50 % of max" rate)
#   --table     only print the table from OUTDIR/results.jsonl
#
# Rows (warren-perf --json; 16 B bodies unless noted):
#   ceiling  warren-perf --discard-peer (the tool's own publish ceiling, no broker)
#   r1  1 producer -> 1 queue -> 1 consumer, no confirms, --autoack
#   r2  same, manual ack: --prefetch 100 --multi-ack 10
#   r3  --persistent --size 1024 --confirm 100, durable queue, consumer as r2
#   r4  --producers 4 --consumers 4, one queue, --autoack
#   r5  --fanout 10 (1 producer, 1 consumer per queue), --autoack
#   r6  latency p50/p99 at --rate 1000 and at 50 % of the broker's median r1 rate, plus the
#       floor: the same rates against warren-perf's in-process echo peer (--fault none)
#   r7  1,000 idle connections (channel + basic.consume each): RSS per connection (amqp_tool.py conns)
#   r8  1,000,000 queued messages: publish rate (--consumers 0 --count 1000000), RSS per message,
#       drain rate (amqp_tool.py drain: no-ack consumer, deliveries counted exactly)
#   r9  startup time, exec -> completed AMQP handshake, empty broker: 10 runs (amqp_tool.py startup)
#   r10 1,000,000 queued persistent 1 KiB messages in a durable queue (--persistent --size 1024
#       --confirm 1000 --consumers 0): RSS per message; restart on the same data (exec -> AMQP
#       handshake; both brokers recover queues before they listen) and RSS after it; drain rate
#
# Broker CPU per message = (utime+stime of the broker process over the whole warren-perf run,
# /proc/PID/stat, 100 ticks/s) / messages published (r5: per published message, i.e. per 10
# deliveries). RSS = VmRSS from /proc/PID/status. Warren is started fresh (empty data dir) for
# every run; RabbitMQ (port 5680, the beam.smp process; data /tmp/rmq-5680 as with rmq-node) is
# restarted once at the start through bench/rmq-exec.sh with `ulimit -n 20000` (rmq-node's `su`
# would reset it to 1024), again before every round of r7 and r8 (the Erlang allocators keep
# freed memory, so RSS deltas need a fresh node), and left running if it was running before;
# garagemq is started fresh (own config, port 5710) for every run and killed with SIGKILL
# afterwards (it does not exit on SIGTERM). With garagemq, warren-perf stalls and then hangs at
# shutdown (see docs/benchmarks.md); each such run ends at the timeout, 4 x duration + 90 s.
set -u
cd "$(dirname "$0")/.."
ROUNDS=3 DUR=10 BROKERS="warren rabbitmq" OUT=/tmp/warren-bench TABLE_ONLY=0
while [ $# -gt 0 ]; do
  case $1 in
    -r) ROUNDS=$2; shift 2;; -d) DUR=$2; shift 2;; -b) BROKERS=$2; shift 2;; -o) OUT=$2; shift 2;;
    --table) TABLE_ONLY=1; shift;;
    -h|--help) sed -n '2,41p' "$0"; exit 0;;
    *) break;;
  esac
done
ROWS=${*:-"ceiling r1 r2 r3 r4 r5 r6 r7 r8 r9 r10"}
PERF=${PERF:-/tmp/bench-bin/warren-perf}
WARREN=${WARREN:-/tmp/bench-bin/warren}
RMQ_NODE=/work/shared/tools/rmq-node
TOOL="python3 bench/amqp_tool.py"
WPORT=5700 RPORT=5680 GPORT=5710 RSTART_PORT=5681 WSTART_PORT=5701
RES=$OUT/results.jsonl LOGS=$OUT/logs
mkdir -p "$LOGS"
summary() { python3 bench/summarize.py "$RES"; }
if [ $TABLE_ONLY = 1 ]; then summary; exit 0; fi
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# shellcheck source=bench/lib.sh
. bench/lib.sh
has() { case " $BROKERS " in *" $1 "*) return 0;; esac; return 1; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }          # comm has no spaces for these brokers
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

# ---------------------------------------------------------------- brokers
WPID= GPID= RPID=
start_warren() {   # start_warren [keep]: a fresh data dir unless "keep"
  local dir=$OUT/warren-data
  [ "${1:-}" = keep ] || { rm -rf "$dir"; mkdir -p "$dir"; }
  "$WARREN" --bind 127.0.0.1 --port $WPORT --data-dir "$dir" 2>"$LOGS/warren.err" &
  WPID=$!
  for _ in $(seq 1 500); do grep -q "listening for AMQP" "$LOGS/warren.err" && return 0; sleep 0.01; done
  log "warren did not start"; cat "$LOGS/warren.err" >&2; return 1
}
stop_warren() { [ -n "$WPID" ] && kill "$WPID" 2>/dev/null && wait "$WPID" 2>/dev/null; WPID=; }
start_garagemq() {
  local dir=$OUT/garagemq; rm -rf "$dir"; mkdir -p "$dir"
  sed -e "s/port: 5672/port: $GPORT/" -e "s/port: 15672/port: $((GPORT + 10000))/" \
      -e "s#/var/lib/garagemq/db#$dir/db#" /etc/garagemq/config.yaml > "$dir/config.yaml"
  garagemq --config "$dir/config.yaml" > "$LOGS/garagemq.log" 2>&1 &
  GPID=$!
  for _ in $(seq 1 500); do (echo > /dev/tcp/127.0.0.1/$GPORT) 2>/dev/null && return 0; sleep 0.01; done
  log "garagemq did not start"; return 1
}
stop_garagemq() { [ -n "$GPID" ] && kill -9 "$GPID" 2>/dev/null && wait "$GPID" 2>/dev/null; GPID=; }
ensure_rmq() {   # ensure_rmq [fresh]: start RabbitMQ once; "fresh" restarts it (RSS rows)
  [ $RMQ_STARTED = 1 ] && [ "${1:-}" != fresh ] && { RPID=$(rmq_pid); return 0; }
  restart_rmq
}
finish() {
  stop_warren; stop_garagemq
  if [ $RMQ_STARTED = 1 ] && [ $RMQ_WAS_RUNNING = 0 ]; then $RMQ_NODE stop $RPORT; fi
}
trap finish EXIT

up() {   # up BROKER [fresh]: start it if needed; sets PID and PORT (Warren, garagemq: always fresh)
  case $1 in
    warren) stop_warren; start_warren || return 1; PID=$WPID PORT=$WPORT;;
    rabbitmq) ensure_rmq "${2:-}" || return 1; PID=$RPID PORT=$RPORT;;
    garagemq) stop_garagemq; start_garagemq || return 1; PID=$GPID PORT=$GPORT;;
  esac
}
down() { case $1 in warren) stop_warren;; garagemq) stop_garagemq;; esac; }

record() { echo "$1" >> "$RES"; }

# perf ROW BROKER ROUND LABEL -- warren-perf args...: one measured warren-perf run
perf() {
  local row=$1 b=$2 round=$3 label=$4; shift 5
  local t0 t1 r0 r1 json rc w0 w1 hw to
  up "$b" || { record "{\"row\":\"$row\",\"broker\":\"$b\",\"round\":$round,\"label\":\"$label\",\"error\":\"broker did not start\"}"; return; }
  to=$((DUR * 4 + 90))
  t0=$(ticks $PID) r0=$(rss $PID) w0=$(date +%s.%N)
  json=$(timeout $to "$PERF" --uri "$(uri $PORT)" --json "$@" 2>"$LOGS/$row-$b-$round-$label.err"); rc=$?
  w1=$(date +%s.%N) t1=$(ticks $PID) r1=$(rss $PID) hw=$(hwm $PID)
  [ -n "$json" ] || json=null
  record "{\"row\":\"$row\",\"broker\":\"$b\",\"round\":$round,\"label\":\"$label\",\"rc\":$rc,\"cpu_ticks\":$((t1 - t0)),\"rss_before_kb\":$r0,\"rss_after_kb\":$r1,\"hwm_kb\":$hw,\"wall_s\":$(echo "$w1 - $w0" | bc),\"args\":\"$*\",\"perf\":$json}"
  log "$row $b round $round $label: rc=$rc cpu_ticks=$((t1 - t0)) $(echo "$json" | cut -c1-120)"
  [ $rc = 0 ] || { log "  warren-perf stderr tail:"; tail -3 "$LOGS/$row-$b-$round-$label.err" >&2; }
  down "$b"
}

floor() {  # floor ROW ROUND LABEL -- args: warren-perf against its own in-process peer
  local row=$1 round=$2 label=$3; shift 4
  local json rc
  json=$(timeout $((DUR * 4 + 60)) "$PERF" --json "$@" 2>"$LOGS/$row-floor-$round-$label.err"); rc=$?
  [ -n "$json" ] || json=null
  record "{\"row\":\"$row\",\"broker\":\"floor\",\"round\":$round,\"label\":\"$label\",\"rc\":$rc,\"args\":\"$*\",\"perf\":$json}"
  log "$row floor round $round $label: rc=$rc $(echo "$json" | cut -c1-120)"
}

each() {  # each ROW LABEL -- args: all brokers, all rounds, alternating
  local row=$1 label=$2; shift 3
  for r in $(seq 1 "$ROUNDS"); do for b in $BROKERS; do perf "$row" "$b" "$r" "$label" -- "$@"; done; done
}

half_rate() { python3 bench/summarize.py "$RES" --half-rate "$1"; }

log "results -> $RES; brokers: $BROKERS; rounds $ROUNDS; duration $DUR s; rows: $ROWS"
record "{\"row\":\"meta\",\"date\":\"$(date -Is)\",\"rounds\":$ROUNDS,\"duration\":$DUR,\"brokers\":\"$BROKERS\",\"rows\":\"$ROWS\"}"
for row in $ROWS; do
  case $row in
    ceiling) for r in $(seq 1 "$ROUNDS"); do floor ceiling "$r" discard -- --discard-peer --duration "$DUR"; done;;
    r1) each r1 autoack -- --duration "$DUR" --autoack --queue bench-r1;;
    r2) each r2 ack -- --duration "$DUR" --prefetch 100 --multi-ack 10 --queue bench-r2;;
    r3) each r3 persistent -- --duration "$DUR" --persistent --size 1024 --confirm 100 --prefetch 100 --multi-ack 10 --queue bench-r3;;
    r4) each r4 4x4 -- --duration "$DUR" --producers 4 --consumers 4 --autoack --queue bench-r4;;
    r5) each r5 fanout10 -- --duration "$DUR" --fanout 10 --autoack --queue bench-r5;;
    r6)
      for r in $(seq 1 "$ROUNDS"); do
        for b in $BROKERS; do
          perf r6 "$b" "$r" rate1000 -- --duration "$DUR" --rate 1000 --autoack --queue bench-r6
          hr=$(half_rate "$b")
          [ -n "$hr" ] && perf r6 "$b" "$r" "half:$hr" -- --duration "$DUR" --rate "$hr" --autoack --queue bench-r6
        done
        floor r6 "$r" rate1000 -- --fault none --duration "$DUR" --rate 1000 --autoack
        for b in $BROKERS; do
          hr=$(half_rate "$b")
          [ -n "$hr" ] && floor r6 "$r" "half:$hr" -- --fault none --duration "$DUR" --rate "$hr" --autoack
        done
      done;;
    r7)
      for r in $(seq 1 "$ROUNDS"); do for b in $BROKERS; do
        up "$b" fresh || continue   # RSS rows: a freshly started broker every round
        out=$($TOOL conns --port $PORT --pid $PID --n 1000 2>"$LOGS/r7-$b-$r.err"); rc=$?
        [ -n "$out" ] || out=null
        record "{\"row\":\"r7\",\"broker\":\"$b\",\"round\":$r,\"label\":\"idle1000\",\"rc\":$rc,\"conns\":$out}"
        log "r7 $b round $r: $out"; down "$b"
      done; done;;
    r8)
      for r in $(seq 1 "$ROUNDS"); do for b in $BROKERS; do
        up "$b" fresh || continue   # RSS rows: a freshly started broker every round
        sleep 1; r0=$(rss $PID) t0=$(ticks $PID) w0=$(date +%s.%N)
        json=$(timeout 600 "$PERF" --uri "$(uri $PORT)" --json --consumers 0 --count 1000000 --keep-queues --queue bench-backlog 2>"$LOGS/r8-$b-$r.err"); rc=$?
        w1=$(date +%s.%N) t1=$(ticks $PID)
        sleep 2; r1=$(rss $PID)
        out=$($TOOL drain --port $PORT --pid $PID --queue bench-backlog 2>>"$LOGS/r8-$b-$r.err"); rc2=$?
        [ -n "$json" ] || json=null; [ -n "$out" ] || out=null
        record "{\"row\":\"r8\",\"broker\":\"$b\",\"round\":$r,\"label\":\"backlog1M\",\"rc\":$rc,\"rc_drain\":$rc2,\"cpu_ticks\":$((t1 - t0)),\"rss_before_kb\":$r0,\"rss_after_kb\":$r1,\"wall_s\":$(echo "$w1 - $w0" | bc),\"perf\":$json,\"drain\":$out}"
        log "r8 $b round $r: publish $(echo "$json" | cut -c1-100) rss $r0 -> $r1 kB; drain $out"
        down "$b"
      done; done;;
    r9)
      for b in $BROKERS; do
        case $b in
          warren) d=$OUT/warren-startup; rm -rf "$d"; mkdir -p "$d"
                  cmd=(--port $WSTART_PORT -- "$WARREN" --bind 127.0.0.1 --port $WSTART_PORT --data-dir "$d");;
          rabbitmq) $RMQ_NODE stop $RSTART_PORT; rm -rf /tmp/rmq-$RSTART_PORT
                  cmd=(--port $RSTART_PORT --stop-cmd "$RMQ_NODE stop $RSTART_PORT" -- bench/rmq-exec.sh $RSTART_PORT);;
          garagemq) d=$OUT/garagemq-startup; rm -rf "$d"; mkdir -p "$d"
                  sed -e "s/port: 5672/port: $((GPORT + 1))/" -e "s/port: 15672/port: $((GPORT + 10001))/" \
                      -e "s#/var/lib/garagemq/db#$d/db#" /etc/garagemq/config.yaml > "$d/config.yaml"
                  cmd=(--port $((GPORT + 1)) --signal KILL -- garagemq --config "$d/config.yaml");;
        esac
        for i in $(seq 0 10); do   # run 0: first boot on an empty data dir, reported separately
          out=$($TOOL startup "${cmd[@]}" 2>>"$LOGS/r9-$b.err"); [ -n "$out" ] || out=null
          record "{\"row\":\"r9\",\"broker\":\"$b\",\"round\":$i,\"label\":\"$([ $i = 0 ] && echo first-boot || echo restart)\",\"startup\":$out}"
          log "r9 $b run $i: $out"
        done
      done;;
    r10)
      for r in $(seq 1 "$ROUNDS"); do for b in $BROKERS; do
        [ "$b" = garagemq ] && continue
        up "$b" fresh || continue
        sleep 1; r0=$(rss $PID) t0=$(ticks $PID)
        json=$(timeout 900 "$PERF" --uri "$(uri $PORT)" --json --consumers 0 --count 1000000 --persistent --size 1024 --confirm 1000 --keep-queues --queue bench-deep 2>"$LOGS/r10-$b-$r.err"); rc=$?
        t1=$(ticks $PID); sleep 3; r1=$(rss $PID)
        case $b in
          warren) stop_warren
                  "$WARREN" --bind 127.0.0.1 --port $WPORT --data-dir "$OUT/warren-data" 2>"$LOGS/warren.err" &
                  WPID=$!; PID=$WPID;;
          rabbitmq) $RMQ_NODE stop $RPORT
                  for _ in $(seq 1 120); do (echo > /dev/tcp/127.0.0.1/$RPORT) 2>/dev/null || break; sleep 0.5; done
                  setsid bench/rmq-exec.sh $RPORT > "$LOGS/rabbitmq-server.out" 2>&1 < /dev/null &;;
        esac
        restart=$($TOOL wait --port $PORT); [ -n "$restart" ] || restart=null
        [ "$b" = rabbitmq ] && { RPID=$(rmq_pid); PID=$RPID; }
        sleep 1; r2=$(rss $PID)
        out=$($TOOL drain --port $PORT --pid $PID --queue bench-deep 2>>"$LOGS/r10-$b-$r.err"); rc2=$?
        [ -n "$json" ] || json=null; [ -n "$out" ] || out=null
        record "{\"row\":\"r10\",\"broker\":\"$b\",\"round\":$r,\"label\":\"deep1M\",\"rc\":$rc,\"rc_drain\":$rc2,\"cpu_ticks\":$((t1 - t0)),\"rss_before_kb\":$r0,\"rss_after_kb\":$r1,\"rss_recovered_kb\":$r2,\"restart\":$restart,\"perf\":$json,\"drain\":$out}"
        log "r10 $b round $r: publish $(echo "$json" | cut -c1-100) rss $r0 -> $r1 kB; restart $restart rss $r2 kB; drain $out"
        down "$b"
      done; done;;
    *) log "unknown row $row";;
  esac
done
summary
