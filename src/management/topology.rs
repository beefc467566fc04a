//! Queues, exchanges and bindings over HTTP: list, show, declare (`PUT`), delete, bind and
//! unbind, publish to an exchange and get messages from a queue, with RabbitMQ 3.10.8's
//! status codes and error bodies (recorded in `tests/fixtures/rabbitmq-3.10.8-mgmt/`).
//! Declarations go through the same vhost functions as AMQP's, with the caller's permissions
//! checked as AMQP checks them; an HTTP request acts as connection 0 (it owns no exclusive
//! queue).

// Handlers stop early with the error response itself: a cold path, once per request.
#![allow(clippy::result_large_err)]

use super::amqp_json::{arguments, json_properties, properties_json, table_json};
use super::listing::ListQuery;
use super::{Caller, Shared, details, error, not_found, visible};
use crate::auth::User;
use crate::auth::perms::Perm;
use crate::defs::{BindingDef, Destination, ExchangeDef, ExchangeKind, QueueDef};
use crate::protocol::{AmqpError, ReplyCode};
use crate::queue::Queue;
use crate::state::BrokerState;
use crate::vhost::VHost;
use amq_protocol::types::AMQPValue;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// The connection id HTTP requests act as (connections are numbered from 1).
const HTTP_CONN: u64 = 0;

fn bad_request(reason: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", reason)
}

fn access_refused() -> Response {
    super::not_authorised("Access refused.")
}

/// RabbitMQ's management API answers a failed AMQP operation with 400 and its text.
fn amqp_error(e: AmqpError) -> Response {
    match e.code {
        ReplyCode::NotFound => error(StatusCode::NOT_FOUND, "not_found", e.detail()),
        ReplyCode::AccessRefused => access_refused(),
        _ => bad_request(e.detail()),
    }
}

/// The caller's permission `perm` on `name` in `vhost` (as AMQP checks it).
fn check(
    state: &BrokerState,
    user: &User,
    vhost: &str,
    perm: Perm,
    name: &str,
) -> Result<(), Response> {
    let data = state.auth.snapshot();
    match data.permission(vhost, &user.name) {
        Some(p) if p.allows(perm, name) => Ok(()),
        _ => Err(access_refused()),
    }
}

/// The vhost, if the caller may see it (404 otherwise).
fn vhost_of(state: &BrokerState, user: &User, name: &str) -> Result<Arc<VHost>, Response> {
    super::vhost(state, user, name)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "Object Not Found", "Not Found"))
}

/// Wait until the definitions journal has synced the last topology change (as AMQP replies
/// wait: a 2xx means durable).
async fn synced(v: &VHost) {
    if let Some((seq, mut rx)) = v.definitions_pending() {
        let _ = rx.wait_for(|s| s.seq >= seq || s.failing).await;
    }
}

fn done(r: Result<Response, Response>) -> Response {
    r.unwrap_or_else(|e| e)
}

// ---- queues ----

/// A queue as `GET /api/queues` shows it.
pub(super) fn queue_json(state: &BrokerState, q: &Queue) -> Value {
    let (ready, unacked, consumers, memory) = q.stats();
    let kind = match q.def.arguments.inner().get("x-queue-type") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        _ => "classic".into(),
    };
    let key = format!("q:{}\0{}", q.vhost, q.name);
    let depth = format!("qd:{}\0{}", q.vhost, q.name);
    let rate = |n: &str| json!({"rate": state.rates.rate(&depth, n)});
    let counts = q.counts();
    let applied = q.applied_policy();
    let mut v = json!({
        "name": &*q.name,
        "vhost": &*q.vhost,
        "durable": q.def.durable,
        "auto_delete": q.def.auto_delete,
        "exclusive": q.def.exclusive,
        "arguments": table_json(&q.def.arguments),
        "type": kind,
        "state": "running",
        "node": state.config.cluster_name,
        "messages": ready as u64 + unacked as u64,
        "messages_details": rate("messages"),
        "messages_ready": ready,
        "messages_ready_details": rate("messages_ready"),
        "messages_unacknowledged": unacked,
        "messages_unacknowledged_details": rate("messages_unacknowledged"),
        "consumers": consumers,
        // Warren delivers whenever a consumer has credit: full capacity while there is one.
        "consumer_utilisation": if consumers > 0 { 1.0 } else { 0.0 },
        "consumer_capacity": if consumers > 0 { 1.0 } else { 0.0 },
        "exclusive_consumer_tag": null,
        "single_active_consumer_tag": null,
        "memory": memory,
        "policy": applied.policy,
        "operator_policy": applied.operator_policy,
        "effective_policy_definition": applied.definition,
        "recoverable_slaves": null,
    });
    if counts != Default::default() {
        v["message_stats"] = details(&state.rates, &key, &counts.named());
    }
    // A replicated quorum queue: where its group's members and leader are (RabbitMQ's
    // fields; `node` is the leader's).
    if let Some(r) = q.replica() {
        let (leader, members, mut online) = r.placement();
        online.sort();
        v["leader"] = json!(leader);
        v["node"] = json!(leader);
        v["members"] = json!(members);
        v["online"] = json!(online);
    }
    v
}

fn queues_of(state: &BrokerState, v: &VHost) -> Vec<Value> {
    let mut qs: Vec<Arc<Queue>> = v.queues.iter().map(|q| q.value().clone()).collect();
    qs.sort_by(|a, b| a.name.cmp(&b.name));
    qs.iter().map(|q| queue_json(state, q)).collect()
}

pub(super) async fn all_queues(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Query(q): Query<ListQuery>,
) -> Response {
    let list = visible(&state, &user)
        .iter()
        .flat_map(|v| queues_of(&state, v))
        .collect();
    q.respond(list)
}

pub(super) async fn vhost_queues(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(vh): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    match vhost_of(&state, &user, &vh) {
        Ok(v) => q.respond(queues_of(&state, &v)),
        Err(r) => r,
    }
}

pub(super) async fn one_queue(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vh, name)): Path<(String, String)>,
) -> Response {
    done((|| {
        let v = vhost_of(&state, &user, &vh)?;
        let q = v.queue(&name).map_err(|_| not_found())?;
        let mut j = queue_json(&state, &q);
        j["consumer_details"] = Value::Array(super::connections::queue_consumers(&state, &q));
        j["deliveries"] = json!([]);
        j["incoming"] = json!([]);
        Ok(axum::Json(j).into_response())
    })())
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct QueueBody {
    durable: Option<bool>,
    auto_delete: Option<bool>,
    arguments: Option<Value>,
}

pub(super) async fn put_queue(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vh, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let b: QueueBody = if body.is_empty() {
        QueueBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return bad_request(&e.to_string()),
        }
    };
    let v = match vhost_of(&state, &user, &vh) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Err(r) = check(&state, &user, &vh, Perm::Configure, &name) {
        return r;
    }
    let arguments = match arguments(b.arguments.as_ref()) {
        Ok(a) => a,
        Err(e) => return bad_request(&e),
    };
    if !v.queues.contains_key(&name)
        && let Some(limit) = state
            .auth
            .snapshot()
            .vhosts
            .get(&vh)
            .and_then(|r| r.limit("max-queues"))
        && v.queues.len() as u64 >= limit
    {
        return bad_request(&format!(
            "cannot declare queue '{name}': queue limit in vhost '{vh}' ({limit}) is reached"
        ));
    }
    let def = QueueDef {
        name: name.clone(),
        durable: b.durable.unwrap_or(true),
        exclusive: false,
        auto_delete: b.auto_delete.unwrap_or(false),
        arguments,
    };
    let r = v.declare_queue(def, false, false, HTTP_CONN);
    match r {
        Ok(d) => {
            synced(&v).await;
            if d.created {
                StatusCode::CREATED.into_response()
            } else {
                StatusCode::NO_CONTENT.into_response()
            }
        }
        Err(e) => amqp_error(e),
    }
}

#[derive(Deserialize, Default)]
pub(super) struct DeleteQuery {
    #[serde(rename = "if-empty")]
    if_empty: Option<String>,
    #[serde(rename = "if-unused")]
    if_unused: Option<String>,
}

pub(super) async fn delete_queue(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vh, name)): Path<(String, String)>,
    Query(dq): Query<DeleteQuery>,
) -> Response {
    let v = match vhost_of(&state, &user, &vh) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !v.queues.contains_key(&name) {
        return not_found();
    }
    if let Err(r) = check(&state, &user, &vh, Perm::Configure, &name) {
        return r;
    }
    let yes = |o: &Option<String>| o.as_deref() == Some("true");
    let q = match v.queue(&name) {
        Ok(q) => q,
        Err(_) => return not_found(),
    };
    // RabbitMQ deletes another connection's exclusive queue over HTTP too.
    let owner = q.owner.unwrap_or(HTTP_CONN);
    match v.delete_queue(&name, yes(&dq.if_unused), yes(&dq.if_empty), owner) {
        Ok(_) => {
            synced(&v).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => amqp_error(e),
    }
}

pub(super) async fn purge(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vh, name)): Path<(String, String)>,
) -> Response {
    done((|| {
        let v = vhost_of(&state, &user, &vh)?;
        let q = v.queue(&name).map_err(|_| not_found())?;
        check(&state, &user, &vh, Perm::Read, &name)?;
        q.purge();
        Ok(StatusCode::NO_CONTENT.into_response())
    })())
}

#[derive(Deserialize)]
pub(super) struct GetBody {
    count: Option<u64>,
    ackmode: Option<String>,
    encoding: Option<String>,
    truncate: Option<u64>,
}

/// `POST /api/queues/{vhost}/{name}/get`: take up to `count` messages, then settle them all
/// as `ackmode` says (requeued ones come back marked redelivered, as in RabbitMQ).
pub(super) async fn get_messages(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vh, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let b: GetBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad_request(&e.to_string()),
    };
    done((|| {
        let v = vhost_of(&state, &user, &vh)?;
        let ackmode = b.ackmode.as_deref().unwrap_or("ack_requeue_true");
        if ![
            "ack_requeue_true",
            "ack_requeue_false",
            "reject_requeue_true",
            "reject_requeue_false",
        ]
        .contains(&ackmode)
        {
            // RabbitMQ 3.10.8 crashes on an unknown ackmode: a 500 with an empty body.
            return Err(StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
        let base64_only = match b.encoding.as_deref().unwrap_or("auto") {
            "auto" => false,
            "base64" => true,
            _ => {
                return Err(bad_request(
                    "Unsupported encoding. Please use auto or base64.",
                ));
            }
        };
        let q = v.queue(&name).map_err(|_| {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("NOT_FOUND - no queue '{name}' in vhost '{vh}'"),
            )
        })?;
        check(&state, &user, &vh, Perm::Read, &name)?;
        let mut out = Vec::new();
        let mut seqs = Vec::new();
        for _ in 0..b.count.unwrap_or(1) {
            let Some((entry, left)) = q.get(false) else {
                break;
            };
            seqs.push(entry.seq);
            let raw = crate::queue::dead_letter::delivered_properties(&q, &entry, true);
            let props = amq_protocol::protocol::basic::parse_properties(&raw[..])
                .map(|(_, p)| properties_json(&p))
                .unwrap_or_else(|_| json!({}));
            let body = &entry.msg.body;
            let shown = match b.truncate {
                Some(n) if (n as usize) < body.len() => &body[..n as usize],
                _ => &body[..],
            };
            let (payload, encoding) = match std::str::from_utf8(shown) {
                Ok(s) if !base64_only => (s.to_string(), "string"),
                _ => (
                    base64::engine::general_purpose::STANDARD.encode(shown),
                    "base64",
                ),
            };
            out.push(json!({
                "payload_bytes": body.len(),
                "redelivered": entry.redelivered,
                "exchange": String::from_utf8_lossy(entry.msg.exchange()),
                "routing_key": String::from_utf8_lossy(entry.msg.routing_key()),
                "message_count": left,
                "properties": props,
                "payload": payload,
                "payload_encoding": encoding,
            }));
        }
        match ackmode {
            "ack_requeue_false" => q.ack(&seqs),
            "reject_requeue_false" => q.discard(&seqs),
            _ => q.requeue(&seqs),
        }
        Ok(axum::Json(out).into_response())
    })())
}

// ---- exchanges ----

fn exchange_json(v: &VHost, x: &crate::exchange::Exchange) -> Value {
    json!({
        "name": x.def.name,
        "vhost": v.name.as_str(),
        "type": x.def.kind.as_str(),
        "durable": x.def.durable,
        "auto_delete": x.def.auto_delete,
        "internal": x.def.internal,
        "arguments": table_json(&x.def.arguments),
        "user_who_performed_action": "rmq-internal",
        "policy": x.policy_name(),
    })
}

fn exchanges_of(v: &VHost) -> Vec<Value> {
    let mut xs: Vec<_> = v.exchanges.iter().map(|x| x.value().clone()).collect();
    xs.sort_by(|a, b| a.def.name.cmp(&b.def.name));
    xs.iter().map(|x| exchange_json(v, x)).collect()
}

pub(super) async fn all_exchanges(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Query(q): Query<ListQuery>,
) -> Response {
    let list = visible(&state, &user)
        .iter()
        .flat_map(|v| exchanges_of(v))
        .collect();
    q.respond(list)
}

pub(super) async fn vhost_exchanges(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(vh): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    match vhost_of(&state, &user, &vh) {
        Ok(v) => q.respond(exchanges_of(&v)),
        Err(r) => r,
    }
}

/// The default exchange is `amq.default` in URLs.
fn exchange_name(name: &str) -> &str {
    if name == "amq.default" { "" } else { name }
}

pub(super) async fn one_exchange(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vh, name)): Path<(String, String)>,
) -> Response {
    done((|| {
        let v = vhost_of(&state, &user, &vh)?;
        let x = v.exchange(exchange_name(&name)).map_err(|_| not_found())?;
        let mut j = exchange_json(&v, &x);
        j["incoming"] = json!([]);
        j["outgoing"] = json!([]);
        Ok(axum::Json(j).into_response())
    })())
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct ExchangeBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    durable: Option<bool>,
    auto_delete: Option<bool>,
    internal: Option<bool>,
    arguments: Option<Value>,
}

pub(super) async fn put_exchange(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vh, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let b: ExchangeBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad_request(&e.to_string()),
    };
    let v = match vhost_of(&state, &user, &vh) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(kind_name) = b.kind else {
        return bad_request("[{key_missing,type}]");
    };
    let Some(kind) = ExchangeKind::parse(&kind_name) else {
        return bad_request(&format!("unknown exchange type '{kind_name}'"));
    };
    if name.starts_with("amq.") && !v.exchanges.contains_key(&name) {
        return access_refused();
    }
    if let Err(r) = check(&state, &user, &vh, Perm::Configure, &name) {
        return r;
    }
    let arguments = match arguments(b.arguments.as_ref()) {
        Ok(a) => a,
        Err(e) => return bad_request(&e),
    };
    let existed = v.exchanges.contains_key(&name);
    let def = ExchangeDef {
        name,
        kind,
        durable: b.durable.unwrap_or(true),
        auto_delete: b.auto_delete.unwrap_or(false),
        internal: b.internal.unwrap_or(false),
        arguments,
    };
    match v.declare_exchange(def, &kind_name, false) {
        Ok(()) => {
            synced(&v).await;
            if existed {
                StatusCode::NO_CONTENT.into_response()
            } else {
                StatusCode::CREATED.into_response()
            }
        }
        Err(e) => amqp_error(e),
    }
}

#[derive(Deserialize, Default)]
pub(super) struct UnusedQuery {
    #[serde(rename = "if-unused")]
    if_unused: Option<String>,
}

pub(super) async fn delete_exchange(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vh, name)): Path<(String, String)>,
    Query(uq): Query<UnusedQuery>,
) -> Response {
    let v = match vhost_of(&state, &user, &vh) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let name = exchange_name(&name).to_string();
    if name.is_empty() || name.starts_with("amq.") {
        return access_refused();
    }
    if !v.exchanges.contains_key(&name) {
        return not_found();
    }
    if let Err(r) = check(&state, &user, &vh, Perm::Configure, &name) {
        return r;
    }
    match v.delete_exchange(&name, uq.if_unused.as_deref() == Some("true")) {
        Ok(()) => {
            synced(&v).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => amqp_error(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct PublishBody {
    properties: Option<Value>,
    routing_key: String,
    payload: String,
    payload_encoding: Option<String>,
}

/// `POST /api/exchanges/{vhost}/{name}/publish`: `{"routed": bool}`.
pub(super) async fn publish(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vh, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let b: PublishBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad_request(&e.to_string()),
    };
    done((|| {
        let v = vhost_of(&state, &user, &vh)?;
        let xname = exchange_name(&name);
        let payload = match b.payload_encoding.as_deref().unwrap_or("string") {
            "string" => bytes::Bytes::from(b.payload.into_bytes()),
            "base64" => base64::engine::general_purpose::STANDARD
                .decode(b.payload.as_bytes())
                .map(bytes::Bytes::from)
                .map_err(|_| bad_request("payload is not valid base64"))?,
            other => {
                // Recorded: the reason is a list here, not a string.
                return Err((
                    StatusCode::BAD_REQUEST,
                    axum::Json(json!({"error": "bad_request",
                                      "reason": ["unsupported_encoding", other]})),
                )
                    .into_response());
            }
        };
        let props = json_properties(b.properties.as_ref()).map_err(|e| bad_request(&e))?;
        let shown = if xname.is_empty() {
            "amq.default"
        } else {
            xname
        };
        check(&state, &user, &vh, Perm::Write, shown)?;
        let x = v.exchange(xname).map_err(|e| bad_request(&e.to_string()))?;
        if x.def.internal {
            return Err(bad_request(&format!(
                "403 ACCESS_REFUSED - cannot publish to internal {}",
                crate::args::rs("exchange", xname, &vh)
            )));
        }
        let expiration = match props.expiration() {
            Some(e) => Some(e.as_str().parse::<u64>().map_err(|_| {
                bad_request(&format!(
                    "406 PRECONDITION_FAILED - invalid expiration '{}': no_integer",
                    e.as_str()
                ))
            })?),
            None => None,
        };
        let rk = b.routing_key.as_bytes();
        let headers = props.headers().clone();
        let mut msg = crate::message::Message::new(
            xname.as_bytes(),
            rk,
            &crate::protocol::codec::encode_properties(&props),
            payload,
        );
        msg.persistent = props.delivery_mode() == &Some(2);
        msg.priority = props.priority().unwrap_or(0);
        msg.set_expiration(expiration);
        // A delayed message exchange keeps it: routed to no queue now, as the plugin says.
        let Err(msg) = v.delay(&x, msg, headers.as_ref(), &mut None) else {
            return Ok(axum::Json(json!({"routed": false})).into_response());
        };
        let queues = v.route(&x, &[rk], headers.as_ref());
        if queues.is_empty() {
            return Ok(axum::Json(json!({"routed": false})).into_response());
        }
        v.publish_to(&queues, msg, None);
        Ok(axum::Json(json!({"routed": true})).into_response())
    })())
}

// ---- bindings ----

/// RabbitMQ's `properties_key`: the routing key, with `~` and a hash of the arguments when
/// there are any (Warren's hash differs from RabbitMQ's; clients read it from listings).
fn props_key(b: &BindingDef) -> String {
    if b.arguments.inner().is_empty() {
        return b.routing_key.clone();
    }
    let text = table_json(&b.arguments).to_string();
    // FNV-1a, 32 bits.
    let mut h: u32 = 0x811c_9dc5;
    for byte in text.bytes() {
        h ^= byte as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    format!(
        "{}~{}",
        b.routing_key,
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.to_be_bytes())
    )
}

fn binding_json(vhost: &str, b: &BindingDef) -> Value {
    let (dtype, dest) = match &b.destination {
        Destination::Queue(n) => ("queue", n),
        Destination::Exchange(n) => ("exchange", n),
    };
    json!({
        "source": b.source,
        "vhost": vhost,
        "destination": &**dest,
        "destination_type": dtype,
        "routing_key": b.routing_key,
        "arguments": table_json(&b.arguments),
        "properties_key": props_key(b),
    })
}

/// Every binding of a vhost: the default exchange's implicit ones first (one per queue, as
/// RabbitMQ lists them), then the declared ones by source.
fn bindings_of(v: &VHost) -> Vec<BindingDef> {
    let mut queues: Vec<String> = v.queues.iter().map(|q| q.key().clone()).collect();
    queues.sort();
    let mut out: Vec<BindingDef> = queues
        .into_iter()
        .map(|q| BindingDef {
            source: String::new(),
            destination: Destination::Queue(q.as_str().into()),
            routing_key: q,
            arguments: Default::default(),
        })
        .collect();
    let mut xs: Vec<_> = v.exchanges.iter().map(|x| x.value().clone()).collect();
    xs.sort_by(|a, b| a.def.name.cmp(&b.def.name));
    for x in xs {
        let mut bs = x.bindings();
        bs.sort_by(|a, b| {
            (a.destination.name(), &a.routing_key).cmp(&(b.destination.name(), &b.routing_key))
        });
        out.extend(bs);
    }
    out
}

fn bindings_json(v: &VHost, keep: impl Fn(&BindingDef) -> bool) -> Vec<Value> {
    bindings_of(v)
        .iter()
        .filter(|b| keep(b))
        .map(|b| binding_json(&v.name, b))
        .collect()
}

pub(super) async fn all_bindings(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Query(q): Query<ListQuery>,
) -> Response {
    let list = visible(&state, &user)
        .iter()
        .flat_map(|v| bindings_json(v, |_| true))
        .collect();
    q.respond(list)
}

pub(super) async fn vhost_bindings(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(vh): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    match vhost_of(&state, &user, &vh) {
        Ok(v) => q.respond(bindings_json(&v, |_| true)),
        Err(r) => r,
    }
}

pub(super) async fn queue_bindings(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vh, name)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> Response {
    let v = match vhost_of(&state, &user, &vh) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !v.queues.contains_key(&name) {
        return not_found();
    }
    let me = Destination::Queue(name.as_str().into());
    q.respond(bindings_json(&v, |b| b.destination == me))
}

pub(super) async fn exchange_bindings_source(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vh, name)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> Response {
    let v = match vhost_of(&state, &user, &vh) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let name = exchange_name(&name).to_string();
    if !v.exchanges.contains_key(&name) {
        return not_found();
    }
    q.respond(bindings_json(&v, |b| b.source == name))
}

pub(super) async fn exchange_bindings_destination(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vh, name)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> Response {
    let v = match vhost_of(&state, &user, &vh) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !v.exchanges.contains_key(&name) {
        return not_found();
    }
    let me = Destination::Exchange(name.as_str().into());
    q.respond(bindings_json(&v, |b| b.destination == me))
}

fn destination(kind: &str, name: &str) -> Option<Destination> {
    match kind {
        "q" => Some(Destination::Queue(name.into())),
        "e" => Some(Destination::Exchange(name.into())),
        _ => None,
    }
}

/// `GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}`.
pub(super) async fn bindings_between(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vh, source, kind, dest)): Path<(String, String, String, String)>,
    Query(q): Query<ListQuery>,
) -> Response {
    let v = match vhost_of(&state, &user, &vh) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(d) = destination(&kind, &dest) else {
        return not_found();
    };
    let source = exchange_name(&source).to_string();
    if !v.exchanges.contains_key(&source) || !destination_exists(&v, &d) {
        return not_found();
    }
    q.respond(bindings_json(&v, |b| {
        b.source == source && b.destination == d
    }))
}

fn destination_exists(v: &VHost, d: &Destination) -> bool {
    match d {
        Destination::Queue(n) => v.queues.contains_key(n.as_ref()),
        Destination::Exchange(n) => v.exchanges.contains_key(n.as_ref()),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct BindBody {
    routing_key: String,
    arguments: Option<Value>,
}

/// `POST /api/bindings/{vhost}/e/{source}/{q|e}/{destination}`: 201 with a `Location` of the
/// new binding (relative, as RabbitMQ sends it).
pub(super) async fn bind(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vh, source, kind, dest)): Path<(String, String, String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let b: BindBody = if body.is_empty() {
        BindBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return bad_request(&e.to_string()),
        }
    };
    let v = match vhost_of(&state, &user, &vh) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(d) = destination(&kind, &dest) else {
        return not_found();
    };
    let arguments = match arguments(b.arguments.as_ref()) {
        Ok(a) => a,
        Err(e) => return bad_request(&e),
    };
    let what = match &d {
        Destination::Queue(_) => "queue",
        Destination::Exchange(_) => "exchange",
    };
    if !destination_exists(&v, &d) {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no {what} '{dest}' in vhost '{vh}'"),
        );
    }
    let source = exchange_name(&source).to_string();
    if !v.exchanges.contains_key(&source) {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no exchange '{source}' in vhost '{vh}'"),
        );
    }
    if let Err(r) = check(&state, &user, &vh, Perm::Write, &dest)
        .and_then(|_| check(&state, &user, &vh, Perm::Read, &source))
    {
        return r;
    }
    let def = BindingDef {
        source,
        destination: d,
        routing_key: b.routing_key,
        arguments,
    };
    let location = format!("{dest}/{}", props_key(&def));
    match v.bind(def, HTTP_CONN) {
        Ok(()) => {
            synced(&v).await;
            let mut r = StatusCode::CREATED.into_response();
            if let Ok(l) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, l);
            }
            r
        }
        Err(e) => amqp_error(e),
    }
}

/// The binding a `properties_key` names.
fn find_binding(v: &VHost, source: &str, d: &Destination, props: &str) -> Option<BindingDef> {
    bindings_of(v)
        .into_iter()
        .find(|b| b.source == source && &b.destination == d && props_key(b) == props)
}

pub(super) async fn one_binding(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vh, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> Response {
    let v = match vhost_of(&state, &user, &vh) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(d) = destination(&kind, &dest) else {
        return not_found();
    };
    match find_binding(&v, exchange_name(&source), &d, &props) {
        Some(b) => axum::Json(binding_json(&vh, &b)).into_response(),
        None => not_found(),
    }
}

pub(super) async fn unbind(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vh, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> Response {
    let v = match vhost_of(&state, &user, &vh) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(d) = destination(&kind, &dest) else {
        return not_found();
    };
    let source = exchange_name(&source).to_string();
    let Some(b) = find_binding(&v, &source, &d, &props) else {
        return not_found();
    };
    if let Err(r) = check(&state, &user, &vh, Perm::Write, &dest)
        .and_then(|_| check(&state, &user, &vh, Perm::Read, &source))
    {
        return r;
    }
    match v.unbind(b, HTTP_CONN) {
        Ok(()) => {
            synced(&v).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => amqp_error(e),
    }
}

/// `GET /api/aliveness-test/{vhost}`: declare `aliveness-test`, publish a message to it and
/// get it back (RabbitMQ's check; the queue stays, as in RabbitMQ).
pub(super) async fn aliveness(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(vh): Path<String>,
) -> Response {
    let v = match vhost_of(&state, &user, &vh) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let def = QueueDef {
        name: "aliveness-test".into(),
        durable: false,
        exclusive: false,
        auto_delete: false,
        arguments: Default::default(),
    };
    let failed = |reason: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "failed", "reason": reason})),
        )
            .into_response()
    };
    let q = match v.declare_queue(def, false, false, HTTP_CONN) {
        Ok(d) => d.queue,
        Err(e) => return failed(e.detail()),
    };
    let msg = crate::message::Message::new(
        b"",
        b"aliveness-test",
        &crate::protocol::codec::encode_properties(&Default::default()),
        bytes::Bytes::from_static(b"test_message"),
    );
    v.publish_to(std::slice::from_ref(&q), msg, None);
    match q.get(true) {
        Some(_) => axum::Json(json!({"status": "ok"})).into_response(),
        None => failed("aliveness-test: message not received"),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct DeadLetterQuery {
    limit: Option<usize>,
}

/// `GET /api/warren/dead-letters/{vhost}/{queue}` (Warren's own): what a dead-letter queue
/// holds, grouped by where and why each message died (its newest `x-death` entry: queue,
/// reason, exchange, routing keys), with message counts, total deaths, and the first and last
/// death time. Reads up to `limit` (10,000) messages from the head without taking them;
/// paged-out ones are counted, not read.
pub(super) async fn dead_letters(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vh, name)): Path<(String, String)>,
    Query(dq): Query<DeadLetterQuery>,
) -> Response {
    use std::collections::BTreeMap;
    let v = match vhost_of(&state, &user, &vh) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Ok(q) = v.queue(&name) else {
        return not_found();
    };
    if let Err(r) = check(&state, &user, &vh, Perm::Read, &name) {
        return r;
    }
    let (messages, paged_out) = q.peek(dq.limit.unwrap_or(10_000).min(1_000_000));
    #[derive(Default)]
    struct Group {
        exchange: String,
        keys: Vec<String>,
        messages: u64,
        deaths: u64,
        first: Option<u64>,
        last: Option<u64>,
    }
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    let mut not_dead = 0u64;
    for m in &messages {
        let newest = amq_protocol::protocol::basic::parse_properties(m.properties())
            .ok()
            .and_then(|(_, p)| p.headers().clone())
            .and_then(|h| match h.inner().get("x-death") {
                Some(AMQPValue::FieldArray(a)) => match a.as_slice().first() {
                    Some(AMQPValue::FieldTable(t)) => Some(t.clone()),
                    _ => None,
                },
                _ => None,
            });
        let Some(d) = newest else {
            not_dead += 1;
            continue;
        };
        let get = |k: &str| d.inner().get(k);
        let text = |k: &str| get(k).and_then(crate::args::as_string).unwrap_or_default();
        let g = groups.entry((text("queue"), text("reason"))).or_default();
        g.exchange = text("exchange");
        if let Some(AMQPValue::FieldArray(a)) = get("routing-keys") {
            g.keys = a
                .as_slice()
                .iter()
                .filter_map(crate::args::as_string)
                .collect();
        }
        g.messages += 1;
        g.deaths += get("count")
            .and_then(crate::args::as_int)
            .unwrap_or(1)
            .max(0) as u64;
        if let Some(AMQPValue::Timestamp(t)) = get("time") {
            g.first = Some(g.first.map_or(*t, |f| f.min(*t)));
            g.last = Some(g.last.map_or(*t, |l| l.max(*t)));
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|((queue, reason), g)| {
            json!({
                "queue": queue, "reason": reason, "exchange": g.exchange,
                "routing_keys": g.keys, "messages": g.messages, "deaths": g.deaths,
                "first_death": g.first, "last_death": g.last,
            })
        })
        .collect();
    axum::Json(json!({
        "vhost": vh,
        "queue": name,
        "messages": q.message_count(),
        "inspected": messages.len(),
        "paged_out": paged_out,
        "not_dead_lettered": not_dead,
        "groups": groups,
    }))
    .into_response()
}
