//! The node's view: overview (with global message rates), nodes, health checks, extensions,
//! cluster name, and the sampler that refreshes message rates every
//! `management.stats_interval_ms` (RabbitMQ's `collect_statistics_interval`).

use super::listing::ListQuery;
use super::{Caller, RABBITMQ_COMPAT, Shared, details, visible};
use crate::state::{BrokerState, file_descriptors, rss_bytes};
use crate::stats::{MessageCounts, Sample};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::atomic::Ordering;

const EXCHANGE_TYPES: &[(&str, &str)] = &[
    (
        "direct",
        "AMQP direct exchange, as per the AMQP specification",
    ),
    (
        "fanout",
        "AMQP fanout exchange, as per the AMQP specification",
    ),
    (
        "headers",
        "AMQP headers exchange, as per the AMQP specification",
    ),
    (
        "topic",
        "AMQP topic exchange, as per the AMQP specification",
    ),
];

fn exchange_types() -> Value {
    Value::Array(
        EXCHANGE_TYPES
            .iter()
            .map(|(n, d)| json!({"name": n, "description": d, "enabled": true}))
            .collect(),
    )
}

fn listeners(state: &BrokerState) -> Vec<Value> {
    state
        .listeners
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(protocol, addr)| {
            json!({
                "node": state.config.cluster_name,
                "protocol": protocol,
                "ip_address": addr.ip().to_string(),
                "port": addr.port(),
                "socket_opts": [],
            })
        })
        .collect()
}

/// The message counts of `vhost` at the last sample (counts of closed connections included).
fn sampled_counts(state: &BrokerState, key: &str) -> Vec<(&'static str, u64)> {
    state
        .rates
        .sampled(key)
        .unwrap_or_else(|| MessageCounts::default().named().to_vec())
}

/// Churn counters (connections, channels, queues created and closed), broker-wide.
fn churn(state: &BrokerState) -> Vec<(&'static str, u64)> {
    let c = &state.churn;
    let mut queue = (0, 0, 0);
    for v in state.vhosts.iter() {
        queue.0 += v.churn.created.load(Ordering::Relaxed);
        queue.1 += v.churn.declared.load(Ordering::Relaxed);
        queue.2 += v.churn.deleted.load(Ordering::Relaxed);
    }
    vec![
        (
            "connection_created",
            c.connection_created.load(Ordering::Relaxed),
        ),
        (
            "connection_closed",
            c.connection_closed.load(Ordering::Relaxed),
        ),
        ("channel_created", c.channel_created.load(Ordering::Relaxed)),
        ("channel_closed", c.channel_closed.load(Ordering::Relaxed)),
        ("queue_created", queue.0),
        ("queue_declared", queue.1),
        ("queue_deleted", queue.2),
    ]
}

pub(super) async fn overview(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
) -> Response {
    let (mut queues, mut exchanges, mut consumers) = (0u64, 0u64, 0u64);
    let (mut ready, mut unacked) = (0u64, 0u64);
    let vhosts = visible(&state, &user);
    for v in &vhosts {
        exchanges += v.exchanges.len() as u64;
        for q in v.queues.iter() {
            let (r, u, c, _) = q.stats();
            queues += 1;
            ready += r as u64;
            unacked += u as u64;
            consumers += c as u64;
        }
    }
    let channels: u64 = state
        .registry
        .iter()
        .filter(|c| user.is_monitor() || c.user == user.name)
        .map(|c| c.channels.load(Ordering::Relaxed) as u64)
        .sum();
    // Monitors see the broker's totals; others the sum over their vhosts.
    let stats = if user.is_monitor() {
        details(&state.rates, "global", &sampled_counts(&state, "global"))
    } else {
        let mut sum = std::collections::BTreeMap::<&str, u64>::new();
        for v in &vhosts {
            for (k, n) in sampled_counts(&state, &format!("vhost:{}", v.name)) {
                *sum.entry(k).or_default() += n;
            }
        }
        let values: Vec<_> = sum.into_iter().collect();
        details(&state.rates, "", &values)
    };
    let totals_rate = |n: &str| json!({"rate": state.rates.rate("totals", n)});
    axum::Json(json!({
        "management_version": RABBITMQ_COMPAT,
        "rates_mode": "basic",
        "sample_retention_policies": {"global": [600, 3600, 28800, 86400], "basic": [600, 3600], "detailed": [600]},
        "exchange_types": exchange_types(),
        "product_version": env!("CARGO_PKG_VERSION"),
        "product_name": "Warren",
        "rabbitmq_version": RABBITMQ_COMPAT,
        "cluster_name": state.config.cluster_name,
        "erlang_version": "none (Warren is written in Rust)",
        "erlang_full_version": "none (Warren is written in Rust)",
        "release_series_support_status": "supported",
        "disable_stats": false,
        "enable_queue_totals": false,
        "message_stats": stats,
        "churn_rates": details(&state.rates, "churn", &churn(&state)),
        "queue_totals": {
            "messages": ready + unacked,
            "messages_details": totals_rate("messages"),
            "messages_ready": ready,
            "messages_ready_details": totals_rate("messages_ready"),
            "messages_unacknowledged": unacked,
            "messages_unacknowledged_details": totals_rate("messages_unacknowledged"),
        },
        "object_totals": {
            "channels": channels,
            "connections": state.connections(),
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues,
        },
        "statistics_db_event_queue": 0,
        "node": state.config.cluster_name,
        "listeners": listeners(&state),
        "contexts": [],
    }))
    .into_response()
}

fn node_json(state: &BrokerState) -> Value {
    let alarms = *state.alarms.borrow();
    let disk_free = state.disk_free.load(Ordering::Relaxed);
    let (fd_used, fd_total) = file_descriptors();
    let processors = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut v = json!({
        "name": state.config.cluster_name,
        "type": "disc",
        "running": true,
        "being_drained": false,
        "partitions": [],
        "os_pid": std::process::id().to_string(),
        "uptime": state.started.elapsed().as_millis() as u64,
        "processors": processors,
        "run_queue": 0,
        "rates_mode": "basic",
        "mem_alarm": alarms.memory,
        "mem_limit": state.config.memory.limit(),
        "mem_used": rss_bytes(),
        "mem_calculation_strategy": "rss",
        "disk_free_alarm": alarms.disk,
        "disk_free": if disk_free == u64::MAX { Value::Null } else { json!(disk_free) },
        "disk_free_limit": state.config.disk.limit(),
        "fd_used": fd_used,
        "fd_total": fd_total,
        "sockets_used": state.connections(),
        "sockets_total": fd_total,
        "proc_used": state.connections(),
        "proc_total": fd_total,
        "exchange_types": exchange_types(),
        "auth_mechanisms": [
            {"name": "PLAIN", "description": "SASL PLAIN authentication mechanism", "enabled": true},
            {"name": "AMQPLAIN", "description": "QPid AMQPLAIN mechanism", "enabled": true},
        ],
        "enabled_plugins": ["rabbitmq_management", "rabbitmq_prometheus"],
        "applications": [
            {"name": "rabbit", "description": "RabbitMQ (Warren)", "version": RABBITMQ_COMPAT},
        ],
        "contexts": [],
        "log_files": [],
        "config_files": [],
        "db_dir": state.config.data_dir.display().to_string(),
        "net_ticktime": 60,
        "cluster_links": [],
    });
    if let (Some(o), Value::Object(c)) = (
        v.as_object_mut(),
        details(&state.rates, "churn", &churn(state)),
    ) {
        o.extend(c);
    }
    v
}

/// The node (one): its resource alarms and the figures behind them. In a cluster, every
/// member: this node in full, the others with their name, `running` (answered within the
/// last few seconds) and this node's view of the metadata leader.
pub(super) async fn nodes(State(state): State<Shared>, Query(q): Query<ListQuery>) -> Response {
    q.respond(all_nodes(&state))
}

fn all_nodes(state: &BrokerState) -> Vec<Value> {
    let Some(c) = state.cluster.get() else {
        return vec![node_json(state)];
    };
    c.members()
        .into_iter()
        .map(|m| {
            let mut v = if m.id == c.id {
                node_json(state)
            } else {
                json!({"type": "disc", "running": m.running, "being_drained": false,
                       "partitions": []})
            };
            v["name"] = json!(m.name);
            v["running"] = json!(m.running);
            v["metadata_leader"] = json!(m.leader);
            v
        })
        .collect()
}

pub(super) async fn one_node(State(state): State<Shared>, Path(name): Path<String>) -> Response {
    match all_nodes(&state).into_iter().find(|n| n["name"] == name) {
        Some(n) => axum::Json(n).into_response(),
        None => super::not_found(),
    }
}

pub(super) async fn cluster_name(State(state): State<Shared>) -> Response {
    axum::Json(json!({"name": state.config.cluster_name})).into_response()
}

pub(super) async fn extensions() -> Response {
    axum::Json(json!([])).into_response()
}

/// RabbitMQ's alarm health checks: 200 `{"status":"ok"}`, or 503 with the alarms in effect
/// (recorded from 3.10.8: resources "disk space" then "memory").
fn alarms_response(state: &BrokerState, reason: &str) -> Response {
    let alarms = *state.alarms.borrow();
    if !alarms.any() {
        return axum::Json(json!({"status": "ok"})).into_response();
    }
    let node = &state.config.cluster_name;
    let list: Vec<Value> = [("disk space", alarms.disk), ("memory", alarms.memory)]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(resource, _)| json!({"node": node, "resource": resource}))
        .collect();
    failed(json!({"status": "failed", "reason": reason, "alarms": list}))
}

fn failed(body: Value) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

pub(super) async fn alarms_check(State(state): State<Shared>) -> Response {
    alarms_response(&state, "There are alarms in effect in the cluster")
}

pub(super) async fn local_alarms_check(State(state): State<Shared>) -> Response {
    alarms_response(&state, "There are alarms in effect on the node")
}

pub(super) async fn port_listener(
    State(state): State<Shared>,
    Path(port): Path<String>,
) -> Response {
    let Ok(port) = port.parse::<u16>() else {
        return super::error(StatusCode::BAD_REQUEST, "bad_request", "Invalid port");
    };
    let mut ports: Vec<u16> = state
        .listeners
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(_, a)| a.port())
        .collect();
    ports.sort_unstable();
    if ports.contains(&port) {
        axum::Json(json!({"status": "ok", "port": port})).into_response()
    } else {
        failed(json!({"status": "failed", "reason": "No active listener",
                      "missing": port, "ports": ports}))
    }
}

pub(super) async fn protocol_listener(
    State(state): State<Shared>,
    Path(protocol): Path<String>,
) -> Response {
    let protocols: Vec<String> = state
        .listeners
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    // RabbitMQ accepts aliases such as amqp091 and amqp0.9.1 for amqp.
    let wanted = match protocol.as_str() {
        "amqp091" | "amqp0.9.1" | "amqp0-9-1" => "amqp",
        "amqps" => "amqp/ssl",
        "prometheus" => "http/prometheus",
        "management" => "http",
        p => p,
    };
    if protocols.iter().any(|p| p == wanted) {
        axum::Json(json!({"status": "ok", "protocol": protocol})).into_response()
    } else {
        failed(json!({"status": "failed", "reason": "No active listener",
                      "missing": protocol, "protocols": protocols}))
    }
}

pub(super) async fn virtual_hosts_check() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// Quorum- and mirror-critical checks: a single node is never critical (recorded:
/// "single node cluster").
pub(super) async fn single_node_ok() -> Response {
    axum::Json(json!({"status": "ok", "reason": "single node cluster"})).into_response()
}

pub(super) async fn certificate_expiration() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// Sample every counter once: connections and channels (by asking them), queues, vhosts
/// (closed connections included), the broker, queue depths and churn.
pub(crate) async fn sample_once(state: &BrokerState) {
    let mut s = Sample::new();
    let per_conn = super::connections::sample(state, &mut s).await;
    let retired = state
        .retired
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut vhosts: std::collections::HashMap<String, MessageCounts> = retired;
    for (vhost, c) in per_conn {
        *vhosts.entry(vhost).or_default() += c;
    }
    let mut global = MessageCounts::default();
    let (mut messages, mut ready, mut unacked) = (0u64, 0u64, 0u64);
    for v in state.vhosts.iter() {
        for q in v.queues.iter() {
            let (r, u, _, _) = q.stats();
            ready += r as u64;
            unacked += u as u64;
            messages += r as u64 + u as u64;
            s.put(
                format!("q:{}\0{}", q.vhost, q.name),
                q.counts().named().to_vec(),
            );
            s.put(
                format!("qd:{}\0{}", q.vhost, q.name),
                vec![
                    ("messages", r as u64 + u as u64),
                    ("messages_ready", r as u64),
                    ("messages_unacknowledged", u as u64),
                ],
            );
        }
    }
    // Warren's addition to `message_stats`: messages dead-lettered to an exchange (the
    // management UI charts its rate beside publish and deliver).
    let mut dead: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for v in state.vhosts.iter() {
        dead.insert(v.name.clone(), v.dead_lettered.to_dlx());
        vhosts.entry(v.name.clone()).or_default();
    }
    let with_dead = |c: &MessageCounts, d: u64| {
        let mut v = c.named().to_vec();
        v.push(("dead_lettered", d));
        v
    };
    for (vhost, c) in &vhosts {
        global += *c;
        let d = dead.get(vhost).copied().unwrap_or(0);
        s.put(format!("vhost:{vhost}"), with_dead(c, d));
    }
    s.put("global".into(), with_dead(&global, dead.values().sum()));
    s.put(
        "totals".into(),
        vec![
            ("messages", messages),
            ("messages_ready", ready),
            ("messages_unacknowledged", unacked),
        ],
    );
    s.put("churn".into(), churn(state));
    state.rates.commit(s);
}

/// Refresh the rates until the broker shuts down.
pub(crate) async fn sampler(state: std::sync::Arc<BrokerState>) {
    let period =
        std::time::Duration::from_millis(state.config.management.stats_interval_ms.max(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => sample_once(&state).await,
            _ = state.shutdown.cancelled() => return,
        }
    }
}
