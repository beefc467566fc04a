//! Policies, operator policies, runtime parameters and global parameters over HTTP: stored
//! durably with the rest of the metadata and listed as RabbitMQ 3.10.8 lists them. Policies
//! need `policymaker` (or `administrator`) to change, as in RabbitMQ; parameters and global
//! parameters need `administrator`. Applying policies to queues is the policies issue's work.

use super::access::{bad_request, change};
use super::listing::ListQuery;
use super::{Caller, Shared, may_see, not_authorised, not_found};
use crate::auth::policy::{GlobalParameterDef, ParameterDef, PolicyDef, validate};
use crate::auth::{AuthData, User};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

const NOT_FOUND: &str = super::access::NOT_FOUND;

/// Which of the two policy kinds a handler serves.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Policy,
    Operator,
}

impl Kind {
    fn map(self, d: &AuthData) -> &std::collections::BTreeMap<(String, String), PolicyDef> {
        match self {
            Kind::Policy => &d.policies,
            Kind::Operator => &d.operator_policies,
        }
    }

    fn map_mut(
        self,
        d: &mut AuthData,
    ) -> &mut std::collections::BTreeMap<(String, String), PolicyDef> {
        match self {
            Kind::Policy => &mut d.policies,
            Kind::Operator => &mut d.operator_policies,
        }
    }
}

fn may_change_policies(user: &User) -> bool {
    user.is_admin() || user.has_tag("policymaker")
}

/// HTML-escape as RabbitMQ's management API does in policy validation errors.
fn escaped(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn list_policies(state: &Shared, user: &User, kind: Kind, vhost: Option<&str>) -> Vec<Value> {
    let data = state.auth.snapshot();
    kind.map(&data)
        .values()
        .filter(|p| vhost.is_none_or(|v| p.vhost == v))
        .filter(|p| may_see(state, user, &p.vhost))
        .map(|p| serde_json::to_value(p).unwrap_or(Value::Null))
        .collect()
}

pub(super) async fn policies(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Query(q): Query<ListQuery>,
) -> Response {
    q.respond(list_policies(&state, &user, Kind::Policy, None))
}

pub(super) async fn vhost_policies(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    if super::vhost(&state, &user, &vhost).is_none() {
        return not_found();
    }
    q.respond(list_policies(&state, &user, Kind::Policy, Some(&vhost)))
}

pub(super) async fn operator_policies(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Query(q): Query<ListQuery>,
) -> Response {
    q.respond(list_policies(&state, &user, Kind::Operator, None))
}

pub(super) async fn vhost_operator_policies(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    if super::vhost(&state, &user, &vhost).is_none() {
        return not_found();
    }
    q.respond(list_policies(&state, &user, Kind::Operator, Some(&vhost)))
}

fn one(state: &Shared, user: &User, kind: Kind, vhost: String, name: String) -> Response {
    if !may_see(state, user, &vhost) {
        return not_found();
    }
    let data = state.auth.snapshot();
    match kind.map(&data).get(&(vhost, name)) {
        Some(p) => axum::Json(p).into_response(),
        None => not_found(),
    }
}

pub(super) async fn policy(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    one(&state, &user, Kind::Policy, vhost, name)
}

pub(super) async fn operator_policy(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    one(&state, &user, Kind::Operator, vhost, name)
}

async fn put(
    state: Shared,
    user: &User,
    kind: Kind,
    vhost: String,
    name: String,
    body: &[u8],
) -> Response {
    if !may_change_policies(user) {
        return not_authorised("Not policymaker user");
    }
    if !state.auth.snapshot().vhosts.contains_key(&vhost) {
        return super::error(StatusCode::NOT_FOUND, "not_found", "vhost_not_found");
    }
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return bad_request(&e.to_string()),
    };
    let p = match validate(&vhost, &name, &parsed, matches!(kind, Kind::Operator)) {
        Ok(p) => p,
        // Recorded: policy errors are HTML-escaped, operator policy errors are not.
        Err(e) => match kind {
            Kind::Policy => return bad_request(&escaped(&e)),
            Kind::Operator => return bad_request(&e),
        },
    };
    let r = change(&state, move |d| {
        Ok(kind
            .map_mut(d)
            .insert((p.vhost.clone(), p.name.clone()), p)
            .is_none())
    })
    .await;
    state.apply_policies(Some(&vhost));
    match r {
        Ok(true) => StatusCode::CREATED.into_response(),
        Ok(false) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r,
    }
}

pub(super) async fn put_policy(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    put(state, &user, Kind::Policy, vhost, name, &body).await
}

/// RabbitMQ 3.10.8 refuses an operator policy body that is not declared JSON (415).
pub(super) async fn put_operator_policy(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
    }
    put(state, &user, Kind::Operator, vhost, name, &body).await
}

async fn delete(state: Shared, user: &User, kind: Kind, vhost: String, name: String) -> Response {
    if !may_change_policies(user) {
        return not_authorised("Not policymaker user");
    }
    let v = vhost.clone();
    let r = change(&state, move |d| {
        kind.map_mut(d)
            .remove(&(vhost, name))
            .map(|_| ())
            .ok_or_else(|| NOT_FOUND.to_string())
    })
    .await;
    state.apply_policies(Some(&v));
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r,
    }
}

pub(super) async fn delete_policy(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    delete(state, &user, Kind::Policy, vhost, name).await
}

pub(super) async fn delete_operator_policy(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    delete(state, &user, Kind::Operator, vhost, name).await
}

// ---- parameters ----

/// Every vhost-scoped parameter as RabbitMQ lists them: stored ones, plus vhost limits
/// (`vhost-limits`/`limits`) and operator policies (`operator_policy`), which RabbitMQ keeps
/// as parameters too.
pub(super) fn all_parameters(data: &AuthData) -> Vec<ParameterDef> {
    let mut out: Vec<ParameterDef> = data
        .vhosts
        .values()
        .filter(|v| !v.limits.is_empty())
        .map(|v| ParameterDef {
            value: json!(v.limits),
            vhost: v.name.clone(),
            component: "vhost-limits".into(),
            name: "limits".into(),
        })
        .collect();
    out.extend(data.operator_policies.values().map(|p| ParameterDef {
        value: json!({"pattern": p.pattern, "definition": p.definition,
                      "priority": p.priority, "apply-to": p.apply_to}),
        vhost: p.vhost.clone(),
        component: "operator_policy".into(),
        name: p.name.clone(),
    }));
    out.extend(data.parameters.values().cloned());
    out
}

fn parameters_json(
    state: &Shared,
    user: &User,
    keep: impl Fn(&ParameterDef) -> bool,
) -> Vec<Value> {
    let data = state.auth.snapshot();
    all_parameters(&data)
        .into_iter()
        .filter(|p| keep(p) && may_see(state, user, &p.vhost))
        .map(|p| serde_json::to_value(p).unwrap_or(Value::Null))
        .collect()
}

pub(super) async fn parameters(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Query(q): Query<ListQuery>,
) -> Response {
    if !may_change_policies(&user) && !user.is_monitor() {
        return not_authorised("Not policymaker user");
    }
    q.respond(parameters_json(&state, &user, |_| true))
}

pub(super) async fn component_parameters(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(component): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    q.respond(parameters_json(&state, &user, |p| p.component == component))
}

pub(super) async fn vhost_component_parameters(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((component, vhost)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> Response {
    q.respond(parameters_json(&state, &user, |p| {
        p.component == component && p.vhost == vhost
    }))
}

pub(super) async fn parameter(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> Response {
    let list = parameters_json(&state, &user, |p| {
        p.component == component && p.vhost == vhost && p.name == name
    });
    match list.into_iter().next() {
        Some(p) => axum::Json(p).into_response(),
        None => not_found(),
    }
}

/// Components Warren stores as plain parameters (the others are limits and operator
/// policies, with endpoints of their own).
fn stored_component(c: &str) -> bool {
    !matches!(c, "vhost-limits" | "operator_policy")
}

pub(super) async fn put_parameter(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((component, vhost, name)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Response {
    if !may_change_policies(&user) {
        return not_authorised("Not policymaker user");
    }
    if !stored_component(&component) {
        return bad_request(&format!(
            "component {component} is set through its own endpoint"
        ));
    }
    if !state.auth.snapshot().vhosts.contains_key(&vhost) {
        return super::error(StatusCode::NOT_FOUND, "not_found", "vhost_not_found");
    }
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(&e.to_string()),
    };
    let Some(value) = parsed.get("value").cloned() else {
        return bad_request("[{key_missing,value}]");
    };
    if component == "shovel"
        && let Err(e) = crate::shovel::validate(&name, &value)
    {
        return bad_request(&escaped(&e));
    }
    let p = ParameterDef {
        value,
        vhost: vhost.clone(),
        component: component.clone(),
        name: name.clone(),
    };
    let r = change(&state, move |d| {
        Ok(d.parameters.insert((vhost, component, name), p).is_none())
    })
    .await;
    crate::shovel::sync(&state);
    match r {
        Ok(true) => StatusCode::CREATED.into_response(),
        Ok(false) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r,
    }
}

pub(super) async fn delete_parameter(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> Response {
    if !may_change_policies(&user) {
        return not_authorised("Not policymaker user");
    }
    let r = change(&state, move |d| {
        d.parameters
            .remove(&(vhost, component, name))
            .map(|_| ())
            .ok_or_else(|| NOT_FOUND.to_string())
    })
    .await;
    crate::shovel::sync(&state);
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r,
    }
}

pub(super) async fn global_parameters(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Query(q): Query<ListQuery>,
) -> Response {
    if !user.is_admin() {
        return not_authorised("Not administrator user");
    }
    let data = state.auth.snapshot();
    let mut list: Vec<Value> = vec![json!({"name": "cluster_name",
                                           "value": state.config.cluster_name})];
    list.extend(
        data.global_parameters
            .values()
            .map(|p| serde_json::to_value(p).unwrap_or(Value::Null)),
    );
    q.respond(list)
}

pub(super) async fn global_parameter(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(name): Path<String>,
) -> Response {
    if !user.is_admin() {
        return not_authorised("Not administrator user");
    }
    match state.auth.snapshot().global_parameters.get(&name) {
        Some(p) => axum::Json(p).into_response(),
        None => not_found(),
    }
}

pub(super) async fn put_global_parameter(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if !user.is_admin() {
        return not_authorised("Not administrator user");
    }
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(&e.to_string()),
    };
    let Some(value) = parsed.get("value").cloned() else {
        return bad_request("[{key_missing,value}]");
    };
    let r = change(&state, move |d| {
        Ok(d.global_parameters
            .insert(name.clone(), GlobalParameterDef { name, value })
            .is_none())
    })
    .await;
    match r {
        Ok(true) => StatusCode::CREATED.into_response(),
        Ok(false) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r,
    }
}

pub(super) async fn delete_global_parameter(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(name): Path<String>,
) -> Response {
    if !user.is_admin() {
        return not_authorised("Not administrator user");
    }
    let r = change(&state, move |d| {
        d.global_parameters
            .remove(&name)
            .map(|_| ())
            .ok_or_else(|| NOT_FOUND.to_string())
    })
    .await;
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r,
    }
}

/// `GET /api/shovels[/{vhost}]`: the dynamic shovels and their state (RabbitMQ's
/// `rabbitmq_shovel_management`).
pub(super) async fn shovels(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Query(q): Query<ListQuery>,
) -> Response {
    let list = crate::shovel::statuses(&state, None)
        .into_iter()
        .filter(|s| {
            s["vhost"]
                .as_str()
                .is_some_and(|v| may_see(&state, &user, v))
        })
        .collect();
    q.respond(list)
}

pub(super) async fn vhost_shovels(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    if super::vhost(&state, &user, &vhost).is_none() {
        return not_found();
    }
    q.respond(crate::shovel::statuses(&state, Some(&vhost)))
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub(super) struct ReplayBody {
    /// Only dead letters that died for this reason (`rejected`, `expired`, `maxlen`,
    /// `delivery_limit`).
    reason: Option<String>,
    /// Only those that died in this queue.
    queue: Option<String>,
    /// At most this many messages a second.
    rate: Option<f64>,
}

/// `POST /api/warren/replay/{vhost}/{queue}` (Warren's own): send every dead letter in a
/// queue back where it died (the exchange and routing keys of its newest `x-death` entry),
/// optionally only those of one reason or original queue, at most `rate` a second. Runs as a
/// shovel named `replay-{queue}` (progress in `/api/shovels`; it removes itself when done);
/// the `x-death` history stays on the messages. Needs `policymaker`, like shovels.
pub(super) async fn replay(
    State(state): State<Shared>,
    axum::Extension(user): Caller,
    Path((vhost, queue)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    if !may_change_policies(&user) {
        return not_authorised("Not policymaker user");
    }
    let b: ReplayBody = if body.is_empty() {
        ReplayBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return bad_request(&e.to_string()),
        }
    };
    let Some(v) = super::vhost(&state, &user, &vhost) else {
        return not_found();
    };
    // What the replay moves at most: the messages ready now (`src-delete-after` =
    // `queue-length`); returned so a caller can show progress against it.
    let Some(ready) = v.queues.get(&queue).map(|q| q.stats().0) else {
        return not_found();
    };
    let uri = format!("amqp:///{}", url_encode(&vhost));
    let mut value = json!({
        "src-uri": uri, "src-queue": queue, "dest-uri": uri, "dest-x-death": true,
        "src-delete-after": "queue-length",
    });
    if let Some(r) = b.reason {
        value["x-death-reason"] = json!(r);
    }
    if let Some(q) = b.queue {
        value["x-death-queue"] = json!(q);
    }
    if let Some(r) = b.rate {
        value["rate-limit"] = json!(r);
    }
    let name = format!("replay-{queue}");
    let p = ParameterDef {
        value,
        vhost: vhost.clone(),
        component: "shovel".into(),
        name: name.clone(),
    };
    let r = change(&state, move |d| {
        d.parameters
            .insert((vhost, "shovel".into(), name.clone()), p);
        Ok(name)
    })
    .await;
    crate::shovel::sync(&state);
    match r {
        Ok(name) => (
            StatusCode::CREATED,
            axum::Json(json!({"shovel": name, "messages": ready})),
        )
            .into_response(),
        Err(r) => r,
    }
}

/// Percent-encode a vhost name for a URI path.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
