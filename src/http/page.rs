//! `GET /`: the demo page, rendered by one replica, which mints the page's client id and token
//! and sets the `sticky` cookie naming itself. The page's script and style are compiled in.

use askama::Template;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use axum::response::{Html, IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::config::SecretSource;
use crate::records::Event;
use crate::token::ClientId;

#[derive(Template)]
#[template(path = "page.html")]
struct Page<'a> {
    replica: &'a str,
    client_id: &'a str,
    token: &'a str,
    secret_is_demo: bool,
    /// Visits this replica counted in its own memory, this one included.
    visits_local: u64,
    /// Visits counted in Redis; empty while Redis is unreachable.
    visits_shared: String,
    state_ttl_secs: u64,
    state_max_entries: u64,
    max_notes: usize,
}

pub(super) async fn index(State(state): State<AppState>) -> Result<Response, ApiError> {
    let client = ClientId::generate();
    let token = state.signer.mint(&client);
    let visits = state.lab.visit().await;
    let limits = &state.config.limits;
    let page = Page {
        replica: &state.replica,
        client_id: client.as_str(),
        token: &token,
        secret_is_demo: state.config.secret_source == SecretSource::Demo,
        visits_local: visits.local,
        visits_shared: visits.shared.map(|n| n.to_string()).unwrap_or_default(),
        state_ttl_secs: limits.state_ttl_secs,
        state_max_entries: limits.state_max_entries,
        max_notes: limits.max_notes,
    };
    let html = page.render().map_err(|err| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "render_failed",
            err.to_string(),
        )
    })?;
    let cookie = format!("sticky={}; Path=/; HttpOnly; SameSite=Lax", state.replica);
    state.records.record(
        Event::Page,
        Some(client.as_str()),
        format_args!(
            "rendered the page; cookie sticky={}; visits here={} shared={}",
            state.replica,
            visits.local,
            visits
                .shared
                .map_or_else(|| "unavailable".to_owned(), |n| n.to_string())
        ),
    );
    Ok((
        [(SET_COOKIE, cookie), (CACHE_CONTROL, "no-store".to_owned())],
        Html(html),
    )
        .into_response())
}

pub(super) async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../static/app.js"),
    )
}

pub(super) async fn style() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../../static/app.css"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    // no-cache, not a long max-age: the demo is rebuilt often and must never run stale script.
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
        body,
    )
        .into_response()
}
