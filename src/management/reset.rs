//! Warren's test-environment reset (`POST /api/warren/reset`, `warren reset`): back to the
//! boot state in one call, so a test suite can share one broker and start each test clean.

use super::access::bad_request;
use super::*;
use tracing::info;

/// Back to the boot state, for test suites (`POST /api/warren/reset`): every connection
/// closed (320, "reset"), every vhost emptied and recreated as the configuration seeds it
/// (users, vhosts, permissions; no policies, parameters, shovels, queues, exchanges,
/// bindings or messages), then the configuration's `load_definitions` file imported again.
/// With `vhost`: that vhost only (its connections, topology, messages, policies and
/// parameters other than its limits; the vhost, its permissions and limits stay).
pub(crate) async fn reset(state: &Arc<BrokerState>, vhost: Option<&str>) -> Result<(), String> {
    const TEXT: &str = "reset";
    let me = state.clone();
    match vhost {
        None => {
            let seed = crate::auth::AuthData::seed(&state.config)?;
            tokio::task::spawn_blocking(move || {
                me.auth.update(|d| {
                    *d = seed;
                    Ok(())
                })
            })
            .await
            .map_err(|e| e.to_string())??;
            state.force_close(|_| true, TEXT);
            crate::shovel::sync(state);
            let names: Vec<String> = state.vhosts.iter().map(|v| v.key().clone()).collect();
            for name in names {
                state.delete_vhost_closing(&name, TEXT).await;
            }
            let keep: Vec<String> = state.auth.snapshot().vhosts.keys().cloned().collect();
            for name in keep {
                state.create_vhost(&name).await.map_err(|e| e.to_string())?;
            }
            if let Some(path) = &state.config.load_definitions {
                super::load_definitions(state, path)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Some(name) => {
            if !state.vhosts.contains_key(name) {
                return Err(format!("no vhost '{name}'"));
            }
            let owned = name.to_string();
            tokio::task::spawn_blocking(move || {
                me.auth.update(|d| {
                    d.policies.retain(|(v, _), _| *v != owned);
                    d.operator_policies.retain(|(v, _), _| *v != owned);
                    d.parameters
                        .retain(|(v, component, _), _| *v != owned || component == "vhost-limits");
                    Ok(())
                })
            })
            .await
            .map_err(|e| e.to_string())??;
            state.force_close(|c| c.vhost == name, TEXT);
            crate::shovel::sync(state);
            state.delete_vhost_closing(name, TEXT).await;
            state.create_vhost(name).await.map_err(|e| e.to_string())?;
        }
    }
    info!(vhost = ?vhost, "reset");
    Ok(())
}

#[derive(serde::Deserialize, Default)]
struct ResetBody {
    vhost: Option<String>,
}

/// `POST /api/warren/reset` (administrators): `{}` for everything, `{"vhost": "v"}` for one vhost.
pub(super) async fn reset_endpoint(
    axum::extract::State(state): axum::extract::State<Shared>,
    axum::Extension(user): Caller,
    body: axum::body::Bytes,
) -> Response {
    if !user.is_admin() {
        return not_authorised("Not administrator user");
    }
    let b: ResetBody = if body.is_empty() {
        ResetBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return bad_request(&e.to_string()),
        }
    };
    let started = std::time::Instant::now();
    match reset(&state, b.vhost.as_deref()).await {
        Ok(()) => axum::Json(json!({
            "reset": b.vhost.as_deref().map_or("all".to_string(), |v| format!("vhost '{v}'")),
            "elapsed_ms": started.elapsed().as_secs_f64() * 1000.0,
        }))
        .into_response(),
        Err(e) if e.starts_with("no vhost") => not_found(),
        Err(e) => bad_request(&e),
    }
}

#[derive(serde::Deserialize, Default)]
struct ClockBody {
    /// Move the clock forward by this many ms.
    advance_ms: Option<u64>,
    /// Move the clock forward to this Unix time in ms (never back).
    set_wall_ms: Option<u64>,
}

fn clock_json(extra: Option<u64>) -> Value {
    let mut o = json!({
        "mode": if crate::clock::is_manual() { "manual" } else { "real" },
        "now_ms": crate::clock::now_ms(),
        "wall_ms": crate::clock::wall_ms(),
    });
    if let Some(ms) = extra {
        o["advanced_ms"] = json!(ms);
    }
    o
}

/// `GET /api/warren/clock`: the broker's clock (mode, monotonic and Unix ms).
pub(super) async fn clock(axum::Extension(user): Caller) -> Response {
    if !user.is_monitor() {
        return not_authorised("Not monitor user");
    }
    axum::Json(clock_json(None)).into_response()
}

/// `POST /api/warren/clock` (administrators; the manual test clock only): `{"advance_ms": N}`
/// or `{"set_wall_ms": T}`. Timers fall due in deadline order; the reply comes once what they
/// set off (expiry, dead-lettering, delayed deliveries, consumer timeouts) has settled.
pub(super) async fn advance_clock(
    axum::Extension(user): Caller,
    body: axum::body::Bytes,
) -> Response {
    if !user.is_admin() {
        return not_authorised("Not administrator user");
    }
    if !crate::clock::is_manual() {
        return bad_request(
            "the broker's clock is real time; start Warren with --test-clock (testing.clock = \"manual\") to move it",
        );
    }
    let b: ClockBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad_request(&e.to_string()),
    };
    let ms = match (b.advance_ms, b.set_wall_ms) {
        (Some(ms), None) => ms,
        (None, Some(t)) => {
            let now = crate::clock::wall_ms();
            if t < now {
                return bad_request(&format!(
                    "set_wall_ms {t} is before the clock's time {now}; it only moves forward"
                ));
            }
            t - now
        }
        _ => return bad_request("give one of advance_ms or set_wall_ms"),
    };
    crate::clock::advance(ms).await;
    axum::Json(clock_json(Some(ms))).into_response()
}
