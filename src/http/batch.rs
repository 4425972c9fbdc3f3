//! `POST /api/publish`: many messages in one request, for server-side producers (API key). Each
//! message is checked as its single-publish counterpart checks it and gets its own result, in
//! the order sent; the broker sends the accepted ones in one round trip
//! ([`crate::broker::Driver::publish_many`]). Delivery is the receiving replicas' as for any
//! publish.
//!
//! Retries: a message may carry its own `"idempotency_key"` (the `Idempotency-Key` rules, and
//! the same record: a key used by a single publish to the same target counts here too). An
//! `Idempotency-Key` header keys the whole batch: message *i* without a key of its own gets one
//! derived from the header and *i*, so resending the same batch with the same header delivers
//! nothing twice. The status is 200 whenever one message was published or every refusal was
//! the message's own; when the broker refused or lost every message it was given, the status
//! is the broker error's (503, `broker_unavailable` or `outcome_unknown`) with the results too.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AppState;
use super::api::require_api_key;
use super::error::ApiError;
use super::extract::{idempotency_key, json_body_within};
use crate::broker::{BrokerError, Driver, IdempotencyKey, Publication, Published};
use crate::channel::ChannelName;
use crate::cursor::Position;
use crate::frame::{Via, check_text};
use crate::records::Event;
use crate::target::Target;
use crate::token::ClientId;

/// Most messages in one batch (contract: Batch publish).
pub const MAX_MESSAGES: usize = 1000;
/// Largest batch body, in bytes (contract: Batch publish); nginx lets this much through.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// One message as sent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    client_id: Option<String>,
    channel: Option<String>,
    text: Option<String>,
    idempotency_key: Option<String>,
}

/// One message's result: where it went, or why not.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Outcome {
    Published {
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<Position>,
        receivers: u64,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        repeated: bool,
    },
    Refused {
        error: ErrorBody,
    },
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    code: &'static str,
    message: String,
}

impl From<ApiError> for Outcome {
    fn from(err: ApiError) -> Self {
        Outcome::Refused {
            error: ErrorBody {
                code: err.code,
                message: err.message,
            },
        }
    }
}

/// The answer: the replica that took the batch, each message's result in the order sent, and
/// (only when the broker took none) the error that says so.
#[derive(Debug, Serialize)]
struct Answer {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorBody>,
    replica: Arc<str>,
    results: Vec<Outcome>,
}

fn bad_message(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("bad_message", message)
}

/// What one message asks for, checked like `/api/publish/{client_id}` and
/// `/api/channels/{channel}/publish` check theirs.
fn check(
    raw: Value,
    index: usize,
    batch_key: Option<&IdempotencyKey>,
    max_text_bytes: usize,
) -> Result<(Target, String, Option<IdempotencyKey>), ApiError> {
    let shape = "a message is {\"client_id\" or \"channel\", \"text\", \"idempotency_key\"?}";
    let item: Item = serde_json::from_value(raw).map_err(|_| bad_message(shape))?;
    let target = match (item.client_id, item.channel) {
        (Some(id), None) => Target::Client(ClientId::parse(&id)?),
        (None, Some(name)) => Target::Channel(
            ChannelName::parse(&name)
                .map_err(|err| ApiError::bad_request("bad_channel", err.to_string()))?,
        ),
        (Some(_), Some(_)) => return Err(bad_message("name a client_id or a channel, not both")),
        (None, None) => return Err(bad_message(shape)),
    };
    let text = item.text.ok_or_else(|| bad_message(shape))?;
    check_text(&text, max_text_bytes).map_err(ApiError::from)?;
    let key = match item.idempotency_key {
        Some(raw) => Some(IdempotencyKey::parse(raw.as_bytes()).map_err(|err| {
            ApiError::bad_request("bad_idempotency_key", format!("idempotency_key: {err}"))
        })?),
        None => batch_key.map(|key| key.item(index)),
    };
    Ok((target, text, key))
}

/// `POST /api/publish`.
pub(super) async fn publish(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    require_api_key(&state, &headers, "/api/publish")?;
    let batch_key = idempotency_key(&headers)?;
    let raw = json_body_within(req, MAX_BODY_BYTES).await?;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        messages: Vec<Value>,
    }
    let body: Body = serde_json::from_str(&raw).map_err(|_| {
        ApiError::bad_request(
            "bad_body",
            "the body is {\"messages\": [{\"client_id\" or \"channel\", \"text\"}, ...]}",
        )
    })?;
    if body.messages.len() > MAX_MESSAGES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_messages",
            format!(
                "{} messages; a batch holds at most {MAX_MESSAGES}",
                body.messages.len()
            ),
        ));
    }
    let max_text = state.config.limits.max_text_bytes;
    let mut results: Vec<Option<Outcome>> = Vec::with_capacity(body.messages.len());
    let mut batch = Vec::with_capacity(body.messages.len());
    // Where each message sent to the broker goes back in `results`.
    let mut sent = Vec::with_capacity(body.messages.len());
    for (index, raw) in body.messages.into_iter().enumerate() {
        match check(raw, index, batch_key.as_ref(), max_text) {
            Ok((target, text, key)) => {
                let via = match target {
                    Target::Channel(_) => Via::Channel,
                    Target::Client(_) | Target::Broadcast => Via::Publish,
                };
                let payload = state.delivery.envelope(via, &text).encode();
                batch.push(Publication {
                    target,
                    payload,
                    key,
                });
                sent.push(index);
                results.push(None);
            }
            Err(err) => results.push(Some(err.into())),
        }
    }
    let targets: Vec<Target> = batch.iter().map(|m| m.target.clone()).collect();
    let published = state.broker.publish_many(batch).await;
    let (mut accepted, mut broker_error) = (0usize, None::<BrokerError>);
    for ((index, target), result) in sent.into_iter().zip(&targets).zip(published) {
        state.metrics.published(target, result.is_ok());
        results[index] = Some(match result {
            Ok(Published {
                receivers,
                position,
                repeated,
            }) => {
                accepted += 1;
                Outcome::Published {
                    cursor: position,
                    receivers,
                    repeated,
                }
            }
            Err(err) => {
                // Of several broker errors, an unknown outcome is the one to tell: a retry
                // must then carry the same keys.
                if !matches!(broker_error, Some(BrokerError::OutcomeUnknown(_))) {
                    broker_error = Some(err.clone());
                }
                ApiError::from(err).into()
            }
        });
    }
    let results: Vec<Outcome> = results.into_iter().flatten().collect();
    state.records.record(
        Event::Publish,
        None,
        format_args!(
            "batch messages={} published={accepted} refused={}",
            results.len(),
            results.len() - accepted
        ),
    );
    let (status, error, retry_after) = match broker_error {
        Some(err) if accepted == 0 => {
            let err = ApiError::from(err);
            let body = ErrorBody {
                code: err.code,
                message: err.message,
            };
            (err.status, Some(body), err.retry_after)
        }
        _ => (StatusCode::OK, None, None),
    };
    let answer = Answer {
        error,
        replica: state.replica.clone(),
        results,
    };
    let mut response = (status, Json(answer)).into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, seconds.into());
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn checked(raw: Value) -> Result<(Target, String, Option<IdempotencyKey>), &'static str> {
        check(raw, 0, None, 8).map_err(|err| err.code)
    }

    #[test]
    fn each_message_is_checked_like_its_single_publish() {
        let (target, text, key) = checked(json!({"client_id": "alice", "text": ""})).unwrap();
        assert_eq!(target, Target::Client(ClientId::parse("alice").unwrap()));
        assert_eq!((text.as_str(), key), ("", None), "an empty text is a text");
        assert!(matches!(
            checked(json!({"channel": "room:1", "text": "hi"})),
            Ok((Target::Channel(_), _, None))
        ));
        let refusals = [
            (json!({"client_id": "bad id", "text": "x"}), "bad_client_id"),
            (json!({"channel": "bad name", "text": "x"}), "bad_channel"),
            (
                json!({"client_id": "a", "text": "123456789"}),
                "text_too_long",
            ),
            (json!({"client_id": "a"}), "bad_message"),
            (
                json!({"client_id": "a", "channel": "c", "text": "x"}),
                "bad_message",
            ),
            (json!({"text": "x"}), "bad_message"),
            (
                json!({"client_id": "a", "text": "x", "to": 1}),
                "bad_message",
            ),
            (json!("client_id"), "bad_message"),
            (json!({"client_id": 7, "text": "x"}), "bad_message"),
            (
                json!({"client_id": "a", "text": "x", "idempotency_key": ""}),
                "bad_idempotency_key",
            ),
        ];
        for (raw, code) in refusals {
            assert_eq!(checked(raw.clone()).err(), Some(code), "{raw}");
        }
    }

    #[test]
    fn the_batch_key_gives_each_message_a_key_of_its_own_and_its_own_key_wins() {
        let batch = IdempotencyKey::parse(b"batch-1").unwrap();
        let key_of = |raw: Value, index| check(raw, index, Some(&batch), 8).unwrap().2;
        let plain = json!({"client_id": "a", "text": "x"});
        assert_eq!(key_of(plain.clone(), 0), key_of(plain.clone(), 0));
        assert_ne!(key_of(plain.clone(), 0), key_of(plain.clone(), 1));
        assert_ne!(key_of(plain, 0), Some(batch));
        let own = json!({"client_id": "a", "text": "x", "idempotency_key": "mine"});
        assert_eq!(
            key_of(own, 3),
            Some(IdempotencyKey::parse(b"mine").unwrap())
        );
    }
}
