#!/usr/bin/env bash
# bench/deep_queue.sh N [SIZE] -- a queue larger than memory, Warren alone.
#
# Publishes N persistent SIZE-byte messages (default 1024) into one durable queue with
# warren-perf (confirms, 1,000 in flight, no consumer); reports the publish time, RSS and the
# log's size on disk; restarts Warren on the same data dir and reports the time to recover and
# listen and the RSS after it (and its peak); drains the queue with a no-ack consumer
# (bench/amqp_tool.py drain) and reports the rate, then RSS and disk usage after the drain.
# Binaries from target/release (cargo build --release first); port 5720; data /tmp/deep-data.
set -u
cd "$(dirname "$0")/.."
N=$1 SIZE=${2:-1024} PORT=5720 D=/tmp/deep-data BIN=target/release
rm -rf $D; mkdir -p $D
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
listening() { for _ in $(seq 1 60000); do grep -q "listening for AMQP" "$1" && return 0; sleep 0.01; done; return 1; }
$BIN/warren --bind 127.0.0.1 --port $PORT --data-dir $D 2>/tmp/deep-w1.err & P=$!
listening /tmp/deep-w1.err; r0=$(rss $P)
t0=$(date +%s.%N)
$BIN/warren-perf --uri "amqp://guest:guest@127.0.0.1:$PORT/%2f" --consumers 0 --persistent --size "$SIZE" \
  --count "$N" --confirm 1000 --keep-queues --queue deep --json > /tmp/deep-perf.json 2>/tmp/deep-perf.err
t1=$(date +%s.%N)
sleep 3
echo "publish $N x $SIZE B: $(echo "$t1 - $t0" | bc) s; rss before ${r0} kB, after $(rss $P) kB, peak $(hwm $P) kB; disk $(du -sm $D | cut -f1) MB"
kill -TERM $P; wait $P
t0=$(date +%s.%N)
$BIN/warren --bind 127.0.0.1 --port $PORT --data-dir $D 2>/tmp/deep-w2.err & P=$!
listening /tmp/deep-w2.err
t1=$(date +%s.%N)
sleep 1; r1=$(rss $P); sleep 14
echo "restart: listening after $(echo "$t1 - $t0" | bc) s; $(grep -o 'recovered vhost.*' /tmp/deep-w2.err | head -1); rss 1 s after ${r1} kB, 15 s after $(rss $P) kB, peak $(hwm $P) kB"
python3 bench/amqp_tool.py drain --port $PORT --pid $P --queue deep 2>&1 | tail -1
echo "after the drain: rss $(rss $P) kB; disk $(du -sm $D | cut -f1) MB"
kill -TERM $P; wait $P
