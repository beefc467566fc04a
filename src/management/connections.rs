//! Connections, channels and consumers over HTTP, with the fields RabbitMQ 3.10.8's
//! management API shows (recorded in `tests/fixtures/rabbitmq-3.10.8-mgmt/`). Connections
//! come from the broker's registry; their channels from asking each connection
//! ([`ConnInfo::inspect`]); consumers from the queues. `DELETE /api/connections/{name}`
//! closes with 320 CONNECTION_FORCED and the `X-Reason` header's text, as RabbitMQ does.

use super::listing::ListQuery;
use super::{Caller, Shared, details, not_found, table_json};
use crate::auth::User;
use crate::state::{BrokerState, ConnDetails, ConnInfo};
use crate::stats::{ChannelInfo, ConnSnapshot};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

/// A registry entry with what it takes to describe it.
struct Open {
    id: u64,
    user: String,
    vhost: String,
    peer: std::net::SocketAddr,
    details: Arc<ConnDetails>,
    backlog: Arc<crate::queue::consumer::Backlog>,
    events: tokio::sync::mpsc::UnboundedSender<crate::queue::consumer::ConnEvent>,
}

impl Open {
    fn of(id: u64, c: &ConnInfo) -> Open {
        Open {
            id,
            user: c.user.clone(),
            vhost: c.vhost.clone(),
            peer: c.peer,
            details: c.details.clone(),
            backlog: c.backlog.clone(),
            events: c.events.clone(),
        }
    }
}

/// Whether `user` sees connections of `owner` in `vhost`: administrators and monitors see
/// all, others their own (RabbitMQ's rule for connections and channels).
fn sees(state: &BrokerState, user: &User, owner: &str, vhost: &str) -> bool {
    user.is_monitor() || (owner == user.name && super::may_see(state, user, vhost))
}

fn open_connections(state: &BrokerState, user: &User) -> Vec<Open> {
    let mut v: Vec<Open> = state
        .registry
        .iter()
        .filter(|c| sees(state, user, &c.user, &c.vhost))
        .map(|c| Open::of(*c.key(), c.value()))
        .collect();
    v.sort_by(|a, b| a.details.name.cmp(&b.details.name));
    v
}

fn find(state: &BrokerState, user: &User, name: &str) -> Option<Open> {
    open_connections(state, user)
        .into_iter()
        .find(|c| c.details.name == name)
}

fn client_name(d: &ConnDetails) -> Value {
    match d.client_properties.inner().get("connection_name") {
        Some(v) => super::value_json(v),
        None => Value::Null,
    }
}

fn connection_json(state: &BrokerState, c: &Open, snap: Option<&ConnSnapshot>) -> Value {
    let d = &c.details;
    let rates = &state.rates;
    let key = format!("conn:{}", c.id);
    let send_oct = c.backlog.sent.load(std::sync::atomic::Ordering::Relaxed);
    let send_cnt = c.backlog.writes.load(std::sync::atomic::Ordering::Relaxed);
    let (recv_oct, recv_cnt, channels) =
        snap.map_or((0, 0, 0), |s| (s.recv_oct, s.recv_cnt, s.channels.len()));
    let mut v = json!({
        "name": d.name,
        "node": state.config.cluster_name,
        "type": "network",
        "state": "running",
        "protocol": "AMQP 0-9-1",
        "user": c.user,
        "user_who_performed_action": c.user,
        "vhost": c.vhost,
        "host": d.local.ip().to_canonical().to_string(),
        "port": d.local.port(),
        "peer_host": c.peer.ip().to_canonical().to_string(),
        "peer_port": c.peer.port(),
        "connected_at": d.connected_at,
        "auth_mechanism": d.auth_mechanism,
        "ssl": d.tls,
        "ssl_protocol": null, "ssl_cipher": null, "ssl_hash": null, "ssl_key_exchange": null,
        "peer_cert_issuer": null, "peer_cert_subject": null, "peer_cert_validity": null,
        "frame_max": d.frame_max,
        "channel_max": d.channel_max,
        "timeout": d.heartbeat,
        "channels": channels,
        "client_properties": table_json(&d.client_properties),
        "user_provided_name": client_name(d),
        "recv_oct": recv_oct,
        "recv_oct_details": {"rate": rates.rate(&key, "recv_oct")},
        "recv_cnt": recv_cnt,
        "send_oct": send_oct,
        "send_oct_details": {"rate": rates.rate(&key, "send_oct")},
        "send_cnt": send_cnt,
        "send_pend": c.backlog.socket.load(std::sync::atomic::Ordering::Relaxed),
    });
    if d.tls {
        v["ssl_protocol"] = json!("TLS");
    }
    v
}

fn channel_name(conn: &ConnDetails, number: u16) -> String {
    format!("{} ({number})", conn.name)
}

fn channel_json(state: &BrokerState, c: &Open, ch: &ChannelInfo) -> Value {
    let key = format!("ch:{}:{}", c.id, ch.number);
    json!({
        "name": channel_name(&c.details, ch.number),
        "number": ch.number,
        "node": state.config.cluster_name,
        "user": c.user,
        "user_who_performed_action": c.user,
        "vhost": c.vhost,
        "state": "running",
        "connection_details": {
            "name": c.details.name,
            "peer_host": c.peer.ip().to_canonical().to_string(),
            "peer_port": c.peer.port(),
        },
        "confirm": ch.confirm,
        "transactional": ch.transactional,
        "prefetch_count": ch.prefetch_count,
        "global_prefetch_count": ch.global_prefetch_count,
        "consumer_count": ch.consumers,
        "messages_unacknowledged": ch.unacked,
        "messages_unconfirmed": ch.unconfirmed,
        "messages_uncommitted": 0,
        "acks_uncommitted": 0,
        "pending_raft_commands": 0,
        "message_stats": details(&state.rates, &key, &ch.counts.named()),
    })
}

/// Ask every connection for its snapshot at once.
async fn snapshots(conns: &[Open]) -> Vec<Option<ConnSnapshot>> {
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in conns.iter().enumerate() {
        let events = c.events.clone();
        set.spawn(async move { (i, ConnInfo::inspect(&events).await) });
    }
    let mut out = vec![None; conns.len()];
    while let Some(Ok((i, s))) = set.join_next().await {
        out[i] = s;
    }
    out
}

/// The connections as `GET /api/connections` shows them, each asked for its channels.
async fn described(state: &BrokerState, conns: &[Open]) -> Vec<Value> {
    let snaps = snapshots(conns).await;
    conns
        .iter()
        .zip(&snaps)
        .map(|(c, s)| connection_json(state, c, s.as_ref()))
        .collect()
}

pub(super) async fn connections(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Query(q): Query<ListQuery>,
) -> Response {
    let conns = open_connections(&state, &user);
    q.respond(described(&state, &conns).await)
}

pub(super) async fn vhost_connections(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    if super::vhost(&state, &user, &vhost).is_none() {
        return not_found();
    }
    let conns: Vec<Open> = open_connections(&state, &user)
        .into_iter()
        .filter(|c| c.vhost == vhost)
        .collect();
    q.respond(described(&state, &conns).await)
}

pub(super) async fn user_connections(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    if !user.is_admin() {
        return super::not_authorised("Not administrator user");
    }
    let conns: Vec<Open> = open_connections(&state, &user)
        .into_iter()
        .filter(|c| c.user == name)
        .collect();
    q.respond(described(&state, &conns).await)
}

pub(super) async fn one_connection(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(name): Path<String>,
) -> Response {
    let Some(c) = find(&state, &user, &name) else {
        return not_found();
    };
    let snap = ConnInfo::inspect(&c.events).await;
    axum::Json(connection_json(&state, &c, snap.as_ref())).into_response()
}

/// Close with 320 CONNECTION_FORCED; the text is the `X-Reason` header, else RabbitMQ's
/// "Closed via management plugin".
pub(super) async fn close_connection(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(c) = find(&state, &user, &name) else {
        return not_found();
    };
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin")
        .to_string();
    tracing::info!(connection = %name, by = %user.name, %reason, "closing connection via HTTP");
    let _ = c
        .events
        .send(crate::queue::consumer::ConnEvent::Close { text: reason });
    StatusCode::NO_CONTENT.into_response()
}

/// `DELETE /api/connections/username/{user}`: close every connection of a user.
pub(super) async fn close_user_connections(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !user.is_admin() {
        return super::not_authorised("Not administrator user");
    }
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin");
    state.force_close(|c| c.user == name, reason);
    StatusCode::NO_CONTENT.into_response()
}

async fn channels_of(state: &BrokerState, conns: Vec<Open>) -> Vec<Value> {
    let snaps = snapshots(&conns).await;
    conns
        .iter()
        .zip(snaps)
        .flat_map(|(c, s)| {
            s.map(|s| s.channels)
                .unwrap_or_default()
                .iter()
                .map(|ch| channel_json(state, c, ch))
                .collect::<Vec<_>>()
        })
        .collect()
}

pub(super) async fn channels(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Query(q): Query<ListQuery>,
) -> Response {
    let conns = open_connections(&state, &user);
    q.respond(channels_of(&state, conns).await)
}

pub(super) async fn vhost_channels(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    if super::vhost(&state, &user, &vhost).is_none() {
        return not_found();
    }
    let conns = open_connections(&state, &user)
        .into_iter()
        .filter(|c| c.vhost == vhost)
        .collect();
    q.respond(channels_of(&state, conns).await)
}

pub(super) async fn connection_channels(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let Some(c) = find(&state, &user, &name) else {
        return not_found();
    };
    q.respond(channels_of(&state, vec![c]).await)
}

pub(super) async fn one_channel(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(name): Path<String>,
) -> Response {
    // "<connection name> (<number>)"
    let Some((conn, number)) = name.rsplit_once(" (").and_then(|(c, n)| {
        let n = n.strip_suffix(')')?.parse::<u16>().ok()?;
        Some((c.to_string(), n))
    }) else {
        return not_found();
    };
    let Some(c) = find(&state, &user, &conn) else {
        return not_found();
    };
    let Some(snap) = ConnInfo::inspect(&c.events).await else {
        return not_found();
    };
    match snap.channels.iter().find(|ch| ch.number == number) {
        Some(ch) => axum::Json(channel_json(&state, &c, ch)).into_response(),
        None => not_found(),
    }
}

/// A consumer of `q`, with its channel's details.
fn consumer_json(
    state: &BrokerState,
    q: &crate::queue::Queue,
    c: &crate::queue::consumer::Consumer,
) -> Value {
    let conn = state.registry.get(&c.conn_id);
    let (conn_name, peer, user) = match &conn {
        Some(info) => (
            info.details.name.clone(),
            Some(info.peer),
            info.user.clone(),
        ),
        None => (String::new(), None, String::new()),
    };
    let mut arguments = serde_json::Map::new();
    if c.priority != 0 {
        arguments.insert("x-priority".into(), json!(c.priority));
    }
    json!({
        "consumer_tag": &*c.tag,
        "queue": {"name": &*q.name, "vhost": &*q.vhost},
        "channel_details": {
            "name": format!("{conn_name} ({})", c.channel),
            "number": c.channel,
            "connection_name": conn_name,
            "peer_host": peer.map(|p| p.ip().to_canonical().to_string()),
            "peer_port": peer.map(|p| p.port()),
            "user": user,
            "node": state.config.cluster_name,
        },
        "ack_required": !c.no_ack,
        "exclusive": c.exclusive,
        "prefetch_count": c.prefetch,
        "active": c.active.load(std::sync::atomic::Ordering::Relaxed),
        "activity_status": "up",
        "arguments": arguments,
        // RabbitMQ 3.12+ shows it (3.10.8 does not); rabbitmq_http_client requires it.
        "consumer_timeout": c.timeout,
    })
}

/// Every consumer of the queues in `vhosts`.
pub(super) fn consumers_in(state: &BrokerState, vhosts: &[Arc<crate::vhost::VHost>]) -> Vec<Value> {
    let mut out = Vec::new();
    for v in vhosts {
        let mut qs: Vec<_> = v.queues.iter().map(|q| q.value().clone()).collect();
        qs.sort_by(|a, b| a.name.cmp(&b.name));
        for q in qs {
            for c in q.consumers() {
                out.push(consumer_json(state, &q, &c));
            }
        }
    }
    out
}

/// The consumers of one queue (the queue page's `consumer_details`).
pub(super) fn queue_consumers(state: &BrokerState, q: &crate::queue::Queue) -> Vec<Value> {
    q.consumers()
        .iter()
        .map(|c| consumer_json(state, q, c))
        .collect()
}

pub(super) async fn consumers(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Query(q): Query<ListQuery>,
) -> Response {
    let vhosts = super::visible(&state, &user);
    q.respond(consumers_in(&state, &vhosts))
}

pub(super) async fn vhost_consumers(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let Some(v) = super::vhost(&state, &user, &vhost) else {
        return not_found();
    };
    q.respond(consumers_in(&state, &[v]))
}

/// Sample every connection's counters (for rates).
pub(super) async fn sample(
    state: &BrokerState,
    s: &mut crate::stats::Sample,
) -> Vec<(String, crate::stats::MessageCounts)> {
    let conns: Vec<Open> = state
        .registry
        .iter()
        .map(|c| Open::of(*c.key(), c.value()))
        .collect();
    let snaps = snapshots(&conns).await;
    let mut per_vhost = Vec::new();
    for (c, snap) in conns.iter().zip(snaps) {
        let Some(snap) = snap else { continue };
        let sent = c.backlog.sent.load(std::sync::atomic::Ordering::Relaxed);
        s.put(
            format!("conn:{}", c.id),
            vec![("recv_oct", snap.recv_oct), ("send_oct", sent)],
        );
        for ch in &snap.channels {
            s.put(
                format!("ch:{}:{}", c.id, ch.number),
                ch.counts.named().to_vec(),
            );
        }
        per_vhost.push((c.vhost.clone(), snap.total()));
    }
    per_vhost
}
