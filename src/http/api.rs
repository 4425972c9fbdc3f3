//! `/api/*`: minting clients, and the three ways an HTTP request can reach a socket (answered
//! over HTTP, delivered in memory, published through the broker).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{ClientPath, TextBody, bearer, idempotency_key, sticky_cookie};
use crate::broker::{Driver, IdempotencyKey, Published};
use crate::cursor::Position;
use crate::frame::Via;
use crate::peer::{Peer, limit_key};
use crate::records::Event;
use crate::target::Target;
use crate::token::ClientId;

// The answers of the message routes, serialized straight from structs: a `json!` value built a
// map of owned keys per request. Fields in alphabetical order, as `json!` wrote them.

/// `/api/echo`'s answer.
#[derive(Debug, Serialize)]
pub(super) struct Echoed {
    replica: Arc<str>,
    sticky: bool,
    text: String,
}

/// `/api/direct`'s answer: this replica's sockets of the client that took the message.
#[derive(Debug, Serialize)]
pub(super) struct Delivered {
    delivered: usize,
    replica: Arc<str>,
}

/// `/api/publish` and `/api/broadcast`'s answer: replicas that took the message, and where it
/// sits in the history. `repeated` only on a repeat of an `Idempotency-Key`, whose answer is
/// the first publish's.
#[derive(Debug, Serialize)]
pub(super) struct Received {
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<Position>,
    receivers: u64,
    replica: Arc<str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    repeated: bool,
}

impl Received {
    fn new(state: &AppState, published: Published) -> Self {
        Self {
            cursor: published.position,
            receivers: published.receivers,
            replica: state.replica.clone(),
            repeated: published.repeated,
        }
    }
}

/// `POST /api/clients`: a fresh client id and its token, within the source address's mint rate
/// (the API key is not limited: it is the server-side producers' and load tools' way in).
/// Minting stores nothing, but every client id brings its own publish rate and history: an
/// unlimited mint would defeat both.
pub(super) async fn mint_client(
    State(state): State<AppState>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let trusted = bearer(&headers).is_some_and(|key| is_api_key(&state, key));
    if !trusted && let Some(Extension(peer)) = peer {
        let source = limit_key(peer.client_ip(&headers));
        if let Err(not_until) = state.mint.check_key(&source) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "more than {} new clients per second from {source}; slow down, or mint \
                     with the API key",
                    state.config.limits.mint_rate
                ),
            )
            .retry_after(wait));
        }
    }
    let client = ClientId::generate();
    let token = state.signer.mint(&client);
    Ok(Json(
        json!({"client_id": client.as_str(), "token": token, "replica": &*state.replica}),
    ))
}

/// The request proves it may act as `client`: its token (within the client's send rate), or
/// the server API key (trusted, not limited).
pub(super) fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    client: &ClientId,
) -> Result<(), ApiError> {
    let credential = bearer(headers).ok_or_else(|| {
        ApiError::unauthorized("missing_token", "send Authorization: Bearer <client token>")
    })?;
    // The client token first: it is what nearly every request carries, and the API-key check
    // costs two digests.
    if !state.signer.verify(client, credential) {
        if is_api_key(state, credential) {
            return Ok(());
        }
        return Err(ApiError::unauthorized(
            "bad_token",
            "the token is not valid for this client id",
        ));
    }
    state.rate.check_key(client).map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "more than {} sends per second for this client; slow down",
                state.config.limits.publish_rate
            ),
        )
    })
}

/// The request carries the server API key: 403 `api_disabled` when the deployment has none,
/// 401 `missing_token` / `bad_token` otherwise. `what` names the route in the messages.
pub(super) fn require_api_key(
    state: &AppState,
    headers: &HeaderMap,
    what: &str,
) -> Result<(), ApiError> {
    if state.config.api_key.is_none() {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "api_disabled",
            format!("the server API is disabled: set API_KEY to enable {what}"),
        ));
    }
    let credential = bearer(headers).ok_or_else(|| {
        ApiError::unauthorized("missing_token", "send Authorization: Bearer <API key>")
    })?;
    if !is_api_key(state, credential) {
        return Err(ApiError::unauthorized(
            "bad_token",
            format!("{what} needs the API key"),
        ));
    }
    Ok(())
}

pub(super) fn is_api_key(state: &AppState, credential: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let Some(key) = state.config.api_key.as_deref() else {
        return false;
    };
    // Comparing digests keeps the comparison constant-time whatever the lengths.
    Sha256::digest(key.as_bytes())
        .ct_eq(&Sha256::digest(credential.as_bytes()))
        .into()
}

/// `POST /api/echo/{client_id}`: answered over HTTP by whichever replica got it.
pub(super) async fn echo(
    State(state): State<AppState>,
    ClientPath(client): ClientPath,
    headers: HeaderMap,
    TextBody(text): TextBody,
) -> Result<Json<Echoed>, ApiError> {
    authorize(&state, &headers, &client)?;
    let sticky = sticky_cookie(&headers).is_some();
    let detail = format!("sticky={} {text}", if sticky { "yes" } else { "no" });
    state
        .records
        .record(Event::HttpEcho, Some(client.as_str()), &detail);
    Ok(Json(Echoed {
        replica: state.replica.clone(),
        sticky,
        text,
    }))
}

/// `POST /api/direct/{client_id}`: delivered to the sockets this replica holds, and no others.
pub(super) async fn direct(
    State(state): State<AppState>,
    ClientPath(client): ClientPath,
    headers: HeaderMap,
    TextBody(text): TextBody,
) -> Result<Json<Delivered>, ApiError> {
    authorize(&state, &headers, &client)?;
    let delivered = state.delivery.direct(&client, &text);
    Ok(Json(Delivered {
        delivered,
        replica: state.replica.clone(),
    }))
}

/// `POST /api/publish/{client_id}`: through the broker to whichever replicas hold the client.
pub(super) async fn publish(
    State(state): State<AppState>,
    ClientPath(client): ClientPath,
    headers: HeaderMap,
    TextBody(text): TextBody,
) -> Result<Json<Received>, ApiError> {
    authorize(&state, &headers, &client)?;
    let key = idempotency_key(&headers)?;
    let target = Target::Client(client);
    let published = send(&state, &target, Via::Publish, text, key).await?;
    state.records.record(
        Event::Publish,
        target.client(),
        format_args!(
            "receivers={}{}",
            published.receivers,
            repeat_note(&published)
        ),
    );
    Ok(Json(Received::new(&state, published)))
}

/// `POST /api/broadcast`: to every socket on every replica; needs the API key.
pub(super) async fn broadcast(
    State(state): State<AppState>,
    headers: HeaderMap,
    TextBody(text): TextBody,
) -> Result<Json<Received>, ApiError> {
    require_api_key(&state, &headers, "/api/broadcast")?;
    let key = idempotency_key(&headers)?;
    let published = send(&state, &Target::Broadcast, Via::Broadcast, text, key).await?;
    state.records.record(
        Event::Broadcast,
        None,
        format_args!(
            "receivers={}{}",
            published.receivers,
            repeat_note(&published)
        ),
    );
    Ok(Json(Received::new(&state, published)))
}

async fn send(
    state: &AppState,
    target: &Target,
    via: Via,
    text: String,
    key: Option<IdempotencyKey>,
) -> Result<Published, ApiError> {
    let envelope = state.delivery.envelope(via, &text);
    let result = state
        .broker
        .publish_once(target, envelope.encode(), key.as_ref())
        .await;
    state.metrics.published(target, result.is_ok());
    Ok(result?)
}

/// What the records log adds for a repeat of an idempotency key (nothing was sent).
pub(super) fn repeat_note(published: &Published) -> &'static str {
    if published.repeated { " repeated" } else { "" }
}

/// `GET /api/replicas`: the replicas of this deployment, as they last announced themselves.
pub(super) async fn replicas(State(state): State<AppState>) -> Json<Value> {
    let (list, complete) = state.presence.all().await;
    Json(json!({"replica": &*state.replica, "replicas": list, "complete": complete}))
}
