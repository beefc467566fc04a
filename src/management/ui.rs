//! The management web UI: static files (HTML, ES modules, CSS, the vendored uPlot) built into
//! the binary from `ui/`, served at `/` without authentication (the pages log in to the API
//! with HTTP basic auth, as RabbitMQ's UI does). `management.ui_dir` serves them from a
//! directory instead, for UI work without a rebuild.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use include_dir::{Dir, include_dir};
use std::sync::Arc;

static FILES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/ui");

/// The UI's routes: `/` is `index.html`, anything else not under `/api/` a file of the UI.
pub(super) fn router(state: super::Shared) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/{*path}", get(file))
        .with_state(state)
}

async fn index(State(state): State<super::Shared>) -> Response {
    serve(&state, "index.html")
}

async fn file(State(state): State<super::Shared>, Path(path): Path<String>) -> Response {
    if path.starts_with("api/") || path == "api" {
        return super::not_found();
    }
    serve(&state, &path)
}

fn serve(state: &super::Shared, path: &str) -> Response {
    // No way out of the UI's directory.
    if path
        .split('/')
        .any(|p| p.is_empty() || p == ".." || p == "." || p.starts_with('.'))
    {
        return super::not_found();
    }
    let body: Option<Arc<[u8]>> = match &state.config.management.ui_dir {
        Some(dir) => std::fs::read(dir.join(path)).ok().map(Into::into),
        None => FILES.get_file(path).map(|f| f.contents().into()),
    };
    let Some(body) = body else {
        return super::not_found();
    };
    let mut r = (StatusCode::OK, body.to_vec()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(mime(path)));
    // The files change with the binary: revalidate, never trust a stale copy.
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn mime(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}
