//! `GET/POST /api/definitions`: RabbitMQ's definitions export and import, for the sections
//! the security model owns (users with their password hashes and limits, vhosts, permissions,
//! topic permissions, vhost limits as `vhost-limits` parameters). A RabbitMQ export imported
//! here lets the same users in with the same rights. Queues, exchanges, bindings and policies
//! in the file are not imported yet (the management issue adds them); the reply says how many
//! were skipped.

use super::access::{bad_request, change, vhost_json};
use super::{Caller, RABBITMQ_COMPAT, Shared, not_authorised};
use crate::auth::{
    PermissionDef, TopicPermissionDef, UserDef, VHOST_LIMITS, VhostRecord, validate_limits,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

pub(super) async fn export(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
) -> Response {
    if !caller.is_admin() {
        return not_authorised("Not administrator user");
    }
    let data = state.auth.snapshot();
    let users: Vec<UserDef> = data.users.values().map(|u| UserDef::of(u)).collect();
    let vhosts: Vec<Value> = data
        .vhosts
        .values()
        .map(|v| {
            let full = vhost_json(&state, v);
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
    let parameters: Vec<Value> = data
        .vhosts
        .values()
        .filter(|v| !v.limits.is_empty())
        .map(|v| {
            json!({"vhost": v.name, "component": "vhost-limits", "name": "limits",
                   "value": v.limits})
        })
        .collect();
    axum::Json(json!({
        "rabbit_version": RABBITMQ_COMPAT,
        "rabbitmq_version": RABBITMQ_COMPAT,
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "users": users,
        "vhosts": vhosts,
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "parameters": parameters,
        "global_parameters": [],
        "policies": [],
        "queues": [],
        "exchanges": [],
        "bindings": [],
    }))
    .into_response()
}

/// The sections of a definitions file that are imported.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Import {
    users: Vec<UserDef>,
    vhosts: Vec<VhostRecord>,
    permissions: Vec<PermissionDef>,
    topic_permissions: Vec<TopicPermissionDef>,
    parameters: Vec<Parameter>,
    queues: Vec<Value>,
    exchanges: Vec<Value>,
    bindings: Vec<Value>,
    policies: Vec<Value>,
}

#[derive(Deserialize)]
pub(super) struct Parameter {
    vhost: String,
    component: String,
    value: Value,
}

pub(super) async fn import(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    body: axum::body::Bytes,
) -> Response {
    if !caller.is_admin() {
        return not_authorised("Not administrator user");
    }
    let defs: Import = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => return bad_request(&format!("invalid definitions: {e}")),
    };
    // Validate everything before anything changes.
    let mut users = Vec::new();
    for u in &defs.users {
        match u.to_user() {
            Ok(u) => users.push(u),
            Err(e) => return bad_request(&e),
        }
    }
    let mut perms = Vec::new();
    for p in &defs.permissions {
        match p.to_permission() {
            Ok(c) => perms.push(((p.vhost.clone(), p.user.clone()), c)),
            Err(e) => return bad_request(&e),
        }
    }
    let mut limits = Vec::new();
    for p in defs
        .parameters
        .iter()
        .filter(|p| p.component == "vhost-limits")
    {
        match validate_limits(VHOST_LIMITS, &p.value) {
            Ok(l) => limits.push((p.vhost.clone(), l)),
            Err(e) => return bad_request(&e),
        }
    }
    for v in &defs.vhosts {
        if let Err(e) = state.create_vhost(&v.name).await {
            return super::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_server_error",
                &format!("cannot create vhost '{}': {e}", v.name),
            );
        }
    }
    let skipped =
        defs.queues.len() + defs.exchanges.len() + defs.bindings.len() + defs.policies.len();
    let vhosts = defs.vhosts;
    let topic = defs.topic_permissions;
    let r = change(&state, move |d| {
        for v in vhosts {
            let mut v = v;
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
        Ok(())
    })
    .await;
    if let Err(r) = r {
        return r;
    }
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "definitions import: queues, exchanges, bindings and policies are not imported yet"
        );
    }
    StatusCode::NO_CONTENT.into_response()
}
