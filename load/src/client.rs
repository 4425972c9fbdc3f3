//! A client of a deployment, as a script or a page would be one: the identity `POST
//! /api/clients` mints (once, in [`Client::mint`]), its API calls with or
//! without the sticky cookie, and the checked WebSocket the tour holds. The load sockets many
//! clients hold are [`crate::socket`]'s.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use stickyws::frame::ReceivedFrame;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::deployment::{Deployment, reqwest_kind};
use crate::report::Errors;

/// One client identity: what `POST /api/clients` answers (its `replica` is not kept).
#[derive(Debug, Clone, Deserialize)]
pub struct Client {
    pub client_id: String,
    /// Proof that the holder may act as `client_id`, on any replica of the deployment.
    pub token: String,
}

impl Client {
    /// `n` fresh clients, minted `concurrency` at a time; failures by kind.
    pub async fn mint_many(
        deployment: &Deployment,
        n: usize,
        concurrency: usize,
    ) -> (Vec<Client>, Errors) {
        let gate = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let gate = gate.clone();
            let deployment = deployment.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await;
                Client::mint(&deployment).await
            }));
        }
        let mut creds = Vec::with_capacity(n);
        let mut errors = Errors::default();
        for task in tasks {
            match task.await {
                Ok(Ok(c)) => creds.push(c),
                Ok(Err(kind)) => errors.add(&format!("mint_{kind}")),
                Err(_) => errors.add("mint_panicked"),
            }
        }
        (creds, errors)
    }

    /// `POST /api/clients`: one fresh client, with the deployment's API key when given. Err is
    /// the failure's kind, as the report counts it.
    pub async fn mint(deployment: &Deployment) -> Result<Client, String> {
        let mut request = deployment
            .http
            .post(format!("{}/api/clients", deployment.base));
        if let Some(key) = &deployment.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| reqwest_kind(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("http_{}", status.as_u16()));
        }
        response.json().await.map_err(|_| "bad_body".to_owned())
    }

    /// `POST /api/{action}/{id}` with `{"text"}`; the sticky cookie if `sticky` names a replica.
    pub async fn call(
        &self,
        deployment: &Deployment,
        action: &str,
        sticky: Option<&str>,
        text: &str,
    ) -> anyhow::Result<Value> {
        let path = format!("/api/{action}/{}", self.client_id);
        self.post(deployment, &path, sticky, text).await
    }

    /// `POST {path}` with this client's token and `{"text"}`, and the cookie if given.
    pub async fn post(
        &self,
        deployment: &Deployment,
        path: &str,
        sticky: Option<&str>,
        text: &str,
    ) -> anyhow::Result<Value> {
        let mut request = deployment
            .http
            .post(format!("{}{path}", deployment.base))
            .bearer_auth(&self.token)
            .json(&json!({ "text": text }));
        if let Some(replica) = sticky {
            request = request.header("cookie", format!("sticky={replica}"));
        }
        let response = request.send().await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path} answered {status}: {body}");
        }
        Ok(body)
    }

    /// Opens this client's WebSocket; returns it with the replica from the welcome frame.
    pub async fn connect(
        &self,
        deployment: &Deployment,
        sticky: Option<&str>,
    ) -> anyhow::Result<Socket> {
        let ws_base = deployment.base.replacen("http", "ws", 1);
        let url = format!("{ws_base}/ws/{}?token={}", self.client_id, self.token);
        let mut request = url.into_client_request()?;
        if let Some(replica) = sticky {
            request
                .headers_mut()
                .insert("cookie", format!("sticky={replica}").parse()?);
        }
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .context("WebSocket upgrade")?;
        let mut socket = Socket {
            ws,
            replica: String::new(),
        };
        let welcome = socket
            .next(Duration::from_secs(5))
            .await?
            .context("no welcome frame")?;
        let ReceivedFrame::Welcome { replica, .. } = welcome else {
            bail!("first frame was not a welcome: {welcome:?}");
        };
        socket.replica = replica;
        Ok(socket)
    }
}

/// An open WebSocket.
#[derive(Debug)]
pub struct Socket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The replica that holds it.
    pub replica: String,
}

impl Socket {
    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        let frame = json!({ "text": text }).to_string();
        self.ws.send(Message::Text(frame.into())).await?;
        Ok(())
    }

    /// The next frame, or None when none comes within `limit`.
    pub async fn next(&mut self, limit: Duration) -> anyhow::Result<Option<ReceivedFrame>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let Ok(message) = tokio::time::timeout_at(deadline, self.ws.next()).await else {
                return Ok(None);
            };
            match message {
                Some(Ok(Message::Text(text))) => {
                    let frame = serde_json::from_str(&text)
                        .with_context(|| format!("a frame not of the wire format: {text}"))?;
                    return Ok(Some(frame));
                }
                Some(Ok(Message::Close(frame))) => bail!("socket closed by the server: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(err)) => return Err(err.into()),
                None => bail!("socket closed"),
            }
        }
    }
}
