//! RabbitMQ's `rabbitmq_prometheus` endpoint: `/metrics` (aggregated), `/metrics/per-object`
//! and `/metrics/detailed?family=...&vhost=...`, in the Prometheus text format 0.0.4, with
//! RabbitMQ 3.10's metric names, types, labels and help texts, so its Grafana dashboards and
//! alerts work unchanged. Plain HTTP without authentication, as in RabbitMQ.
//!
//! Every value is gathered at scrape time (queues and vhosts read directly, open connections
//! asked for their channels' counters concurrently) into a fresh `prometheus-client` registry
//! holding one collector, which encodes it. Metrics RabbitMQ has and Warren cannot provide
//! (Erlang VM internals, Raft, Mnesia, file I/O, ...) are left out; `docs/prometheus.md` lists
//! them. Only `broker` depends on this module.

use crate::queue::dead_letter::Reason;
use crate::state::BrokerState;
use crate::stats::{ChannelInfo, MessageCounts};
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// RabbitMQ's content type (3.10.8, recorded).
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// The RabbitMQ version Warren is compatible with (`rabbitmq_build_info`).
const RABBITMQ_VERSION: &str = "3.10.8";
/// The version of the `prometheus-client` crate that encodes the text (RabbitMQ reports its
/// Erlang client's version in `prometheus_client_version`).
const CLIENT_VERSION: &str = "0.26.0";

/// The `/metrics/detailed` families RabbitMQ 3.10.8 accepts (`family=`; others are ignored);
/// those Warren has no data for (`node_persister_metrics`, `ra_metrics`, `auth_attempt_*`,
/// `channel_process_metrics`) yield nothing.
const DETAILED_FAMILIES: &[&str] = &[
    "connection_churn_metrics",
    "node_coarse_metrics",
    "node_metrics",
    "node_persister_metrics",
    "ra_metrics",
    "auth_attempt_metrics",
    "auth_attempt_detailed_metrics",
    "queue_coarse_metrics",
    "queue_consumer_count",
    "queue_metrics",
    "channel_metrics",
    "channel_exchange_metrics",
    "channel_process_metrics",
    "channel_queue_metrics",
    "connection_coarse_metrics",
    "connection_metrics",
    "channel_queue_exchange_metrics",
    "vhost_status",
    "exchange_bindings",
    "exchange_names",
];

/// What the endpoint's handlers share.
struct App {
    state: Arc<BrokerState>,
    /// The global message totals served last: served totals never go down, although a
    /// connection that closes or does not answer during a scrape is briefly missing from them.
    served: std::sync::Mutex<MessageCounts>,
}

/// The endpoint's routes; any other path is 404.
fn router(state: Arc<BrokerState>) -> Router {
    let app = Arc::new(App {
        state,
        served: Default::default(),
    });
    Router::new()
        .route("/metrics", get(metrics))
        .route("/metrics/per-object", get(per_object))
        .route("/metrics/detailed", get(detailed))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(app)
}

/// Serve the endpoint on `listener` until the broker shuts down.
pub(crate) async fn serve(listener: tokio::net::TcpListener, state: Arc<BrokerState>) {
    let shutdown = state.shutdown.clone();
    if let Err(e) = axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "Prometheus endpoint stopped");
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let per_object = app.state.config.prometheus.return_per_object_metrics;
    scrape(
        &app,
        Scope::Core {
            per_object,
            default: true,
        },
    )
    .await
}

async fn per_object(State(app): State<Arc<App>>) -> Response {
    scrape(
        &app,
        Scope::Core {
            per_object: true,
            default: false,
        },
    )
    .await
}

/// `family` and `vhost` may each be given more than once (`?family=a&family=b`).
async fn detailed(
    State(app): State<Arc<App>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let families = params
        .iter()
        .filter(|(k, v)| k == "family" && DETAILED_FAMILIES.contains(&v.as_str()))
        .map(|(_, v)| v.clone())
        .collect();
    let vhosts: HashSet<String> = params
        .iter()
        .filter(|(k, _)| k == "vhost")
        .map(|(_, v)| v.clone())
        .collect();
    let vhosts = (!vhosts.is_empty()).then_some(vhosts);
    scrape(&app, Scope::Detailed { families, vhosts }).await
}

async fn scrape(app: &App, scope: Scope) -> Response {
    let g = gather(app).await;
    let text = render(&app.state, &g, &scope);
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// Which metrics a scrape returns.
enum Scope {
    /// `/metrics` (`default`; aggregated unless `per_object`) and `/metrics/per-object`
    /// (which has no alarms and no `process_start_time_seconds`, as in RabbitMQ).
    Core { per_object: bool, default: bool },
    /// `/metrics/detailed`: the requested families only, always per object; queue families
    /// restricted to `vhosts` when given.
    Detailed {
        families: HashSet<String>,
        vhosts: Option<HashSet<String>>,
    },
}

/// A queue as a scrape sees it.
struct QueueRow {
    vhost: String,
    name: String,
    ready: u64,
    unacked: u64,
    consumers: u64,
    memory: u64,
    published: u64,
}

/// An open connection as a scrape sees it (`channels` empty if it did not answer).
struct ConnRow {
    id: u64,
    channel_count: u64,
    recv_oct: u64,
    recv_cnt: u64,
    sent: u64,
    writes: u64,
    channels: Vec<ChannelInfo>,
}

/// Everything a scrape reports, read once.
struct Gathered {
    queues: Vec<QueueRow>,
    conns: Vec<ConnRow>,
    /// Message totals since the broker started (closed connections included).
    global: MessageCounts,
}

async fn gather(app: &App) -> Gathered {
    let state = &app.state;
    let mut queues = Vec::new();
    for v in state.vhosts.iter() {
        for q in v.queues.iter() {
            let (ready, unacked, consumers, memory) = q.stats();
            queues.push(QueueRow {
                vhost: q.vhost.to_string(),
                name: q.name.to_string(),
                ready: ready as u64,
                unacked: unacked as u64,
                consumers: consumers as u64,
                memory,
                published: q.counts().publish,
            });
        }
    }
    queues.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    // Closed connections' counts first: a connection closing from here on is missing from
    // both (a dip the clamp below hides), never counted twice.
    let mut global = MessageCounts::default();
    for c in state
        .retired
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
    {
        global += *c;
    }
    let open: Vec<_> = state
        .registry
        .iter()
        .map(|c| {
            (
                *c.key(),
                c.events.clone(),
                c.channels.load(Ordering::Relaxed) as u64,
                c.backlog.clone(),
            )
        })
        .collect();
    let mut asks = tokio::task::JoinSet::new();
    for (id, events, channel_count, backlog) in open {
        asks.spawn(async move {
            let snap = crate::state::ConnInfo::inspect(&events).await;
            (id, channel_count, backlog, snap)
        });
    }
    let mut conns = Vec::new();
    while let Some(r) = asks.join_next().await {
        let Ok((id, channel_count, backlog, snap)) = r else {
            continue;
        };
        let snap = snap.unwrap_or_default();
        global += snap.total();
        conns.push(ConnRow {
            id,
            channel_count,
            recv_oct: snap.recv_oct,
            recv_cnt: snap.recv_cnt,
            sent: backlog.sent.load(Ordering::Relaxed),
            writes: backlog.writes.load(Ordering::Relaxed),
            channels: snap.channels,
        });
    }
    conns.sort_by_key(|c| c.id);
    let global = {
        let mut served = app.served.lock().unwrap_or_else(|e| e.into_inner());
        *served = served.max(&global);
        *served
    };
    Gathered {
        queues,
        conns,
        global,
    }
}

/// A metric's type as RabbitMQ declares it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Untyped,
}

/// A sample's value.
#[derive(Clone, Copy, Debug)]
enum Value {
    Int(u64),
    Float(f64),
}

impl Value {
    fn add(self, o: Value) -> Value {
        match (self, o) {
            (Value::Int(a), Value::Int(b)) => Value::Int(a.saturating_add(b)),
            (a, b) => Value::Float(a.as_f64() + b.as_f64()),
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Value::Int(n) => n as f64,
            Value::Float(x) => x,
        }
    }
}

type Labels = Vec<(&'static str, String)>;

/// One metric family, encoded by [`Families`].
#[derive(Debug)]
struct Family {
    /// The full name (counters with their `_total`).
    name: String,
    help: &'static str,
    kind: Kind,
    samples: Vec<(Labels, Value)>,
}

/// The families of one scrape, in order: what the registry's collector encodes.
#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            // The encoder appends `_total` to counters itself.
            let (name, ty) = match f.kind {
                Kind::Counter => (
                    f.name.strip_suffix("_total").unwrap_or(&f.name),
                    MetricType::Counter,
                ),
                Kind::Gauge => (f.name.as_str(), MetricType::Gauge),
                Kind::Untyped => (f.name.as_str(), MetricType::Unknown),
            };
            let mut metric = encoder.encode_descriptor(name, f.help, None, ty)?;
            for (labels, value) in &f.samples {
                let mut m = metric.encode_family(labels)?;
                match (f.kind, value) {
                    (Kind::Counter, Value::Int(n)) => {
                        m.encode_counter::<NoLabelSet, u64, f64>(n, None)?
                    }
                    (Kind::Counter, Value::Float(x)) => {
                        m.encode_counter::<NoLabelSet, f64, f64>(x, None)?
                    }
                    (_, Value::Int(n)) => m.encode_gauge(&(*n as i64))?,
                    (_, Value::Float(x)) => m.encode_gauge(x)?,
                }
            }
        }
        Ok(())
    }
}

/// Builds the families a scope asks for.
struct Out<'a> {
    scope: &'a Scope,
    families: Vec<Family>,
}

impl Out<'_> {
    /// Whether RabbitMQ's family (group) `group` is in the scrape.
    fn wants(&self, group: &str) -> bool {
        match self.scope {
            Scope::Core { .. } => group != "queue_consumer_count",
            Scope::Detailed { families, .. } => families.contains(group),
        }
    }

    fn per_object(&self) -> bool {
        match self.scope {
            Scope::Core { per_object, .. } => *per_object,
            Scope::Detailed { .. } => true,
        }
    }

    /// The name of metric `name` (without `rabbitmq_`) of `group` in this scope.
    fn full_name(&self, group: &str, name: &str) -> String {
        match self.scope {
            Scope::Core { .. } => format!("rabbitmq_{name}"),
            Scope::Detailed { .. } => match group {
                "vhost_status" | "exchange_bindings" | "exchange_names" => {
                    format!("rabbitmq_cluster_{name}")
                }
                _ => format!("rabbitmq_detailed_{name}"),
            },
        }
    }

    /// A metric with one value per object (queue, channel, connection): per object with
    /// their labels, or aggregated into one unlabelled sum.
    fn objects(
        &mut self,
        group: &str,
        name: &str,
        kind: Kind,
        help: &'static str,
        samples: Vec<(Labels, Value)>,
    ) {
        let samples = if self.per_object() {
            samples
        } else {
            let sum = samples
                .into_iter()
                .fold(Value::Int(0), |acc, (_, v)| acc.add(v));
            vec![(Vec::new(), sum)]
        };
        self.single(group, name, kind, help, samples);
    }

    /// A metric whose samples are served as they are.
    fn single(
        &mut self,
        group: &str,
        name: &str,
        kind: Kind,
        help: &'static str,
        samples: Vec<(Labels, Value)>,
    ) {
        if !self.wants(group) {
            return;
        }
        let name = self.full_name(group, name);
        // queue_consumers is in two detailed families.
        if self.families.iter().any(|f| f.name == name) {
            return;
        }
        self.families.push(Family {
            name,
            help,
            kind,
            samples,
        });
    }

    fn node(&mut self, group: &str, name: &str, kind: Kind, help: &'static str, v: Value) {
        self.single(group, name, kind, help, vec![(Vec::new(), v)]);
    }
}

/// An open connection's label: RabbitMQ labels connections and channels with their Erlang
/// process id, `channel="<0.123.0>"`; Warren writes the connection id and the channel number
/// in that shape (channel 0 is the connection itself).
fn pid(conn: u64, channel: u16) -> String {
    format!("<0.{conn}.{channel}>")
}

/// The `rabbitmq_cluster_permanent_id` of a cluster: RabbitMQ draws it at random once; Warren
/// derives it from the cluster name, so it is as stable as the name.
fn permanent_id(cluster: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("warren-cluster:{cluster}").as_bytes());
    format!(
        "rabbitmq-cluster-id-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
    )
}

/// The text of one scrape: the families `scope` asks for, in RabbitMQ's order.
fn render(state: &BrokerState, g: &Gathered, scope: &Scope) -> String {
    let mut out = Out {
        scope,
        families: Vec::new(),
    };
    let core = matches!(scope, Scope::Core { .. });
    let uptime = state.started.elapsed();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();

    if matches!(scope, Scope::Core { default: true, .. }) {
        process_and_alarms(&mut out, state, now.saturating_sub(uptime).as_secs());
    }
    connection_churn_metrics(&mut out, state);
    // node_coarse_metrics and node_metrics (only read when asked for).
    if out.wants("node_coarse_metrics") || out.wants("node_metrics") {
        node_metrics(&mut out, state, uptime);
    }
    let queues = scoped_queues(g, scope);
    queue_metrics(&mut out, &queues);
    channel_metrics(&mut out, g);
    channel_exchange_metrics(&mut out, g);
    channel_queue_metrics(&mut out, g);
    connection_metrics(&mut out, g);
    channel_queue_exchange_metrics(&mut out, &queues);
    if core {
        totals(&mut out, g);
    }
    // vhost_status, exchange_bindings, exchange_names (detailed only).
    if !core {
        cluster_metrics(&mut out, state);
    }
    // Always: build and identity info.
    build_and_identity_info(&mut out, state);
    if core {
        global(&mut out, state, g);
    }

    let mut registry = Registry::default();
    registry.register_collector(Box::new(Families(out.families)));
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
    text
}

/// `process_start_time_seconds` (`start`, in seconds since the epoch) and the alarms.
fn process_and_alarms(out: &mut Out, state: &BrokerState, start: u64) {
    out.families.push(Family {
        name: "process_start_time_seconds".into(),
        help: "Start time of the process since unix epoch in seconds.",
        kind: Kind::Gauge,
        samples: vec![(Vec::new(), Value::Int(start))],
    });
    let alarms = *state.alarms.borrow();
    for (name, help, on) in [
        (
            "alarms_file_descriptor_limit",
            "is 1 if file descriptor limit alarm is in effect",
            false,
        ),
        (
            "alarms_free_disk_space_watermark",
            "is 1 if free disk space watermark alarm is in effect",
            alarms.disk,
        ),
        (
            "alarms_memory_used_watermark",
            "is 1 if VM memory watermark alarm is in effect",
            alarms.memory,
        ),
    ] {
        out.node("alarms", name, Kind::Untyped, help, Value::Int(on as u64));
    }
}

/// `connection_churn_metrics`: connections, channels and queues opened (declared) and closed.
fn connection_churn_metrics(out: &mut Out, state: &BrokerState) {
    let churn = |a: &std::sync::atomic::AtomicU64| Value::Int(a.load(Ordering::Relaxed));
    let c = &state.churn;
    let group = "connection_churn_metrics";
    out.node(
        group,
        "connections_opened_total",
        Kind::Counter,
        "Total number of connections opened",
        churn(&c.connection_created),
    );
    out.node(
        group,
        "connections_closed_total",
        Kind::Counter,
        "Total number of connections closed or terminated",
        churn(&c.connection_closed),
    );
    out.node(
        group,
        "channels_opened_total",
        Kind::Counter,
        "Total number of channels opened",
        churn(&c.channel_created),
    );
    out.node(
        group,
        "channels_closed_total",
        Kind::Counter,
        "Total number of channels closed",
        churn(&c.channel_closed),
    );
    let (mut declared, mut created, mut deleted) = (0, 0, 0);
    for v in state.vhosts.iter() {
        declared += v.churn.declared.load(Ordering::Relaxed);
        created += v.churn.created.load(Ordering::Relaxed);
        deleted += v.churn.deleted.load(Ordering::Relaxed);
    }
    out.node(
        group,
        "queues_declared_total",
        Kind::Counter,
        "Total number of queues declared",
        Value::Int(declared),
    );
    out.node(
        group,
        "queues_created_total",
        Kind::Counter,
        "Total number of queues created",
        Value::Int(created),
    );
    out.node(
        group,
        "queues_deleted_total",
        Kind::Counter,
        "Total number of queues deleted",
        Value::Int(deleted),
    );
}

/// `node_coarse_metrics` and `node_metrics`: file descriptors, memory, disk space and uptime.
fn node_metrics(out: &mut Out, state: &BrokerState, uptime: std::time::Duration) {
    let (fds, max_fds) = crate::state::file_descriptors();
    let group = "node_coarse_metrics";
    out.node(
        group,
        "process_open_fds",
        Kind::Gauge,
        "Open file descriptors",
        Value::Int(fds),
    );
    out.node(
        group,
        "process_resident_memory_bytes",
        Kind::Gauge,
        "Memory used in bytes",
        Value::Int(crate::state::rss_bytes()),
    );
    let free = match state.disk_free.load(Ordering::Relaxed) {
        // Not measured (no disk monitor in memory mode): read it now, on the filesystem
        // that holds (or would hold) the data directory.
        u64::MAX => {
            let dir = state
                .config
                .data_dir
                .ancestors()
                .find(|d| !d.as_os_str().is_empty() && d.exists())
                .unwrap_or(std::path::Path::new("."));
            crate::state::disk_free(dir).ok()
        }
        n => Some(n),
    };
    if let Some(free) = free {
        out.node(
            group,
            "disk_space_available_bytes",
            Kind::Gauge,
            "Disk space available in bytes",
            Value::Int(free),
        );
    }
    let group = "node_metrics";
    out.node(
        group,
        "process_max_fds",
        Kind::Gauge,
        "Open file descriptors limit",
        Value::Int(max_fds),
    );
    out.node(
        group,
        "resident_memory_limit_bytes",
        Kind::Gauge,
        "Memory high watermark in bytes",
        Value::Int(state.config.memory.limit()),
    );
    out.node(
        group,
        "disk_space_available_limit_bytes",
        Kind::Gauge,
        "Free disk space low watermark in bytes",
        Value::Int(state.config.disk.limit()),
    );
    out.node(
        group,
        "erlang_uptime_seconds",
        Kind::Gauge,
        "Node uptime",
        Value::Float(uptime.as_millis() as f64 / 1000.0),
    );
}

/// The queues a scope reports: the detailed endpoint may restrict them to some vhosts.
fn scoped_queues<'a>(g: &'a Gathered, scope: &Scope) -> Vec<&'a QueueRow> {
    match scope {
        Scope::Detailed {
            vhosts: Some(v), ..
        } => g.queues.iter().filter(|q| v.contains(&q.vhost)).collect(),
        _ => g.queues.iter().collect(),
    }
}

/// One sample per queue, labelled with its vhost and name.
fn per_queue(queues: &[&QueueRow], f: &dyn Fn(&QueueRow) -> u64) -> Vec<(Labels, Value)> {
    queues
        .iter()
        .map(|q| {
            (
                vec![("vhost", q.vhost.clone()), ("queue", q.name.clone())],
                Value::Int(f(q)),
            )
        })
        .collect()
}

/// One sample per open channel, labelled with its connection and number.
fn per_channel(g: &Gathered, f: &dyn Fn(&ChannelInfo) -> u64) -> Vec<(Labels, Value)> {
    g.conns
        .iter()
        .flat_map(|c| {
            c.channels
                .iter()
                .map(move |ch| (vec![("channel", pid(c.id, ch.number))], Value::Int(f(ch))))
        })
        .collect()
}

/// One sample per open connection, labelled with its id.
fn per_conn(g: &Gathered, f: &dyn Fn(&ConnRow) -> u64) -> Vec<(Labels, Value)> {
    g.conns
        .iter()
        .map(|c| (vec![("channel", pid(c.id, 0))], Value::Int(f(c))))
        .collect()
}

/// `queue_coarse_metrics`, `queue_consumer_count` and `queue_metrics`: depth, consumers, memory.
fn queue_metrics(out: &mut Out, queues: &[&QueueRow]) {
    let group = "queue_coarse_metrics";
    out.objects(
        group,
        "queue_messages_ready",
        Kind::Gauge,
        "Messages ready to be delivered to consumers",
        per_queue(queues, &|q| q.ready),
    );
    out.objects(
        group,
        "queue_messages_unacked",
        Kind::Gauge,
        "Messages delivered to consumers but not yet acknowledged",
        per_queue(queues, &|q| q.unacked),
    );
    out.objects(
        group,
        "queue_messages",
        Kind::Gauge,
        "Sum of ready and unacknowledged messages - total queue depth",
        per_queue(queues, &|q| q.ready + q.unacked),
    );
    for group in ["queue_consumer_count", "queue_metrics"] {
        out.objects(
            group,
            "queue_consumers",
            Kind::Gauge,
            "Consumers on a queue",
            per_queue(queues, &|q| q.consumers),
        );
    }
    out.objects(
        "queue_metrics",
        "queue_process_memory_bytes",
        Kind::Gauge,
        "Memory in bytes used by the Erlang queue process",
        per_queue(queues, &|q| q.memory),
    );
}

/// `channel_metrics`: consumers, unacked and unconfirmed messages and prefetch per channel.
fn channel_metrics(out: &mut Out, g: &Gathered) {
    let group = "channel_metrics";
    out.objects(
        group,
        "channel_consumers",
        Kind::Gauge,
        "Consumers on a channel",
        per_channel(g, &|ch| ch.consumers as u64),
    );
    out.objects(
        group,
        "channel_messages_unacked",
        Kind::Gauge,
        "Delivered but not yet acknowledged messages",
        per_channel(g, &|ch| ch.unacked as u64),
    );
    out.objects(
        group,
        "channel_messages_unconfirmed",
        Kind::Gauge,
        "Published but not yet confirmed messages",
        per_channel(g, &|ch| ch.unconfirmed as u64),
    );
    out.objects(
        group,
        "consumer_prefetch",
        Kind::Gauge,
        "Limit of unacknowledged messages for each consumer",
        per_channel(g, &|ch| ch.prefetch_count as u64),
    );
    out.objects(
        group,
        "channel_prefetch",
        Kind::Gauge,
        "Total limit of unacknowledged messages for all consumers on a channel",
        per_channel(g, &|ch| ch.global_prefetch_count as u64),
    );
}

/// `channel_exchange_metrics`: publishes, confirms and unroutable messages per channel.
fn channel_exchange_metrics(out: &mut Out, g: &Gathered) {
    let group = "channel_exchange_metrics";
    for (name, help, f) in [
        (
            "channel_messages_published_total",
            "Total number of messages published into an exchange on a channel",
            (|m: &MessageCounts| m.publish) as fn(&MessageCounts) -> u64,
        ),
        (
            "channel_messages_confirmed_total",
            "Total number of messages published into an exchange and confirmed on the channel",
            |m| m.confirm,
        ),
        (
            "channel_messages_unroutable_returned_total",
            "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
            |m| m.return_unroutable,
        ),
        (
            "channel_messages_unroutable_dropped_total",
            "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
            |m| m.drop_unroutable,
        ),
    ] {
        out.objects(
            group,
            name,
            Kind::Counter,
            help,
            per_channel(g, &|ch| f(&ch.counts)),
        );
    }
}

/// `channel_queue_metrics`: gets, deliveries, redeliveries and acks per channel.
fn channel_queue_metrics(out: &mut Out, g: &Gathered) {
    let group = "channel_queue_metrics";
    for (name, help, f) in [
        (
            "channel_get_ack_total",
            "Total number of messages fetched with basic.get in manual acknowledgement mode",
            (|m: &MessageCounts| m.get) as fn(&MessageCounts) -> u64,
        ),
        (
            "channel_get_total",
            "Total number of messages fetched with basic.get in automatic acknowledgement mode",
            |m| m.get_no_ack,
        ),
        (
            "channel_messages_delivered_ack_total",
            "Total number of messages delivered to consumers in manual acknowledgement mode",
            |m| m.deliver,
        ),
        (
            "channel_messages_delivered_total",
            "Total number of messages delivered to consumers in automatic acknowledgement mode",
            |m| m.deliver_no_ack,
        ),
        (
            "channel_messages_redelivered_total",
            "Total number of messages redelivered to consumers",
            |m| m.redeliver,
        ),
        (
            "channel_messages_acked_total",
            "Total number of messages acknowledged by consumers",
            |m| m.ack,
        ),
        (
            "channel_get_empty_total",
            "Total number of times basic.get operations fetched no message",
            |m| m.get_empty,
        ),
    ] {
        out.objects(
            group,
            name,
            Kind::Counter,
            help,
            per_channel(g, &|ch| f(&ch.counts)),
        );
    }
}

/// `connection_coarse_metrics` and `connection_metrics`: bytes, packets and channels.
fn connection_metrics(out: &mut Out, g: &Gathered) {
    let group = "connection_coarse_metrics";
    out.objects(
        group,
        "connection_incoming_bytes_total",
        Kind::Counter,
        "Total number of bytes received on a connection",
        per_conn(g, &|c| c.recv_oct),
    );
    out.objects(
        group,
        "connection_outgoing_bytes_total",
        Kind::Counter,
        "Total number of bytes sent on a connection",
        per_conn(g, &|c| c.sent),
    );
    let group = "connection_metrics";
    out.objects(
        group,
        "connection_incoming_packets_total",
        Kind::Counter,
        "Total number of packets received on a connection",
        per_conn(g, &|c| c.recv_cnt),
    );
    out.objects(
        group,
        "connection_outgoing_packets_total",
        Kind::Counter,
        "Total number of packets sent on a connection",
        per_conn(g, &|c| c.writes),
    );
    out.objects(
        group,
        "connection_channels",
        Kind::Gauge,
        "Channels on a connection",
        per_conn(g, &|c| c.channel_count),
    );
}

/// `channel_queue_exchange_metrics`: messages published to each queue.
fn channel_queue_exchange_metrics(out: &mut Out, queues: &[&QueueRow]) {
    out.objects(
        "channel_queue_exchange_metrics",
        "queue_messages_published_total",
        Kind::Counter,
        "Total number of messages published to queues",
        per_queue(queues, &|q| q.published),
    );
}

/// `rabbitmq_connections`, `_channels`, `_consumers` and `_queues` (the core endpoints only).
fn totals(out: &mut Out, g: &Gathered) {
    let consumers: u64 = g.queues.iter().map(|q| q.consumers).sum();
    let channels: u64 = g.conns.iter().map(|c| c.channel_count).sum();
    for (name, help, v) in [
        (
            "connections",
            "Connections currently open",
            g.conns.len() as u64,
        ),
        ("channels", "Channels currently open", channels),
        ("consumers", "Consumers currently connected", consumers),
        ("queues", "Queues available", g.queues.len() as u64),
    ] {
        out.node("totals", name, Kind::Gauge, help, Value::Int(v));
    }
}

/// `vhost_status`, `exchange_bindings` and `exchange_names` (the detailed endpoint only).
fn cluster_metrics(out: &mut Out, state: &BrokerState) {
    let mut vhosts: Vec<_> = state.vhosts.iter().map(|v| v.clone()).collect();
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    out.single(
        "vhost_status",
        "vhost_status",
        Kind::Gauge,
        "Whether a given vhost is running",
        vhosts
            .iter()
            .map(|v| (vec![("vhost", v.name.clone())], Value::Int(1)))
            .collect(),
    );
    let mut exchanges = Vec::new();
    for v in &vhosts {
        let mut xs: Vec<_> = v
            .exchanges
            .iter()
            .filter(|x| !x.key().is_empty())
            .map(|x| x.value().clone())
            .collect();
        xs.sort_by(|a, b| a.def.name.cmp(&b.def.name));
        for x in xs {
            let labels = vec![
                ("vhost", v.name.clone()),
                ("exchange", x.def.name.clone()),
                ("type", x.def.kind.as_str().to_string()),
            ];
            exchanges.push((labels, x.binding_count() as u64));
        }
    }
    out.single(
        "exchange_bindings",
        "exchange_bindings",
        Kind::Gauge,
        "Number of bindings for an exchange. This value is cluster-wide.",
        exchanges
            .iter()
            .map(|(l, n)| (l.clone(), Value::Int(*n)))
            .collect(),
    );
    out.single(
        "exchange_names",
        "exchange_name",
        Kind::Gauge,
        "Enumerates exchanges without any additional info. This value is cluster-wide. A cheaper alternative to `exchange_bindings`",
        exchanges.into_iter().map(|(l, _)| (l, Value::Int(1))).collect(),
    );
}

/// `rabbitmq_build_info` and `rabbitmq_identity_info`, in every scrape.
fn build_and_identity_info(out: &mut Out, state: &BrokerState) {
    let cluster = state.config.cluster_name.clone();
    out.families.push(Family {
        name: "rabbitmq_build_info".into(),
        help: "RabbitMQ & Erlang/OTP version info",
        kind: Kind::Untyped,
        samples: vec![(
            vec![
                ("rabbitmq_version", RABBITMQ_VERSION.to_string()),
                ("prometheus_plugin_version", RABBITMQ_VERSION.to_string()),
                ("prometheus_client_version", CLIENT_VERSION.to_string()),
                ("erlang_version", "none".to_string()),
                ("product_name", "Warren".to_string()),
                ("product_version", env!("CARGO_PKG_VERSION").to_string()),
            ],
            Value::Int(1),
        )],
    });
    out.families.push(Family {
        name: "rabbitmq_identity_info".into(),
        help: "RabbitMQ node & cluster identity info",
        kind: Kind::Untyped,
        samples: vec![(
            vec![
                ("rabbitmq_node", cluster.clone()),
                ("rabbitmq_cluster", cluster.clone()),
                ("rabbitmq_cluster_permanent_id", permanent_id(&cluster)),
            ],
            Value::Int(1),
        )],
    });
}

/// `rabbitmq_global_*`: broker-wide totals since start, labelled by protocol (Warren speaks
/// AMQP 0-9-1 only), and the dead-lettered totals by queue type and strategy.
fn global(out: &mut Out, state: &BrokerState, g: &Gathered) {
    let proto = || vec![("protocol", "amqp091".to_string())];
    let consumers: u64 = g.queues.iter().map(|q| q.consumers).sum();
    out.single(
        "global",
        "global_consumers",
        Kind::Gauge,
        "Current number of consumers",
        vec![(proto(), Value::Int(consumers))],
    );
    let m = &g.global;
    let counters: [(&str, &'static str, u64); 14] = [
        (
            "global_messages_acknowledged_total",
            "Total number of messages acknowledged by consumers",
            m.ack,
        ),
        (
            "global_messages_confirmed_total",
            "Total number of messages confirmed to publishers",
            m.confirm,
        ),
        (
            "global_messages_delivered_consume_auto_ack_total",
            "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment",
            m.deliver_no_ack,
        ),
        (
            "global_messages_delivered_consume_manual_ack_total",
            "Total number of messages delivered to consumers using basic.consume with manual acknowledgment",
            m.deliver,
        ),
        (
            "global_messages_delivered_get_auto_ack_total",
            "Total number of messages delivered to consumers using basic.get with automatic acknowledgment",
            m.get_no_ack,
        ),
        (
            "global_messages_delivered_get_manual_ack_total",
            "Total number of messages delivered to consumers using basic.get with manual acknowledgment",
            m.get,
        ),
        (
            "global_messages_delivered_total",
            "Total number of messages delivered to consumers",
            m.deliver_get(),
        ),
        (
            "global_messages_get_empty_total",
            "Total number of times basic.get operations fetched no message",
            m.get_empty,
        ),
        (
            "global_messages_received_confirm_total",
            "Total number of messages received from publishers expecting confirmations",
            m.publish_confirm,
        ),
        (
            "global_messages_received_total",
            "Total number of messages received from publishers",
            m.publish,
        ),
        (
            "global_messages_redelivered_total",
            "Total number of messages redelivered to consumers",
            m.redeliver,
        ),
        (
            "global_messages_routed_total",
            "Total number of messages routed to queues or streams",
            m.routed,
        ),
        (
            "global_messages_unroutable_dropped_total",
            "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
            m.drop_unroutable,
        ),
        (
            "global_messages_unroutable_returned_total",
            "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
            m.return_unroutable,
        ),
    ];
    let dead = [
        (
            Reason::DeliveryLimit,
            "global_messages_dead_lettered_delivery_limit_total",
            "Total number of messages dead-lettered due to delivery-limit exceeded",
        ),
        (
            Reason::Expired,
            "global_messages_dead_lettered_expired_total",
            "Total number of messages dead-lettered due to message TTL exceeded",
        ),
        (
            Reason::Maxlen,
            "global_messages_dead_lettered_maxlen_total",
            "Total number of messages dead-lettered due to overflow drop-head or reject-publish-dlx",
        ),
        (
            Reason::Rejected,
            "global_messages_dead_lettered_rejected_total",
            "Total number of messages dead-lettered due to basic.reject or basic.nack",
        ),
    ];
    // RabbitMQ's order: alphabetical, dead-lettered after confirmed.
    for (name, help, v) in &counters[..2] {
        out.single(
            "global",
            name,
            Kind::Counter,
            help,
            vec![(proto(), Value::Int(*v))],
        );
    }
    for (reason, name, help) in dead {
        let mut samples = Vec::new();
        for quorum in [false, true] {
            // Only quorum queues have a delivery limit.
            if reason == Reason::DeliveryLimit && !quorum {
                continue;
            }
            for dlx in [true, false] {
                let n: u64 = state
                    .vhosts
                    .iter()
                    .map(|v| v.dead_lettered.get(quorum, reason, dlx))
                    .sum();
                let queue_type = if quorum {
                    "rabbit_quorum_queue"
                } else {
                    "rabbit_classic_queue"
                };
                let strategy = if dlx { "at_most_once" } else { "disabled" };
                samples.push((
                    vec![
                        ("queue_type", queue_type.to_string()),
                        ("dead_letter_strategy", strategy.to_string()),
                    ],
                    Value::Int(n),
                ));
            }
        }
        out.single("global", name, Kind::Counter, help, samples);
    }
    for (name, help, v) in &counters[2..] {
        out.single(
            "global",
            name,
            Kind::Counter,
            help,
            vec![(proto(), Value::Int(*v))],
        );
    }
    // RabbitMQ counts a publisher per channel that published; Warren counts the open
    // channels that have published at least once.
    let publishers = g
        .conns
        .iter()
        .flat_map(|c| &c.channels)
        .filter(|ch| ch.counts.publish > 0)
        .count() as u64;
    out.single(
        "global",
        "global_publishers",
        Kind::Gauge,
        "Current number of publishers",
        vec![(proto(), Value::Int(publishers))],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn families(per_object: bool) -> Vec<Family> {
        let g = Gathered {
            queues: vec![QueueRow {
                vhost: "/".into(),
                name: "q\"1".into(),
                ready: 3,
                unacked: 2,
                consumers: 1,
                memory: 100,
                published: 5,
            }],
            conns: Vec::new(),
            global: MessageCounts::default(),
        };
        let scope = Scope::Core {
            per_object,
            default: true,
        };
        let mut out = Out {
            scope: &scope,
            families: Vec::new(),
        };
        out.objects(
            "queue_coarse_metrics",
            "queue_messages_ready",
            Kind::Gauge,
            "Messages ready to be delivered to consumers",
            g.queues
                .iter()
                .map(|q| {
                    (
                        vec![("vhost", q.vhost.clone()), ("queue", q.name.clone())],
                        Value::Int(q.ready),
                    )
                })
                .collect(),
        );
        out.node(
            "connection_churn_metrics",
            "connections_opened_total",
            Kind::Counter,
            "Total number of connections opened",
            Value::Int(7),
        );
        out.families
    }

    fn encode(f: Vec<Family>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Families(f)));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn text_format_is_rabbitmqs() {
        let text = encode(families(true));
        assert_eq!(
            text,
            "# HELP rabbitmq_queue_messages_ready Messages ready to be delivered to consumers\n\
             # TYPE rabbitmq_queue_messages_ready gauge\n\
             rabbitmq_queue_messages_ready{vhost=\"/\",queue=\"q\\\"1\"} 3\n\
             # HELP rabbitmq_connections_opened_total Total number of connections opened\n\
             # TYPE rabbitmq_connections_opened_total counter\n\
             rabbitmq_connections_opened_total 7\n"
        );
        let text = encode(families(false));
        assert!(
            text.contains("\nrabbitmq_queue_messages_ready 3\n"),
            "{text}"
        );
    }

    #[test]
    fn untyped_and_float_values() {
        let text = encode(vec![
            Family {
                name: "rabbitmq_alarms_memory_used_watermark".into(),
                help: "is 1 if VM memory watermark alarm is in effect",
                kind: Kind::Untyped,
                samples: vec![(Vec::new(), Value::Int(0))],
            },
            Family {
                name: "rabbitmq_erlang_uptime_seconds".into(),
                help: "Node uptime",
                kind: Kind::Gauge,
                samples: vec![(Vec::new(), Value::Float(1.5))],
            },
        ]);
        assert!(text.contains("# TYPE rabbitmq_alarms_memory_used_watermark untyped\n"));
        assert!(
            text.contains("\nrabbitmq_erlang_uptime_seconds 1.5\n"),
            "{text}"
        );
    }

    #[test]
    fn permanent_id_is_stable() {
        let a = permanent_id("warren@localhost");
        assert_eq!(a, permanent_id("warren@localhost"));
        assert_ne!(a, permanent_id("other"));
        assert!(a.starts_with("rabbitmq-cluster-id-"));
    }
}
