#!/bin/bash
# bench/drain_paged.sh BIN N -- draining a paged-out backlog: publish N persistent 1 KiB
# messages into a durable queue (warren-perf, confirms), restart BIN on the same data dir (so
# every message is paged out), drain with the independent raw-AMQP no-ack consumer
# (bench/amqp_tool.py drain); prints its JSON line (rate, broker CPU per message). Run from the
# repo root after `cargo build --release`; compare two binaries by running it with each.
BIN=$1 N=$2 PORT=5731 D=/tmp/drain-cmp
rm -rf $D; mkdir -p $D
listening() { for _ in $(seq 1 60000); do grep -q "listening for AMQP" "$1" && return 0; sleep 0.01; done; return 1; }
$BIN --bind 127.0.0.1 --port $PORT --data-dir $D 2>/tmp/dc1.err & P=$!
listening /tmp/dc1.err
target/release/warren-perf --uri "amqp://guest:guest@127.0.0.1:$PORT/%2f" --consumers 0 --persistent --size 1024 --count $N --confirm 1000 --keep-queues --queue deep --json >/dev/null 2>&1
kill -TERM $P; wait $P
$BIN --bind 127.0.0.1 --port $PORT --data-dir $D 2>/tmp/dc2.err & P=$!
listening /tmp/dc2.err
python3 bench/amqp_tool.py drain --port $PORT --pid $P --queue deep 2>&1 | tail -1
kill -TERM $P; wait $P
