//! `/api/channels/{channel}/…`: publishing to a channel, minting subscription tokens, and who
//! is subscribed (presence) across every replica. What a socket does with a channel is the
//! session's business; the channel rules are [`crate::channel`]'s.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;

use super::AppState;
use super::api::{is_api_key, require_api_key};
use super::error::ApiError;
use super::extract::{ChannelPath, ClientIdBody, TextBody, bearer, idempotency_key};
use crate::broker::Driver;
use crate::channel::ChannelName;
use crate::cursor::Position;
use crate::frame::Via;
use crate::records::Event;
use crate::target::Target;
use crate::token::ClientId;

/// `POST /api/channels/{channel}/publish`'s answer.
#[derive(Debug, Serialize)]
pub(super) struct ChannelPublished {
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<Position>,
    receivers: u64,
    replica: Arc<str>,
    /// Only on a repeat of an `Idempotency-Key`: the answer is the first publish's.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    repeated: bool,
}

/// Who may act on a channel over HTTP.
enum Caller {
    /// The server API key: any channel.
    Server,
    /// A client token: `public:` channels only.
    Client(ClientId),
}

/// The API key; or, for a `public:` channel, a client token — which proves a client id only
/// together with that id, so the caller names it in `X-Client-Id`.
fn caller(
    state: &AppState,
    headers: &HeaderMap,
    channel: &ChannelName,
) -> Result<Caller, ApiError> {
    let credential = bearer(headers).ok_or_else(|| {
        ApiError::unauthorized(
            "missing_token",
            "send Authorization: Bearer <API key> (or a client token for a public: channel)",
        )
    })?;
    if is_api_key(state, credential) {
        return Ok(Caller::Server);
    }
    let client = headers
        .get("x-client-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| ClientId::parse(v).ok());
    match client {
        Some(client) if channel.is_public() && state.signer.verify(&client, credential) => {
            Ok(Caller::Client(client))
        }
        _ if !channel.is_public() => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "api_key_required",
            "this channel is not public: it takes the API key",
        )),
        _ => Err(ApiError::unauthorized(
            "bad_token",
            "send the API key, or a client token with X-Client-Id: <its client id>",
        )),
    }
}

/// `POST /api/channels/{channel}/publish`: to every subscriber on every replica.
pub(super) async fn publish(
    State(state): State<AppState>,
    ChannelPath(channel): ChannelPath,
    headers: HeaderMap,
    TextBody(text): TextBody,
) -> Result<Json<ChannelPublished>, ApiError> {
    let caller = caller(&state, &headers, &channel)?;
    let key = idempotency_key(&headers)?;
    if let Caller::Client(client) = &caller {
        state.channel_rate.check_key(client).map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "more than {} channel publishes per second for this client; slow down",
                    state.config.limits.channel_publish_rate
                ),
            )
        })?;
    }
    let target = Target::Channel(channel);
    let envelope = state.delivery.envelope(Via::Channel, &text);
    let result = state
        .broker
        .publish_once(&target, envelope.encode(), key.as_ref())
        .await;
    state.metrics.published(&target, result.is_ok());
    let published = result?;
    let who = match &caller {
        Caller::Server => "api".to_owned(),
        Caller::Client(client) => client.to_string(),
    };
    state.records.record(
        Event::ChannelPublish,
        Some(&who),
        format_args!(
            "{} receivers={}{}",
            target.label().unwrap_or_default(),
            published.receivers,
            super::api::repeat_note(&published)
        ),
    );
    Ok(Json(ChannelPublished {
        cursor: published.position,
        receivers: published.receivers,
        replica: state.replica.clone(),
        repeated: published.repeated,
    }))
}

/// `POST /api/channels/{channel}/tokens` `{"client_id"}`: a subscription token; API key only.
pub(super) async fn mint_token(
    State(state): State<AppState>,
    ChannelPath(channel): ChannelPath,
    headers: HeaderMap,
    ClientIdBody(client): ClientIdBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_api_key(&state, &headers, "/api/channels/{channel}/tokens")?;
    let token = state.signer.mint_subscription(&client, channel.as_str());
    Ok(Json(serde_json::json!({
        "channel": channel.as_str(),
        "client_id": client.as_str(),
        "token": token,
    })))
}

/// One client in a member list: the replica holding it (the first, if several do) and its
/// sockets on all of them.
#[derive(Debug, Serialize)]
pub(super) struct Listed {
    client_id: String,
    replica: String,
    sockets: u32,
    /// Every replica holding a socket of it, when more than one does.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    replicas: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct Presence {
    channel: String,
    count: usize,
    clients: Vec<Listed>,
    replica: Arc<str>,
}

/// `GET /api/channels/{channel}/presence`: who is subscribed, across every replica.
pub(super) async fn presence(
    State(state): State<AppState>,
    ChannelPath(channel): ChannelPath,
    headers: HeaderMap,
) -> Result<Json<Presence>, ApiError> {
    caller(&state, &headers, &channel)?;
    let members = state.broker.members(&channel).await?;
    let mut by_client: BTreeMap<String, Listed> = BTreeMap::new();
    for member in members {
        let listed = by_client
            .entry(member.client_id.clone())
            .or_insert_with(|| Listed {
                client_id: member.client_id,
                replica: member.replica.clone(),
                sockets: 0,
                replicas: Vec::new(),
            });
        listed.sockets += member.sockets;
        if listed.replica != member.replica || !listed.replicas.is_empty() {
            if listed.replicas.is_empty() {
                listed.replicas.push(listed.replica.clone());
            }
            listed.replicas.push(member.replica);
        }
    }
    let count = by_client.len();
    let clients = by_client
        .into_values()
        .take(crate::broker::members::MAX_LISTED)
        .collect();
    Ok(Json(Presence {
        channel: channel.to_string(),
        count,
        clients,
        replica: state.replica.clone(),
    }))
}
