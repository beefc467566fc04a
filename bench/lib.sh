# bench/lib.sh -- helpers shared by bench/run.sh and bench/scale.sh. Source it after setting
# RMQ_NODE (../shared/tools/rmq-node), RPORT (RabbitMQ's port) and LOGS (a log directory).

log() { echo "[$(date +%T)] $*" >&2; }
uri() { echo "amqp://guest:guest@127.0.0.1:$1/%2f"; }

# The pid of the RabbitMQ node on $RPORT (beam.smp), from its pid file or its listening socket.
rmq_pid() {
  local p; p=$(cat /tmp/rmq-$RPORT/pid 2>/dev/null)
  if [ -z "$p" ] || ! grep -q beam "/proc/$p/comm" 2>/dev/null; then
    p=$(ss -ltnpH "sport = :$RPORT" | grep -o 'beam.smp",pid=[0-9]*' | head -1 | grep -o '[0-9]*$' || true)
  fi
  echo "$p"
}

# (Re)start RabbitMQ on $RPORT with this shell's open-files limit; sets RPID. RMQ_WAS_RUNNING:
# a node was up before the script started one (finish() leaves it running then).
RMQ_WAS_RUNNING=0 RMQ_STARTED=0
restart_rmq() {
  if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then log "rabbitmq is not installed"; return 1; fi
  if $RMQ_NODE ctl $RPORT status >/dev/null 2>&1; then
    [ $RMQ_STARTED = 1 ] || RMQ_WAS_RUNNING=1
    log "rabbitmq: restarting with ulimit -n $(ulimit -n)"; $RMQ_NODE stop $RPORT
    for _ in $(seq 1 60); do (echo > /dev/tcp/127.0.0.1/$RPORT) 2>/dev/null || break; sleep 0.5; done; sleep 1
  fi
  # not `rmq-node start`: its `su` resets the open-files limit to 1024 (RabbitMQ: 832 sockets)
  setsid bench/rmq-exec.sh $RPORT > "$LOGS/rabbitmq-server.out" 2>&1 < /dev/null &
  local ok=0
  for _ in $(seq 1 120); do
    if $RMQ_NODE ctl $RPORT status >/dev/null 2>&1 && (echo > /dev/tcp/127.0.0.1/$RPORT) 2>/dev/null; then ok=1; break; fi
    sleep 1
  done
  [ $ok = 1 ] || { log "rabbitmq did not start; see $LOGS/rabbitmq-server.out"; return 1; }
  RMQ_STARTED=1; RPID=$(rmq_pid)
  log "rabbitmq beam.smp pid $RPID, $(grep 'open files' /proc/$RPID/limits)"
}
