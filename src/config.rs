//! Broker configuration: `broker.toml` (embedded default, or `--config PATH`), then single
//! settings overridden by `WARREN_*` environment variables and command-line flags (see `main.rs`).
//!
//! Pure data and validation; no I/O beyond reading the file. Unknown keys and bad values fail at
//! start with a message naming the key.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::PathBuf;

/// The embedded default configuration (the top-level `broker.toml`).
pub const DEFAULT_TOML: &str = include_str!("../broker.toml");

/// Everything the broker reads at start.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The AMQP listener.
    pub amqp: Listener,
    /// Protocol limits offered to clients in `connection.tune`.
    pub limits: Limits,
    /// Virtual hosts that exist at start.
    pub vhosts: Vec<String>,
    /// The vhost clients get when they ask for none (RabbitMQ's `default_vhost`).
    pub default_vhost: String,
    /// Users created on the first start (an empty data directory), with their passwords,
    /// tags and vhosts. Later, users change through the management API and definitions.
    pub users: Vec<User>,
    /// Users that may connect from loopback addresses only (RabbitMQ's `loopback_users`).
    pub loopback_users: Vec<String>,
    /// Where durable state lives.
    pub data_dir: PathBuf,
    /// `tracing` filter, e.g. `info` or `warren=debug`.
    pub log_level: String,
    /// Name reported as `cluster_name` in `connection.start`.
    pub cluster_name: String,
    /// Seconds a client has to complete the handshake (RabbitMQ's `handshake_timeout`).
    pub handshake_timeout: u64,
    /// Connections served at once (RabbitMQ's `connection_max`; 0: no limit). Past it the
    /// broker stops accepting until a connection closes, as RabbitMQ does.
    pub connection_max: u32,
    /// Milliseconds a delivery may stay unacknowledged before its channel is closed with 406
    /// and its messages requeued (RabbitMQ's `consumer_timeout`, default 30 minutes; 0: never).
    /// Queues (`x-consumer-timeout`) and consumers (the same `basic.consume` argument) may set
    /// their own.
    pub consumer_timeout: u64,
    /// Durability.
    pub storage: Storage,
    /// The memory alarm.
    pub memory: Memory,
    /// The disk alarm.
    pub disk: Disk,
    /// The management HTTP API.
    pub management: Management,
    /// The AMQPS (AMQP over TLS) listener (RabbitMQ's `listeners.ssl.default`).
    pub amqps: TlsListener,
    /// Certificates for AMQPS and HTTPS (RabbitMQ's `ssl_options`).
    pub tls: Tls,
    /// The Prometheus endpoint (RabbitMQ's `rabbitmq_prometheus`).
    pub prometheus: Prometheus,
    /// A definitions file (RabbitMQ's JSON export) imported at every start, after the
    /// configured users and vhosts (RabbitMQ's `load_definitions`; also `--definitions`).
    pub load_definitions: Option<PathBuf>,
    /// Clustering (docs/clustering.md): the metadata Raft group.
    pub cluster: Cluster,
    /// Test-environment features (never on by default).
    pub testing: Testing,
}

/// Clustering: this node's member of the metadata Raft group (docs/clustering.md). The
/// cluster's name is `cluster_name`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// Join a cluster (off by default: a single node).
    pub enabled: bool,
    /// This node's name; one of the seeds.
    pub node: String,
    /// Address and port of the inter-node listener (RabbitMQ's distribution port, 25672).
    pub listen: String,
    /// Every member as `name@host:port` (RabbitMQ's `cluster_formation.classic_config.nodes`).
    pub seeds: Vec<String>,
    /// The secret nodes prove to each other (RabbitMQ's Erlang cookie); required when
    /// enabled. Also `WARREN_CLUSTER_SECRET`.
    pub secret: String,
    /// TLS between nodes with the `[tls]` certificate, verified against `tls.ca_file` both
    /// ways (RabbitMQ's inter-node TLS).
    pub tls: bool,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            enabled: false,
            node: String::new(),
            listen: "127.0.0.1:25672".into(),
            seeds: Vec::new(),
            secret: String::new(),
            tls: false,
        }
    }
}

/// Test-environment features.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Testing {
    /// `"real"` (default) or `"manual"`: the broker's time for message TTL, `x-expires`,
    /// delayed messages, consumer timeouts and `x-death` times stands still until advanced
    /// through `POST /api/warren/clock` (also `--test-clock`).
    pub clock: ClockMode,
}

/// The broker's clock.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClockMode {
    /// Real time.
    #[default]
    Real,
    /// Stands still until advanced (tests only).
    Manual,
}

/// The Prometheus metrics endpoint (`/metrics`, `/metrics/per-object`, `/metrics/detailed`),
/// with RabbitMQ's metric names so its Grafana dashboards work.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Prometheus {
    /// Serve it (off by default, as the plugin is in RabbitMQ).
    pub enabled: bool,
    /// Address to bind.
    pub bind: String,
    /// Port (RabbitMQ's 15692; 0 for any free port).
    pub port: u16,
    /// Serve per-object metrics on `/metrics` too (RabbitMQ's
    /// `prometheus.return_per_object_metrics`).
    pub return_per_object_metrics: bool,
}

impl Default for Prometheus {
    fn default() -> Self {
        Prometheus {
            enabled: false,
            bind: "127.0.0.1".into(),
            port: 15692,
            return_per_object_metrics: false,
        }
    }
}

/// The AMQPS listener.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsListener {
    /// Listen for AMQP over TLS (needs `tls.cert_file` and `tls.key_file`).
    pub enabled: bool,
    /// Address to bind.
    pub bind: String,
    /// Port (RabbitMQ's 5671; 0 for any free port).
    pub port: u16,
}

impl Default for TlsListener {
    fn default() -> Self {
        TlsListener {
            enabled: false,
            bind: "0.0.0.0".into(),
            port: 5671,
        }
    }
}

/// TLS certificates and client verification (RabbitMQ's `ssl_options`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// The server's certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates are verified against.
    pub ca_file: Option<PathBuf>,
    /// Ask clients for a certificate and verify it against `ca_file` (RabbitMQ's
    /// `verify = verify_peer`). A client that presents one may log in with EXTERNAL.
    pub verify_peer: bool,
    /// With `verify_peer`: refuse clients without a certificate.
    pub fail_if_no_peer_cert: bool,
}

/// The management HTTP API (RabbitMQ's `rabbitmq_management` JSON, a subset).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Management {
    /// Serve it (off by default, as the plugin is in RabbitMQ).
    pub enabled: bool,
    /// Address to bind.
    pub bind: String,
    /// Port (RabbitMQ's 15672; 0 for any free port).
    pub port: u16,
    /// Serve HTTPS with the `[tls]` certificate instead of HTTP.
    pub tls: bool,
    /// How often message rates are sampled, in milliseconds (RabbitMQ's
    /// `collect_statistics_interval`).
    pub stats_interval_ms: u64,
    /// Serve the web UI's files from this directory instead of the copy built into the binary
    /// (for working on the UI without rebuilding the broker).
    pub ui_dir: Option<std::path::PathBuf>,
}

impl Default for Management {
    fn default() -> Self {
        Management {
            enabled: false,
            bind: "127.0.0.1".into(),
            port: 15672,
            tls: false,
            stats_interval_ms: 5000,
            ui_dir: None,
        }
    }
}

/// The memory alarm (RabbitMQ's `vm_memory_high_watermark`): while the memory held by queued
/// and unacknowledged messages is above the watermark, connections that publish are blocked.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Memory {
    /// Watermark as a fraction of the machine's physical memory (RabbitMQ's default 0.4).
    pub high_watermark: f64,
    /// Absolute watermark in bytes; when set (> 0) it replaces `high_watermark`.
    pub high_watermark_bytes: u64,
}

impl Default for Memory {
    fn default() -> Self {
        Memory {
            high_watermark: 0.4,
            high_watermark_bytes: 0,
        }
    }
}

impl Memory {
    /// The watermark in bytes (0: no alarm, physical memory unknown).
    pub fn limit(&self) -> u64 {
        if self.high_watermark_bytes > 0 {
            return self.high_watermark_bytes;
        }
        (physical_memory() as f64 * self.high_watermark) as u64
    }
}

/// The disk alarm (RabbitMQ's `disk_free_limit`): while the filesystem holding `data_dir` has
/// less free space than this, every connection that publishes is blocked until it clears.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Disk {
    /// Free bytes below which the alarm is raised (RabbitMQ's `disk_free_limit.absolute`,
    /// default 50 MB; 0: no alarm).
    pub free_limit: u64,
    /// When above 0, a multiple of physical memory instead (`disk_free_limit.relative`).
    pub free_limit_relative: f64,
    /// How often free space is checked, in milliseconds.
    pub check_interval_ms: u64,
}

impl Default for Disk {
    fn default() -> Self {
        Disk {
            free_limit: 50_000_000,
            free_limit_relative: 0.0,
            check_interval_ms: 1000,
        }
    }
}

impl Disk {
    /// The limit in bytes (0: no alarm).
    pub fn limit(&self) -> u64 {
        if self.free_limit_relative > 0.0 {
            return (physical_memory() as f64 * self.free_limit_relative) as u64;
        }
        self.free_limit
    }
}

/// Physical memory in bytes (`MemTotal` of /proc/meminfo; 0 if unknown).
pub fn physical_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// When a confirm may be sent for a persistent message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// After `fdatasync` (group commit).
    #[default]
    Confirm,
    /// Sync every `sync_interval_ms`; confirm at once.
    Interval,
    /// Never sync explicitly (throw-away brokers).
    Never,
}

/// The default size of a message log segment (64 MiB).
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Where durable state goes.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageMode {
    /// Durable definitions and persistent messages on disk under `data_dir`.
    #[default]
    Disk,
    /// Nothing touches disk (test environments).
    Memory,
}

/// Durability settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// `disk` or `memory`.
    pub mode: StorageMode,
    /// When persistent messages are confirmed: `confirm` (after fdatasync, group commit),
    /// `interval` (sync every `sync_interval_ms`, confirm at once), `never`.
    pub sync: SyncPolicy,
    /// Sync period for `sync = "interval"`.
    pub sync_interval_ms: u64,
    /// Memory (message bodies and properties, plus 256 bytes each) a durable queue keeps for
    /// its persistent messages; past it they are paged out to the message log and read back
    /// when delivered.
    pub queue_memory_bytes: u64,
    /// Size of a message log segment file (a new one is started past it); disk space comes
    /// back a segment at a time.
    pub segment_bytes: u64,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            mode: StorageMode::Disk,
            sync: SyncPolicy::Confirm,
            sync_interval_ms: 200,
            queue_memory_bytes: 8 * 1024 * 1024,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// A TCP listener.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Listener {
    /// Address to bind (an IP address).
    pub bind: String,
    /// Port; 0 picks a free one (tests).
    pub port: u16,
}

/// Protocol limits.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest frame in bytes (RabbitMQ default 131072; at least 4096).
    pub frame_max: u32,
    /// Highest channel number a client may open (RabbitMQ default 2047).
    pub channel_max: u16,
    /// Heartbeat interval offered, in seconds (0 disables).
    pub heartbeat: u16,
    /// Largest message body accepted, in bytes (RabbitMQ 4 default 16 MiB).
    pub max_message_size: u64,
    /// Handshakes (accepted sockets not yet logged in) in progress at once; past it new
    /// sockets are closed at once (Warren's own bound; RabbitMQ has none).
    pub max_handshakes: u32,
}

/// A user that may log in.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Password in plain text (hashed at load; never stored). Leave it out and give
    /// `password_hash` instead to keep the password out of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A hash as RabbitMQ exports it (base64 of salt and digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// The digest of `password_hash` (`rabbit_password_hashing_sha256`, `_sha512`, `_md5`).
    #[serde(default = "default_hashing")]
    pub hashing_algorithm: String,
    /// Tags (`administrator`, `monitoring`, `policymaker`, `management`, ...).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Vhosts the user may open; `"*"` means all.
    #[serde(default = "all_vhosts")]
    pub vhosts: Vec<String>,
}

impl User {
    /// A user with a plain password, no tags, full permissions in `vhosts` (`"*"`: all).
    pub fn with_password(name: &str, password: &str, vhosts: &[&str]) -> User {
        User {
            name: name.into(),
            password: Some(password.into()),
            password_hash: None,
            hashing_algorithm: default_hashing(),
            tags: Vec::new(),
            vhosts: vhosts.iter().map(|v| v.to_string()).collect(),
        }
    }
}

fn default_hashing() -> String {
    "rabbit_password_hashing_sha256".into()
}

fn all_vhosts() -> Vec<String> {
    vec!["*".into()]
}

impl Default for Listener {
    fn default() -> Self {
        Listener {
            bind: "0.0.0.0".into(),
            port: 5672,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_max: 131072,
            channel_max: 2047,
            heartbeat: 60,
            max_message_size: 16 * 1024 * 1024,
            max_handshakes: 4096,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            amqp: Listener::default(),
            limits: Limits::default(),
            vhosts: vec!["/".into()],
            default_vhost: "/".into(),
            users: vec![User {
                name: "guest".into(),
                password: Some("guest".into()),
                password_hash: None,
                hashing_algorithm: default_hashing(),
                tags: vec!["administrator".into()],
                vhosts: all_vhosts(),
            }],
            loopback_users: vec!["guest".into()],
            data_dir: PathBuf::from("data"),
            log_level: "info".into(),
            cluster_name: "warren@localhost".into(),
            handshake_timeout: 10,
            consumer_timeout: 1_800_000,
            connection_max: 0,
            storage: Storage::default(),
            memory: Memory::default(),
            disk: Disk::default(),
            management: Management::default(),
            amqps: TlsListener::default(),
            tls: Tls::default(),
            prometheus: Prometheus::default(),
            load_definitions: None,
            cluster: Cluster::default(),
            testing: Testing::default(),
        }
    }
}

/// RabbitMQ's hard ceiling on message size (`?MAX_MSG_SIZE`, 512 MiB).
pub const MAX_MESSAGE_SIZE_CEILING: u64 = 512 * 1024 * 1024;

impl Config {
    /// Parse a TOML document; unknown keys and bad values are errors naming the key.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// The embedded default configuration.
    pub fn embedded() -> Config {
        Config::from_toml(DEFAULT_TOML).expect("the embedded broker.toml is valid")
    }

    /// A configuration for tests: loopback, an ephemeral port, guest allowed.
    pub fn for_tests() -> Config {
        let mut c = Config::default();
        c.amqp.bind = "127.0.0.1".into();
        c.amqp.port = 0;
        c.storage.mode = StorageMode::Memory;
        c
    }

    /// Check values serde cannot check; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.cluster.enabled {
            let c = &self.cluster;
            let seeds = c
                .seeds
                .iter()
                .map(|s| crate::cluster::parse_seed(s))
                .collect::<Result<Vec<_>, _>>()?;
            if !seeds.iter().any(|m| m.name == c.node) {
                return Err(format!(
                    "cluster.node: '{}' is not among cluster.seeds",
                    c.node
                ));
            }
            if c.secret.is_empty() {
                return Err("cluster.secret: required when cluster.enabled".into());
            }
            if c.listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(format!("cluster.listen: '{}' is not host:port", c.listen));
            }
        }
        if self.amqp.bind.parse::<IpAddr>().is_err() {
            return Err(format!(
                "amqp.bind: '{}' is not an IP address",
                self.amqp.bind
            ));
        }
        if self.limits.frame_max != 0 && self.limits.frame_max < 4096 {
            return Err(format!(
                "limits.frame_max: {} is below the minimum of 4096",
                self.limits.frame_max
            ));
        }
        if self.limits.max_message_size == 0
            || self.limits.max_message_size > MAX_MESSAGE_SIZE_CEILING
        {
            return Err(format!(
                "limits.max_message_size: {} must be between 1 and {MAX_MESSAGE_SIZE_CEILING}",
                self.limits.max_message_size
            ));
        }
        if !(64 * 1024..=1 << 30).contains(&self.storage.segment_bytes) {
            return Err(format!(
                "storage.segment_bytes: {} must be between 65536 and 1073741824",
                self.storage.segment_bytes
            ));
        }
        if !(self.memory.high_watermark > 0.0 && self.memory.high_watermark <= 1.0) {
            return Err(format!(
                "memory.high_watermark: {} must be above 0 and at most 1",
                self.memory.high_watermark
            ));
        }
        if self.management.bind.parse::<IpAddr>().is_err() {
            return Err(format!(
                "management.bind: '{}' is not an IP address",
                self.management.bind
            ));
        }
        if self.amqps.bind.parse::<IpAddr>().is_err() {
            return Err(format!(
                "amqps.bind: '{}' is not an IP address",
                self.amqps.bind
            ));
        }
        if self.prometheus.bind.parse::<IpAddr>().is_err() {
            return Err(format!(
                "prometheus.bind: '{}' is not an IP address",
                self.prometheus.bind
            ));
        }
        let tls_used = self.amqps.enabled || (self.management.enabled && self.management.tls);
        if tls_used && (self.tls.cert_file.is_none() || self.tls.key_file.is_none()) {
            return Err(
                "tls.cert_file and tls.key_file are required by amqps.enabled or management.tls"
                    .into(),
            );
        }
        if self.tls.verify_peer && self.tls.ca_file.is_none() {
            return Err("tls.ca_file is required by tls.verify_peer".into());
        }
        if self.vhosts.is_empty() {
            return Err("vhosts: at least one vhost is required".into());
        }
        if !self.vhosts.contains(&self.default_vhost) {
            return Err(format!(
                "default_vhost: '{}' is not listed in vhosts",
                self.default_vhost
            ));
        }
        for u in &self.users {
            if u.name.is_empty() {
                return Err("users.name: must not be empty".into());
            }
            if u.password.is_some() && u.password_hash.is_some() {
                return Err(format!(
                    "users: '{}' has both password and password_hash",
                    u.name
                ));
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return Err(format!(
                "log_level: '{}' is not a valid filter",
                self.log_level
            ));
        }
        Ok(())
    }

    /// Whether `user` may only connect from a loopback address.
    pub fn loopback_only(&self, user: &str) -> bool {
        self.loopback_users.iter().any(|u| u == user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_the_documented_default() {
        assert_eq!(Config::embedded(), Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml("[limits]\nframe_maxx = 5\n").unwrap_err();
        assert!(e.contains("frame_maxx"), "{e}");
    }

    #[test]
    fn bad_value_is_named() {
        let e = Config::from_toml("[amqp]\nport = \"x\"\n").unwrap_err();
        assert!(e.contains("port"), "{e}");
        let e = Config::from_toml("[amqp]\nport = 70000\n").unwrap_err();
        assert!(e.contains("port"), "{e}");
        let e = Config::from_toml("[limits]\nframe_max = 100\n").unwrap_err();
        assert!(e.contains("limits.frame_max"), "{e}");
        let e = Config::from_toml("[amqp]\nbind = \"nowhere\"\n").unwrap_err();
        assert!(e.contains("amqp.bind"), "{e}");
        let e = Config::from_toml("[storage]\nsegment_bytes = 100\n").unwrap_err();
        assert!(e.contains("storage.segment_bytes"), "{e}");
    }

    #[test]
    fn partial_files_take_defaults() {
        let c = Config::from_toml("loopback_users = []\n").unwrap();
        assert!(c.loopback_users.is_empty());
        assert_eq!(c.limits, Limits::default());
    }
}
