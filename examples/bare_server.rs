//! The floor under `scripts/bench`'s baseline: a bare one-process WebSocket server with no
//! broker, no proxy, no limits, no history and no metrics, speaking just enough of stickyws's
//! contract for `stickyws load` (mint a client, open its socket, publish to it, broadcast, and
//! the two figures `connect` reads from `/metrics`).
//! Benchmarks only: it trusts every request.
//!
//! `cargo run --release --example bare_server -- 127.0.0.1:9000`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, body::Bytes};
use serde_json::{Value, json};
use tokio::sync::mpsc;

type Queue = mpsc::UnboundedSender<Utf8Bytes>;

/// Every open socket, by client id.
#[derive(Clone, Default)]
struct Sockets(Arc<Mutex<HashMap<String, Vec<Queue>>>>);

impl Sockets {
    fn count(&self) -> usize {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.values().map(Vec::len).sum()
    }

    /// Sends `frame` to the client's sockets, or to every socket; how many took it.
    fn send(&self, client: Option<&str>, frame: &Utf8Bytes) -> usize {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let deliver = |queues: &mut Vec<Queue>| {
            queues.retain(|q| q.send(frame.clone()).is_ok());
            queues.len()
        };
        match client {
            Some(client) => map.get_mut(client).map_or(0, deliver),
            None => map.values_mut().map(deliver).sum(),
        }
    }
}

fn message(via: &str, body: &Bytes) -> Utf8Bytes {
    let text = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["text"].as_str().map(str::to_owned))
        .unwrap_or_default();
    json!({"type": "message", "via": via, "from": "bare", "replica": "bare", "text": text})
        .to_string()
        .into()
}

async fn mint() -> Json<Value> {
    let id = format!("c{:016x}", rand::random::<u64>());
    Json(json!({"client_id": id, "token": "-", "replica": "bare"}))
}

/// Sockets held and resident memory, as stickyws names them.
async fn metrics(State(sockets): State<Sockets>) -> String {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    format!(
        "stickyws_sockets {}\nprocess_resident_memory_bytes {}\n",
        sockets.count(),
        pages * 4096
    )
}

async fn publish(
    State(sockets): State<Sockets>,
    Path(client): Path<String>,
    body: Bytes,
) -> Json<Value> {
    let receivers = sockets.send(Some(&client), &message("publish", &body));
    Json(json!({"replica": "bare", "receivers": u64::from(receivers > 0)}))
}

async fn broadcast(State(sockets): State<Sockets>, body: Bytes) -> Json<Value> {
    sockets.send(None, &message("broadcast", &body));
    Json(json!({"replica": "bare", "receivers": 1}))
}

async fn upgrade(
    State(sockets): State<Sockets>,
    Path(client): Path<String>,
    ws: WebSocketUpgrade,
) -> impl IntoResponse {
    // A replica's socket buffer sizes (src/http/ws.rs), so that the comparison is of the rest:
    // tungstenite's default read buffer alone is 128 KiB per socket.
    ws.read_buffer_size(1024)
        .write_buffer_size(4 * 1024)
        .on_upgrade(move |socket| hold(socket, client, sockets))
}

async fn hold(mut socket: WebSocket, client: String, sockets: Sockets) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    sockets
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(client.clone())
        .or_default()
        .push(tx);
    // The fields the load tool reads from a replica's welcome (frame::ReceivedFrame).
    let welcome = json!({"type": "welcome", "replica": "bare", "client_id": client}).to_string();
    if socket.send(Message::Text(welcome.into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(frame) => if socket.send(Message::Text(frame)).await.is_err() { return },
                None => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".to_owned());
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let app = Router::new()
        .route("/api/clients", post(mint))
        .route("/api/publish/{client}", post(publish))
        .route("/api/broadcast", post(broadcast))
        .route("/ws/{client}", get(upgrade))
        .route(
            "/api/replicas",
            get(|| async { Json(json!({"replicas": [{"id": "bare"}]})) }),
        )
        .route("/metrics", get(metrics))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(Sockets::default());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
