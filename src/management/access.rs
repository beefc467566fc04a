//! Users, vhosts, permissions, topic permissions and limits over HTTP, as RabbitMQ's
//! management API serves them (paths, bodies, status codes and error bodies recorded from
//! 3.10.8). Reads need `administrator` (vhosts and limits: any management user, each seeing
//! what RabbitMQ shows it); every change
//! needs `administrator`, is written to disk before the reply, and applies at once.

// Handlers stop early with the error response itself: a cold path, once per request.
#![allow(clippy::result_large_err)]

use super::listing::ListQuery;
use super::{Caller, Shared, error, may_see, not_authorised, not_found};
use crate::auth::perms::Permission;
use crate::auth::{
    AuthData, PermissionDef, TopicPermissionDef, USER_LIMITS, UserDef, VHOST_LIMITS, VhostRecord,
};
use crate::state::BrokerState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// The reason the change closures give for a missing object (a 404, not a 400).
pub(super) const NOT_FOUND: &str = "\0not found";

pub(super) fn bad_request(reason: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", reason)
}

fn admin(user: &crate::auth::User) -> Result<(), Response> {
    if user.is_admin() {
        Ok(())
    } else {
        Err(not_authorised("Not administrator user"))
    }
}

/// Apply a change to the backend off the async workers (it syncs a file).
pub(super) async fn change<T: Send + 'static>(
    state: &Shared,
    f: impl FnOnce(&mut AuthData) -> Result<T, String> + Send + 'static,
) -> Result<T, Response> {
    let st = state.clone();
    match tokio::task::spawn_blocking(move || st.auth.update(f)).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) if e == NOT_FOUND => Err(not_found()),
        Ok(Err(e)) => Err(bad_request(&e)),
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            &e.to_string(),
        )),
    }
}

fn created(was_new: bool) -> Response {
    if was_new {
        StatusCode::CREATED.into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

fn done(r: Result<Response, Response>) -> Response {
    r.unwrap_or_else(|e| e)
}

fn user_json(u: &crate::auth::User) -> Value {
    serde_json::to_value(UserDef::of(u)).unwrap_or(Value::Null)
}

fn permission_json(vhost: &str, user: &str, p: &Permission) -> Value {
    json!({
        "user": user,
        "vhost": vhost,
        "configure": p.configure.as_str(),
        "write": p.write.as_str(),
        "read": p.read.as_str(),
    })
}

fn topic_permissions_json(data: &AuthData, filter: impl Fn(&str, &str) -> bool) -> Vec<Value> {
    data.topic_permissions
        .iter()
        .filter(|((v, u), _)| filter(v, u))
        .flat_map(|((v, u), list)| {
            list.iter().map(move |t| {
                json!({
                    "user": u, "vhost": v, "exchange": t.exchange,
                    "write": t.write, "read": t.read,
                })
            })
        })
        .collect()
}

/// A vhost as `GET /api/vhosts` shows it.
pub(super) fn vhost_json(state: &BrokerState, record: &VhostRecord) -> Value {
    let key = format!("vhost:{}", record.name);
    let (ready, unacked) = state.vhost(&record.name).map_or((0, 0), |v| {
        v.queues.iter().fold((0u64, 0u64), |(r, u), q| {
            let (qr, qu, _, _) = q.stats();
            (r + qr as u64, u + qu as u64)
        })
    });
    json!({
        "name": record.name,
        "description": record.description,
        "tags": record.tags,
        "default_queue_type": record.default_queue_type.as_deref().unwrap_or("undefined"),
        "metadata": {"description": record.description, "tags": record.tags},
        "tracing": false,
        "cluster_state": {state.config.cluster_name.as_str(): "running"},
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "message_stats": super::details(
            &state.rates,
            &key,
            &state
                .rates
                .sampled(&key)
                .unwrap_or_else(|| crate::stats::MessageCounts::default().named().to_vec()),
        ),
    })
}

pub(super) async fn whoami(axum::extract::Extension(user): Caller) -> Response {
    axum::Json(json!({"name": user.name, "tags": user.tags})).into_response()
}

pub(super) async fn users(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Query(q): Query<ListQuery>,
) -> Response {
    done((|| {
        admin(&user)?;
        let data = state.auth.snapshot();
        let list: Vec<Value> = data.users.values().map(|u| user_json(u)).collect();
        Ok(q.respond(list))
    })())
}

pub(super) async fn users_without_permissions(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
) -> Response {
    done((|| {
        admin(&user)?;
        let data = state.auth.snapshot();
        let list: Vec<Value> = data
            .users
            .values()
            .filter(|u| !data.permissions.keys().any(|(_, x)| *x == u.name))
            .map(|u| user_json(u))
            .collect();
        Ok(axum::Json(list).into_response())
    })())
}

pub(super) async fn user(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Path(name): Path<String>,
) -> Response {
    done((|| {
        admin(&caller)?;
        let u = state.auth.user(&name).ok_or_else(not_found)?;
        Ok(axum::Json(user_json(&u)).into_response())
    })())
}

/// The body of `PUT /api/users/{name}`.
#[derive(Deserialize)]
pub(super) struct UserBody {
    password: Option<String>,
    password_hash: Option<String>,
    hashing_algorithm: Option<String>,
    #[serde(default, deserialize_with = "optional_tags")]
    tags: Option<Vec<String>>,
}

fn optional_tags<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    crate::auth::tags(d).map(Some)
}

pub(super) async fn put_user(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Path(name): Path<String>,
    body: axum::Json<UserBody>,
) -> Response {
    if let Err(r) = admin(&caller) {
        return r;
    }
    let b = body.0;
    let Some(tags) = b.tags else {
        return bad_request("tags_not_present");
    };
    if b.password.is_some() && b.password_hash.is_some() {
        return bad_request("Both password and password_hash are present");
    }
    let hash = match (&b.password, &b.password_hash) {
        (Some(p), _) => Some(crate::auth::password::PasswordHash::new(p)),
        (None, Some(h)) => {
            let algo = match b.hashing_algorithm.as_deref() {
                None => crate::auth::password::Hashing::Sha256,
                Some(a) => match crate::auth::password::Hashing::parse(a) {
                    Some(h) => h,
                    None => return bad_request(&format!("unknown hashing algorithm '{a}'")),
                },
            };
            match crate::auth::password::PasswordHash::from_base64(algo, h) {
                Ok(h) => Some(h),
                Err(e) => return bad_request(&e),
            }
        }
        (None, None) => None,
    };
    done(
        change(&state, move |d| {
            let old = d.users.get(&name).cloned();
            let new = crate::auth::User {
                name: name.clone(),
                // Neither password nor hash: the password is cleared (RabbitMQ 3.10.8).
                hash: hash.unwrap_or_default(),
                tags,
                limits: old.as_ref().map(|u| u.limits.clone()).unwrap_or_default(),
            };
            d.users.insert(name, Arc::new(new));
            Ok(old.is_none())
        })
        .await
        .map(created),
    )
}

pub(super) async fn delete_user(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = admin(&caller) {
        return r;
    }
    let n = name.clone();
    let r = change(&state, move |d| {
        if d.delete_user(&n) {
            Ok(())
        } else {
            Err(NOT_FOUND.into())
        }
    })
    .await;
    if r.is_ok() {
        // As RabbitMQ: the deleted user's connections are closed.
        state.force_close(|c| c.user == name, &format!("user '{name}' is deleted"));
    }
    done(r.map(|()| StatusCode::NO_CONTENT.into_response()))
}

pub(super) async fn user_permissions(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Path(name): Path<String>,
) -> Response {
    done((|| {
        admin(&caller)?;
        let data = state.auth.snapshot();
        if !data.users.contains_key(&name) {
            return Err(not_found());
        }
        let list: Vec<Value> = data
            .permissions
            .iter()
            .filter(|((_, u), _)| *u == name)
            .map(|((v, u), p)| permission_json(v, u, p))
            .collect();
        Ok(axum::Json(list).into_response())
    })())
}

pub(super) async fn user_topic_permissions(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Path(name): Path<String>,
) -> Response {
    done((|| {
        admin(&caller)?;
        let data = state.auth.snapshot();
        if !data.users.contains_key(&name) {
            return Err(not_found());
        }
        Ok(axum::Json(topic_permissions_json(&data, |_, u| u == name)).into_response())
    })())
}

pub(super) async fn vhosts(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Query(q): Query<ListQuery>,
) -> Response {
    let data = state.auth.snapshot();
    let list: Vec<Value> = data
        .vhosts
        .values()
        .filter(|v| may_see(&state, &user, &v.name))
        .map(|v| vhost_json(&state, v))
        .collect();
    q.respond(list)
}

pub(super) async fn one_vhost(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(name): Path<String>,
) -> Response {
    let data = state.auth.snapshot();
    match data.vhosts.get(&name) {
        Some(v) if may_see(&state, &user, &name) => {
            axum::Json(vhost_json(&state, v)).into_response()
        }
        _ => not_found(),
    }
}

/// The body of `PUT /api/vhosts/{name}`.
#[derive(Deserialize, Default)]
pub(super) struct VhostBody {
    description: Option<String>,
    #[serde(default, deserialize_with = "optional_tags")]
    tags: Option<Vec<String>>,
    default_queue_type: Option<String>,
}

pub(super) async fn put_vhost(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Path(name): Path<String>,
    body: Option<axum::Json<VhostBody>>,
) -> Response {
    if let Err(r) = admin(&caller) {
        return r;
    }
    let b = body.map(|b| b.0).unwrap_or_default();
    // The contents first: a record is never there without them.
    if let Err(e) = state.create_vhost(&name).await {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            &format!("cannot create vhost '{name}': {e}"),
        );
    }
    let creator = caller.name.clone();
    done(
        change(&state, move |d| {
            let old = d.vhosts.get(&name).cloned();
            if old.is_none() {
                // RabbitMQ gives the user who creates a vhost over HTTP full permissions in it.
                d.permissions
                    .insert((name.clone(), creator), Permission::all());
            }
            let mut v = old.clone().unwrap_or_else(|| VhostRecord {
                name: name.clone(),
                ..Default::default()
            });
            v.description = b.description.unwrap_or_default();
            v.tags = b.tags.unwrap_or_default();
            if b.default_queue_type.is_some() {
                v.default_queue_type = b.default_queue_type;
            }
            d.vhosts.insert(name, v);
            Ok(old.is_none())
        })
        .await
        .map(created),
    )
}

pub(super) async fn delete_vhost(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = admin(&caller) {
        return r;
    }
    let n = name.clone();
    let r = change(&state, move |d| {
        if d.delete_vhost(&n) {
            Ok(())
        } else {
            Err(NOT_FOUND.into())
        }
    })
    .await;
    if r.is_ok() {
        state.delete_vhost(&name).await;
        // Its shovels went with its parameters.
        crate::shovel::sync(&state);
    }
    done(r.map(|()| StatusCode::NO_CONTENT.into_response()))
}

pub(super) async fn vhost_permissions(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Path(name): Path<String>,
) -> Response {
    done((|| {
        admin(&caller)?;
        let data = state.auth.snapshot();
        if !data.vhosts.contains_key(&name) {
            return Err(not_found());
        }
        let list: Vec<Value> = data
            .permissions
            .iter()
            .filter(|((v, _), _)| *v == name)
            .map(|((v, u), p)| permission_json(v, u, p))
            .collect();
        Ok(axum::Json(list).into_response())
    })())
}

pub(super) async fn vhost_topic_permissions(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Path(name): Path<String>,
) -> Response {
    done((|| {
        admin(&caller)?;
        let data = state.auth.snapshot();
        if !data.vhosts.contains_key(&name) {
            return Err(not_found());
        }
        Ok(axum::Json(topic_permissions_json(&data, |v, _| v == name)).into_response())
    })())
}

pub(super) async fn permissions(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Query(q): Query<ListQuery>,
) -> Response {
    done((|| {
        admin(&caller)?;
        let data = state.auth.snapshot();
        let list: Vec<Value> = data
            .permissions
            .iter()
            .map(|((v, u), p)| permission_json(v, u, p))
            .collect();
        Ok(q.respond(list))
    })())
}

pub(super) async fn permission(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> Response {
    done((|| {
        admin(&caller)?;
        let data = state.auth.snapshot();
        let p = data.permission(&vhost, &user).ok_or_else(not_found)?;
        Ok(axum::Json(permission_json(&vhost, &user, p)).into_response())
    })())
}

/// The body of `PUT /api/permissions/{vhost}/{user}`.
#[derive(Deserialize)]
pub(super) struct PermissionBody {
    configure: String,
    write: String,
    read: String,
}

pub(super) async fn put_permission(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Path((vhost, user)): Path<(String, String)>,
    body: axum::Json<PermissionBody>,
) -> Response {
    if let Err(r) = admin(&caller) {
        return r;
    }
    let def = PermissionDef {
        user,
        vhost,
        configure: body.0.configure,
        write: body.0.write,
        read: body.0.read,
    };
    let p = match def.to_permission() {
        Ok(p) => p,
        Err(e) => return bad_request(&e),
    };
    done(
        change(&state, move |d| {
            if !d.users.contains_key(&def.user) || !d.vhosts.contains_key(&def.vhost) {
                return Err("vhost_or_user_not_found".into());
            }
            Ok(d.permissions.insert((def.vhost, def.user), p).is_none())
        })
        .await
        .map(created),
    )
}

pub(super) async fn delete_permission(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> Response {
    if let Err(r) = admin(&caller) {
        return r;
    }
    done(
        change(&state, move |d| {
            d.permissions
                .remove(&(vhost, user))
                .map(|_| StatusCode::NO_CONTENT.into_response())
                .ok_or_else(|| NOT_FOUND.to_string())
        })
        .await,
    )
}

pub(super) async fn topic_permissions(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
) -> Response {
    done((|| {
        admin(&caller)?;
        let data = state.auth.snapshot();
        Ok(axum::Json(topic_permissions_json(&data, |_, _| true)).into_response())
    })())
}

pub(super) async fn topic_permission(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> Response {
    done((|| {
        admin(&caller)?;
        let data = state.auth.snapshot();
        let list = topic_permissions_json(&data, |v, u| v == vhost && u == user);
        if list.is_empty() {
            return Err(not_found());
        }
        Ok(axum::Json(list).into_response())
    })())
}

/// The body of `PUT /api/topic-permissions/{vhost}/{user}`.
#[derive(Deserialize)]
pub(super) struct TopicPermissionBody {
    exchange: String,
    write: String,
    read: String,
}

pub(super) async fn put_topic_permission(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Path((vhost, user)): Path<(String, String)>,
    body: axum::Json<TopicPermissionBody>,
) -> Response {
    if let Err(r) = admin(&caller) {
        return r;
    }
    let b = body.0;
    for p in [&b.write, &b.read] {
        // Variables are expanded before the pattern is compiled.
        let expanded = p.replace("{username}", "u").replace("{vhost}", "v");
        if let Err(e) = crate::auth::perms::Pattern::new(&expanded) {
            return bad_request(&e);
        }
    }
    let def = TopicPermissionDef {
        user,
        vhost,
        exchange: b.exchange,
        write: b.write,
        read: b.read,
    };
    done(
        change(&state, move |d| {
            if !d.users.contains_key(&def.user) || !d.vhosts.contains_key(&def.vhost) {
                return Err("vhost_or_user_not_found".into());
            }
            let existed = d
                .topic_permissions
                .get(&(def.vhost.clone(), def.user.clone()))
                .is_some_and(|l| l.iter().any(|t| t.exchange == def.exchange));
            d.set_topic_permission(&def);
            Ok(!existed)
        })
        .await
        .map(created),
    )
}

pub(super) async fn delete_topic_permission(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> Response {
    if let Err(r) = admin(&caller) {
        return r;
    }
    done(
        change(&state, move |d| {
            d.topic_permissions
                .remove(&(vhost, user))
                .map(|_| StatusCode::NO_CONTENT.into_response())
                .ok_or_else(|| NOT_FOUND.to_string())
        })
        .await,
    )
}

fn limits_list(
    data: &AuthData,
    key: &str,
    filter: impl Fn(&str) -> bool,
    users: bool,
) -> Vec<Value> {
    let rows: Vec<(String, &std::collections::BTreeMap<String, i64>)> = if users {
        data.users
            .values()
            .map(|u| (u.name.clone(), &u.limits))
            .collect()
    } else {
        data.vhosts
            .values()
            .map(|v| (v.name.clone(), &v.limits))
            .collect()
    };
    rows.into_iter()
        .filter(|(n, l)| !l.is_empty() && filter(n))
        .map(|(n, l)| json!({key: n, "value": l}))
        .collect()
}

pub(super) async fn vhost_limits(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
) -> Response {
    let data = state.auth.snapshot();
    let list = limits_list(&data, "vhost", |v| may_see(&state, &caller, v), false);
    axum::Json(list).into_response()
}

pub(super) async fn one_vhost_limits(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Path(vhost): Path<String>,
) -> Response {
    let data = state.auth.snapshot();
    if !data.vhosts.contains_key(&vhost) || !may_see(&state, &caller, &vhost) {
        return not_found();
    }
    axum::Json(limits_list(&data, "vhost", |v| v == vhost, false)).into_response()
}

/// The body of `PUT /api/vhost-limits/...` and `/api/user-limits/...`.
#[derive(Deserialize)]
pub(super) struct LimitBody {
    value: Value,
}

async fn set_limit(
    state: &Shared,
    caller: &crate::auth::User,
    owner: String,
    name: String,
    value: Option<Value>,
    users: bool,
) -> Response {
    if let Err(r) = admin(caller) {
        return r;
    }
    let parsed = match &value {
        Some(v) => {
            let allowed = if users { USER_LIMITS } else { VHOST_LIMITS };
            match crate::auth::validate_limits(allowed, &json!({name.as_str(): v})) {
                Ok(l) => l.get(&name).copied(),
                Err(e) => return bad_request(&e),
            }
        }
        None => None,
    };
    done(
        change(state, move |d| {
            let limits = if users {
                let Some(u) = d.users.get_mut(&owner) else {
                    return Err(NOT_FOUND.into());
                };
                &mut Arc::make_mut(u).limits
            } else {
                let Some(v) = d.vhosts.get_mut(&owner) else {
                    return Err(NOT_FOUND.into());
                };
                &mut v.limits
            };
            match parsed {
                Some(n) => {
                    limits.insert(name, n);
                }
                None => {
                    limits.remove(&name);
                }
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        })
        .await,
    )
}

pub(super) async fn put_vhost_limit(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: axum::Json<LimitBody>,
) -> Response {
    set_limit(&state, &caller, vhost, name, Some(body.0.value), false).await
}

pub(super) async fn delete_vhost_limit(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    set_limit(&state, &caller, vhost, name, None, false).await
}

pub(super) async fn user_limits(
    State(state): State<Shared>,
    axum::Extension(_caller): Caller,
) -> Response {
    // Any management user may read every user's limits (RabbitMQ 3.10.8, observed).
    let data = state.auth.snapshot();
    axum::Json(limits_list(&data, "user", |_| true, true)).into_response()
}

pub(super) async fn one_user_limits(
    State(state): State<Shared>,
    axum::Extension(_caller): Caller,
    Path(user): Path<String>,
) -> Response {
    let data = state.auth.snapshot();
    if !data.users.contains_key(&user) {
        return not_found();
    }
    axum::Json(limits_list(&data, "user", |u| u == user, true)).into_response()
}

pub(super) async fn put_user_limit(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Path((user, name)): Path<(String, String)>,
    body: axum::Json<LimitBody>,
) -> Response {
    set_limit(&state, &caller, user, name, Some(body.0.value), true).await
}

pub(super) async fn delete_user_limit(
    State(state): State<Shared>,
    axum::Extension(caller): Caller,
    Path((user, name)): Path<(String, String)>,
) -> Response {
    set_limit(&state, &caller, user, name, None, true).await
}
