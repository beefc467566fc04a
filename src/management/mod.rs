//! The management HTTP API: a subset of RabbitMQ's `rabbitmq_management` JSON (same paths,
//! field names and error bodies): dashboards and alerts that watch queue depths, and the
//! administration of users, vhosts, permissions and limits ([`access`]) and definitions
//! ([`definitions`]). Off by default, as the plugin is in RabbitMQ.
//!
//! HTTP basic authentication against the broker's users, with RabbitMQ's rules: the user must
//! carry a management tag (`management`, `policymaker`, `monitoring`, `administrator`),
//! `loopback_users` may log in from loopback addresses only; `monitoring` and `administrator`
//! see every vhost, others the vhosts they have permissions in; only `administrator` changes
//! users, vhosts, permissions and limits.

mod access;
mod definitions;

use crate::args::as_int;
use crate::auth::User;
use crate::queue::Queue;
use crate::state::BrokerState;
use crate::vhost::VHost;
use amq_protocol::types::{AMQPValue, FieldTable};
use axum::Router;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use base64::Engine;
use serde_json::{Value, json};
use std::sync::Arc;

type Shared = Arc<BrokerState>;

/// The RabbitMQ version whose behaviour Warren follows (reported as `rabbitmq_version`).
const RABBITMQ_COMPAT: &str = "3.10.8";

/// The routes, behind basic authentication.
pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/vhosts", get(access::vhosts))
        .route("/api/queues", get(all_queues))
        .route("/api/queues/{vhost}", get(vhost_queues))
        .route("/api/queues/{vhost}/{name}", get(one_queue))
        .route("/api/queues/{vhost}/{name}/contents", delete(purge))
        .route("/api/exchanges", get(all_exchanges))
        .route("/api/exchanges/{vhost}", get(vhost_exchanges))
        .route("/api/nodes", get(nodes))
        .route("/api/health/checks/alarms", get(alarms_check))
        .route("/api/health/checks/local-alarms", get(local_alarms_check))
        .route("/api/whoami", get(access::whoami))
        .route("/api/users", get(access::users))
        .route(
            "/api/users/without-permissions",
            get(access::users_without_permissions),
        )
        .route(
            "/api/users/{name}",
            get(access::user)
                .put(access::put_user)
                .delete(access::delete_user),
        )
        .route(
            "/api/users/{name}/permissions",
            get(access::user_permissions),
        )
        .route(
            "/api/users/{name}/topic-permissions",
            get(access::user_topic_permissions),
        )
        .route(
            "/api/vhosts/{name}",
            get(access::one_vhost)
                .put(access::put_vhost)
                .delete(access::delete_vhost),
        )
        .route(
            "/api/vhosts/{name}/permissions",
            get(access::vhost_permissions),
        )
        .route(
            "/api/vhosts/{name}/topic-permissions",
            get(access::vhost_topic_permissions),
        )
        .route("/api/permissions", get(access::permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(access::permission)
                .put(access::put_permission)
                .delete(access::delete_permission),
        )
        .route("/api/topic-permissions", get(access::topic_permissions))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(access::topic_permission)
                .put(access::put_topic_permission)
                .delete(access::delete_topic_permission),
        )
        .route("/api/vhost-limits", get(access::vhost_limits))
        .route("/api/vhost-limits/{vhost}", get(access::one_vhost_limits))
        .route(
            "/api/vhost-limits/{vhost}/{name}",
            put(access::put_vhost_limit).delete(access::delete_vhost_limit),
        )
        .route("/api/user-limits", get(access::user_limits))
        .route("/api/user-limits/{user}", get(access::one_user_limits))
        .route(
            "/api/user-limits/{user}/{name}",
            put(access::put_user_limit).delete(access::delete_user_limit),
        )
        .route(
            "/api/definitions",
            get(definitions::export).post(definitions::import),
        )
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

/// The client's address, from either listener.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub std::net::SocketAddr);

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for Peer
{
    fn connect_info(s: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer(*s.remote_addr())
    }
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, crate::tls::HttpsListener>,
    > for Peer
{
    fn connect_info(s: axum::serve::IncomingStream<'_, crate::tls::HttpsListener>) -> Self {
        Peer(*s.remote_addr())
    }
}

/// Serve the API over HTTP on `listener` until the broker shuts down.
pub(crate) async fn serve(listener: tokio::net::TcpListener, state: Shared) {
    let shutdown = state.shutdown.clone();
    let app = router(state).into_make_service_with_connect_info::<Peer>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "management API stopped");
    }
}

/// Serve the API over HTTPS until the broker shuts down.
pub(crate) async fn serve_tls(listener: crate::tls::HttpsListener, state: Shared) {
    let shutdown = state.shutdown.clone();
    let app = router(state).into_make_service_with_connect_info::<Peer>();
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

/// The credentials of an `Authorization: Basic` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (name, password) = decoded.split_once(':')?;
    Some((name.to_string(), password.to_string()))
}

/// RabbitMQ's `not_authorised` body (its spelling, for a user who logged in but may not).
pub(crate) fn not_authorised(reason: &str) -> Response {
    error(StatusCode::UNAUTHORIZED, "not_authorised", reason)
}

/// As RabbitMQ 3.10.8: no credentials, an empty 401; wrong ones, `Login failed`; both with
/// the basic-auth challenge. A user without a management tag, or a loopback-only user from
/// elsewhere, is `not_authorised`.
async fn auth(
    State(state): State<Shared>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    mut req: Request,
    next: Next,
) -> Response {
    let challenge = |mut r: Response| {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
        );
        r
    };
    let Some((name, password)) = basic_credentials(req.headers()) else {
        return challenge(if req.headers().contains_key(header::AUTHORIZATION) {
            error(StatusCode::UNAUTHORIZED, "not_authorized", "Login failed")
        } else {
            StatusCode::UNAUTHORIZED.into_response()
        });
    };
    let user = match state.auth.login(&name, &password) {
        Ok(u) => u,
        Err(why) => {
            tracing::warn!(peer = %peer, user = %name, ?why, "HTTP access denied");
            return challenge(error(
                StatusCode::UNAUTHORIZED,
                "not_authorized",
                "Login failed",
            ));
        }
    };
    if state.config.loopback_only(&user.name) && !peer.ip().to_canonical().is_loopback() {
        tracing::warn!(peer = %peer, user = %name, "HTTP access denied: loopback-only user");
        return not_authorised("User can only log in via localhost");
    }
    if !user.is_management() {
        return not_authorised("Not management user");
    }
    req.extensions_mut().insert(user);
    next.run(req).await
}

type Caller = axum::Extension<Arc<User>>;

/// Whether `user` sees `vhost` (monitoring and administrator: all; others: where they have
/// permissions).
fn may_see(state: &BrokerState, user: &User, vhost: &str) -> bool {
    user.is_monitor()
        || state
            .auth
            .snapshot()
            .permission(vhost, &user.name)
            .is_some()
}

/// The vhosts the caller may see, by name order.
fn visible(state: &BrokerState, user: &User) -> Vec<Arc<VHost>> {
    let auth = state.auth.snapshot();
    let mut v: Vec<Arc<VHost>> = state
        .vhosts
        .iter()
        .filter(|v| user.is_monitor() || auth.permission(v.key(), &user.name).is_some())
        .map(|v| v.value().clone())
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

fn vhost(state: &BrokerState, user: &User, name: &str) -> Option<Arc<VHost>> {
    if !may_see(state, user, name) {
        return None;
    }
    state.vhosts.get(name).map(|v| v.value().clone())
}

/// A field table as RabbitMQ's management API shows it.
pub(crate) fn table_json(t: &FieldTable) -> Value {
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
        "mem_used": crate::state::heap_allocated(),
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
