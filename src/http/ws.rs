//! `GET /ws/{client_id}?token=…`: checks everything it can before the upgrade (so refusals are
//! plain HTTP answers), then hands the socket to a [`Session`].

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;

use super::AppState;
use super::error::ApiError;
use super::extract::ClientPath;
use super::origin::origin_allowed;
use crate::config::is_valid_app_id;
use crate::cursor::{BadCursor, Position};
use crate::peer::{Peer, Scheme};
use crate::records::Event;
use crate::registry::AdmitError;
use crate::resume::Seen;
use crate::session::{ReplayBounds, Session};

/// Read buffer of a socket, and the most one read takes from the kernel. Every socket keeps it
/// for its life; what clients send (echoes, subscriptions with their tokens) is mostly under
/// this, and a larger frame takes more reads (a 4 KiB one sixteen). 256 rather than 512: a
/// quarter KiB less for every idle socket.
const READ_BUFFER_BYTES: usize = 256;

pub(super) async fn upgrade(
    State(state): State<AppState>,
    ClientPath(client): ClientPath,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(rejection.status(), "not_a_websocket", rejection.body_text())
    })?;
    let page = peer.map_or(Scheme::Http, |Extension(peer)| peer.scheme(&headers));
    if !origin_allowed(&headers, page, &state.config.allowed_origins) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "WebSocket from another origin; add it to ALLOWED_ORIGINS to allow it",
        ));
    }
    let mut query = query.map(|Query(q)| q).unwrap_or_default();
    let token = query
        .remove("token")
        .ok_or_else(|| ApiError::unauthorized("missing_token", "add ?token=<client token>"))?;
    if !state.signer.verify(&client, &token) {
        return Err(ApiError::unauthorized(
            "bad_token",
            "the token is not valid for this client id",
        ));
    }
    let resume = resume_point(&query)?;
    let page_replica = query
        .remove("page")
        .map(|page| {
            if is_valid_app_id(&page) {
                Ok(page)
            } else {
                Err(ApiError::bad_request(
                    "bad_page_replica",
                    "page: the replica that rendered the page, 1 to 64 of [A-Za-z0-9._-]",
                ))
            }
        })
        .transpose()?;
    if state.is_draining() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this replica is shutting down; connect again",
        ));
    }
    let registration = state
        .registry
        .register(&client, &state.broker)
        .map_err(|err| {
            let status = match err {
                AdmitError::ReplicaFull(_) => StatusCode::SERVICE_UNAVAILABLE,
                AdmitError::ClientFull(_) => StatusCode::TOO_MANY_REQUESTS,
            };
            ApiError::new(status, "too_many_sockets", err.to_string())
        })?;
    let tabs = state.registry.sockets_of(&client);
    let page = match &page_replica {
        Some(page) if page.as_str() == &*state.replica => format!(" page={page} (same replica)"),
        Some(page) => format!(" page={page} (split: page and socket on different replicas)"),
        None => String::new(),
    };
    state.records.record(
        Event::Connect,
        Some(client.as_str()),
        format_args!("tabs={tabs}{page}"),
    );
    let landing = state.lab.landed(&client, page_replica);
    let limits = &state.config.limits;
    let session = Session {
        client,
        registration,
        delivery: state.delivery.clone(),
        max_text_bytes: limits.max_text_bytes,
        shutdown: state.shutdown.token.clone(),
        broker: state.broker.clone(),
        resume,
        landing,
        signer: state.signer.clone(),
        channel_rate: state.channel_rate.clone(),
        queue_len: limits.socket_queue,
        replay: ReplayBounds::from_limits(limits),
    };
    let tracker = state.shutdown.tracker.clone();
    // The socket's task is sized for the largest state of everything it runs, for the socket's
    // whole life: what the callback captures stays in it (as dead bytes once moved on), so it
    // captures a pointer, and the socket is split and the session started without an async
    // block of our own in between that would keep a second copy of both.
    let session = Box::new(session);
    Ok(upgrade
        .max_message_size(limits.max_ws_message_bytes)
        .max_frame_size(limits.max_ws_message_bytes)
        // Small buffers: an idle socket should cost kilobytes, not the 128 KiB default. The
        // read buffer is allocated whole for every socket and zeroed on every read attempt,
        // while clients send little: larger frames take a few more reads.
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(4 * 1024)
        .max_write_buffer_size(64 * 1024 + limits.max_ws_message_bytes)
        .on_upgrade(move |socket: WebSocket| {
            let (sink, stream) = socket.split();
            tracker.track_future((*session).run(sink, stream))
        }))
}

/// `last_id` and `last_broadcast_id`: present on a reconnect (either one suffices; the other
/// then counts from the start of its history).
fn resume_point(query: &HashMap<String, String>) -> Result<Option<Seen>, ApiError> {
    let parse = |name: &str| -> Result<Option<Position>, ApiError> {
        query
            .get(name)
            .map(|raw| {
                raw.parse().map_err(|err: BadCursor| {
                    ApiError::bad_request("bad_last_id", format!("{name}: {err}"))
                })
            })
            .transpose()
    };
    let client = parse("last_id")?;
    let broadcast = parse("last_broadcast_id")?;
    if client.is_none() && broadcast.is_none() {
        return Ok(None);
    }
    Ok(Some(Seen {
        client: client.unwrap_or_default(),
        broadcast: broadcast.unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ws::Message;
    use futures_util::stream::{SplitSink, SplitStream};

    /// The size of what `f` returns, without calling it.
    fn size_of_output<A, B, C, F>(_: impl FnOnce(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A socket's task is sized by the largest state its session future can be in, and every
    /// idle socket carries that size for its life: what waits for the broker or writes a batch
    /// is boxed, each message is handled outside the future, the writer borrows its queue and
    /// gate, and `run` is an async block (an async fn keeps a second copy of its arguments).
    /// Undoing any one of them grows the future past this bound (1,800 bytes before, 984
    /// after, in a debug build).
    #[test]
    fn an_idle_sockets_task_stays_small() {
        let task =
            size_of_output(Session::run::<SplitSink<WebSocket, Message>, SplitStream<WebSocket>>);
        assert!(task <= 1_050, "the session future takes {task} bytes");
    }
}
