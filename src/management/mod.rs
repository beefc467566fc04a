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
mod amqp_json;
mod cluster;
mod connections;
mod definitions;
mod listing;
mod node;
mod policies;
mod reset;

pub(crate) use reset::reset;
mod topology;
mod ui;

pub(crate) use amqp_json::{table_json, value_json};
pub(crate) use cluster::{replicate_quorum_queues, start as start_cluster};
pub(crate) use definitions::load_file as load_definitions;
pub(crate) use node::sampler;

use crate::auth::User;
use crate::state::BrokerState;
use crate::stats::Rates;
use crate::vhost::VHost;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use base64::Engine;
use serde_json::{Map, Value, json};
use std::sync::Arc;

pub(crate) type Shared = Arc<BrokerState>;

/// The largest request body accepted (RabbitMQ's `management.http.max_body_size` default).
pub(crate) const MAX_BODY: usize = 20 * 1024 * 1024;

/// The RabbitMQ version whose behaviour Warren follows (reported as `rabbitmq_version`).
const RABBITMQ_COMPAT: &str = "3.10.8";

/// The API's routes, behind basic authentication, and the web UI's files.
pub(crate) fn router(state: Shared) -> Router {
    api(state.clone()).merge(ui::router(state))
}

/// The API's routes, behind basic authentication; in a cluster, changes to definitions go
/// through the metadata group ([`cluster::replicate`]).
fn api(state: Shared) -> Router {
    routes(state.clone())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            cluster::replicate,
        ))
        .layer(middleware::from_fn_with_state(state, auth))
}

/// The API's routes, without authentication (the caller is an `Arc<User>` extension).
fn routes(state: Shared) -> Router {
    Router::new()
        .route("/api/overview", get(node::overview))
        .route("/api/cluster-name", get(node::cluster_name))
        .route("/api/nodes", get(node::nodes))
        .route("/api/nodes/{name}", get(node::one_node))
        .route("/api/extensions", get(node::extensions))
        .route("/api/health/checks/alarms", get(node::alarms_check))
        .route(
            "/api/health/checks/local-alarms",
            get(node::local_alarms_check),
        )
        .route(
            "/api/health/checks/port-listener/{port}",
            get(node::port_listener),
        )
        .route(
            "/api/health/checks/protocol-listener/{protocol}",
            get(node::protocol_listener),
        )
        .route(
            "/api/health/checks/virtual-hosts",
            get(node::virtual_hosts_check),
        )
        .route(
            "/api/health/checks/node-is-quorum-critical",
            get(node::single_node_ok),
        )
        .route(
            "/api/health/checks/node-is-mirror-sync-critical",
            get(node::single_node_ok),
        )
        .route(
            "/api/health/checks/certificate-expiration/{n}/{unit}",
            get(node::certificate_expiration),
        )
        .route("/api/aliveness-test/{vhost}", get(topology::aliveness))
        .route("/api/connections", get(connections::connections))
        .route("/api/connections/", get(connections::connections))
        .route(
            "/api/connections/{name}",
            get(connections::one_connection).delete(connections::close_connection),
        )
        .route(
            "/api/connections/{name}/channels",
            get(connections::connection_channels),
        )
        .route(
            "/api/connections/username/{user}",
            get(connections::user_connections).delete(connections::close_user_connections),
        )
        .route(
            "/api/vhosts/{vhost}/connections",
            get(connections::vhost_connections),
        )
        .route("/api/channels", get(connections::channels))
        .route("/api/channels/{name}", get(connections::one_channel))
        .route(
            "/api/vhosts/{vhost}/channels",
            get(connections::vhost_channels),
        )
        .route("/api/consumers", get(connections::consumers))
        .route("/api/consumers/{vhost}", get(connections::vhost_consumers))
        .route("/api/queues", get(topology::all_queues))
        .route("/api/queues/{vhost}", get(topology::vhost_queues))
        .route(
            "/api/queues/{vhost}/{name}",
            get(topology::one_queue)
                .put(topology::put_queue)
                .delete(topology::delete_queue),
        )
        .route(
            "/api/queues/{vhost}/{name}/contents",
            delete(topology::purge),
        )
        .route(
            "/api/queues/{vhost}/{name}/get",
            post(topology::get_messages),
        )
        .route(
            "/api/queues/{vhost}/{name}/bindings",
            get(topology::queue_bindings),
        )
        .route("/api/exchanges", get(topology::all_exchanges))
        .route("/api/exchanges/{vhost}", get(topology::vhost_exchanges))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(topology::one_exchange)
                .put(topology::put_exchange)
                .delete(topology::delete_exchange),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/publish",
            post(topology::publish),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(topology::exchange_bindings_source),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(topology::exchange_bindings_destination),
        )
        .route("/api/bindings", get(topology::all_bindings))
        .route("/api/bindings/{vhost}", get(topology::vhost_bindings))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}",
            get(topology::bindings_between).post(topology::bind),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}/{props}",
            get(topology::one_binding).delete(topology::unbind),
        )
        .route("/api/policies", get(policies::policies))
        .route("/api/policies/{vhost}", get(policies::vhost_policies))
        .route(
            "/api/policies/{vhost}/{name}",
            get(policies::policy)
                .put(policies::put_policy)
                .delete(policies::delete_policy),
        )
        .route("/api/operator-policies", get(policies::operator_policies))
        .route(
            "/api/operator-policies/{vhost}",
            get(policies::vhost_operator_policies),
        )
        .route(
            "/api/operator-policies/{vhost}/{name}",
            get(policies::operator_policy)
                .put(policies::put_operator_policy)
                .delete(policies::delete_operator_policy),
        )
        .route("/api/parameters", get(policies::parameters))
        .route(
            "/api/parameters/{component}",
            get(policies::component_parameters),
        )
        .route(
            "/api/parameters/{component}/{vhost}",
            get(policies::vhost_component_parameters),
        )
        .route(
            "/api/parameters/{component}/{vhost}/{name}",
            get(policies::parameter)
                .put(policies::put_parameter)
                .delete(policies::delete_parameter),
        )
        .route("/api/shovels", get(policies::shovels))
        .route("/api/warren/replay/{vhost}/{queue}", post(policies::replay))
        .route("/api/warren/reset", post(reset::reset_endpoint))
        .route("/api/warren/cluster", get(cluster::status))
        .route("/api/warren/cluster/members", post(cluster::join))
        .route("/api/warren/cluster/members/{name}", delete(cluster::leave))
        .route(
            "/api/warren/clock",
            get(reset::clock).post(reset::advance_clock),
        )
        .route(
            "/api/warren/dead-letters/{vhost}/{queue}",
            get(topology::dead_letters),
        )
        .route("/api/shovels/{vhost}", get(policies::vhost_shovels))
        .route("/api/global-parameters", get(policies::global_parameters))
        .route(
            "/api/global-parameters/{name}",
            get(policies::global_parameter)
                .put(policies::put_global_parameter)
                .delete(policies::delete_global_parameter),
        )
        .route("/api/vhosts", get(access::vhosts))
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
        .route(
            "/api/definitions/{vhost}",
            get(definitions::export_vhost).post(definitions::import_vhost),
        )
        // RabbitMQ's `management.http.max_body_size` (20 MiB): definitions files of large
        // deployments exceed axum's default of 2 MiB.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
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
    tokio::spawn(sampler(state.clone()));
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
    tokio::spawn(sampler(state.clone()));
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

/// `message_stats` (or churn rates): each counter with its `*_details.rate` from the last
/// sample of object `key`.
pub(crate) fn details(rates: &Rates, key: &str, values: &[(&'static str, u64)]) -> Value {
    let mut m = Map::new();
    for (name, v) in values {
        m.insert((*name).to_string(), json!(v));
        m.insert(
            format!("{name}_details"),
            json!({"rate": rates.rate(key, name)}),
        );
    }
    Value::Object(m)
}
