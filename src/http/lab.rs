//! The state lab's endpoints: notes added to the local and the shared copy of a client's
//! session state, forgetting the sticky cookie, and every replica's key figures.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::http::header::SET_COOKIE;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::api::authorize;
use super::error::ApiError;
use super::extract::{ClientPath, TextBody, sticky_cookie};
use crate::channel::ChannelName;
use crate::frame::check_text;
use crate::lab::{Outcome, Store};
use crate::target::Target;
use crate::token::ClientId;

/// `POST /api/notes/{client_id}/local`: a note in this replica's memory.
pub(super) async fn add_local(
    state: State<AppState>,
    client: ClientPath,
    headers: HeaderMap,
    body: TextBody,
) -> Result<Json<Outcome>, ApiError> {
    add(state, client, headers, body, Store::Local).await
}

/// `POST /api/notes/{client_id}/shared`: a note in Redis.
pub(super) async fn add_shared(
    state: State<AppState>,
    client: ClientPath,
    headers: HeaderMap,
    body: TextBody,
) -> Result<Json<Outcome>, ApiError> {
    add(state, client, headers, body, Store::Shared).await
}

async fn add(
    State(state): State<AppState>,
    ClientPath(client): ClientPath,
    headers: HeaderMap,
    TextBody(text): TextBody,
    store: Store,
) -> Result<Json<Outcome>, ApiError> {
    authorize(&state, &headers, &client)?;
    check_text(&text, state.config.limits.max_note_bytes).map_err(|err| {
        ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "note_too_long",
            format!("a note is kept in memory per client: {err}"),
        )
    })?;
    if text.trim().is_empty() {
        return Err(ApiError::bad_request(
            "empty_note",
            "a note needs some text",
        ));
    }
    Ok(Json(state.lab.add(&client, store, &text).await?))
}

/// `GET /api/notes/{client_id}`: both copies, as this replica sees them, changing neither.
pub(super) async fn read(
    State(state): State<AppState>,
    ClientPath(client): ClientPath,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, &client)?;
    let local = state.lab.read(&client, Store::Local).await?;
    let shared = state.lab.read(&client, Store::Shared).await?;
    Ok(Json(
        json!({"replica": &*state.replica, "local": local, "shared": shared}),
    ))
}

/// `POST /api/sticky/forget`: clears the caller's sticky cookie, so its next requests (and its
/// next socket) are spread round robin again. Touches nothing but the caller's own cookie.
pub(super) async fn forget_cookie(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let forgot = sticky_cookie(&headers);
    let clear = "sticky=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax";
    (
        [(SET_COOKIE, clear)],
        Json(json!({"replica": &*state.replica, "forgot": forgot})),
    )
        .into_response()
}

/// `GET /api/stats`: every replica's key figures, this one's read now and the others' as they
/// last announced them (every 2 s), with the shared visit count and this replica's own view of
/// its broker link (`broker.up` is what `/readyz` reads). With `client_id` and/or `channel`
/// (each checked as its parser checks it; nothing else is read) it also says which shard holds
/// their slots: `shard` is `null` unless the broker is a Redis Cluster.
pub(super) async fn stats(
    State(state): State<AppState>,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    use crate::broker::Driver;
    let Query(query) = query.map_err(|err| ApiError::bad_request("bad_query", err.body_text()))?;
    let client = query
        .client_id
        .as_deref()
        .map(ClientId::parse)
        .transpose()?;
    let channel = query
        .channel
        .as_deref()
        .map(ChannelName::parse)
        .transpose()
        .map_err(|err| ApiError::bad_request("bad_channel", err.to_string()))?;
    let targets: Vec<Target> = client
        .into_iter()
        .map(Target::Client)
        .chain(channel.into_iter().map(Target::Channel))
        .collect();
    let shard = match state.broker.shards(&targets).await {
        None => Value::Null,
        Some(shards) => {
            let mut shards = shards.into_iter();
            let has_client = query.client_id.is_some();
            let client = has_client.then(|| shards.next()).flatten();
            let channel = query.channel.is_some().then(|| shards.next()).flatten();
            json!({"client": client, "channel": channel})
        }
    };
    let (list, complete) = state.presence.all().await;
    let shared_visits = state.lab.shared_visits().await;
    Ok(Json(json!({
        "replica": &*state.replica,
        "broker": {"up": state.broker.is_ready(), "detail": state.broker.link_detail()},
        "replicas": list,
        "complete": complete,
        "shared_visits": shared_visits,
        "shard": shard,
    })))
}

/// What `/api/stats` may be asked: whose slots to show. Unknown parameters are ignored.
#[derive(Debug, serde::Deserialize)]
pub(super) struct StatsQuery {
    client_id: Option<String>,
    channel: Option<String>,
}
