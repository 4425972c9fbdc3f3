//! Probes and metrics: `/healthz` (the process answers), `/readyz` (it can do its job: broker
//! connected and subscribed, not draining), `/metrics` (Prometheus text format).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::broker::Driver;

pub(super) async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "replica": &*state.replica}))
}

pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let broker = state.broker.is_ready();
    let draining = state.is_draining();
    let ready = broker && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "replica": &*state.replica,
        "broker": state.broker.kind(),
        "broker_ready": broker,
        "draining": draining,
    });
    (status, Json(body)).into_response()
}

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.broker_up(state.broker.is_ready());
    // Evictions the cache has pending are counted (and logged) before the scrape sees them.
    state.lab.maintain();
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
