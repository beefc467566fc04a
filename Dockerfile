# Warren as a drop-in for RabbitMQ's image in test setups (testcontainers, docker compose).
#   docker build -t warren:latest .
#   docker run -p 5672:5672 -p 15672:15672 warren:latest
# What the RabbitMQ modules of testcontainers need is described in docs/testing.md: the
# `Server startup complete` log line, RABBITMQ_DEFAULT_USER/PASS/VHOST, RABBITMQ_NODE_PORT,
# RABBITMQ_CONFIG_FILE, and rabbitmqadmin / rabbitmqctl / rabbitmq-plugins on the PATH.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# Only the broker binary; no debug info in the image.
RUN cargo build --release --locked --bin warren \
        --config 'profile.release.debug=0' --config 'profile.release.strip=true' \
    && cp target/release/warren /warren

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/warren --create-home warren \
    && mkdir -p /etc/rabbitmq /etc/warren \
    && chown warren /etc/rabbitmq
COPY --from=build /warren /usr/local/bin/warren
# One binary, four names: the tools test frameworks run inside a RabbitMQ container.
RUN ln -s warren /usr/local/bin/rabbitmqadmin \
    && ln -s warren /usr/local/bin/rabbitmqctl \
    && ln -s warren /usr/local/bin/rabbitmq-plugins \
    && ln -s warren /usr/local/bin/rabbitmq-diagnostics
COPY docker/broker.toml /etc/warren/broker.toml
USER warren
ENV WARREN_CONFIG=/etc/warren/broker.toml
EXPOSE 5672 5671 15672 15692
VOLUME /var/lib/warren
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s CMD ["rabbitmqctl", "ping"]
CMD ["warren"]
