//! Limits and bad input, surface by surface, through nginx against three replicas: every table
//! asserts the exact status or close code and the error, and after each table every replica
//! still serves — directly and through nginx with its cookie, probes and a delivered publish.
//! `api.rs` has the first table of HTTP bad input against one replica; these add nginx in front.
//!
//! This file holds what the surfaces share: the limits' values, the upgrade table runner and the
//! check after every table. The surfaces: [`ws_wire`] (frames), [`http`] (requests),
//! [`upgrade`] (credentials and origins), [`sockets`] (socket limits), [`rate`] (publish rate).

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{Client, Socket, TestCluster};

mod bounds;
mod http;
mod rate;
mod sockets;
mod upgrade;
mod ws_wire;

const REPLICAS: [&str; 3] = ["app-1", "app-2", "app-3"];
/// The defaults of `src/limits.rs`.
const MAX_BODY: usize = 16 * 1024;
const MAX_TEXT: usize = 4 * 1024;
const MAX_WS_MESSAGE: usize = 16 * 1024;
/// `client_max_body_size` in nginx.conf: above it nginx answers 413 itself.
const NGINX_MAX_BODY: usize = 64 * 1024;

fn text_frame_json(text: &str) -> Vec<u8> {
    json!({ "text": text }).to_string().into_bytes()
}

fn host_of(base: &str) -> String {
    base.trim_start_matches("http://").to_owned()
}

/// The answer to an upgrade: 101 with the welcome, or the refusal's status and JSON body.
async fn upgrade(host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = format!("ws://{host}{path}").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let connect = tokio_tungstenite::connect_async(request);
    match tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .expect("an answer to the upgrade in time")
    {
        Ok((mut ws, _)) => {
            let welcome = match tokio::time::timeout(
                Duration::from_secs(5),
                futures_util::StreamExt::next(&mut ws),
            )
            .await
            {
                Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str(&text).unwrap(),
                other => panic!("no welcome after 101: {other:?}"),
            };
            let _ = ws.close(None).await;
            (101, welcome)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            let value = serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
            (response.status().as_u16(), value)
        }
        Err(other) => panic!("upgrade failed without an answer: {other}"),
    }
}

/// An upgrade case: path, headers, and the expected status with its error code (None for 101).
type UpgradeCase<'a> = (
    &'a str,
    String,
    Vec<(&'a str, String)>,
    u16,
    Option<&'a str>,
);

async fn run_upgrade_table(host: &str, table: &str, cases: &[UpgradeCase<'_>]) {
    for (what, path, headers, status, code) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (got, body) = upgrade(host, path, &headers).await;
        let context = format!("{table}: {what}: {body}");
        match code {
            Some(code) => assert_eq!(
                (got, body["error"]["code"].as_str()),
                (*status, Some(*code)),
                "{context}"
            ),
            None => assert_eq!(
                (got, body["type"].as_str()),
                (*status, Some("welcome")),
                "{context}"
            ),
        }
    }
}

/// A client minted through nginx by the replica the cookie names (no round robin involved).
async fn mint_on(cluster: &TestCluster, replica: &str) -> Client {
    let (status, body) = cluster.post("/api/clients", None, Some(replica), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["replica"], replica);
    Client {
        id: body["client_id"].as_str().unwrap().to_owned(),
        token: body["token"].as_str().unwrap().to_owned(),
    }
}

/// After a table: every replica is alive and serving — its process runs and never panicked,
/// `/healthz` answers directly and through nginx with its cookie, and a publish reaches a
/// socket held on it, opened both directly and through nginx.
async fn assert_every_replica_serves(cluster: &mut TestCluster, after: &str) {
    for replica in REPLICAS {
        let context = format!("after {after}: {replica}");
        assert!(
            cluster.replica(replica).proc.is_running(),
            "{context} exited"
        );
        let log = std::fs::read_to_string(cluster.dir.path().join(format!("{replica}.log")))
            .unwrap_or_default();
        assert!(!log.contains("panicked"), "{context} panicked:\n{log}");

        let direct = cluster
            .http
            .get(format!("{}/healthz", cluster.replica_base(replica)))
            .send()
            .await
            .unwrap();
        assert_eq!(direct.status(), StatusCode::OK, "{context}");
        let via_nginx = cluster.get("/healthz", Some(replica)).await;
        assert_eq!(via_nginx.status(), StatusCode::OK, "{context}");
        let body: Value = via_nginx.json().await.unwrap();
        assert_eq!(body["replica"], replica, "{context}: cookie routing");

        // Sockets may still be closing from the table: wait for room for two more.
        let client = mint_on(cluster, replica).await;
        let host = host_of(&cluster.replica_base(replica));
        let mut direct = Socket::connect(&host, &client, None).await;
        let mut routed = cluster.connect(&client, Some(replica)).await;
        assert_eq!(
            (direct.replica.as_str(), routed.replica.as_str()),
            (replica, replica),
            "{context}"
        );
        let text = format!("alive after {after}");
        let (status, body) = cluster.call("publish", &client, Some(replica), &text).await;
        assert_eq!(
            (status, body["receivers"].as_u64()),
            (StatusCode::OK, Some(1)),
            "{context}: {body}"
        );
        for socket in [&mut direct, &mut routed] {
            let frame = socket.next_json().await;
            assert_eq!(
                (frame["via"].as_str(), frame["text"].as_str()),
                (Some("publish"), Some(text.as_str())),
                "{context}"
            );
        }
    }
}
