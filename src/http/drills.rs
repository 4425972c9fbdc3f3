//! `/api/drills*`: the page's fault drills. The replica checks the request (switched on, the
//! bearer, the body) and forwards it to the supervisor that started it (`stickyws cluster`'s
//! control server, at `DRILLS_URL`), then passes the supervisor's answer back with its own name.
//!
//! Carrying a drill out is the supervisor's (`stickyws cluster`'s control server); the drills'
//! bodies and bounds are [`crate::drill`]'s, checked on both sides. Where drills are off (no
//! `DRILLS_URL`, or a non-loopback `BIND` without `DRILLS=on`) every route answers 404
//! `drills_off`, before any credential is looked at.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::AppState;
use super::error::ApiError;
use super::extract::bearer;
use crate::config::Drills;
use crate::drill::{self as drills, BadDrill, FROM_HEADER};
use crate::records::Event;

/// How long the supervisor may take (a restart answers within 15 s).
const SUPERVISOR_WITHIN: Duration = Duration::from_secs(20);
/// The largest answer read from the supervisor (its state is a few hundred bytes a replica).
const MAX_ANSWER_BYTES: u64 = 256 * 1024;

impl From<BadDrill> for ApiError {
    fn from(bad: BadDrill) -> Self {
        ApiError::new(bad.status(), bad.code(), bad.to_string())
    }
}

/// The drills settings when they are on, or the 404 that says they are off.
fn enabled(state: &AppState) -> Result<&Drills, ApiError> {
    state.config.drills.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "drills_off",
            "fault drills are off here: they run under `stickyws cluster` (DRILLS_URL), on a \
             loopback BIND or with DRILLS=on",
        )
    })
}

/// `Authorization: Bearer <DRILLS_TOKEN or API_KEY>`, compared in constant time.
fn authorize(state: &AppState, drills: &Drills, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = bearer(headers).ok_or_else(|| {
        ApiError::unauthorized(
            "missing_token",
            "send Authorization: Bearer <the page's drills token or the API key>",
        )
    })?;
    let token_ok = drills.token.as_deref().is_some_and(|token| {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        Sha256::digest(token.as_bytes())
            .ct_eq(&Sha256::digest(given.as_bytes()))
            .into()
    });
    if token_ok || super::api::is_api_key(state, given) {
        return Ok(());
    }
    Err(ApiError::unauthorized(
        "bad_token",
        "drills need the page's drills token or the API key",
    ))
}

/// `GET /api/drills`: the supervisor's process table.
pub(super) async fn state(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let checked = enabled(&state).and_then(|d| authorize(&state, d, &headers).map(|()| d));
    match checked {
        Ok(drills) => forward(&state, drills, "GET", "/drills", &[]).await,
        Err(err) => err.into_response(),
    }
}

/// `POST /api/drills/{action}`: checked here, run by the supervisor.
pub(super) async fn run(
    State(state): State<AppState>,
    Path(action): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let checked = async {
        let drills = enabled(&state)?;
        authorize(&state, drills, &headers)?;
        // Larger than the router's own limit, or cut short: too large either way for a drill.
        let body = body.map_err(|_| BadDrill::TooLarge(drills::MAX_BODY_BYTES + 1))?;
        drills::parse(&action, &body)?;
        Ok::<_, ApiError>((drills, body))
    };
    match checked.await {
        Ok((drills, body)) => {
            let path = format!("/drills/{action}");
            let answer = forward(&state, drills, "POST", &path, &body).await;
            let target = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|b| b["replica"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "redis".to_owned());
            state.records.record(
                Event::Drill,
                None,
                format_args!("{action} {target}: supervisor answered {}", answer.status()),
            );
            answer
        }
        Err(err) => err.into_response(),
    }
}

/// The supervisor's answer, as it answered, with `"replica"` added; 504 when it does not answer
/// within [`SUPERVISOR_WITHIN`], 502 when it cannot be reached or answers nonsense.
async fn forward(
    state: &AppState,
    drills: &Drills,
    method: &str,
    path: &str,
    body: &[u8],
) -> Response {
    let call = call(drills, &state.replica, method, path, body);
    let answer = match tokio::time::timeout(SUPERVISOR_WITHIN, call).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(why)) => {
            tracing::warn!(supervisor = %drills.supervisor, %why, "drill not forwarded");
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                "supervisor_unreachable",
                format!("the drills supervisor did not answer: {why}"),
            )
            .into_response();
        }
        Err(_) => {
            return ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "supervisor_timeout",
                format!("the drills supervisor did not answer within {SUPERVISOR_WITHIN:?}"),
            )
            .into_response();
        }
    };
    let (status, mut json) = answer;
    if let Value::Object(map) = &mut json {
        map.insert("replica".to_owned(), Value::from(&*state.replica));
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    (status, axum::Json(json)).into_response()
}

/// One HTTP/1.1 request to the supervisor on a fresh connection (a drill is rare; a pool would
/// be more code than the requests), read to its end.
async fn call(
    drills: &Drills,
    replica: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, Value), String> {
    let mut stream = tokio::net::TcpStream::connect(&drills.supervisor)
        .await
        .map_err(|err| format!("connecting to {}: {err}", drills.supervisor))?;
    let token = drills.token.as_deref().unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         {FROM_HEADER}: {replica}\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n",
        host = drills.supervisor,
        len = body.len(),
    );
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|err| err.to_string())?;
    stream
        .write_all(body)
        .await
        .map_err(|err| err.to_string())?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER_BYTES)
        .read_to_end(&mut answer)
        .await
        .map_err(|err| err.to_string())?;
    parse_answer(&answer)
}

/// Status and JSON body of an HTTP/1.1 answer with a `Content-Length` (what axum sends for
/// JSON), or why it is not one.
fn parse_answer(answer: &[u8]) -> Result<(u16, Value), String> {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&answer[..split]).map_err(|_| "headers not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or("no status line")?;
    let mut body = &answer[split + 4..];
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value.trim().parse().map_err(|_| "bad content-length")?;
            body = body.get(..len).ok_or("answer cut short")?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked answer".to_owned());
        }
    }
    let json = serde_json::from_slice(body).map_err(|err| format!("answer not JSON: {err}"))?;
    Ok((status, json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_read_to_its_content_length_and_anything_else_is_refused() {
        let ok = b"HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\n\
                   content-length: 7\r\n\r\n{\"a\":1}trailing";
        assert_eq!(parse_answer(ok), Ok((409, serde_json::json!({"a": 1}))));
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n{}").is_err());
        assert!(
            parse_answer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}").is_err()
        );
        assert!(parse_answer(b"garbage").is_err());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n\r\nnot json").is_err());
    }
}
