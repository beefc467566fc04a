# bench/warren_node.sh -- sourced by bench/perftest.sh and bench/cluster.sh.
# start_warren BINARY DIR: start one Warren node on an ephemeral port with a fresh data
# directory under DIR (its logs there too); sets WPID and PORT (waits up to 30 s for the
# listening line).
start_warren() {
  rm -rf "$2/data" && mkdir -p "$2/data"
  "$1" --bind 127.0.0.1 --port 0 --data-dir "$2/data" --log-level warn >"$2/ready" 2>"$2/err" &
  WPID=$!
  PORT=""
  local deadline=$((SECONDS + 30))
  while [ -z "$PORT" ] && [ $SECONDS -lt $deadline ]; do
    PORT=$(sed -n 's/.*"amqp":"127\.0\.0\.1:\([0-9]*\)".*/\1/p' "$2/ready" | head -n1 || true)
    [ -n "$PORT" ] || { kill -0 $WPID 2>/dev/null || break; sleep 0.02; }
  done
  [ -n "$PORT" ] || { echo "warren did not start" >&2; cat "$2/err" >&2; exit 1; }
}
