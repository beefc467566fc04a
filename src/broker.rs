//! The broker: shared state (config, vhosts, users) and the accept loop that spawns one
//! connection task per socket. Knows nothing of frames; `connection` does.

use crate::config::{Config, StorageMode};
use crate::connection;
use crate::vhost::VHost;
use dashmap::DashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// State shared by every connection.
pub struct BrokerState {
    /// The configuration the broker started with.
    pub config: Arc<Config>,
    /// Virtual hosts by name.
    pub vhosts: DashMap<String, Arc<VHost>>,
    /// Cancelled when the broker shuts down.
    pub shutdown: CancellationToken,
    /// Resource alarms in effect: memory (messages in memory above `memory.high_watermark`)
    /// and disk (free space below `disk.free_limit`).
    pub alarms: tokio::sync::watch::Sender<Alarms>,
    /// Free bytes on the data directory's filesystem at the last check (`u64::MAX`: unknown).
    pub disk_free: AtomicU64,
    next_connection_id: AtomicU64,
    /// Open connections (handshake done or not).
    pub(crate) open_connections: AtomicU64,
    /// Bytes connections hold for messages not yet routed: content bodies still arriving and
    /// publishes in uncommitted transactions. The memory alarm counts them.
    pub buffered: AtomicU64,
    /// Handshakes in progress may take one permit each ([`connection::admission`]).
    pub handshakes: Arc<tokio::sync::Semaphore>,
    /// Recent failed logins per peer address.
    pub login_failures: connection::admission::LoginFailures,
    /// Refused logins waiting out their delay may take one permit each.
    pub delayed_refusals: Arc<tokio::sync::Semaphore>,
    /// Users, vhost records, permissions and limits.
    pub auth: crate::auth::Auth,
    /// Open (logged-in) connections, by id: who they are and how to close them.
    pub registry: DashMap<u64, ConnInfo>,
    /// Serialises vhost creation and deletion.
    vhost_lifecycle: tokio::sync::Mutex<()>,
}

/// What the broker knows of an open connection.
pub struct ConnInfo {
    /// The user it logged in as.
    pub user: String,
    /// The vhost it opened.
    pub vhost: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// Channels open on it.
    pub channels: Arc<std::sync::atomic::AtomicU32>,
    /// Its event channel (a forced close goes there).
    pub events: tokio::sync::mpsc::UnboundedSender<crate::queue::consumer::ConnEvent>,
}

/// Resource alarms in effect (RabbitMQ's memory and disk alarms).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Alarms {
    /// The memory alarm.
    pub memory: bool,
    /// The disk alarm.
    pub disk: bool,
}

impl Alarms {
    /// Whether any alarm is in effect (publishing connections are blocked).
    pub fn any(&self) -> bool {
        self.memory || self.disk
    }

    /// The reason `connection.blocked` gives (recorded from RabbitMQ 3.10.8: "low on memory",
    /// "low on disk", and "low on disk & memory" when both hold).
    pub fn reason(&self) -> String {
        match (self.memory, self.disk) {
            (true, true) => "low on disk & memory".into(),
            (false, true) => "low on disk".into(),
            _ => "low on memory".into(),
        }
    }
}

impl BrokerState {
    /// Set one alarm; returns whether it changed.
    fn set_alarm(&self, set: impl Fn(&mut Alarms) -> &mut bool, on: bool) -> bool {
        self.alarms.send_if_modified(|a| {
            let flag = set(a);
            let changed = *flag != on;
            *flag = on;
            changed
        })
    }

    /// Open connections.
    pub fn connections(&self) -> u64 {
        self.open_connections.load(Ordering::Relaxed)
    }

    /// A fresh id for a connection (used in logs and for exclusive ownership).
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Look up a vhost.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).map(|v| v.clone())
    }

    /// Close every connection matching `which` with 320 CONNECTION_FORCED and `text`.
    pub fn force_close(&self, which: impl Fn(&ConnInfo) -> bool, text: &str) -> usize {
        let mut n = 0;
        for c in self.registry.iter() {
            if which(c.value()) {
                let _ = c.events.send(crate::queue::consumer::ConnEvent::Close {
                    text: text.to_string(),
                });
                n += 1;
            }
        }
        n
    }

    /// Connections open by `user`, and channels open on them.
    pub fn user_usage(&self, user: &str) -> (u64, u64) {
        self.registry
            .iter()
            .filter(|c| c.user == user)
            .fold((0, 0), |(n, ch), c| {
                (n + 1, ch + c.channels.load(Ordering::Relaxed) as u64)
            })
    }

    /// Connections open to `vhost`.
    pub fn vhost_connections(&self, vhost: &str) -> u64 {
        self.registry.iter().filter(|c| c.vhost == vhost).count() as u64
    }

    /// Open a vhost's contents (recovering them in disk mode).
    fn open_vhost(&self, name: &str) -> io::Result<Arc<VHost>> {
        open_vhost(&self.config, name)
    }

    /// Create a vhost (its record must be in `auth` already). Idempotent.
    pub async fn create_vhost(self: &Arc<Self>, name: &str) -> io::Result<()> {
        let _g = self.vhost_lifecycle.lock().await;
        if self.vhosts.contains_key(name) {
            return Ok(());
        }
        let me = self.clone();
        let owned = name.to_string();
        let v = tokio::task::spawn_blocking(move || me.open_vhost(&owned))
            .await
            .map_err(io::Error::other)??;
        self.vhosts.insert(name.to_string(), v);
        Ok(())
    }

    /// Delete a vhost's contents: its connections are closed (RabbitMQ's text over HTTP "vhost 'v' is
    /// deleted"), its queues deleted (consumers elsewhere are cancelled), its files removed.
    pub async fn delete_vhost(self: &Arc<Self>, name: &str) {
        let _g = self.vhost_lifecycle.lock().await;
        let Some((_, v)) = self.vhosts.remove(name) else {
            return;
        };
        self.force_close(|c| c.vhost == name, &format!("vhost '{name}' is deleted"));
        v.delete_everything();
        if let Some(log) = v.log().cloned() {
            let _ = tokio::task::spawn_blocking(move || log.close()).await;
        }
        if let Some(dir) = v.dir().map(|d| d.to_path_buf()) {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        }
        info!(vhost = %name, "vhost deleted");
    }
}

fn open_vhost(config: &Config, name: &str) -> io::Result<Arc<VHost>> {
    Ok(match config.storage.mode {
        StorageMode::Memory => Arc::new(VHost::new(name)),
        StorageMode::Disk => {
            let started = std::time::Instant::now();
            let (v, n) = VHost::open(name, &config.data_dir, &config.storage)?;
            info!(vhost = %name, messages = n, elapsed = ?started.elapsed(), "recovered vhost");
            v
        }
    })
}

/// A running broker. Dropping it does not stop the broker; call [`Broker::shutdown`].
pub struct Broker {
    state: Arc<BrokerState>,
    local_addr: SocketAddr,
    amqps_addr: Option<SocketAddr>,
    management_addr: Option<SocketAddr>,
    tracker: TaskTracker,
}

impl Broker {
    /// Bind the listener and start accepting connections.
    pub async fn start(config: Config) -> io::Result<Broker> {
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
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let auth = crate::auth::Auth::open(&config)?;
        let vhosts = DashMap::new();
        for name in auth.snapshot().vhosts.keys() {
            vhosts.insert(name.clone(), open_vhost(&config, name)?);
        }
        let config_max_handshakes = config.limits.max_handshakes;
        let state = Arc::new(BrokerState {
            config: Arc::new(config),
            vhosts,
            shutdown: CancellationToken::new(),
            alarms: tokio::sync::watch::Sender::new(Alarms::default()),
            disk_free: AtomicU64::new(u64::MAX),
            next_connection_id: AtomicU64::new(0),
            open_connections: AtomicU64::new(0),
            buffered: AtomicU64::new(0),
            handshakes: Arc::new(tokio::sync::Semaphore::new(config_max_handshakes as usize)),
            login_failures: Default::default(),
            delayed_refusals: Arc::new(tokio::sync::Semaphore::new(
                connection::admission::MAX_DELAYED_REFUSALS,
            )),
            auth,
            registry: DashMap::new(),
            vhost_lifecycle: tokio::sync::Mutex::new(()),
        });
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
            amqps_addr = Some(addr);
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
        info!(address = %local_addr, "listening for AMQP 0-9-1 connections on {local_addr}");
        Ok(Broker {
            state,
            local_addr,
            amqps_addr,
            management_addr,
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

/// Free bytes available to the broker on the filesystem holding `dir` (`statvfs`).
pub fn disk_free(dir: &std::path::Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated path and a zeroed statvfs the call fills in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Bytes allocated on the heap by jemalloc (0 if its statistics cannot be read).
pub fn heap_allocated() -> u64 {
    use tikv_jemalloc_ctl::{epoch, stats};
    if epoch::advance().is_err() {
        return 0;
    }
    stats::allocated::read().map_or(0, |n| n as u64)
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

#[cfg(test)]
mod tests {
    use super::Alarms;

    #[test]
    fn blocked_reasons_are_rabbitmqs() {
        // Recorded from RabbitMQ 3.10.8 (pika's blocked callback, alarms set with rabbitmqctl).
        let a = |memory, disk| Alarms { memory, disk }.reason();
        assert_eq!(a(true, false), "low on memory");
        assert_eq!(a(false, true), "low on disk");
        assert_eq!(a(true, true), "low on disk & memory");
        assert!(!Alarms::default().any());
    }
}
