//! The state every connection and the management API share: configuration, vhosts (created
//! and deleted at run time), the auth backend, resource alarms, the registry of open
//! connections, and the bounds on handshakes. Below `connection`, `management` and `broker`,
//! which all hold an `Arc<BrokerState>`.

use crate::config::{Config, StorageMode};
use crate::vhost::VHost;
use dashmap::DashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio_util::sync::CancellationToken;
use tracing::info;

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
    pub login_failures: crate::auth::admission::LoginFailures,
    /// Refused logins waiting out their delay may take one permit each.
    pub delayed_refusals: Arc<tokio::sync::Semaphore>,
    /// Users, vhost records, permissions and limits.
    pub auth: crate::auth::Auth,
    /// Open (logged-in) connections, by id: who they are and how to close them.
    pub registry: DashMap<u64, ConnInfo>,
    /// Serialises vhost creation and deletion.
    vhost_lifecycle: tokio::sync::Mutex<()>,
    /// Message counts of closed connections, by vhost (totals only grow).
    pub retired: std::sync::Mutex<std::collections::HashMap<String, crate::stats::MessageCounts>>,
    /// When the broker started.
    pub started: std::time::Instant,
    /// Message and byte rates, sampled by the management API.
    pub rates: crate::stats::Rates,
    /// Connections and channels opened and closed.
    pub churn: crate::stats::Churn,
    /// This node's member of the cluster's metadata group, when clustered.
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// When clustered: what every vhost tells of its quorum queues (they are replicated).
    pub replication: std::sync::OnceLock<Arc<dyn crate::vhost::Replication>>,
    /// Dynamic shovels, by (vhost, name) (run by `crate::shovel`).
    pub shovels: DashMap<(String, String), Arc<crate::stats::Shovel>>,
    /// The addresses the broker listens on, by protocol (`amqp`, `amqp/ssl`, `http`, ...).
    pub listeners: std::sync::Mutex<Vec<(String, SocketAddr)>>,
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
    /// What the management API shows of it and never changes.
    pub details: Arc<ConnDetails>,
    /// Its output backlog (bytes written so far, for `send_oct`).
    pub backlog: Arc<crate::queue::consumer::Backlog>,
}

/// An open connection's fixed facts, as RabbitMQ's management API names them.
#[derive(Debug, Clone)]
pub struct ConnDetails {
    /// RabbitMQ's name: `peer_host:peer_port -> host:port`.
    pub name: String,
    /// The broker's end.
    pub local: SocketAddr,
    /// The client's `start-ok` properties.
    pub client_properties: amq_protocol::types::FieldTable,
    /// Milliseconds since the Unix epoch when it opened.
    pub connected_at: u64,
    /// The SASL mechanism used.
    pub auth_mechanism: String,
    /// Over TLS.
    pub tls: bool,
    /// Negotiated frame_max.
    pub frame_max: u32,
    /// Negotiated channel_max.
    pub channel_max: u16,
    /// Negotiated heartbeat in seconds.
    pub heartbeat: u16,
}

impl ConnInfo {
    /// Ask the connection for its channels and counters (`None` if it closed meanwhile or does
    /// not answer within a second).
    pub async fn inspect(
        events: &tokio::sync::mpsc::UnboundedSender<crate::queue::consumer::ConnEvent>,
    ) -> Option<crate::stats::ConnSnapshot> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        events
            .send(crate::queue::consumer::ConnEvent::Inspect(tx))
            .ok()?;
        tokio::time::timeout(std::time::Duration::from_secs(1), rx)
            .await
            .ok()?
            .ok()
    }
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
    pub(crate) fn set_alarm(&self, set: impl Fn(&mut Alarms) -> &mut bool, on: bool) -> bool {
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

    /// Add a closing connection's counts to its vhost's totals.
    pub fn retire_counts(&self, vhost: &str, counts: crate::stats::MessageCounts) {
        let mut r = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        *r.entry(vhost.to_string()).or_default() += counts;
    }

    /// A listener is up (health checks and `listeners` in the overview).
    pub fn add_listener(&self, protocol: &str, addr: SocketAddr) {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((protocol.to_string(), addr));
    }

    /// Apply the stored policies of `vhost` (all vhosts: `None`) to their queues and
    /// exchanges: after a policy changes, a definitions import, a vhost's creation, at boot.
    pub fn apply_policies(&self, vhost: Option<&str>) {
        let data = self.auth.snapshot();
        let vhosts: Vec<Arc<VHost>> = match vhost {
            Some(name) => self.vhost(name).into_iter().collect(),
            None => self.vhosts.iter().map(|v| v.value().clone()).collect(),
        };
        for v in vhosts {
            v.set_policies(crate::auth::policy::for_vhost(&data, &v.name));
        }
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
        if let Some(r) = self.replication.get() {
            let _ = v.replication.set(r.clone());
        }
        self.vhosts.insert(name.to_string(), v);
        self.apply_policies(Some(name));
        Ok(())
    }

    /// Delete a vhost's contents: its connections are closed (RabbitMQ's text over HTTP "vhost 'v' is
    /// deleted"), its queues deleted (consumers elsewhere are cancelled), its files removed.
    pub async fn delete_vhost(self: &Arc<Self>, name: &str) {
        self.delete_vhost_closing(name, &format!("vhost '{name}' is deleted"))
            .await
    }

    /// [`BrokerState::delete_vhost`], closing its connections with `text`.
    pub(crate) async fn delete_vhost_closing(self: &Arc<Self>, name: &str, text: &str) {
        let _g = self.vhost_lifecycle.lock().await;
        let Some((_, v)) = self.vhosts.remove(name) else {
            return;
        };
        self.force_close(|c| c.vhost == name, text);
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

pub(crate) fn open_vhost(config: &Config, name: &str) -> io::Result<Arc<VHost>> {
    Ok(match config.storage.mode {
        StorageMode::Memory => VHost::new(name),
        StorageMode::Disk => {
            let started = std::time::Instant::now();
            let (v, n) = VHost::open(name, &config.data_dir, &config.storage)?;
            info!(vhost = %name, messages = n, elapsed = ?started.elapsed(), "recovered vhost");
            v
        }
    })
}

impl BrokerState {
    /// The state of a broker starting with `config`, these vhosts and this auth backend.
    pub fn new(
        config: Config,
        vhosts: DashMap<String, Arc<VHost>>,
        auth: crate::auth::Auth,
    ) -> BrokerState {
        let max_handshakes = config.limits.max_handshakes as usize;
        BrokerState {
            config: Arc::new(config),
            vhosts,
            shutdown: CancellationToken::new(),
            alarms: tokio::sync::watch::Sender::new(Alarms::default()),
            disk_free: AtomicU64::new(u64::MAX),
            next_connection_id: AtomicU64::new(0),
            open_connections: AtomicU64::new(0),
            buffered: AtomicU64::new(0),
            handshakes: Arc::new(tokio::sync::Semaphore::new(max_handshakes)),
            login_failures: Default::default(),
            delayed_refusals: Arc::new(tokio::sync::Semaphore::new(
                crate::auth::admission::MAX_DELAYED_REFUSALS,
            )),
            auth,
            registry: DashMap::new(),
            vhost_lifecycle: tokio::sync::Mutex::new(()),
            retired: Default::default(),
            started: std::time::Instant::now(),
            rates: Default::default(),
            churn: Default::default(),
            shovels: DashMap::new(),
            cluster: Default::default(),
            replication: Default::default(),
            listeners: Default::default(),
        }
    }
}

/// An address as RabbitMQ writes it in connection names: `host:port`, IPv4-mapped IPv6
/// addresses as IPv4.
pub fn host_port(a: SocketAddr) -> String {
    format!("{}:{}", a.ip().to_canonical(), a.port())
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

/// Resident memory of the process (`/proc/self/statm`), 0 if unknown.
pub fn rss_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

/// File descriptors open (`/proc/self/fd`) and the limit (`RLIMIT_NOFILE`).
pub fn file_descriptors() -> (u64, u64) {
    let used = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    // SAFETY: a zeroed rlimit that getrlimit fills in.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    let total = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        0
    };
    (used, total)
}

/// Bytes allocated on the heap by jemalloc (0 if its statistics cannot be read, or built
/// without it).
pub fn heap_allocated() -> u64 {
    #[cfg(feature = "jemalloc")]
    {
        use tikv_jemalloc_ctl::{epoch, stats};
        if epoch::advance().is_err() {
            return 0;
        }
        stats::allocated::read().map_or(0, |n| n as u64)
    }
    #[cfg(not(feature = "jemalloc"))]
    0
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
