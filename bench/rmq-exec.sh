#!/bin/bash
# rmq-exec.sh PORT: exec rabbitmq-server in the foreground as an isolated node on 127.0.0.1:PORT,
# with the same environment as /work/shared/tools/rmq-node (data under /tmp/rmq-PORT), so that
# bench/amqp_tool.py startup can time exec -> AMQP handshake, and so that run.sh can start the
# node with the caller's `ulimit -n`. Stop it with `rmq-node stop PORT`.
# Unlike /usr/sbin/rabbitmq-server (which switches user with `su`, whose PAM session resets the
# open-files soft limit to 1024, i.e. RabbitMQ's socket limit to 832), it switches to the
# rabbitmq user with setpriv, which keeps the limits.
set -eu
port=$1 base=/tmp/rmq-$port
export RABBITMQ_NODENAME=rabbit$port@localhost
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$port
export RABBITMQ_DIST_PORT=$((port + 20000))
export RABBITMQ_MNESIA_BASE=$base/mnesia RABBITMQ_LOG_BASE=$base/log
export RABBITMQ_PID_FILE=$base/pid RABBITMQ_ENABLED_PLUGINS_FILE=$base/enabled_plugins
export RABBITMQ_CONFIG_FILE=$base/rabbitmq RABBITMQ_LOGS=- ERL_CRASH_DUMP_BYTES=0
export ERL_EPMD_ADDRESS=127.0.0.1
mkdir -p $base/log $base/mnesia
[ -f $base/enabled_plugins ] || echo "[]." > $base/enabled_plugins
printf 'loopback_users = none\n' > $base/rabbitmq.conf
cp /var/lib/rabbitmq/.erlang.cookie $base/.erlang.cookie 2>/dev/null || true
chown -R rabbitmq:rabbitmq $base
cd /var/lib/rabbitmq
exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups env HOME=/var/lib/rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server
