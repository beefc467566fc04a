#!/usr/bin/env bash
# bench/deep_transient.sh N [SIZE] -- a transient backlog larger than memory, Warren alone.
#
# Publishes N transient SIZE-byte messages (default 1024) into one non-durable queue with
# warren-perf (confirms, 1,000 in flight, no consumer) on a durable vhost (default storage):
# past storage.queue_memory_bytes they are spooled to the log. Reports the publish time, RSS
# (now and peak) and disk; then drains the queue with an independent no-ack consumer
# (bench/amqp_tool.py drain, raw AMQP from Python) and reports the rate, RSS and disk after.
# Binaries from target/release (cargo build --release first); port 5721; data /tmp/deep-transient.
set -u
cd "$(dirname "$0")/.."
N=$1 SIZE=${2:-1024} PORT=5721 D=/tmp/deep-transient BIN=target/release
rm -rf $D; mkdir -p $D
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
listening() { for _ in $(seq 1 60000); do grep -q "listening for AMQP" "$1" && return 0; sleep 0.01; done; return 1; }
$BIN/warren --bind 127.0.0.1 --port $PORT --data-dir $D 2>/tmp/deep-t.err & P=$!
listening /tmp/deep-t.err; r0=$(rss $P)
t0=$(date +%s.%N)
$BIN/warren-perf --uri "amqp://guest:guest@127.0.0.1:$PORT/%2f" --consumers 0 --size "$SIZE" \
  --count "$N" --confirm 1000 --keep-queues --queue deep --json > /tmp/deep-t-perf.json 2>/tmp/deep-t-perf.err
t1=$(date +%s.%N)
sleep 3; r3=$(rss $P); sleep 12
echo "publish $N x $SIZE B transient: $(echo "$t1 - $t0" | bc) s; rss before ${r0} kB, 3 s after ${r3} kB, 15 s after $(rss $P) kB, peak $(hwm $P) kB; disk $(du -sm $D | cut -f1) MB; memory alarms: $(grep -c 'memory alarm set' /tmp/deep-t.err)"
python3 bench/amqp_tool.py drain --port $PORT --pid $P --queue deep 2>&1 | tail -1
sleep 2
echo "after the drain: rss $(rss $P) kB; disk $(du -sm $D | cut -f1) MB"
kill -TERM $P; wait $P
