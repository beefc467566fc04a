#!/usr/bin/env bash
# bench/scale.sh -- the scale rows: Warren vs RabbitMQ with many connections, queues, bindings,
# fanout queues and queued messages, measured with an independent client (bench/goscale,
# RabbitMQ's Go client amqp091-go).
#
# Usage:  bench/scale.sh [-r ROUNDS] [-d SECONDS] [-b "warren rabbitmq"] [-o OUTDIR] [--smoke] [ROW...]
#
#   -r ROUNDS   rounds per row; brokers alternate inside each round           (default 3)
#   -d SECONDS  publishing time of s3 and s4                                   (default 10)
#   -b BROKERS  brokers, space separated (also env BROKERS)                    (default "warren rabbitmq")
#   -o OUTDIR   results appended to OUTDIR/results.jsonl, logs in OUTDIR/logs (default /tmp/warren-scale);
#               the table is printed from the whole file (use a new OUTDIR for a new measurement)
#   --smoke     small sizes (conns 200, queues 2000, bindings 2000, fanout 50, fill 200000), 2 s runs
#   --table     only print the table from OUTDIR/results.jsonl
#   ROW         any of: s1 s2 s3 s4 s5 (default: all)
#   Sizes can also be set one by one: N_CONNS N_QUEUES N_BINDINGS N_FANOUT N_FILL (environment).
#
# Rows (16 B bodies; every run on a freshly started broker):
#   s1  10,000 connections, each with a channel and a basic.consume on one shared empty queue,
#       opened by 64 goroutines: open rate, broker RSS before / with them (after a 5 s hold) /
#       after closing them, RSS per connection
#   s2  100,000 non-durable queues declared one after the other on one channel: declare rate,
#       RSS per queue, then delete rate
#   s3  topic exchange, 100 queues, 100,000 bindings `k.<i>.*` (and a 100-binding baseline):
#       bind rate, RSS per binding, then 1 publisher (no confirms) with keys `k.<random i>.x`
#       (one match each) and one no-ack consumer per queue: sent and delivered msgs/s, broker CPU
#   s4  fanout exchange to 1,000 queues, one no-ack consumer per queue over 10 connections,
#       1 publisher (no confirms): published msgs/s, deliveries/s, broker CPU per published message
#   s5  10,000,000 transient 16 B messages into one queue, no consumer, confirms with 1,000 in
#       flight: publish rate, RSS per queued message; then drain (no-ack consumer) rate
# The s3/s4 publishers pause while the consumers are more than 10,000 (s3) / 100,000 (s4)
# deliveries behind (goscale -max-backlog), so the rates are sustained ones. Broker CPU = utime+stime from
# /proc/PID/stat (100 ticks/s) over publishing and draining; RSS = VmRSS from /proc/PID/status.
#
# Warren: WARREN (default target/release/warren) on 127.0.0.1:$WPORT (5700), a new data dir
# (mktemp) for every run, default configuration (no limit needed raising: connection_max 0,
# channel_max 2047 > 100 channels per connection, max_handshakes 4096 > 64 opening at once,
# memory watermark 0.4 of RAM, transient messages are not paged). RabbitMQ: port 5680 (data
# /tmp/rmq-5680 as rmq-node), restarted through bench/rmq-exec.sh with `ulimit -n 20000` before
# every run, stopped at the end unless it was running before (as run.sh). goscale is built
# (`go build`) into OUTDIR unless GOSCALE names a binary.
set -u
cd "$(dirname "$0")/.."
ROUNDS=3 DUR=10 BROKERS=${BROKERS:-"warren rabbitmq"} OUT=/tmp/warren-scale TABLE_ONLY=0 SMOKE=0
while [ $# -gt 0 ]; do
  case $1 in
    -r) ROUNDS=$2; shift 2;; -d) DUR=$2; shift 2;; -b) BROKERS=$2; shift 2;; -o) OUT=$2; shift 2;;
    --smoke) SMOKE=1; shift;; --table) TABLE_ONLY=1; shift;;
    -h|--help) sed -n '2,41p' "$0"; exit 0;;
    *) break;;
  esac
done
ROWS=${*:-"s1 s2 s3 s4 s5"}
if [ $SMOKE = 1 ]; then
  : "${N_CONNS:=200}" "${N_QUEUES:=2000}" "${N_BINDINGS:=2000}" "${N_FANOUT:=50}" "${N_FILL:=200000}"; DUR=2
fi
N_CONNS=${N_CONNS:-10000} N_QUEUES=${N_QUEUES:-100000} N_BINDINGS=${N_BINDINGS:-100000}
N_FANOUT=${N_FANOUT:-1000} N_FILL=${N_FILL:-10000000}
WARREN=${WARREN:-target/release/warren}
RMQ_NODE=/work/shared/tools/rmq-node
WPORT=${WPORT:-5700} RPORT=5680
RES=$OUT/results.jsonl LOGS=$OUT/logs
mkdir -p "$LOGS"
summary() { python3 bench/summarize_scale.py "$RES"; }
if [ $TABLE_ONLY = 1 ]; then summary; exit 0; fi
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"   # inherited by Warren and RabbitMQ

# shellcheck source=bench/lib.sh
. bench/lib.sh
record() { echo "$1" >> "$RES"; }

GOSCALE=${GOSCALE:-}
if [ -z "$GOSCALE" ]; then
  GOSCALE=$OUT/goscale
  (cd bench/goscale && go build -o "$GOSCALE" .) || { log "go build of bench/goscale failed"; exit 1; }
fi
[ -x "$WARREN" ] || case " $BROKERS " in *" warren "*) log "no Warren binary at $WARREN"; exit 1;; esac

# ---------------------------------------------------------------- brokers (RabbitMQ: bench/lib.sh)
WPID= WDIR= RPID=
start_warren() {   # start_warren LOGFILE: a fresh data dir every time
  WDIR=$(mktemp -d /tmp/warren-scale-data.XXXXXX)
  "$WARREN" --bind 127.0.0.1 --port $WPORT --data-dir "$WDIR" 2>"$1" >/dev/null &
  WPID=$!
  for _ in $(seq 1 500); do grep -q "listening for AMQP" "$1" && return 0; sleep 0.01; done
  log "warren did not start"; cat "$1" >&2; return 1
}
stop_warren() {
  [ -n "$WPID" ] && kill "$WPID" 2>/dev/null && wait "$WPID" 2>/dev/null; WPID=
  [ -n "$WDIR" ] && rm -rf "$WDIR"; WDIR=
}
finish() {
  stop_warren
  if [ $RMQ_STARTED = 1 ] && [ $RMQ_WAS_RUNNING = 0 ]; then $RMQ_NODE stop $RPORT; fi
}
trap finish EXIT

up() {   # up BROKER LOGFILE: a freshly started broker; sets PID and PORT
  case $1 in
    warren) stop_warren; start_warren "$2" || return 1; PID=$WPID PORT=$WPORT;;
    rabbitmq) restart_rmq || return 1; PID=$RPID PORT=$RPORT;;
    *) log "unknown broker $1"; return 1;;
  esac
  sleep 1   # let the broker settle before the first RSS sample
}
down() { case $1 in warren) stop_warren;; esac; }

# run ROW BROKER ROUND LABEL TIMEOUT -- goscale SUBCOMMAND args...: one goscale run on a fresh
# broker; records {"row","broker","round","label","rc","out": goscale's JSON}.
run() {
  local row=$1 b=$2 round=$3 label=$4 to=$5; shift 6
  local base=$LOGS/$row-$b-$round-$label json rc
  up "$b" "$base.broker.err" || { record "{\"row\":\"$row\",\"broker\":\"$b\",\"round\":$round,\"label\":\"$label\",\"error\":\"broker did not start\"}"; return; }
  json=$(timeout $to "$GOSCALE" "$1" -uri "$(uri $PORT)" -pid $PID "${@:2}" 2>"$base.err" < /dev/null); rc=$?
  [ -n "$json" ] || json=null
  record "{\"row\":\"$row\",\"broker\":\"$b\",\"round\":$round,\"label\":\"$label\",\"rc\":$rc,\"args\":\"$*\",\"out\":$json}"
  log "$row $b round $round $label: rc=$rc $(echo "$json" | cut -c1-200)"
  [ $rc = 0 ] || { log "  goscale stderr tail:"; tail -3 "$base.err" >&2; }
  # s5: the drain on the same broker
  if [ "$row" = s5 ]; then
    json=$(timeout $to "$GOSCALE" drain -uri "$(uri $PORT)" -pid $PID -queue scale-fill -delete 2>>"$base.err" < /dev/null); rc=$?
    [ -n "$json" ] || json=null
    record "{\"row\":\"$row\",\"broker\":\"$b\",\"round\":$round,\"label\":\"drain\",\"rc\":$rc,\"out\":$json}"
    log "$row $b round $round drain: rc=$rc $json"
  fi
  down "$b"
}

each() {  # each ROW LABEL TIMEOUT -- goscale args: all rounds, brokers alternating
  local row=$1 label=$2 to=$3; shift 4
  for r in $(seq 1 "$ROUNDS"); do for b in $BROKERS; do run "$row" "$b" "$r" "$label" "$to" -- "$@"; done; done
}

log "results -> $RES; brokers: $BROKERS; rounds $ROUNDS; duration $DUR s; rows: $ROWS"
log "sizes: conns $N_CONNS, queues $N_QUEUES, bindings $N_BINDINGS, fanout $N_FANOUT, fill $N_FILL"
record "{\"row\":\"meta\",\"date\":\"$(date -Is)\",\"rounds\":$ROUNDS,\"duration\":$DUR,\"brokers\":\"$BROKERS\",\"rows\":\"$ROWS\"}"
for row in $ROWS; do
  case $row in
    s1) each s1 "conns$N_CONNS" 900 -- conns -n "$N_CONNS" -parallel 64 -consume -hold 5s;;
    s2) each s2 "queues$N_QUEUES" 1800 -- queues -n "$N_QUEUES" -delete;;
    s3) for r in $(seq 1 "$ROUNDS"); do for b in $BROKERS; do
          for nb in "$N_BINDINGS" 100; do
            run s3 "$b" "$r" "bindings$nb" 900 -- topic -bindings "$nb" -queues 100 -duration "${DUR}s"
          done
        done; done;;
    s4) each s4 "fanout$N_FANOUT" 900 -- fanout -queues "$N_FANOUT" -conns 10 -duration "${DUR}s" -size 16;;
    s5) each s5 "fill$N_FILL" 3600 -- fill -n "$N_FILL" -size 16 -queue scale-fill -window 1000;;
    *) log "unknown row $row";;
  esac
done
summary
