//! A client of a deployment, as a script or a page would be one: mints an identity, calls the
//! API with or without the sticky cookie, holds a WebSocket.

use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// One client identity against one deployment.
#[derive(Debug, Clone)]
pub struct Identity {
    pub base: String,
    pub id: String,
    pub token: String,
    http: reqwest::Client,
}

impl Identity {
    /// `POST /api/clients`.
    pub async fn mint(base: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let base = base.trim_end_matches('/').to_owned();
        let body: Value = http
            .post(format!("{base}/api/clients"))
            .send()
            .await
            .with_context(|| format!("reaching {base}"))?
            .error_for_status()?
            .json()
            .await?;
        let field = |name: &str| {
            body[name]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("/api/clients answered without {name}: {body}"))
        };
        Ok(Self {
            id: field("client_id")?,
            token: field("token")?,
            base,
            http,
        })
    }

    /// `POST /api/{action}/{id}` with `{"text"}`; the sticky cookie if `sticky` names a replica.
    pub async fn call(
        &self,
        action: &str,
        sticky: Option<&str>,
        text: &str,
    ) -> anyhow::Result<Value> {
        self.post(&format!("/api/{action}/{}", self.id), sticky, text)
            .await
    }

    /// `POST {path}` with this client's token and `{"text"}`, and the cookie if given.
    pub async fn post(
        &self,
        path: &str,
        sticky: Option<&str>,
        text: &str,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
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

    /// `GET /` without a cookie: the replica that rendered the page and the two visit counts
    /// it showed (its own, and Redis's; None if Redis was unreachable).
    pub async fn visit(&self) -> anyhow::Result<(String, u64, Option<u64>)> {
        let html = self
            .http
            .get(format!("{}/", self.base))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let attr = |name: &str| {
            let start = html.find(&format!("{name}=\""))? + name.len() + 2;
            let len = html[start..].find('"')?;
            Some(html[start..start + len].to_owned())
        };
        let replica = attr("data-replica").context("the page names no replica")?;
        let local = attr("data-visits-local")
            .and_then(|v| v.parse().ok())
            .context("the page shows no local visit count")?;
        let shared = attr("data-visits-shared").and_then(|v| v.parse().ok());
        Ok((replica, local, shared))
    }

    /// `GET /` without a cookie: the replica that rendered the page (from its sticky cookie).
    pub async fn page_by(&self) -> anyhow::Result<String> {
        let response = self.http.get(format!("{}/", self.base)).send().await?;
        let cookie = response
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .context("the page set no cookie")?;
        cookie
            .strip_prefix("sticky=")
            .and_then(|rest| rest.split(';').next())
            .map(str::to_owned)
            .context("the page's cookie is not sticky=<replica>")
    }

    /// Opens this client's WebSocket; returns it with the replica from the welcome frame.
    pub async fn connect(&self, sticky: Option<&str>) -> anyhow::Result<Socket> {
        let ws_base = self.base.replacen("http", "ws", 1);
        let url = format!("{ws_base}/ws/{}?token={}", self.id, self.token);
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
        if welcome["type"] != "welcome" {
            bail!("first frame was not a welcome: {welcome}");
        }
        socket.replica = welcome["replica"].as_str().unwrap_or_default().to_owned();
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

    /// The next JSON frame, or None when none comes within `limit`.
    pub async fn next(&mut self, limit: Duration) -> anyhow::Result<Option<Value>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let Ok(message) = tokio::time::timeout_at(deadline, self.ws.next()).await else {
                return Ok(None);
            };
            match message {
                Some(Ok(Message::Text(text))) => return Ok(Some(serde_json::from_str(&text)?)),
                Some(Ok(Message::Close(frame))) => bail!("socket closed by the server: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(err)) => return Err(err.into()),
                None => bail!("socket closed"),
            }
        }
    }
}
