//! RabbitMQ's definitions, exported and imported in its JSON: users (with password hashes and
//! limits), vhosts, permissions, topic permissions, parameters (vhost limits, operator
//! policies, others kept as they are), global parameters, policies, queues, exchanges and
//! bindings. `GET/POST /api/definitions` for the whole broker, `/api/definitions/{vhost}` for
//! one vhost (objects without their `vhost`, importable into another one), and
//! `load_definitions` at boot. A RabbitMQ export imported here brings its topology and lets
//! the same users in with the same rights.
//!
//! Exported as RabbitMQ 3.10.8 does (recorded): every queue and exchange but exclusive queues
//! and the predeclared exchanges, every binding but the default exchange's implicit ones.

// Handlers stop early with the error response itself: a cold path, once per request.
#![allow(clippy::result_large_err)]

use super::access::{bad_request, change};
use super::amqp_json::{arguments, table_json};
use super::{Caller, RABBITMQ_COMPAT, Shared, not_authorised};
use crate::auth::policy::{GlobalParameterDef, ParameterDef, PolicyDef};
use crate::auth::{
    AuthData, PermissionDef, TopicPermissionDef, UserDef, VHOST_LIMITS, VhostRecord,
    validate_limits,
};
use crate::defs::{BindingDef, Destination, ExchangeDef, ExchangeKind, QueueDef};
use crate::state::BrokerState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Exchanges every vhost has (never exported).
fn predeclared(name: &str) -> bool {
    name.is_empty()
        || matches!(
            name,
            "amq.direct" | "amq.fanout" | "amq.topic" | "amq.headers" | "amq.match"
        )
}

/// One vhost's queues, exchanges and bindings (`with_vhost`: each object names its vhost).
fn topology(v: &crate::vhost::VHost, with_vhost: bool) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    // An object: its name (or source) first, the vhost when asked, then the rest.
    let object = |first: (&str, Value), rest: Vec<(&str, Value)>| {
        let mut o = Map::new();
        o.insert(first.0.into(), first.1);
        if with_vhost {
            o.insert("vhost".into(), json!(v.name));
        }
        o.extend(rest.into_iter().map(|(k, x)| (k.to_string(), x)));
        Value::Object(o)
    };
    let mut queues: Vec<_> = v
        .queues
        .iter()
        .filter(|q| !q.def.exclusive)
        .map(|q| q.def.clone())
        .collect();
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    let queues = queues
        .into_iter()
        .map(|q| {
            object(
                ("name", json!(q.name)),
                vec![
                    ("durable", json!(q.durable)),
                    ("auto_delete", json!(q.auto_delete)),
                    ("arguments", table_json(&q.arguments)),
                ],
            )
        })
        .collect();
    let mut all: Vec<_> = v.exchanges.iter().map(|x| x.value().clone()).collect();
    all.sort_by(|a, b| a.def.name.cmp(&b.def.name));
    let exchanges = all
        .iter()
        .filter(|x| !predeclared(&x.def.name))
        .map(|x| {
            object(
                ("name", json!(x.def.name)),
                vec![
                    ("type", json!(x.def.kind.as_str())),
                    ("durable", json!(x.def.durable)),
                    ("auto_delete", json!(x.def.auto_delete)),
                    ("internal", json!(x.def.internal)),
                    ("arguments", table_json(&x.def.arguments)),
                ],
            )
        })
        .collect();
    let bindings = all
        .iter()
        .flat_map(|x| x.bindings())
        .map(|b| {
            let (dtype, dest) = match &b.destination {
                Destination::Queue(n) => ("queue", n.to_string()),
                Destination::Exchange(n) => ("exchange", n.to_string()),
            };
            object(
                ("source", json!(b.source)),
                vec![
                    ("destination", json!(dest)),
                    ("destination_type", json!(dtype)),
                    ("routing_key", json!(b.routing_key)),
                    ("arguments", table_json(&b.arguments)),
                ],
            )
        })
        .collect();
    (queues, exchanges, bindings)
}

fn policies_json(data: &AuthData, vhost: Option<&str>) -> Vec<Value> {
    data.policies
        .values()
        .filter(|p| vhost.is_none_or(|v| p.vhost == v))
        .map(|p| serde_json::to_value(p).unwrap_or(Value::Null))
        .collect()
}

fn parameters_json(data: &AuthData, vhost: Option<&str>) -> Vec<Value> {
    super::policies::all_parameters(data)
        .into_iter()
        .filter(|p| vhost.is_none_or(|v| p.vhost == v))
        .map(|p| serde_json::to_value(p).unwrap_or(Value::Null))
        .collect()
}

/// The whole broker's definitions.
pub(crate) fn export_all(state: &BrokerState) -> Value {
    let data = state.auth.snapshot();
    let users: Vec<UserDef> = data.users.values().map(|u| UserDef::of(u)).collect();
    let vhosts: Vec<Value> = data
        .vhosts
        .values()
        .map(|v| {
            let full = super::access::vhost_json(state, v);
            json!({
                "name": v.name,
                "description": v.description,
                "tags": v.tags,
                "metadata": full["metadata"],
                "default_queue_type": full["default_queue_type"],
            })
        })
        .collect();
    let permissions: Vec<Value> = data
        .permissions
        .iter()
        .map(|((v, u), p)| {
            json!({"user": u, "vhost": v, "configure": p.configure.as_str(),
                   "write": p.write.as_str(), "read": p.read.as_str()})
        })
        .collect();
    let topic_permissions: Vec<Value> = data
        .topic_permissions
        .iter()
        .flat_map(|((v, u), l)| {
            l.iter().map(move |t| {
                json!({"user": u, "vhost": v, "exchange": t.exchange,
                       "write": t.write, "read": t.read})
            })
        })
        .collect();
    let mut global_parameters = vec![json!({"name": "cluster_name",
                                            "value": state.config.cluster_name})];
    global_parameters.extend(
        data.global_parameters
            .values()
            .map(|p| serde_json::to_value(p).unwrap_or(Value::Null)),
    );
    let (mut queues, mut exchanges, mut bindings) = (Vec::new(), Vec::new(), Vec::new());
    let mut names: Vec<String> = state.vhosts.iter().map(|v| v.key().clone()).collect();
    names.sort();
    for name in names {
        if let Some(v) = state.vhost(&name) {
            let (q, x, b) = topology(&v, true);
            queues.extend(q);
            exchanges.extend(x);
            bindings.extend(b);
        }
    }
    json!({
        "rabbit_version": RABBITMQ_COMPAT,
        "rabbitmq_version": RABBITMQ_COMPAT,
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "users": users,
        "vhosts": vhosts,
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "parameters": parameters_json(&data, None),
        "global_parameters": global_parameters,
        "policies": policies_json(&data, None),
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    })
}

pub(super) async fn export(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
) -> Response {
    if !caller.is_admin() {
        return not_authorised("Not administrator user");
    }
    axum::Json(export_all(&state)).into_response()
}

pub(super) async fn export_vhost(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Path(vhost): Path<String>,
) -> Response {
    if !caller.is_admin() {
        return not_authorised("Not administrator user");
    }
    let Some(v) = state.vhost(&vhost) else {
        return super::not_found();
    };
    let data = state.auth.snapshot();
    let (queues, exchanges, bindings) = topology(&v, false);
    axum::Json(json!({
        "rabbit_version": RABBITMQ_COMPAT,
        "parameters": parameters_json(&data, Some(&vhost)),
        "policies": policies_json(&data, Some(&vhost)),
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    }))
    .into_response()
}

/// The sections of a definitions file.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct Import {
    users: Vec<UserDef>,
    vhosts: Vec<VhostRecord>,
    permissions: Vec<PermissionDef>,
    topic_permissions: Vec<TopicPermissionDef>,
    parameters: Vec<Parameter>,
    global_parameters: Vec<GlobalParameterDef>,
    queues: Vec<Value>,
    exchanges: Vec<Value>,
    bindings: Vec<Value>,
    policies: Vec<Value>,
}

#[derive(Deserialize)]
pub(crate) struct Parameter {
    #[serde(default)]
    vhost: String,
    component: String,
    #[serde(default)]
    name: String,
    value: Value,
}

/// Why an import failed: the HTTP status and RabbitMQ's reason.
pub(crate) struct ImportError(StatusCode, String);

impl ImportError {
    fn bad(reason: impl Into<String>) -> Self {
        ImportError(StatusCode::BAD_REQUEST, reason.into())
    }

    /// The reason text.
    pub(crate) fn reason(&self) -> &str {
        &self.1
    }
}

fn str_field<'a>(o: &'a Value, k: &str) -> Result<&'a str, ImportError> {
    o.get(k)
        .and_then(Value::as_str)
        .ok_or_else(|| ImportError::bad(format!("[{{key_missing,{k}}}]")))
}

fn bool_field(o: &Value, k: &str, default: bool) -> bool {
    o.get(k).and_then(Value::as_bool).unwrap_or(default)
}

/// The vhost an object goes to: the one of a per-vhost import, else its own.
fn target<'a>(o: &'a Value, into: Option<&'a str>) -> Result<&'a str, ImportError> {
    match into {
        Some(v) => Ok(v),
        None => str_field(o, "vhost"),
    }
}

/// Import definitions (`into`: a per-vhost import, every object goes to that vhost).
/// Security sections and policies are validated before anything changes; topology is then
/// declared object by object with AMQP's rules, stopping at the first error.
pub(crate) async fn import_definitions(
    state: &Arc<BrokerState>,
    defs: Import,
    into: Option<&str>,
) -> Result<(), ImportError> {
    let mut users = Vec::new();
    for u in &defs.users {
        users.push(u.to_user().map_err(ImportError::bad)?);
    }
    let mut perms = Vec::new();
    for p in &defs.permissions {
        let c = p.to_permission().map_err(ImportError::bad)?;
        perms.push(((p.vhost.clone(), p.user.clone()), c));
    }
    let mut limits = Vec::new();
    let mut operator_policies = Vec::new();
    let mut parameters = Vec::new();
    for p in &defs.parameters {
        let vhost = into.unwrap_or(&p.vhost).to_string();
        match p.component.as_str() {
            "vhost-limits" => limits.push((
                vhost,
                validate_limits(VHOST_LIMITS, &p.value).map_err(ImportError::bad)?,
            )),
            "operator_policy" => operator_policies.push(
                crate::auth::policy::validate(&vhost, &p.name, &p.value, true)
                    .map_err(ImportError::bad)?,
            ),
            _ => parameters.push(ParameterDef {
                value: p.value.clone(),
                vhost,
                component: p.component.clone(),
                name: p.name.clone(),
            }),
        }
    }
    let mut policies: Vec<PolicyDef> = Vec::new();
    for p in &defs.policies {
        let vhost = target(p, into)?;
        let name = str_field(p, "name")?;
        policies
            .push(crate::auth::policy::validate(vhost, name, p, false).map_err(ImportError::bad)?);
    }
    for v in &defs.vhosts {
        state.create_vhost(&v.name).await.map_err(|e| {
            ImportError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot create vhost '{}': {e}", v.name),
            )
        })?;
    }
    let vhosts = defs.vhosts;
    let topic = defs.topic_permissions;
    let global = defs.global_parameters;
    let r = change(state, move |d| {
        for mut v in vhosts {
            if let Some(old) = d.vhosts.get(&v.name)
                && v.limits.is_empty()
            {
                v.limits = old.limits.clone();
            }
            d.vhosts.insert(v.name.clone(), v);
        }
        for u in users {
            d.users.insert(u.name.clone(), Arc::new(u));
        }
        for (key, p) in perms {
            if !d.vhosts.contains_key(&key.0) || !d.users.contains_key(&key.1) {
                return Err(format!(
                    "permission of user '{}' in vhost '{}': vhost_or_user_not_found",
                    key.1, key.0
                ));
            }
            d.permissions.insert(key, p);
        }
        for t in &topic {
            d.set_topic_permission(t);
        }
        for (vhost, l) in limits {
            if let Some(v) = d.vhosts.get_mut(&vhost) {
                v.limits = l;
            }
        }
        for p in policies {
            d.policies.insert((p.vhost.clone(), p.name.clone()), p);
        }
        for p in operator_policies {
            d.operator_policies
                .insert((p.vhost.clone(), p.name.clone()), p);
        }
        for p in parameters {
            d.parameters
                .insert((p.vhost.clone(), p.component.clone(), p.name.clone()), p);
        }
        for g in global {
            // The cluster name comes from the configuration.
            if g.name != "cluster_name" && g.name != "internal_cluster_id" {
                d.global_parameters.insert(g.name.clone(), g);
            }
        }
        Ok(())
    })
    .await;
    if let Err(r) = r {
        return Err(ImportError(r.status(), "definitions import failed".into()));
    }
    let r = import_topology(state, &defs.exchanges, &defs.queues, &defs.bindings, into).await;
    state.apply_policies(into);
    crate::shovel::sync(state);
    r
}

/// Exchanges, then queues, then bindings, each with AMQP's rules (an HTTP-style import acts
/// as no connection).
async fn import_topology(
    state: &Arc<BrokerState>,
    exchanges: &[Value],
    queues: &[Value],
    bindings: &[Value],
    into: Option<&str>,
) -> Result<(), ImportError> {
    let vhost = |o: &Value| -> Result<Arc<crate::vhost::VHost>, ImportError> {
        let name = target(o, into)?;
        state
            .vhost(name)
            .ok_or_else(|| ImportError::bad(format!("vhost_not_found: {name}")))
    };
    let amqp = |e: crate::protocol::AmqpError| ImportError::bad(e.detail());
    let mut touched: Vec<Arc<crate::vhost::VHost>> = Vec::new();
    for x in exchanges {
        let v = vhost(x)?;
        let name = str_field(x, "name")?;
        if predeclared(name) {
            continue;
        }
        let kind_name = str_field(x, "type")?;
        let kind = ExchangeKind::parse(kind_name)
            .ok_or_else(|| ImportError::bad(format!("unknown exchange type '{kind_name}'")))?;
        let def = ExchangeDef {
            name: name.to_string(),
            kind,
            durable: bool_field(x, "durable", true),
            auto_delete: bool_field(x, "auto_delete", false),
            internal: bool_field(x, "internal", false),
            arguments: arguments(x.get("arguments")).map_err(ImportError::bad)?,
        };
        v.declare_exchange(def, kind_name, false).map_err(amqp)?;
        touched.push(v);
    }
    for q in queues {
        let v = vhost(q)?;
        let def = QueueDef {
            name: str_field(q, "name")?.to_string(),
            durable: bool_field(q, "durable", true),
            exclusive: false,
            auto_delete: bool_field(q, "auto_delete", false),
            arguments: arguments(q.get("arguments")).map_err(ImportError::bad)?,
        };
        v.declare_queue(def, false, false, 0).map_err(amqp)?;
        touched.push(v);
    }
    for b in bindings {
        let v = vhost(b)?;
        let dest = str_field(b, "destination")?;
        let destination = match str_field(b, "destination_type")? {
            "queue" => Destination::Queue(dest.into()),
            "exchange" => Destination::Exchange(dest.into()),
            other => {
                return Err(ImportError::bad(format!(
                    "unknown destination type '{other}'"
                )));
            }
        };
        let def = BindingDef {
            source: str_field(b, "source")?.to_string(),
            destination,
            routing_key: b
                .get("routing_key")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            arguments: arguments(b.get("arguments")).map_err(ImportError::bad)?,
        };
        v.bind(def, 0).map_err(amqp)?;
        touched.push(v);
    }
    // Durable: the definitions journal of every vhost changed is synced before the reply.
    for v in touched {
        if let Some((seq, mut rx)) = v.definitions_pending() {
            let _ = rx.wait_for(|s| s.seq >= seq || s.failing).await;
        }
    }
    Ok(())
}

fn parse(body: &[u8]) -> Result<Import, Response> {
    serde_json::from_slice(body).map_err(|e| bad_request(&format!("invalid definitions: {e}")))
}

fn respond(r: Result<(), ImportError>) -> Response {
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(ImportError(status, reason)) if status == StatusCode::BAD_REQUEST => {
            bad_request(&reason)
        }
        Err(ImportError(status, reason)) => super::error(status, "internal_server_error", &reason),
    }
}

pub(super) async fn import(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    body: axum::body::Bytes,
) -> Response {
    if !caller.is_admin() {
        return not_authorised("Not administrator user");
    }
    match parse(&body) {
        Ok(defs) => respond(import_definitions(&state, defs, None).await),
        Err(r) => r,
    }
}

pub(super) async fn import_vhost(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Path(vhost): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if !caller.is_admin() {
        return not_authorised("Not administrator user");
    }
    if state.vhost(&vhost).is_none() {
        return super::not_found();
    }
    match parse(&body) {
        Ok(mut defs) => {
            // A vhost's definitions carry no users, vhosts or permissions.
            defs.users.clear();
            defs.vhosts.clear();
            defs.permissions.clear();
            defs.topic_permissions.clear();
            defs.global_parameters.clear();
            respond(import_definitions(&state, defs, Some(&vhost)).await)
        }
        Err(r) => r,
    }
}

/// `load_definitions`: import a file at boot.
pub(crate) async fn load_file(
    state: &Arc<BrokerState>,
    path: &std::path::Path,
) -> std::io::Result<()> {
    let bytes = std::fs::read(path)?;
    let defs: Import = serde_json::from_slice(&bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })?;
    import_definitions(state, defs, None).await.map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {}", path.display(), e.reason()),
        )
    })
}
