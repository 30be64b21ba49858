//! The HTTP surface: `POST /abort`, `GET /status`, `GET /healthz`, `GET /metrics` and
//! the dashboard (`/ui`, `/api/v1/`, see `crate::dashboard`). Every route but health,
//! metrics and the dashboard's data-free page needs a bearer token.
use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{ConnectInfo, Query, State},
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};
use serde_json::json;
use tonic::Status;

use crate::{
    api::auth::{Role, Tokens},
    fleet::control::Control,
};

#[derive(Clone)]
pub struct Http {
    pub control: Arc<Control>,
    pub tokens: Arc<Tokens>,
}

#[derive(serde::Deserialize, Default)]
struct AbortQuery {
    #[serde(default)]
    experiment: String,
    #[serde(default)]
    reason: String,
}

type HttpResult = (StatusCode, Json<serde_json::Value>);

fn http_error(s: &Status) -> HttpResult {
    let code = match s.code() {
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_REQUEST,
    };
    (code, Json(json!({"error": s.message()})))
}

pub(crate) fn http_caller(
    h: &Http,
    headers: &HeaderMap,
    role: Role,
    action: &str,
) -> Result<String, HttpResult> {
    let header = headers.get("authorization").and_then(|v| v.to_str().ok());
    let caller = h.tokens.authorize(header).map_err(|s| http_error(&s))?;
    caller.allow(role, action).map_err(|s| http_error(&s))?;
    Ok(caller.name)
}

async fn http_abort(
    State(h): State<Http>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<AbortQuery>,
) -> HttpResult {
    let caller = match http_caller(&h, &headers, Role::Operator, "abort") {
        Ok(c) => c,
        Err(e) => return e,
    };
    let target = if q.experiment.is_empty() {
        "all"
    } else {
        q.experiment.as_str()
    };
    h.control.audit(
        &caller,
        &peer.to_string(),
        "abort",
        target,
        &format!("POST /abort {}", q.reason),
    );
    match h.control.abort(&q.experiment, &q.reason, &caller).await {
        Ok(out) => (
            if out.unconfirmed.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::GATEWAY_TIMEOUT
            },
            Json(json!({
                "aborted": out.experiment_ids,
                "took_ms": out.took.as_secs_f64() * 1e3,
                "kill_switch_engaged": true,
                "unconfirmed_nodes": out.unconfirmed,
            })),
        ),
        Err(s) => http_error(&s),
    }
}

async fn http_status(State(h): State<Http>, headers: HeaderMap) -> HttpResult {
    if let Err(e) = http_caller(&h, &headers, Role::Viewer, "status") {
        return e;
    }
    let running: Vec<String> = h.control.running().keys().cloned().collect();
    (
        StatusCode::OK,
        Json(json!({
            "kill_switch": h.control.leases.kill_switch(),
            "running": running,
            "connected_agents": h.control.connected_nodes(),
        })),
    )
}

/// OpenMetrics to a scraper that asks for it, the classic text format otherwise.
async fn http_metrics(
    State(h): State<Http>,
    headers: HeaderMap,
) -> impl axum::response::IntoResponse {
    use faultline_proto::exposition as x;
    let text = h.control.metrics.render(&h.control.metrics_state());
    let accept = headers.get("accept").and_then(|v| v.to_str().ok());
    if x::wants_openmetrics(accept) {
        (
            [(axum::http::header::CONTENT_TYPE, x::OPENMETRICS_TEXT)],
            text,
        )
    } else {
        (
            [(axum::http::header::CONTENT_TYPE, x::PROMETHEUS_TEXT)],
            x::to_prometheus_text(&text),
        )
    }
}

pub fn http_router(h: Http) -> Router {
    Router::new()
        .route("/abort", post(http_abort))
        .route("/status", get(http_status))
        .route("/healthz", get(|| async { "ok\n" }))
        // Unauthenticated, like /healthz, so any Prometheus can scrape it: keep the
        // HTTP port on loopback or a management network.
        .route("/metrics", get(http_metrics))
        .merge(crate::dashboard::router())
        .with_state(h)
}
