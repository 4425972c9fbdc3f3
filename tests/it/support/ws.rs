//! A WebSocket client for tests: connects like a browser tab would and reads JSON frames with a
//! bound on every wait.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::Client;

pub struct Socket {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The replica named in the welcome frame.
    pub replica: String,
    /// The welcome frame itself (it carries the history cursors).
    pub welcome: Value,
}

/// The answer to an upgrade request that was refused.
pub async fn refused_status(host: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut request = format!("ws://{host}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("unexpected upgrade failure: {other}"),
    }
}

impl Socket {
    pub async fn connect(host: &str, client: &Client, sticky: Option<&str>) -> Socket {
        Self::connect_query(host, client, sticky, "").await
    }

    /// Like [`Socket::connect`], with more query parameters (`&last_id=…`).
    pub async fn connect_query(
        host: &str,
        client: &Client,
        sticky: Option<&str>,
        extra: &str,
    ) -> Socket {
        let url = format!("ws://{host}/ws/{}?token={}{extra}", client.id, client.token);
        let mut request = url.into_client_request().unwrap();
        if let Some(replica) = sticky {
            request
                .headers_mut()
                .insert("cookie", format!("sticky={replica}").parse().unwrap());
        }
        Socket::connect_request(request, client).await
    }

    /// An upgrade of `client`'s socket by a request made elsewhere (its own headers), greeted.
    pub async fn connect_request(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
        client: &Client,
    ) -> Socket {
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(request),
        )
        .await
        .expect("upgrade in time")
        .expect("upgrade accepted");
        Socket::greeted(ws, client).await
    }

    /// An upgraded socket of `client`, once its welcome frame has come and named the client.
    async fn greeted(ws: WebSocketStream<MaybeTlsStream<TcpStream>>, client: &Client) -> Socket {
        let mut socket = Socket {
            ws,
            replica: String::new(),
            welcome: Value::Null,
        };
        let welcome = socket.next_json().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        assert_eq!(welcome["client_id"], client.id.as_str());
        socket.replica = welcome["replica"].as_str().unwrap().to_owned();
        socket.welcome = welcome;
        socket
    }

    /// A socket straight to `host` whose kernel receive buffer is `rcvbuf` bytes (Linux doubles
    /// it, and keeps a floor): a client that stops reading then backs up into the server at
    /// once, instead of after the megabytes loopback autotuning would grant it.
    pub async fn connect_with_rcvbuf(host: &str, client: &Client, rcvbuf: u32) -> Socket {
        let addr: std::net::SocketAddr = host.parse().unwrap();
        let tcp = tokio::net::TcpSocket::new_v4().unwrap();
        tcp.set_recv_buffer_size(rcvbuf).unwrap();
        let stream = tokio::time::timeout(Duration::from_secs(10), tcp.connect(addr))
            .await
            .expect("connected in time")
            .unwrap();
        let url = format!("ws://{host}/ws/{}?token={}", client.id, client.token);
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)),
        )
        .await
        .expect("upgrade in time")
        .expect("upgrade accepted");
        Socket::greeted(ws, client).await
    }

    /// The next text frame as JSON, within 5 s.
    pub async fn next_json(&mut self) -> Value {
        self.next_json_within(Duration::from_secs(5))
            .await
            .expect("a frame within 5 s")
    }

    /// The next text frame, or None if none comes within `limit` (or the socket closed).
    pub async fn next_json_within(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match message {
                Ok(Message::Text(text)) => {
                    return Some(serde_json::from_str(&text).expect("JSON frame"));
                }
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(other) => panic!("unexpected message {other:?}"),
                Err(_) => return None,
            }
        }
    }

    /// The next text frame within `limit`; or, if the server closes first, its close code
    /// (None: no code, or nothing within `limit`).
    pub async fn next_json_or_close(&mut self, limit: Duration) -> Result<Value, Option<u16>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    return Ok(serde_json::from_str(&text).expect("JSON frame"));
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Err(frame.map(|f| u16::from(f.code)));
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) | Err(_) => return Err(None),
            }
        }
    }

    /// Every frame that arrives until `quiet` passes without one.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Value> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next_json_within(quiet).await {
            frames.push(frame);
        }
        frames
    }

    /// Any JSON value as one text frame.
    pub async fn send_json(&mut self, frame: &Value) {
        self.send_raw(&frame.to_string()).await;
    }

    /// A text frame exactly as given, JSON or not.
    pub async fn send_raw(&mut self, raw: &str) {
        self.ws
            .send(Message::Text(raw.to_owned().into()))
            .await
            .unwrap();
    }

    /// The next frame that is not a presence event, within 5 s: presence frames come whenever
    /// someone joins or leaves, so a test about other frames reads past them.
    pub async fn next_non_presence(&mut self) -> Value {
        loop {
            let frame = self.next_json().await;
            if frame["type"] != "presence" {
                return frame;
            }
        }
    }

    /// The next presence event, within 5 s, skipping anything else.
    pub async fn next_presence(&mut self) -> Value {
        loop {
            let frame = self.next_json().await;
            if frame["type"] == "presence" {
                return frame;
            }
        }
    }

    /// Sends `subscribe` and returns the answer (`subscribed`, or an error frame): the next
    /// frame that is not a presence event.
    pub async fn subscribe(
        &mut self,
        channel: &str,
        token: Option<&str>,
        since: Option<&str>,
    ) -> Value {
        let mut frame = serde_json::json!({ "type": "subscribe", "channel": channel });
        if let Some(token) = token {
            frame["token"] = token.into();
        }
        if let Some(since) = since {
            frame["since"] = since.into();
        }
        self.send_json(&frame).await;
        self.next_non_presence().await
    }

    /// Subscribes and asserts it was accepted; returns the `subscribed` frame.
    pub async fn subscribed(&mut self, channel: &str) -> Value {
        let answer = self.subscribe(channel, None, None).await;
        assert_eq!(
            (answer["type"].as_str(), answer["channel"].as_str()),
            (Some("subscribed"), Some(channel)),
            "{answer}"
        );
        answer
    }

    /// Sends an echo and asserts it comes back (reading past presence frames): the socket is
    /// open and its replica serving it.
    pub async fn assert_echo(&mut self, text: &str) {
        self.send_text(text).await;
        let echo = self.next_non_presence().await;
        assert_eq!(
            (echo["via"].as_str(), echo["text"].as_str()),
            (Some("ws"), Some(text)),
            "echo after: {echo}"
        );
    }

    pub async fn send_text(&mut self, text: &str) {
        let frame = serde_json::json!({ "text": text }).to_string();
        self.ws.send(Message::Text(frame.into())).await.unwrap();
    }

    /// Reads until the server closes; returns the close code.
    pub async fn close_code(&mut self, limit: Duration) -> Option<CloseCode> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??
            {
                Ok(Message::Close(frame)) => return frame.map(|f| f.code),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}
