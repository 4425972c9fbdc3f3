//! One fuzz input through every parser that reads what a client sends, asserting what each one
//! promises. Nothing here may panic for any input except on a broken promise.
//!
//! How one input is used:
//! - whole, when it is UTF-8: as a WebSocket text frame and as an HTTP JSON body (the same
//!   `parse_client_frame`, after the UTF-8 check the body extractor makes), under the default
//!   text limit and under a tiny one;
//! - line by line (split at `\n`): each line as a client id, a message id (`last_id`), a
//!   token, an `Authorization` value and a `Cookie` value; all lines together as the `Cookie`
//!   headers of one request. The first line, when it is a valid client id, is the id the
//!   tokens are checked against. Only the first lines get the costlier checks (an HMAC
//!   or three each), which keeps executions fast; later lines add no coverage anyway.
//!
//! Also included by `tests/it/fuzz_seeds.rs`, which runs it over `fuzz/seeds/` on stable.

use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use stickyws::cursor::StreamId;
use stickyws::frame::{ClientFrame, FrameError, parse_client_frame};
use stickyws::http::{ApiError, bearer, sticky_cookie};
use stickyws::token::{ClientId, Signer};

/// The text limit of a default replica (`MAX_TEXT_BYTES`).
const MAX_TEXT_BYTES: usize = 4 * 1024;
/// A limit small inputs can exceed, so the length check itself gets fuzzed.
const TINY_TEXT_BYTES: usize = 8;
/// Refusal reasons quote serde_json's message cut to 160 bytes, plus an ellipsis.
const MAX_REASON_BYTES: usize = 160 + '…'.len_utf8();
/// Any secret will do; tokens of other secrets are never valid under it.
const SECRET: &[u8] = b"fuzzing secret 0123456789";
/// Lines checked one by one.
const MAX_LINES: usize = 16;
/// Lines that, being client ids, also get tokens minted and crossed with the subject's.
const MAX_ID_LINES: usize = 4;

pub fn check(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        frame(text);
    }
    let signer = Signer::new(SECRET);
    let first = data.split(|&b| b == b'\n').next().unwrap_or_default();
    let subject = std::str::from_utf8(first)
        .ok()
        .and_then(|s| ClientId::parse(s).ok())
        .unwrap_or_else(|| ClientId::parse("fuzz-client").expect("a valid id"));
    let minted = signer.mint(&subject);
    forged_tokens(&signer, &subject, &minted, data);
    let mut cookies = HeaderMap::new();
    for (n, line) in data.split(|&b| b == b'\n').take(MAX_LINES).enumerate() {
        if let Ok(text) = std::str::from_utf8(line) {
            client_id(text);
            stream_id(text);
            token(&signer, &subject, &minted, text, n < MAX_ID_LINES);
        }
        if let Ok(value) = HeaderValue::from_bytes(line) {
            authorization(&value);
            cookie(std::slice::from_ref(&value));
            cookies.append(COOKIE, value);
        }
    }
    let all: Vec<HeaderValue> = cookies.get_all(COOKIE).iter().cloned().collect();
    cookie(&all);
}

/// A text frame, or a JSON body: accepted within the limit, refused with the contract's codes.
fn frame(raw: &str) {
    for limit in [MAX_TEXT_BYTES, TINY_TEXT_BYTES] {
        match parse_client_frame(raw, limit) {
            Ok(ClientFrame::Echo { text }) => {
                assert!(text.len() <= limit, "text over the limit accepted");
                let again = serde_json::json!({ "text": text }).to_string();
                let reparsed = parse_client_frame(&again, limit);
                assert_eq!(
                    reparsed,
                    Ok(ClientFrame::Echo { text }),
                    "the text does not round-trip"
                );
            }
            Ok(ClientFrame::Publish { text, .. }) => {
                assert!(text.len() <= limit, "text over the limit accepted");
            }
            Ok(ClientFrame::Subscribe { token, .. }) => {
                assert!(token.is_none_or(|t| t.len() <= 128), "a token at length");
            }
            Ok(ClientFrame::Unsubscribe { .. }) => {}
            Err(err) => refusal(raw, limit, err),
        }
    }
}

fn refusal(raw: &str, limit: usize, err: FrameError) {
    let message = err.to_string();
    assert!(!message.is_empty() && !err.code().is_empty());
    match &err {
        FrameError::TextTooLong { len, max } => {
            assert!(*len > *max && *max == limit, "{len} > {max} = {limit}");
            // Too long under a limit means well-formed: a larger limit accepts it.
            assert!(parse_client_frame(raw, *len).is_ok(), "{raw:?}");
        }
        FrameError::BadJson(reason) => {
            assert!(
                reason.len() <= MAX_REASON_BYTES,
                "reason of {}",
                reason.len()
            );
        }
        FrameError::Binary => unreachable!("text is never binary"),
        // The rest name what is wrong without quoting the frame at length.
        FrameError::UnknownType(kind) => assert!(kind.len() <= 40),
        FrameError::MissingField { .. }
        | FrameError::UnexpectedField { .. }
        | FrameError::BadChannel(_)
        | FrameError::BadCursor
        | FrameError::TokenTooLong => assert!(message.len() <= MAX_REASON_BYTES),
    }
    let reason = match &err {
        FrameError::BadJson(reason) => Some(reason.clone()),
        _ => None,
    };
    let api = ApiError::from(err);
    let expected = match api.code {
        "text_too_long" => StatusCode::PAYLOAD_TOO_LARGE,
        "bad_body" => StatusCode::BAD_REQUEST,
        other => panic!("unexpected HTTP code {other}"),
    };
    assert_eq!(api.status, expected);
    if let Some(reason) = reason {
        // The client's own words come back verbatim, whatever they say.
        assert!(
            api.message.ends_with(&reason),
            "{:?} lost {reason:?}",
            api.message
        );
    }
}

/// A client id: exactly `[A-Za-z0-9_-]{1,64}`, and it reads back as itself.
fn client_id(raw: &str) {
    let expected = (1..=ClientId::MAX_LEN).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    match ClientId::parse(raw) {
        Ok(id) => {
            assert!(expected, "{raw:?} accepted");
            assert_eq!(id.as_str(), raw);
            assert_eq!(id.to_string(), raw);
            assert_eq!(ClientId::parse(id.as_str()), Ok(id));
        }
        Err(_) => assert!(!expected, "{raw:?} refused"),
    }
}

/// A message id: digits, a dash, digits; it writes back as an equal id.
fn stream_id(raw: &str) {
    if let Ok(id) = raw.parse::<StreamId>() {
        let (ms, seq) = raw.split_once('-').unwrap_or_else(|| panic!("{raw:?}"));
        assert!(!ms.is_empty() && !seq.is_empty());
        assert!(ms.bytes().chain(seq.bytes()).all(|b| b.is_ascii_digit()));
        assert_eq!(id.to_string().parse::<StreamId>(), Ok(id));
    }
}

/// A token verifies exactly when it is the one minted for the id: no other spelling, length,
/// padding or id gets in.
fn token(signer: &Signer, subject: &ClientId, minted: &str, raw: &str, as_id: bool) {
    assert_eq!(signer.verify(subject, raw), raw == minted, "{raw:?}");
    if let Some(other) = as_id.then(|| ClientId::parse(raw).ok()).flatten() {
        assert!(signer.verify(&other, &signer.mint(&other)));
        if other != *subject {
            assert!(!signer.verify(&other, minted), "a token for another id");
        }
    }
}

/// The minted token with one character replaced, or cut, or extended, as the input says:
/// edits random lines would almost never make (say, the unused low bits of the last
/// base64 character).
fn forged_tokens(signer: &Signer, subject: &ClientId, minted: &str, data: &[u8]) {
    assert!(signer.verify(subject, minted), "a minted token is refused");
    let [at, byte, rest @ ..] = data else {
        return;
    };
    let mut edited = minted.as_bytes().to_vec();
    let at = usize::from(*at) % edited.len();
    edited[at] = *byte;
    let cut = &minted[..at];
    let extended = format!("{minted}{}", String::from_utf8_lossy(rest));
    let edited = String::from_utf8(edited).unwrap_or_default();
    for forged in [edited.as_str(), cut, extended.as_str()] {
        assert_eq!(
            signer.verify(subject, forged),
            forged == minted,
            "{forged:?} for {minted:?}"
        );
    }
}

/// A credential is only ever what follows `Bearer ` (any case), trimmed and not empty.
fn authorization(value: &HeaderValue) {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, value.clone());
    if let Some(credential) = bearer(&headers) {
        let text = value.to_str().unwrap_or_else(|_| panic!("{value:?}"));
        let (scheme, rest) = text.split_once(' ').unwrap_or_else(|| panic!("{text:?}"));
        assert!(scheme.eq_ignore_ascii_case("bearer"), "{text:?}");
        assert_eq!(credential, rest.trim());
        assert!(!credential.is_empty());
    }
}

/// The `sticky` value is one cookie's value: trimmed, no separator, found in the headers.
fn cookie(values: &[HeaderValue]) {
    let mut headers = HeaderMap::new();
    for value in values {
        headers.append(COOKIE, value.clone());
    }
    if let Some(sticky) = sticky_cookie(&headers) {
        assert_eq!(sticky, sticky.trim());
        assert!(!sticky.contains(';'), "{sticky:?}");
        assert!(
            values
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("sticky") && v.contains(sticky)),
            "{sticky:?} from {values:?}"
        );
    }
}
