//! `GET /`: the demo page, rendered by one replica, which mints the page's client id and token
//! and sets the `sticky` cookie naming itself; and `/static/{file}`, the page's script modules
//! and style, compiled in and served from a fixed table.

use askama::Template;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use axum::response::{Html, IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::config::SecretSource;
use crate::records::Event;
use crate::token::ClientId;

/// An entry of [`ASSETS`]: `static/<name>`, compiled in.
macro_rules! asset {
    ($name:literal, $content_type:expr) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_str!(concat!("../../static/", $name)),
        }
    };
}

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
    /// The cluster's per-run drills token when drills are on here, else empty: the page shows
    /// its fault drills only when it has one.
    drills_token: &'a str,
    /// The page's script, and the modules it imports, to preload.
    entry: &'static str,
    modules: Vec<&'static str>,
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
        drills_token: state
            .config
            .drills
            .as_ref()
            .and_then(|d| d.token.as_deref())
            .unwrap_or_default(),
        entry: ENTRY,
        modules: imported_modules(),
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

/// One file of the page's script or style, compiled into the binary.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The page's script, run as a module: it imports the others.
const ENTRY: &str = "main.js";

/// Every file `/static/{file}` serves, and the only ones: a request names an entry of this
/// table or gets a 404, so no path from a request ever reaches the file system.
const ASSETS: &[Asset] = &[
    asset!("app.css", CSS),
    asset!("main.js", JS),
    asset!("config.js", JS),
    asset!("state.js", JS),
    asset!("dom.js", JS),
    asset!("format.js", JS),
    asset!("colours.js", JS),
    asset!("request.js", JS),
    asset!("replicas.js", JS),
    asset!("topology.js", JS),
    asset!("buttons.js", JS),
    asset!("tallies.js", JS),
    asset!("feed.js", JS),
    asset!("presses.js", JS),
    asset!("cursors.js", JS),
    asset!("socket.js", JS),
    asset!("lab-common.js", JS),
    asset!("visits.js", JS),
    asset!("notes.js", JS),
    asset!("split.js", JS),
    asset!("stats.js", JS),
    asset!("shard.js", JS),
    asset!("member.js", JS),
    asset!("room.js", JS),
    asset!("events.js", JS),
    asset!("truth.js", JS),
    asset!("drills.js", JS),
    asset!("records-log.js", JS),
    asset!("lessons.js", JS),
];

/// The modules that `ENTRY` imports, directly or not: the page preloads them all at once
/// rather than discovering them one level of imports at a time.
fn imported_modules() -> Vec<&'static str> {
    ASSETS
        .iter()
        .filter(|asset| asset.content_type == JS && asset.name != ENTRY)
        .map(|asset| asset.name)
        .collect()
}

/// `GET /static/{file}`: a file of the table, or the JSON 404 (also for a name that is not
/// UTF-8 once decoded, which no file of the table has).
pub(super) async fn asset(file: Result<Path<String>, PathRejection>) -> Response {
    let found = file
        .ok()
        .and_then(|Path(file)| ASSETS.iter().find(|asset| asset.name == file));
    let Some(asset) = found else {
        return ApiError::not_found().into_response();
    };
    // no-cache, not a long max-age: the demo is rebuilt often and must never run stale script.
    (
        [
            (CONTENT_TYPE, asset.content_type),
            (CACHE_CONTROL, "no-cache"),
        ],
        asset.body,
    )
        .into_response()
}
