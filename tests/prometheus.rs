//! The Prometheus endpoint (RabbitMQ's `rabbitmq_prometheus`): values after real traffic
//! (lapin), parsed with an independent parser (`prometheus-parse`), and the metric names and
//! types checked against those recorded from RabbitMQ 3.10.8
//! (`tests/fixtures/rabbitmq-3.10.8-prometheus-*.txt`).

mod common;

use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use prometheus_parse::{Scrape, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::{Broker, Config};

const DEADLINE: Duration = Duration::from_secs(10);

fn ss(s: &str) -> ShortString {
    s.into()
}

async fn start_prometheus() -> Broker {
    let mut cfg = Config::for_tests();
    cfg.prometheus.enabled = true;
    cfg.prometheus.port = 0;
    start_with(cfg).await
}

/// A plain HTTP/1.1 GET: status, headers (lower-case names), body.
async fn get(addr: SocketAddr, path: &str) -> (u16, BTreeMap<String, String>, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("a reply in time")
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete reply");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<BTreeMap<_, _>>();
    assert!(
        !headers.contains_key("transfer-encoding"),
        "a sized body expected"
    );
    (status, headers, body.to_string())
}

/// A scrape, parsed; every sample line must parse (the parser skips what it cannot read).
async fn scrape(b: &Broker, path: &str) -> Scrape {
    let (status, headers, body) = get(b.prometheus_addr().unwrap(), path).await;
    assert_eq!(status, 200, "{path}");
    assert_eq!(headers["content-type"], "text/plain; version=0.0.4");
    let parsed = Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    let sample_lines = body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    assert_eq!(
        parsed.samples.len(),
        sample_lines,
        "unparsed lines in\n{body}"
    );
    parsed
}

/// The value of `name` with exactly these labels.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| {
            x.metric == name
                && labels.len() == x.labels.iter().count()
                && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))
        })
        .map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => panic!("{name}: not a scalar"),
        })
}

fn val(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(s, name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

/// The `channel` labels of the samples of `name` whose value is `v`.
fn labelled(s: &Scrape, name: &str, v: f64) -> Vec<String> {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| matches!(x.value, Value::Counter(n) | Value::Gauge(n) if n == v))
        .filter_map(|x| x.labels.get("channel").map(str::to_string))
        .collect()
}

async fn publish_confirmed(ch: &Channel, q: &str, n: usize) {
    let mut pending = Vec::new();
    for i in 0..n {
        pending.push(
            ch.basic_publish(
                ss(""),
                ss(q),
                Default::default(),
                format!("{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap(),
        );
    }
    for p in pending {
        assert!(p.await.unwrap().is_ack());
    }
}

#[tokio::test]
async fn metrics_follow_traffic() {
    let b = start_prometheus().await;
    let c = lapin_connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    for q in ["ready", "work"] {
        ch.queue_declare(ss(q), Default::default(), FieldTable::default())
            .await
            .unwrap();
    }
    publish_confirmed(&ch, "ready", 5).await;
    publish_confirmed(&ch, "work", 3).await;
    // Three deliveries with manual acks on a second channel, then one get-empty.
    let cch = c.create_channel().await.unwrap();
    cch.basic_qos(10, Default::default()).await.unwrap();
    let mut consumer = cch
        .basic_consume(
            ss("work"),
            ss("t"),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..3 {
        let d = tokio::time::timeout(DEADLINE, consumer.next())
            .await
            .expect("a delivery in time")
            .unwrap()
            .unwrap();
        d.ack(Default::default()).await.unwrap();
    }
    assert!(
        ch.basic_get(ss("work"), Default::default())
            .await
            .unwrap()
            .is_none()
    );
    // Acks are asynchronous: wait until the queue has none unacked.
    let work_q = b.state().vhost("/").unwrap().queue("work").unwrap();
    assert!(eventually(DEADLINE, || async { work_q.stats().1 == 0 }).await);

    let s = scrape(&b, "/metrics/per-object").await;
    let q = |name: &'static str| [("vhost", "/"), ("queue", name)];
    assert_eq!(val(&s, "rabbitmq_queue_messages_ready", &q("ready")), 5.0);
    assert_eq!(val(&s, "rabbitmq_queue_messages", &q("ready")), 5.0);
    assert_eq!(val(&s, "rabbitmq_queue_messages_unacked", &q("ready")), 0.0);
    assert_eq!(val(&s, "rabbitmq_queue_messages_ready", &q("work")), 0.0);
    assert_eq!(val(&s, "rabbitmq_queue_consumers", &q("work")), 1.0);
    assert_eq!(val(&s, "rabbitmq_queue_consumers", &q("ready")), 0.0);
    assert_eq!(
        val(&s, "rabbitmq_queue_messages_published_total", &q("ready")),
        5.0
    );
    assert!(val(&s, "rabbitmq_queue_process_memory_bytes", &q("ready")) > 0.0);
    assert_eq!(val(&s, "rabbitmq_connections", &[]), 1.0);
    assert_eq!(val(&s, "rabbitmq_channels", &[]), 2.0);
    assert_eq!(val(&s, "rabbitmq_consumers", &[]), 1.0);
    assert_eq!(val(&s, "rabbitmq_queues", &[]), 2.0);
    let proto = [("protocol", "amqp091")];
    assert_eq!(
        val(&s, "rabbitmq_global_messages_received_total", &proto),
        8.0
    );
    assert_eq!(
        val(
            &s,
            "rabbitmq_global_messages_received_confirm_total",
            &proto
        ),
        8.0
    );
    assert_eq!(
        val(&s, "rabbitmq_global_messages_routed_total", &proto),
        8.0
    );
    assert_eq!(
        val(&s, "rabbitmq_global_messages_confirmed_total", &proto),
        8.0
    );
    assert_eq!(
        val(
            &s,
            "rabbitmq_global_messages_delivered_consume_manual_ack_total",
            &proto
        ),
        3.0
    );
    assert_eq!(
        val(&s, "rabbitmq_global_messages_delivered_total", &proto),
        3.0
    );
    assert_eq!(
        val(&s, "rabbitmq_global_messages_acknowledged_total", &proto),
        3.0
    );
    assert_eq!(
        val(&s, "rabbitmq_global_messages_get_empty_total", &proto),
        1.0
    );
    assert_eq!(val(&s, "rabbitmq_global_consumers", &proto), 1.0);
    assert_eq!(val(&s, "rabbitmq_global_publishers", &proto), 1.0);
    // Channels and the connection, labelled as RabbitMQ does (`channel="<0.N.M>"`).
    let publisher = labelled(&s, "rabbitmq_channel_messages_published_total", 8.0);
    assert_eq!(publisher.len(), 1, "{publisher:?}");
    assert!(publisher[0].starts_with("<0.") && publisher[0].ends_with(".1>"));
    let consuming = labelled(&s, "rabbitmq_channel_consumers", 1.0);
    assert_eq!(consuming.len(), 1);
    assert!(consuming[0].ends_with(".2>"));
    let ch1 = [("channel", publisher[0].as_str())];
    let ch2 = [("channel", consuming[0].as_str())];
    assert_eq!(
        val(&s, "rabbitmq_channel_messages_confirmed_total", &ch1),
        8.0
    );
    assert_eq!(val(&s, "rabbitmq_channel_get_empty_total", &ch1), 1.0);
    assert_eq!(
        val(&s, "rabbitmq_channel_messages_delivered_ack_total", &ch2),
        3.0
    );
    assert_eq!(val(&s, "rabbitmq_channel_messages_acked_total", &ch2), 3.0);
    assert_eq!(val(&s, "rabbitmq_consumer_prefetch", &ch2), 10.0);
    let conn_label = publisher[0].replace(".1>", ".0>");
    let conn = [("channel", conn_label.as_str())];
    assert_eq!(val(&s, "rabbitmq_connection_channels", &conn), 2.0);
    assert!(val(&s, "rabbitmq_connection_incoming_bytes_total", &conn) > 0.0);
    assert!(val(&s, "rabbitmq_connection_outgoing_bytes_total", &conn) > 0.0);
    assert!(val(&s, "rabbitmq_connections_opened_total", &[]) >= 1.0);
    assert_eq!(val(&s, "rabbitmq_queues_created_total", &[]), 2.0);
    assert!(val(&s, "rabbitmq_process_resident_memory_bytes", &[]) > 0.0);
    assert!(val(&s, "rabbitmq_process_open_fds", &[]) > 0.0);
    assert!(val(&s, "rabbitmq_process_max_fds", &[]) > 0.0);
    assert_eq!(
        s.docs["rabbitmq_queue_messages_ready"],
        "Messages ready to be delivered to consumers"
    );

    // Aggregated: one unlabelled sum per metric.
    let s = scrape(&b, "/metrics").await;
    assert_eq!(val(&s, "rabbitmq_queue_messages_ready", &[]), 5.0);
    assert_eq!(val(&s, "rabbitmq_queue_messages_published_total", &[]), 8.0);
    assert_eq!(
        val(&s, "rabbitmq_channel_messages_published_total", &[]),
        8.0
    );
    assert_eq!(val(&s, "rabbitmq_channel_consumers", &[]), 1.0);
    assert!(value(&s, "rabbitmq_queue_messages_ready", &q("ready")).is_none());
    assert!(s.samples.iter().all(|x| x.labels.get("queue").is_none()));
    // Only on /metrics, as in RabbitMQ.
    assert_eq!(val(&s, "rabbitmq_alarms_memory_used_watermark", &[]), 0.0);
    assert_eq!(
        val(&s, "rabbitmq_alarms_free_disk_space_watermark", &[]),
        0.0
    );
    assert!(val(&s, "process_start_time_seconds", &[]) > 1.6e9);
    assert!(val(&s, "rabbitmq_disk_space_available_bytes", &[]) > 0.0);

    // Closed connections still count in the global totals.
    c.close(200, "bye".into()).await.unwrap();
    assert!(
        eventually(DEADLINE, || async {
            b.state().registry.is_empty() && b.state().connections() == 0
        })
        .await
    );
    let s = scrape(&b, "/metrics").await;
    assert_eq!(val(&s, "rabbitmq_connections", &[]), 0.0);
    assert_eq!(val(&s, "rabbitmq_channels", &[]), 0.0);
    assert_eq!(
        val(&s, "rabbitmq_global_messages_received_total", &proto),
        8.0
    );
    assert_eq!(
        val(&s, "rabbitmq_global_messages_acknowledged_total", &proto),
        3.0
    );
    assert!(val(&s, "rabbitmq_connections_closed_total", &[]) >= 1.0);
    b.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn dead_lettered_messages_are_counted_by_reason() {
    let b = start_prometheus().await;
    let (_c, ch) = channel(&b).await;
    // Classic, no dead-letter exchange: two dropped by max-length (strategy `disabled`).
    ch.queue_declare(
        ss("short"),
        Default::default(),
        table(&[("x-max-length", AMQPValue::LongInt(1))]),
    )
    .await
    .unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    publish_confirmed(&ch, "short", 3).await;
    // Classic with a dead-letter exchange: one rejected (`at_most_once`).
    ch.queue_declare(ss("dead"), Default::default(), FieldTable::default())
        .await
        .unwrap();
    ch.queue_declare(
        ss("rej"),
        Default::default(),
        table(&[
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("dead")),
        ]),
    )
    .await
    .unwrap();
    publish_confirmed(&ch, "rej", 1).await;
    let m = ch
        .basic_get(ss("rej"), Default::default())
        .await
        .unwrap()
        .unwrap();
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let dead = b.state().vhost("/").unwrap().queue("dead").unwrap();
    assert!(eventually(DEADLINE, || async { dead.message_count() == 1 }).await);

    let s = scrape(&b, "/metrics").await;
    let labels =
        |qt: &'static str, st: &'static str| [("queue_type", qt), ("dead_letter_strategy", st)];
    let classic = "rabbit_classic_queue";
    assert_eq!(
        val(
            &s,
            "rabbitmq_global_messages_dead_lettered_maxlen_total",
            &labels(classic, "disabled")
        ),
        2.0
    );
    assert_eq!(
        val(
            &s,
            "rabbitmq_global_messages_dead_lettered_maxlen_total",
            &labels(classic, "at_most_once")
        ),
        0.0
    );
    assert_eq!(
        val(
            &s,
            "rabbitmq_global_messages_dead_lettered_rejected_total",
            &labels(classic, "at_most_once")
        ),
        1.0
    );
    assert_eq!(
        val(
            &s,
            "rabbitmq_global_messages_dead_lettered_expired_total",
            &labels("rabbit_quorum_queue", "disabled")
        ),
        0.0
    );
    assert_eq!(
        val(
            &s,
            "rabbitmq_global_messages_dead_lettered_delivery_limit_total",
            &labels("rabbit_quorum_queue", "at_most_once")
        ),
        0.0
    );
    b.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn detailed_returns_the_requested_families() {
    let b = start_prometheus().await;
    let (_c, ch) = channel(&b).await;
    ch.queue_declare(ss("dq"), Default::default(), FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(
        ss("dq"),
        ss("amq.direct"),
        ss("k"),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let s = scrape(
        &b,
        "/metrics/detailed?family=queue_coarse_metrics&vhost=%2F",
    )
    .await;
    let names: BTreeSet<_> = s.samples.iter().map(|x| x.metric.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "rabbitmq_build_info",
            "rabbitmq_detailed_queue_messages",
            "rabbitmq_detailed_queue_messages_ready",
            "rabbitmq_detailed_queue_messages_unacked",
            "rabbitmq_identity_info",
        ])
    );
    let dq = [("vhost", "/"), ("queue", "dq")];
    assert_eq!(val(&s, "rabbitmq_detailed_queue_messages", &dq), 0.0);

    // Another vhost's queues only: none here.
    let s = scrape(
        &b,
        "/metrics/detailed?family=queue_coarse_metrics&vhost=other",
    )
    .await;
    assert!(value(&s, "rabbitmq_detailed_queue_messages", &dq).is_none());

    // Several families; unknown ones (and internal group names) are ignored.
    let s = scrape(
        &b,
        "/metrics/detailed?family=exchange_bindings&family=exchange_names&family=vhost_status\
         &family=connection_churn_metrics&family=queue_consumer_count&family=global&family=nope",
    )
    .await;
    let x = [
        ("vhost", "/"),
        ("exchange", "amq.direct"),
        ("type", "direct"),
    ];
    assert_eq!(val(&s, "rabbitmq_cluster_exchange_bindings", &x), 1.0);
    assert_eq!(val(&s, "rabbitmq_cluster_exchange_name", &x), 1.0);
    assert!(
        value(
            &s,
            "rabbitmq_cluster_exchange_name",
            &[("vhost", "/"), ("exchange", ""), ("type", "direct")]
        )
        .is_none()
    );
    assert_eq!(
        val(&s, "rabbitmq_cluster_vhost_status", &[("vhost", "/")]),
        1.0
    );
    assert_eq!(val(&s, "rabbitmq_detailed_queues_created_total", &[]), 1.0);
    assert_eq!(val(&s, "rabbitmq_detailed_queue_consumers", &dq), 0.0);
    assert!(s.samples.iter().all(|x| !x.metric.contains("global")));

    // Nothing requested: build and identity info only.
    let s = scrape(&b, "/metrics/detailed").await;
    let names: BTreeSet<_> = s.samples.iter().map(|x| x.metric.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["rabbitmq_build_info", "rabbitmq_identity_info"])
    );
    let info = s
        .samples
        .iter()
        .find(|x| x.metric == "rabbitmq_build_info")
        .unwrap();
    assert_eq!(info.labels.get("rabbitmq_version"), Some("3.10.8"));
    assert_eq!(info.labels.get("erlang_version"), Some("none"));

    let (status, _, _) = get(b.prometheus_addr().unwrap(), "/nope").await;
    assert_eq!(status, 404);
    b.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn per_object_on_metrics_when_configured_and_off_by_default() {
    let mut cfg = Config::for_tests();
    cfg.prometheus.enabled = true;
    cfg.prometheus.port = 0;
    cfg.prometheus.return_per_object_metrics = true;
    let b = start_with(cfg).await;
    let (_c, ch) = channel(&b).await;
    ch.queue_declare(ss("po"), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let s = scrape(&b, "/metrics").await;
    let po = [("vhost", "/"), ("queue", "po")];
    assert_eq!(val(&s, "rabbitmq_queue_messages_ready", &po), 0.0);
    assert!(
        b.state()
            .listeners
            .lock()
            .unwrap()
            .iter()
            .any(|(p, a)| p == "http/prometheus" && Some(*a) == b.prometheus_addr())
    );
    b.shutdown(DEADLINE).await;

    let b = start().await;
    assert!(b.prometheus_addr().is_none());
    b.shutdown(DEADLINE).await;
}

/// `name type` pairs from the `# TYPE` lines of a scrape.
fn types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (n, t) = l.split_once(' ').unwrap();
            (n.to_string(), t.to_string())
        })
        .collect()
}

fn fixture(name: &str) -> BTreeMap<String, String> {
    let path = format!(
        "{}/tests/fixtures/rabbitmq-3.10.8-prometheus-{name}.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

/// What Warren does not serve and why (docs/prometheus.md has the same list): names without
/// `rabbitmq_` (or `rabbitmq_detailed_`), a trailing `*` for a prefix.
const MISSING: &[(&str, &str)] = &[
    // erlang_vm_*, erlang_mnesia_*, rabbitmq_erlang_* (but uptime).
    ("erlang_*", "Erlang VM and Mnesia internals"),
    (
        "telemetry_scrape_*",
        "the Erlang client's own scrape telemetry",
    ),
    (
        "raft_*",
        "Raft (Warren's quorum queues are single-node, not Raft)",
    ),
    ("io_*", "file I/O counters of Erlang's file layer"),
    ("schema_db_*", "Mnesia schema transactions"),
    ("msg_store_*", "the classic message store's counters"),
    ("queue_index_*", "the classic queue index's counters"),
    ("auth_attempts_*", "authentication attempts are not counted"),
    ("process_open_tcp_sockets", "Erlang port limits"),
    ("process_max_tcp_sockets", "Erlang port limits"),
    ("queue_process_reductions_total", "Erlang reductions"),
    ("channel_process_reductions_total", "Erlang reductions"),
    ("connection_process_reductions_total", "Erlang reductions"),
    (
        "queue_consumer_capacity",
        "consumer capacity is not tracked",
    ),
    (
        "queue_consumer_utilisation",
        "consumer capacity is not tracked",
    ),
    ("queue_messages_bytes", "per-queue byte breakdown"),
    ("queue_messages_ready_bytes", "per-queue byte breakdown"),
    ("queue_messages_unacked_bytes", "per-queue byte breakdown"),
    (
        "queue_messages_persistent",
        "per-queue persistence breakdown",
    ),
    (
        "queue_messages_persistent_bytes",
        "per-queue persistence breakdown",
    ),
    ("queue_messages_ram", "per-queue RAM breakdown"),
    ("queue_messages_ram_bytes", "per-queue RAM breakdown"),
    ("queue_messages_ready_ram", "per-queue RAM breakdown"),
    ("queue_messages_unacked_ram", "per-queue RAM breakdown"),
    ("queue_messages_paged_out", "per-queue paging breakdown"),
    (
        "queue_messages_paged_out_bytes",
        "per-queue paging breakdown",
    ),
    ("queue_head_message_timestamp", "not tracked"),
    ("queue_disk_reads_total", "per-queue disk counters"),
    ("queue_disk_writes_total", "per-queue disk counters"),
    (
        "channel_messages_uncommitted",
        "transaction contents are not exposed",
    ),
    (
        "channel_acks_uncommitted",
        "transaction contents are not exposed",
    ),
    (
        "connection_pending_packets",
        "the writer's backlog is in bytes, not packets",
    ),
    (
        "global_messages_dead_lettered_confirmed_total",
        "no at-least-once dead-lettering",
    ),
];

fn listed_missing(name: &str) -> bool {
    let short = name
        .strip_prefix("rabbitmq_detailed_")
        .or_else(|| name.strip_prefix("rabbitmq_"))
        .unwrap_or(name);
    MISSING.iter().any(|(p, _)| match p.strip_suffix('*') {
        Some(prefix) => short.starts_with(prefix),
        None => short == *p,
    })
}

async fn check_names(b: &Broker, path: &str, reference: &str) -> Vec<String> {
    let (_, _, body) = get(b.prometheus_addr().unwrap(), path).await;
    let served = types(&body);
    let reference = fixture(reference);
    for (name, ty) in &served {
        assert_eq!(
            reference.get(name),
            Some(ty),
            "{path}: {name} ({ty}) is not in RabbitMQ 3.10.8's list with that type"
        );
    }
    let lacking: Vec<String> = reference
        .keys()
        .filter(|n| !served.contains_key(*n))
        .cloned()
        .collect();
    for name in &lacking {
        assert!(
            listed_missing(name),
            "{path}: {name} is neither served nor listed as missing"
        );
    }
    lacking
}

#[tokio::test]
async fn names_and_types_are_rabbitmqs() {
    let b = start_prometheus().await;
    // Some objects, so that per-object families have samples.
    let (_c, ch) = channel(&b).await;
    ch.queue_declare(ss("n"), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let lacking = check_names(&b, "/metrics", "metrics").await;
    check_names(&b, "/metrics/per-object", "per-object").await;
    let all = [
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
    let query: Vec<String> = all.iter().map(|f| format!("family={f}")).collect();
    let detailed = check_names(
        &b,
        &format!("/metrics/detailed?{}", query.join("&")),
        "detailed",
    )
    .await;
    println!("RabbitMQ 3.10.8 metrics Warren lacks on /metrics:");
    for name in &lacking {
        println!("  {name}");
    }
    println!("and on /metrics/detailed:");
    for name in &detailed {
        println!("  {name}");
    }
    b.shutdown(DEADLINE).await;
}
