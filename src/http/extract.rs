//! Extractors that check what a client sends before a handler sees it, and turn every failure
//! into the contract's error shape instead of axum's plain-text rejections.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use bytes::BytesMut;
use futures_util::StreamExt;

use super::AppState;
use super::error::ApiError;
use crate::broker::IdempotencyKey;
use crate::channel::ChannelName;
use crate::frame::{ClientFrame, parse_client_frame};
use crate::token::ClientId;

/// `{client_id}` from the path, validated.
#[derive(Debug)]
pub(super) struct ClientPath(pub ClientId);

impl<S: Send + Sync> FromRequestParts<S> for ClientPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::bad_request("bad_client_id", rejection.body_text()))?;
        Ok(Self(ClientId::parse(&raw)?))
    }
}

/// The `text` of a JSON body `{"text": "..."}`, within the body and text limits.
#[derive(Debug)]
pub(super) struct TextBody(pub String);

impl FromRequest<AppState> for TextBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let raw = json_body(req, state).await?;
        match parse_client_frame(&raw, state.config.limits.max_text_bytes)? {
            ClientFrame::Echo { text } => Ok(Self(text)),
            _ => Err(ApiError::bad_request(
                "bad_body",
                "the body is {\"text\": \"...\"} and nothing else",
            )),
        }
    }
}

/// `{"client_id"}`: whom a subscription token is for.
#[derive(Debug)]
pub(super) struct ClientIdBody(pub ClientId);

impl FromRequest<AppState> for ClientIdBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            client_id: String,
        }
        let raw = json_body(req, state).await?;
        let body: Body = serde_json::from_str(&raw).map_err(|_| {
            ApiError::bad_request("bad_body", "the body is {\"client_id\": \"...\"}")
        })?;
        Ok(Self(ClientId::parse(&body.client_id)?))
    }
}

/// `{channel}` in the path.
#[derive(Debug)]
pub(super) struct ChannelPath(pub ChannelName);

impl<S: Send + Sync> FromRequestParts<S> for ChannelPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::bad_request("bad_channel", rejection.body_text()))?;
        ChannelName::parse(&raw)
            .map(Self)
            .map_err(|err| ApiError::bad_request("bad_channel", err.to_string()))
    }
}

/// A JSON body within `MAX_BODY_BYTES`, as text.
async fn json_body(req: Request, state: &AppState) -> Result<String, ApiError> {
    json_body_within(req, state.config.limits.max_body_bytes).await
}

/// A JSON body of at most `limit` bytes, as text.
pub(super) async fn json_body_within(req: Request, limit: usize) -> Result<String, ApiError> {
    if !is_json(req.headers()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send Content-Type: application/json",
        ));
    }
    let announced = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bytes = read_body(req.into_body(), announced, limit)
        .await
        .map_err(|err| match err {
            BodyError::TooLarge => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body is limited to {limit} bytes"),
            ),
            BodyError::Broken(reason) => ApiError::bad_request("bad_body", reason),
        })?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::bad_request("bad_body", "body is not valid UTF-8"))
}

/// A body over its limit is still read and dropped up to this many bytes (or twice the
/// limit, if more), so the sender (nginx, say) hears the 413 instead of a broken pipe ...
const DRAIN_MAX_BYTES: u64 = 1024 * 1024;
/// ... and for at most this long.
const DRAIN_MAX_TIME: Duration = Duration::from_secs(2);

#[derive(Debug, PartialEq, Eq)]
enum BodyError {
    TooLarge,
    Broken(String),
}

/// The body, if it holds at most `limit` bytes; only `limit` bytes are ever kept in memory.
async fn read_body(body: Body, announced: Option<u64>, limit: usize) -> Result<Bytes, BodyError> {
    // A route with a large limit (a batch) drains what nginx lets through past it, too.
    let drain_max = DRAIN_MAX_BYTES.max(2 * limit as u64);
    if announced.is_some_and(|len| len > drain_max) {
        // Too large to be worth reading: refuse at once, whatever the connection does then.
        return Err(BodyError::TooLarge);
    }
    let mut stream = body.into_data_stream();
    let mut kept = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|err| BodyError::Broken(err.to_string()))?;
        if kept.len() + chunk.len() > limit {
            let mut seen = (kept.len() + chunk.len()) as u64;
            drop(kept);
            let drain = async {
                while seen < drain_max {
                    match stream.next().await {
                        Some(Ok(chunk)) => seen += chunk.len() as u64,
                        _ => break,
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_MAX_TIME, drain).await;
            return Err(BodyError::TooLarge);
        }
        kept.extend_from_slice(&chunk);
    }
    Ok(kept.freeze())
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// The bearer credential of the request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credential) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
        .filter(|c| !c.is_empty())
}

/// The request's `Idempotency-Key`, checked: none, or exactly one within the key's limits.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = |message: String| ApiError::bad_request("bad_idempotency_key", message);
    if values.next().is_some() {
        return Err(bad("send one Idempotency-Key, not several".to_owned()));
    }
    IdempotencyKey::parse(value.as_bytes())
        .map(Some)
        .map_err(|err| bad(err.to_string()))
}

/// The value of the `sticky` cookie, if the request carries one.
pub fn sticky_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == "sticky")
        .map(|(_, value)| value.trim())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn bearer_accepts_any_case_of_the_scheme_and_nothing_else() {
        assert_eq!(
            bearer(&headers(&[("authorization", "Bearer abc")])),
            Some("abc")
        );
        assert_eq!(
            bearer(&headers(&[("authorization", "bearer abc")])),
            Some("abc")
        );
        assert_eq!(bearer(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(bearer(&headers(&[("authorization", "Bearer ")])), None);
        assert_eq!(bearer(&headers(&[])), None);
    }

    #[test]
    fn the_sticky_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; sticky=app-2; b=3")]);
        assert_eq!(sticky_cookie(&h), Some("app-2"));
        let h = headers(&[("cookie", "a=1"), ("cookie", "sticky=app-3")]);
        assert_eq!(sticky_cookie(&h), Some("app-3"));
        assert_eq!(sticky_cookie(&headers(&[("cookie", "notsticky=1")])), None);
    }

    fn chunked_body(chunks: usize, size: usize) -> (Body, std::sync::Arc<AtomicUsize>) {
        let read = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = read.clone();
        let stream = futures_util::stream::iter(0..chunks).map(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
            Ok::<_, std::io::Error>(Bytes::from(vec![b' '; size]))
        });
        (Body::from_stream(stream), read)
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole() {
        let (body, _) = chunked_body(4, 1000);
        assert_eq!(read_body(body, None, 4000).await.map(|b| b.len()), Ok(4000));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_read_to_its_end_before_the_refusal() {
        let (body, read) = chunked_body(64, 1024);
        assert_eq!(
            read_body(body, None, 16 * 1024).await,
            Err(BodyError::TooLarge)
        );
        assert_eq!(
            read.load(Ordering::Relaxed),
            64,
            "drained, so the 413 arrives"
        );
    }

    #[tokio::test]
    async fn a_body_announced_huge_is_refused_unread() {
        let (body, read) = chunked_body(4, 1000);
        let huge = Some(DRAIN_MAX_BYTES + 1);
        assert_eq!(read_body(body, huge, 4000).await, Err(BodyError::TooLarge));
        assert_eq!(read.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn json_content_type_may_carry_parameters() {
        assert!(is_json(&headers(&[(
            "content-type",
            "application/json; charset=utf-8"
        )])));
        assert!(!is_json(&headers(&[("content-type", "text/plain")])));
        assert!(!is_json(&headers(&[])));
    }
}
