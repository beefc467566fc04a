//! The broker: starts the listeners (AMQP, AMQPS, management, Prometheus), the resource monitors and the
//! accept loops that spawn one connection task per socket, and shuts it all down. The state
//! they share lives in [`crate::state`]. Knows nothing of frames; `connection` does.

use crate::config::{Config, StorageMode};
use crate::connection;
pub use crate::state::{Alarms, BrokerState, ConnInfo, disk_free, heap_allocated};
use dashmap::DashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// A running broker. Dropping it does not stop the broker; call [`Broker::shutdown`].
pub struct Broker {
    state: Arc<BrokerState>,
    local_addr: SocketAddr,
    amqps_addr: Option<SocketAddr>,
    management_addr: Option<SocketAddr>,
    prometheus_addr: Option<SocketAddr>,
    tracker: TaskTracker,
}

impl Broker {
    /// Bind the listener and start accepting connections.
    pub async fn start(config: Config) -> io::Result<Broker> {
        Broker::start_with(config, None).await
    }

    /// As [`Broker::start`], with the inter-node listener already bound (tests bind every
    /// node's port before any node starts, so each knows the others' addresses).
    pub async fn start_with(
        config: Config,
        cluster_listener: Option<TcpListener>,
    ) -> io::Result<Broker> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let addr = SocketAddr::new(
            config
                .amqp
                .bind
                .parse()
                .map_err(|_| io::Error::other("bad bind address"))?,
            config.amqp.port,
        );
        if config.testing.clock == crate::config::ClockMode::Manual {
            crate::clock::enable_manual();
            warn!("test clock: time stands still until advanced (POST /api/warren/clock)");
        }
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let auth = crate::auth::Auth::open(&config)?;
        let vhosts = DashMap::new();
        for name in auth.snapshot().vhosts.keys() {
            vhosts.insert(name.clone(), crate::state::open_vhost(&config, name)?);
        }
        let state = Arc::new(BrokerState::new(config, vhosts, auth));
        state.add_listener("amqp", local_addr);
        state.apply_policies(None);
        crate::shovel::sync(&state);
        if let Some(path) = &state.config.load_definitions {
            crate::management::load_definitions(&state, path).await?;
            info!(file = %path.display(), "definitions imported");
        }
        if state.config.cluster.enabled {
            let listener = match cluster_listener {
                Some(l) => l,
                None => TcpListener::bind(&state.config.cluster.listen).await?,
            };
            let c = crate::management::start_cluster(&state, listener).await?;
            let _ = state.cluster.set(c);
            crate::management::replicate_quorum_queues(&state);
        }
        let tracker = TaskTracker::new();
        let limit = state.config.memory.limit();
        if limit > 0 {
            tracker.spawn(memory_monitor(state.clone(), limit));
        }
        let disk_limit = state.config.disk.limit();
        if state.config.storage.mode == StorageMode::Disk && disk_limit > 0 {
            tracker.spawn(disk_monitor(state.clone(), disk_limit));
        }
        // RabbitMQ's `connection_max`: a throttle on accepting, not a refusal (3.10.8, observed:
        // past the limit a client's TCP connect completes in the listen backlog, and it gets
        // connection.start once another connection has closed).
        let slots: Slots = match state.config.connection_max {
            0 => None,
            n => Some(Arc::new(tokio::sync::Semaphore::new(n as usize))),
        };
        let needs_tls = state.config.amqps.enabled
            || (state.config.management.enabled && state.config.management.tls);
        let acceptor = if needs_tls {
            Some(crate::tls::acceptor(&state.config.tls)?)
        } else {
            None
        };
        let mut amqps_addr = None;
        if state.config.amqps.enabled {
            let a = &state.config.amqps;
            let addr = SocketAddr::new(
                a.bind
                    .parse()
                    .map_err(|_| io::Error::other("bad amqps bind address"))?,
                a.port,
            );
            let listener = TcpListener::bind(addr).await?;
            let addr = listener.local_addr()?;
            info!(address = %addr, "listening for AMQPS (AMQP 0-9-1 over TLS) connections on {addr}");
            // RabbitMQ's wording, which testcontainers' Go module waits for.
            info!("started TLS (SSL) listener on [::]:{}", addr.port());
            amqps_addr = Some(addr);
            state.add_listener("amqp/ssl", addr);
            tracker.spawn(accept_loop(
                listener,
                state.clone(),
                tracker.clone(),
                slots.clone(),
                acceptor.clone(),
            ));
        }
        tracker.spawn(accept_loop(
            listener,
            state.clone(),
            tracker.clone(),
            slots,
            None,
        ));
        let mut management_addr = None;
        if state.config.management.enabled {
            let m = &state.config.management;
            let addr = SocketAddr::new(
                m.bind
                    .parse()
                    .map_err(|_| io::Error::other("bad management bind address"))?,
                m.port,
            );
            let listener = TcpListener::bind(addr).await?;
            let addr = listener.local_addr()?;
            management_addr = Some(addr);
            state.add_listener(if m.tls { "https" } else { "http" }, addr);
            match (&acceptor, m.tls) {
                (Some(acceptor), true) => {
                    info!(address = %addr, "management API listening on https://{addr}/api/");
                    let l = crate::tls::HttpsListener::new(
                        listener,
                        acceptor.clone(),
                        Duration::from_secs(state.config.handshake_timeout.max(1)),
                        state.shutdown.clone(),
                    )?;
                    tracker.spawn(crate::management::serve_tls(l, state.clone()));
                }
                _ => {
                    info!(address = %addr, "management API listening on http://{addr}/api/");
                    tracker.spawn(crate::management::serve(listener, state.clone()));
                }
            }
        }
        let mut prometheus_addr = None;
        if state.config.prometheus.enabled {
            let p = &state.config.prometheus;
            let addr = SocketAddr::new(
                p.bind
                    .parse()
                    .map_err(|_| io::Error::other("bad prometheus bind address"))?,
                p.port,
            );
            let listener = TcpListener::bind(addr).await?;
            let addr = listener.local_addr()?;
            prometheus_addr = Some(addr);
            state.add_listener("http/prometheus", addr);
            info!(address = %addr, "Prometheus metrics on http://{addr}/metrics");
            tracker.spawn(crate::prometheus::serve(listener, state.clone()));
        }
        info!(address = %local_addr, "listening for AMQP 0-9-1 connections on {local_addr}");
        Ok(Broker {
            state,
            local_addr,
            amqps_addr,
            management_addr,
            prometheus_addr,
            tracker,
        })
    }

    /// The address the AMQP listener is bound to (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the AMQPS listener, when enabled.
    pub fn amqps_addr(&self) -> Option<SocketAddr> {
        self.amqps_addr
    }

    /// The address of the management HTTP API, when enabled.
    pub fn management_addr(&self) -> Option<SocketAddr> {
        self.management_addr
    }

    /// The address of the Prometheus endpoint, when enabled.
    pub fn prometheus_addr(&self) -> Option<SocketAddr> {
        self.prometheus_addr
    }

    /// Shared state, for tests and management.
    pub fn state(&self) -> &Arc<BrokerState> {
        &self.state
    }

    /// Stop accepting, close every connection with 320 CONNECTION_FORCED, and wait (at most
    /// `grace`) for the connection tasks to finish.
    pub async fn shutdown(self, grace: Duration) {
        self.state.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            warn!("some connections did not close within {grace:?}");
        }
        // The cluster member stops applying before the logs close.
        if let Some(c) = self.state.cluster.get() {
            c.shutdown().await;
        }
        // Whatever the sync policy, what was written is synced before exit; then the log
        // stops (later appends are dropped), so nothing touches the files after this returns.
        let logs: Vec<_> = self
            .state
            .vhosts
            .iter()
            .filter_map(|v| v.log().cloned())
            .collect();
        for log in logs {
            let _ = tokio::task::spawn_blocking(move || log.close()).await;
        }

        info!("broker stopped");
    }

    /// Resolves when shutdown has been requested.
    pub async fn cancelled(&self) {
        self.state.shutdown.cancelled().await
    }
}

/// Every 100 ms, sum the memory held by messages in queues (ready and unacked, paged-out
/// ones excluded) and raise or clear the memory alarm against the watermark.
async fn memory_monitor(state: Arc<BrokerState>, limit: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.shutdown.cancelled() => return,
        }
        let messages: u64 = state.buffered.load(Ordering::Relaxed)
            + state
                .vhosts
                .iter()
                .map(|v| {
                    let queues: Vec<_> = v.queues.iter().map(|q| q.clone()).collect();
                    queues.iter().map(|q| q.stats().3).sum::<u64>()
                })
                .sum::<u64>();
        // The heap as jemalloc counts it (the binary's allocator) covers everything, connection
        // buffers included; the message estimate still counts where jemalloc is not the
        // allocator (the library in other programs, tests).
        let used = messages.max(heap_allocated());
        let on = used > limit;
        let changed = state.set_alarm(|a| &mut a.memory, on);
        if changed && on {
            warn!(
                used,
                limit,
                "memory alarm set: messages in memory above the high watermark; publishing connections are blocked"
            );
        } else if changed {
            info!(used, limit, "memory alarm cleared");
        }
    }
}

/// Every `disk.check_interval_ms`, read the free space of the data directory's filesystem
/// and raise or clear the disk alarm against `disk.free_limit` (RabbitMQ's disk alarm).
async fn disk_monitor(state: Arc<BrokerState>, limit: u64) {
    let every = Duration::from_millis(state.config.disk.check_interval_ms.max(10));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let dir = state.config.data_dir.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.shutdown.cancelled() => return,
        }
        let free = match disk_free(&dir) {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, dir = %dir.display(), "cannot read free disk space");
                continue;
            }
        };
        state.disk_free.store(free, Ordering::Relaxed);
        let on = free < limit;
        if state.set_alarm(|a| &mut a.disk, on) {
            if on {
                warn!(
                    free,
                    limit,
                    "disk alarm set: free disk space below disk.free_limit; publishing connections are blocked"
                );
            } else {
                info!(free, limit, "disk alarm cleared");
            }
        }
    }
}

/// Places for connections, shared by the AMQP and AMQPS listeners (`None`: no limit).
type Slots = Option<Arc<tokio::sync::Semaphore>>;

async fn accept_loop(
    listener: TcpListener,
    state: Arc<BrokerState>,
    tracker: TaskTracker,
    slots: Slots,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let slot = match &slots {
            None => None,
            Some(s) => tokio::select! {
                _ = state.shutdown.cancelled() => return,
                p = s.clone().acquire_owned() => p.ok(),
            },
        };
        let accepted = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((socket, peer)) => {
                backoff = Duration::from_millis(5);
                let _ = socket.set_nodelay(true);
                let state = state.clone();
                let tls = tls.clone();
                tracker.spawn(async move {
                    state.open_connections.fetch_add(1, Ordering::Relaxed);
                    connection::serve(socket, peer, state.clone(), tls).await;
                    state.open_connections.fetch_sub(1, Ordering::Relaxed);
                    drop(slot);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning (mini-redis does the same).
                error!(error = %e, "accept failed");
                tokio::select! {
                    _ = state.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
