//! The management HTTP API: a read-mostly subset of RabbitMQ's `rabbitmq_management` JSON
//! (same paths, field names and error bodies), enough for dashboards, scripts and alerts that
//! watch queue depths (e.g. a dead-letter queue's). Off by default, as the plugin is in
//! RabbitMQ. HTTP basic authentication against the configured users; a user sees the vhosts
//! it may open.

use crate::args::as_int;
use crate::broker::BrokerState;
use crate::config::User;
use crate::queue::Queue;
use crate::vhost::VHost;
use amq_protocol::types::{AMQPValue, FieldTable};
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use base64::Engine;
use serde_json::{Value, json};
use std::sync::Arc;

type Shared = Arc<BrokerState>;

/// The RabbitMQ version whose behaviour Warren follows (reported as `rabbitmq_version`).
const RABBITMQ_COMPAT: &str = "3.10.8";

/// The routes, behind basic authentication.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/vhosts", get(vhosts))
        .route("/api/queues", get(all_queues))
        .route("/api/queues/{vhost}", get(vhost_queues))
        .route("/api/queues/{vhost}/{name}", get(one_queue))
        .route("/api/queues/{vhost}/{name}/contents", delete(purge))
        .route("/api/exchanges", get(all_exchanges))
        .route("/api/exchanges/{vhost}", get(vhost_exchanges))
        .route("/api/nodes", get(nodes))
        .route("/api/health/checks/alarms", get(alarms_check))
        .route("/api/health/checks/local-alarms", get(local_alarms_check))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

/// Serve the API on `listener` until the broker shuts down.
pub async fn serve(listener: tokio::net::TcpListener, state: Shared) {
    let shutdown = state.shutdown.clone();
    let app = router(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "management API stopped");
    }
}

fn error(status: StatusCode, error: &str, reason: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "reason": reason})),
    )
        .into_response()
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
}

/// The user named by a valid `Authorization: Basic` header.
fn authenticate(state: &BrokerState, headers: &HeaderMap) -> Option<User> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (name, password) = decoded.split_once(':')?;
    state
        .config
        .users
        .iter()
        .find(|u| u.name == name && u.password == password)
        .cloned()
}

/// As RabbitMQ 3.10.8: no credentials, an empty 401; wrong ones, `Login failed`; both with
/// the basic-auth challenge.
async fn auth(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    if let Some(user) = authenticate(&state, req.headers()) {
        req.extensions_mut().insert(Arc::new(user));
        return next.run(req).await;
    }
    let mut r = if req.headers().contains_key(header::AUTHORIZATION) {
        error(StatusCode::UNAUTHORIZED, "not_authorized", "Login failed")
    } else {
        StatusCode::UNAUTHORIZED.into_response()
    };
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
    );
    r
}

type Caller = axum::Extension<Arc<User>>;

fn may_open(user: &User, vhost: &str) -> bool {
    user.vhosts.iter().any(|v| v == "*" || v == vhost)
}

/// The vhosts the caller may see, by name order.
fn visible(state: &BrokerState, user: &User) -> Vec<Arc<VHost>> {
    let mut v: Vec<Arc<VHost>> = state
        .vhosts
        .iter()
        .filter(|v| may_open(user, v.key()))
        .map(|v| v.value().clone())
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

fn vhost(state: &BrokerState, user: &User, name: &str) -> Option<Arc<VHost>> {
    if !may_open(user, name) {
        return None;
    }
    state.vhosts.get(name).map(|v| v.value().clone())
}

/// A field table as RabbitMQ's management API shows it.
pub fn table_json(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), value_json(v)))
            .collect(),
    )
}

fn value_json(v: &AMQPValue) -> Value {
    if let Some(i) = as_int(v) {
        return json!(i);
    }
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::Float(f) => json!(f),
        AMQPValue::Double(f) => json!(f),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_json).collect()),
        AMQPValue::FieldTable(t) => table_json(t),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::ByteArray(b) => json!(String::from_utf8_lossy(b.as_slice())),
        AMQPValue::DecimalValue(d) => json!(d.value as f64 / 10f64.powi(d.scale as i32)),
        _ => Value::Null,
    }
}

fn queue_json(state: &BrokerState, q: &Queue) -> Value {
    let (ready, unacked, consumers, memory) = q.stats();
    let kind = match q.def.arguments.inner().get("x-queue-type") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        _ => "classic".into(),
    };
    json!({
        "name": q.def.name,
        "vhost": &*q.vhost,
        "durable": q.def.durable,
        "auto_delete": q.def.auto_delete,
        "exclusive": q.def.exclusive,
        "arguments": table_json(&q.def.arguments),
        "type": kind,
        "state": "running",
        "node": state.config.cluster_name,
        "messages": ready as u64 + unacked as u64,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "consumers": consumers,
        "memory": memory,
    })
}

fn queues_of(state: &BrokerState, v: &VHost) -> Vec<Value> {
    let mut qs: Vec<Arc<Queue>> = v.queues.iter().map(|q| q.value().clone()).collect();
    qs.sort_by(|a, b| a.name.cmp(&b.name));
    qs.iter().map(|q| queue_json(state, q)).collect()
}

fn exchanges_of(v: &VHost) -> Vec<Value> {
    let mut xs: Vec<_> = v.exchanges.iter().map(|x| x.value().clone()).collect();
    xs.sort_by(|a, b| a.def.name.cmp(&b.def.name));
    xs.iter()
        .map(|x| {
            json!({
                "name": x.def.name,
                "vhost": v.name.as_str(),
                "type": x.def.kind.as_str(),
                "durable": x.def.durable,
                "auto_delete": x.def.auto_delete,
                "internal": x.def.internal,
                "arguments": table_json(&x.def.arguments),
            })
        })
        .collect()
}

async fn overview(State(state): State<Shared>, axum::Extension(user): Caller) -> Response {
    let (mut queues, mut exchanges, mut consumers) = (0u64, 0u64, 0u64);
    let (mut ready, mut unacked) = (0u64, 0u64);
    for v in visible(&state, &user) {
        exchanges += v.exchanges.len() as u64;
        for q in v.queues.iter() {
            let (r, u, c, _) = q.stats();
            queues += 1;
            ready += r as u64;
            unacked += u as u64;
            consumers += c as u64;
        }
    }
    axum::Json(json!({
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "rabbitmq_version": RABBITMQ_COMPAT,
        "management_version": RABBITMQ_COMPAT,
        "cluster_name": state.config.cluster_name,
        "node": state.config.cluster_name,
        "exchange_types": [
            {"name": "direct"}, {"name": "fanout"}, {"name": "headers"}, {"name": "topic"}
        ],
        "object_totals": {
            "connections": state.connections(),
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues,
        },
        "queue_totals": {
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
    }))
    .into_response()
}

/// The node (one): its resource alarms and the figures behind them.
async fn nodes(State(state): State<Shared>) -> Response {
    let alarms = *state.alarms.borrow();
    let disk_free = state.disk_free.load(std::sync::atomic::Ordering::Relaxed);
    axum::Json(json!([{
        "name": state.config.cluster_name,
        "type": "disc",
        "running": true,
        "mem_alarm": alarms.memory,
        "mem_limit": state.config.memory.limit(),
        "mem_used": crate::broker::heap_allocated(),
        "disk_free_alarm": alarms.disk,
        "disk_free": if disk_free == u64::MAX { Value::Null } else { json!(disk_free) },
        "disk_free_limit": state.config.disk.limit(),
    }]))
    .into_response()
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
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"status": "failed", "reason": reason, "alarms": list})),
    )
        .into_response()
}

async fn alarms_check(State(state): State<Shared>) -> Response {
    alarms_response(&state, "There are alarms in effect in the cluster")
}

async fn local_alarms_check(State(state): State<Shared>) -> Response {
    alarms_response(&state, "There are alarms in effect on the node")
}

async fn vhosts(State(state): State<Shared>, axum::Extension(user): Caller) -> Response {
    let list: Vec<Value> = visible(&state, &user)
        .iter()
        .map(|v| {
            let (ready, unacked) = v.queues.iter().fold((0u64, 0u64), |(r, u), q| {
                let (qr, qu, _, _) = q.stats();
                (r + qr as u64, u + qu as u64)
            });
            json!({
                "name": v.name.as_str(),
                "messages": ready + unacked,
                "messages_ready": ready,
                "messages_unacknowledged": unacked,
            })
        })
        .collect();
    axum::Json(list).into_response()
}

async fn all_queues(State(state): State<Shared>, axum::Extension(user): Caller) -> Response {
    let list: Vec<Value> = visible(&state, &user)
        .iter()
        .flat_map(|v| queues_of(&state, v))
        .collect();
    axum::Json(list).into_response()
}

async fn vhost_queues(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(vh): Path<String>,
) -> Response {
    match vhost(&state, &user, &vh) {
        Some(v) => axum::Json(queues_of(&state, &v)).into_response(),
        None => not_found(),
    }
}

async fn one_queue(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vh, name)): Path<(String, String)>,
) -> Response {
    let Some(v) = vhost(&state, &user, &vh) else {
        return not_found();
    };
    match v.queues.get(&name) {
        Some(q) => axum::Json(queue_json(&state, &q)).into_response(),
        None => not_found(),
    }
}

async fn purge(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vh, name)): Path<(String, String)>,
) -> Response {
    let Some(v) = vhost(&state, &user, &vh) else {
        return not_found();
    };
    let Some(q) = v.queues.get(&name).map(|q| q.value().clone()) else {
        return not_found();
    };
    q.purge();
    StatusCode::NO_CONTENT.into_response()
}

async fn all_exchanges(State(state): State<Shared>, axum::Extension(user): Caller) -> Response {
    let list: Vec<Value> = visible(&state, &user)
        .iter()
        .flat_map(|v| exchanges_of(v))
        .collect();
    axum::Json(list).into_response()
}

async fn vhost_exchanges(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(vh): Path<String>,
) -> Response {
    match vhost(&state, &user, &vh) {
        Some(v) => axum::Json(exchanges_of(&v)).into_response(),
        None => not_found(),
    }
}
