//! The one error shape every endpoint answers with: `{"error": {"code", "message"}}` and a
//! fitting status. Server faults are logged; client mistakes are not.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::broker::BrokerError;
use crate::frame::FrameError;
use crate::token::BadClientId;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (rate limits).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Tells the client when to try again: `Retry-After`, in whole seconds (at least 1).
    pub fn retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not take that method",
        )
    }
}

impl From<BadClientId> for ApiError {
    fn from(err: BadClientId) -> Self {
        Self::bad_request("bad_client_id", err.to_string())
    }
}

impl From<BrokerError> for ApiError {
    fn from(err: BrokerError) -> Self {
        match err {
            BrokerError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                err.to_string(),
            ),
            BrokerError::OutcomeUnknown(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome_unknown",
                format!(
                    "{err}; the message may have been delivered: \
                     safe to retry with the same Idempotency-Key"
                ),
            ),
            // 507: the request was fine and the broker is up, but there is no room to keep it.
            BrokerError::HistoryFull(_) => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "history_full",
                format!("{err}; try again later"),
            )
            .retry_after(std::time::Duration::from_secs(5)),
        }
    }
}

impl From<FrameError> for ApiError {
    fn from(err: FrameError) -> Self {
        let status = match err {
            FrameError::TextTooLong { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        let (code, message) = match &err {
            // The reason may quote the client's JSON: it is passed on as it is.
            FrameError::BadJson(reason) => (
                "bad_body",
                format!("body is not valid JSON of the form {{\"text\": \"...\"}}: {reason}"),
            ),
            // A body with a `type` or channel fields is not a text body at all.
            FrameError::UnknownType(_)
            | FrameError::MissingField { .. }
            | FrameError::UnexpectedField { .. }
            | FrameError::BadChannel(_)
            | FrameError::BadCursor
            | FrameError::TokenTooLong => (
                "bad_body",
                "the body is {\"text\": \"...\"} and nothing else".to_owned(),
            ),
            _ => (err.code(), err.to_string()),
        };
        Self::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let expected = [
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::INSUFFICIENT_STORAGE,
        ];
        if self.status.is_server_error() && !expected.contains(&self.status) {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_render_the_contract_shape() {
        let response = ApiError::from(BrokerError::Unavailable("down".to_owned())).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["error"]["code"], "broker_unavailable");
        assert!(value["error"]["message"].as_str().unwrap().contains("down"));
    }

    #[test]
    fn a_503_says_whether_the_message_may_have_gone_out() {
        let unknown = ApiError::from(BrokerError::OutcomeUnknown("timed out".to_owned()));
        assert_eq!(
            (unknown.status, unknown.code),
            (StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown")
        );
        assert!(unknown.message.contains("same Idempotency-Key"));
        let refused = ApiError::from(BrokerError::Unavailable("refused".to_owned()));
        assert_eq!(refused.code, "broker_unavailable");
    }

    #[test]
    fn long_text_is_too_large_and_broken_json_a_bad_body() {
        assert_eq!(
            ApiError::from(FrameError::TextTooLong { len: 9, max: 1 }).status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let bad = ApiError::from(FrameError::BadJson("eof".to_owned()));
        assert_eq!(
            (bad.status, bad.code),
            (StatusCode::BAD_REQUEST, "bad_body")
        );
        let quoted = "unknown field `frame`, expected `text`".to_owned();
        let bad = ApiError::from(FrameError::BadJson(quoted.clone()));
        assert!(bad.message.starts_with("body is not"), "{}", bad.message);
        assert!(
            bad.message.ends_with(&quoted),
            "the client's words: {}",
            bad.message
        );
    }
}
