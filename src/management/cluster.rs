//! The broker in a cluster: changes to definitions made through the management API are
//! committed by the metadata Raft group ([`crate::cluster`]) and applied on every node by
//! running the same request through the node's own routes, as the caller. Every node then
//! makes the same change with the same checks (the leader's answer is the caller's), and
//! nothing else needs to know about the cluster. A snapshot is the definitions export.

use super::{MAX_BODY, Shared};
use crate::cluster::{Apply, Cluster, Command, Options, ProposeError, Reply, Timing};
use crate::state::BrokerState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use std::io;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tower::ServiceExt;

/// How long a change waits for the cluster to commit it.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Start this broker's member of the cluster.
pub(crate) async fn start(
    state: &Arc<BrokerState>,
    listener: tokio::net::TcpListener,
) -> io::Result<Arc<Cluster>> {
    let c = &state.config.cluster;
    let seeds = c
        .seeds
        .iter()
        .map(|s| crate::cluster::parse_seed(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // A peer named in this node's seeds is dialled at the address given there (the one in
    // the membership is what the forming node's seeds said); others at their membership's.
    let by_name: std::collections::HashMap<String, String> = seeds
        .iter()
        .map(|m| (m.name.clone(), m.addr.clone()))
        .collect();
    let resolve: crate::cluster::Resolve = Arc::new(move |_, m: &crate::cluster::Member| {
        by_name
            .get(&m.name)
            .cloned()
            .unwrap_or_else(|| m.addr.clone())
    });
    Cluster::start(Options {
        cluster: state.config.cluster_name.clone(),
        secret: c.secret.clone(),
        name: c.node.clone(),
        seeds,
        dir: state.config.data_dir.join("cluster"),
        listener,
        applier: Arc::new(HttpApply {
            state: Arc::downgrade(state),
        }),
        resolve: Some(resolve),
        timing: Timing::default(),
        snapshot_every: 1000,
        tls: if c.tls {
            let (acceptor, connector) = crate::tls::cluster(&state.config.tls)?;
            Some(crate::cluster::Tls {
                acceptor,
                connector,
            })
        } else {
            None
        },
    })
    .await
}

/// Quorum queues are replicated: every vhost tells this node's cluster member of those
/// created and removed (the ones already here are replicated now).
pub(crate) fn replicate_quorum_queues(state: &Arc<BrokerState>) {
    let Some(c) = state.cluster.get() else { return };
    let r: Arc<dyn crate::vhost::Replication> = Arc::new(QuorumReplication {
        cluster: Arc::downgrade(c),
    });
    let _ = state.replication.set(r.clone());
    for v in state.vhosts.iter() {
        let _ = v.replication.set(r.clone());
        for q in v.queues.iter() {
            if q.args.quorum && q.def.durable {
                crate::queue::replica::Replica::attach(c, &q);
            }
        }
    }
}

struct QuorumReplication {
    cluster: Weak<Cluster>,
}

impl crate::vhost::Replication for QuorumReplication {
    fn queue_created(&self, _: &crate::vhost::VHost, q: &Arc<crate::queue::Queue>) {
        if let Some(c) = self.cluster.upgrade() {
            crate::queue::replica::Replica::attach(&c, q);
        }
    }

    fn changed(&self, v: &crate::vhost::VHost, change: crate::vhost::Change) {
        // Made over AMQP on this node (a change being applied was replicated already).
        if crate::cluster::applying() {
            return;
        }
        let Some(c) = self.cluster.upgrade() else {
            return;
        };
        let Ok(change) = serde_json::to_value(&change) else {
            return;
        };
        propose_later(
            c,
            Command::Topology {
                vhost: v.name.clone(),
                change,
            },
        );
    }
}

/// Make on this node a topology change made over AMQP on another. Refusals (an object that
/// exists already, or is gone) change nothing: the node that made it answered its client.
fn apply_topology(state: &BrokerState, vhost: &str, change: Value) -> Reply {
    use crate::vhost::Change;
    let (Some(v), Ok(change)) = (state.vhost(vhost), serde_json::from_value::<Change>(change))
    else {
        return Reply::default();
    };
    let r = match change {
        Change::Exchange(def) => {
            let kind = def.kind.as_str().to_string();
            v.declare_exchange(def, &kind, false)
        }
        Change::ExchangeDeleted(name) => v.delete_exchange(&name, false),
        Change::Queue(def) => v.declare_queue(def, false, false, 0).map(|_| ()),
        Change::QueueDeleted(name) => v.delete_queue(&name, false, false, 0).map(|_| ()),
        Change::Bind(b) => v.bind(b, 0),
        Change::Unbind(b) => v.unbind(b, 0),
    };
    if let Err(e) = r {
        tracing::debug!(error = %e.detail(), "cluster: a replicated topology change was refused here");
    }
    Reply::default()
}

/// Propose a change made over AMQP on this node, without waiting for it (the channel that
/// made it answered already).
fn propose_later(c: Arc<Cluster>, cmd: Command) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        if let Err(e) = c.propose(cmd, PROPOSE_TIMEOUT).await {
            tracing::warn!(error = ?e, "cluster: a queue declared or deleted over AMQP was not replicated");
        }
    });
}

/// Whether a request changes definitions (and so goes through the cluster). Purging,
/// getting and publishing messages, closing connections and Warren's own endpoints stay local.
fn replicated(method: &Method, path: &str) -> bool {
    if method == Method::GET || method == Method::HEAD || method == Method::OPTIONS {
        return false;
    }
    const PREFIXES: &[&str] = &[
        "/api/queues/",
        "/api/exchanges/",
        "/api/bindings/",
        "/api/policies/",
        "/api/operator-policies/",
        "/api/parameters/",
        "/api/global-parameters/",
        "/api/users/",
        "/api/vhosts/",
        "/api/permissions/",
        "/api/topic-permissions/",
        "/api/vhost-limits/",
        "/api/user-limits/",
        "/api/definitions",
    ];
    PREFIXES.iter().any(|p| path.starts_with(p))
        && !path.ends_with("/contents")
        && !path.ends_with("/get")
        && !path.ends_with("/publish")
}

/// In a cluster, commit a change through the metadata group and answer with the leader's
/// outcome; otherwise (or for anything else) serve it here.
pub(super) async fn replicate(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let Some(cluster) = state.cluster.get() else {
        return next.run(req).await;
    };
    if !replicated(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let Some(user) = req.extensions().get::<Arc<crate::auth::User>>().cloned() else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
    };
    let Ok(body) = String::from_utf8(body.to_vec()) else {
        return super::error(StatusCode::BAD_REQUEST, "bad_request", "body is not UTF-8");
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let cmd = Command::Http {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        content_type,
        body,
        user: user.name.clone(),
    };
    match cluster.propose(cmd, PROPOSE_TIMEOUT).await {
        Ok(reply) => response_of(&reply),
        Err(ProposeError::NotLeader(_)) | Err(ProposeError::Unavailable(_)) => super::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster_unavailable",
            "the change was not committed: no majority of the cluster's nodes answered in time",
        ),
    }
}

fn response_of(reply: &Reply) -> Response {
    if let Some(e) = &reply.error {
        return super::error(StatusCode::INTERNAL_SERVER_ERROR, "cluster_apply", e);
    }
    let status = reply.data["status"]
        .as_u64()
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .unwrap_or(StatusCode::NO_CONTENT);
    let body = reply.data["body"].as_str().unwrap_or_default().to_string();
    let mut r = (status, body).into_response();
    if let Some(ct) = reply.data["content_type"].as_str()
        && let Ok(v) = ct.parse()
    {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn not_clustered() -> Response {
    super::error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "this node is not clustered ([cluster] enabled = false)",
    )
}

/// `GET /api/warren/cluster`: the metadata group as this node sees it.
pub(super) async fn status(State(state): State<Shared>) -> Response {
    match state.cluster.get() {
        Some(c) => axum::Json(c.status()).into_response(),
        None => not_clustered(),
    }
}

/// `POST /api/warren/cluster/members` `{"name": "warren-4", "address": "host:port"}`: add a
/// node (a learner until it has caught up, then a voter). Administrators only.
pub(super) async fn join(
    State(state): State<Shared>,
    caller: super::Caller,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if !caller.is_admin() {
        return super::not_authorised("Not administrator user");
    }
    let Some(c) = state.cluster.get() else {
        return not_clustered();
    };
    let (Some(name), Some(addr)) = (body["name"].as_str(), body["address"].as_str()) else {
        return super::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "name and address (host:port) are required",
        );
    };
    let seed = format!("{name}@{addr}");
    let member = match crate::cluster::parse_seed(&seed) {
        Ok(m) => m,
        Err(e) => return super::error(StatusCode::BAD_REQUEST, "bad_request", &e),
    };
    change(c, crate::cluster::Change::Join(member)).await
}

/// `DELETE /api/warren/cluster/members/{name}`: remove a member (RabbitMQ's
/// `forget_cluster_node`). Administrators only.
pub(super) async fn leave(
    State(state): State<Shared>,
    caller: super::Caller,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    if !caller.is_admin() {
        return super::not_authorised("Not administrator user");
    }
    let Some(c) = state.cluster.get() else {
        return not_clustered();
    };
    if !c.members().iter().any(|m| m.name == name) {
        return super::not_found();
    }
    change(
        c,
        crate::cluster::Change::Leave(crate::cluster::node_id(&name)),
    )
    .await
}

async fn change(c: &Cluster, change: crate::cluster::Change) -> Response {
    match c.change(change, Duration::from_secs(30)).await {
        Ok(Reply { error: None, .. }) => StatusCode::NO_CONTENT.into_response(),
        Ok(Reply { error: Some(e), .. }) => {
            super::error(StatusCode::BAD_REQUEST, "bad_request", &e)
        }
        Err(_) => super::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster_unavailable",
            "the change was not committed: no majority of the cluster's nodes answered in time",
        ),
    }
}

/// Applies committed commands to this broker.
struct HttpApply {
    state: Weak<BrokerState>,
}

impl Apply for HttpApply {
    fn apply(&self, _index: u64, cmd: Command) -> BoxFuture<'static, Reply> {
        let state = self.state.upgrade();
        Box::pin(async move {
            let Some(state) = state else {
                return Reply {
                    error: Some("node stopping".into()),
                    ..Default::default()
                };
            };
            crate::cluster::as_applied(async move {
                match cmd {
                    Command::Http {
                        method,
                        path,
                        content_type,
                        body,
                        user,
                    } => apply_http(&state, &method, &path, &content_type, body, &user).await,
                    Command::Definitions(v) => import(&state, v).await,
                    Command::Topology { vhost, change } => apply_topology(&state, &vhost, change),
                    Command::Queue(_) => Reply::default(),
                }
            })
            .await
        })
    }

    fn snapshot(&self) -> BoxFuture<'static, Vec<u8>> {
        let state = self.state.upgrade();
        Box::pin(async move {
            state
                .map(|s| {
                    serde_json::to_vec(&super::definitions::export_all(&s)).unwrap_or_default()
                })
                .unwrap_or_default()
        })
    }

    fn install(&self, data: Vec<u8>) -> BoxFuture<'static, ()> {
        let state = self.state.upgrade();
        Box::pin(crate::cluster::as_applied(async move {
            let Some(state) = state else { return };
            match serde_json::from_slice::<Value>(&data) {
                Ok(v) => {
                    let r = import(&state, v).await;
                    if let Some(e) = r.error {
                        tracing::warn!(error = %e, "cluster: snapshot import failed");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cluster: snapshot unreadable"),
            }
        }))
    }
}

async fn import(state: &Arc<BrokerState>, v: Value) -> Reply {
    let defs = match serde_json::from_value(v) {
        Ok(d) => d,
        Err(e) => {
            return Reply {
                error: Some(e.to_string()),
                ..Default::default()
            };
        }
    };
    match super::definitions::import_definitions(state, defs, None).await {
        Ok(()) => Reply::default(),
        Err(e) => Reply {
            error: Some(e.reason().to_string()),
            ..Default::default()
        },
    }
}

/// Run a committed request through this node's routes, as its caller.
async fn apply_http(
    state: &Arc<BrokerState>,
    method: &str,
    path: &str,
    content_type: &str,
    body: String,
    user: &str,
) -> Reply {
    let Some(caller) = state.auth.user(user) else {
        // The caller was deleted by an earlier command; the leader's answer says the same.
        return Reply {
            error: None,
            data: json!({"status": 401, "body": json!({"error": "not_authorised", "reason": "Login failed"}).to_string(), "content_type": "application/json"}),
        };
    };
    let mut req = match Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
    {
        Ok(r) => r,
        Err(e) => {
            return Reply {
                error: Some(e.to_string()),
                ..Default::default()
            };
        }
    };
    req.extensions_mut().insert(caller);
    let resp = match super::routes(state.clone()).oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Reply {
        error: None,
        data: json!({"status": status, "body": body, "content_type": ct}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_definition_changes_are_replicated() {
        let put = Method::PUT;
        let post = Method::POST;
        let del = Method::DELETE;
        assert!(replicated(&put, "/api/queues/%2F/q"));
        assert!(replicated(&del, "/api/exchanges/%2F/x"));
        assert!(replicated(&post, "/api/bindings/%2F/e/x/q/q"));
        assert!(replicated(&post, "/api/definitions"));
        assert!(replicated(&put, "/api/users/u"));
        assert!(!replicated(&Method::GET, "/api/queues/%2F/q"));
        assert!(!replicated(&del, "/api/queues/%2F/q/contents"));
        assert!(!replicated(&post, "/api/queues/%2F/q/get"));
        assert!(!replicated(&post, "/api/exchanges/%2F/x/publish"));
        assert!(!replicated(&del, "/api/connections/c"));
        assert!(!replicated(&post, "/api/warren/reset"));
    }
}
