//! Opening load sockets: a TCP connection (bound to one of several loopback source addresses
//! when asked, to get past one address's ephemeral ports), the WebSocket upgrade with small
//! buffers, and the welcome frame; timed, with every failure reduced to a kind for the report.
//! Which addresses is [`crate::sources`]' to parse; reading what arrives afterwards is
//! [`crate::deliveries`]' job.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use stickyws::frame::ReceivedFrame;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::client::Client;
use crate::report::io_kind;
use crate::sources::SourceAddrs;

pub type Ws = WebSocketStream<TcpStream>;

/// Where and how sockets are opened.
#[derive(Debug)]
pub struct Dialer {
    addr: SocketAddr,
    /// `host:port` as the URL wrote it, for the Host header.
    authority: String,
    /// Path prefix of the deployment (usually empty).
    prefix: String,
    /// Local addresses to bind, in turn; empty lets the kernel choose.
    sources: Vec<IpAddr>,
    next_source: AtomicUsize,
    timeout: Duration,
}

/// An open socket and how long it took.
#[derive(Debug)]
pub struct Opened {
    pub ws: Ws,
    /// The replica named in the welcome frame.
    pub replica: String,
    /// Connect + upgrade (101 received).
    pub upgrade: Duration,
    /// Connect + upgrade + welcome frame received.
    pub welcome: Duration,
    /// History cursors from the welcome, to resume from after a reconnect.
    pub last_id: Option<String>,
    pub last_broadcast_id: Option<String>,
}

impl Dialer {
    /// For the deployment at `url` (`http://host:port[/prefix]`); the `sources` addresses, when
    /// given, are bound in turn (the target must then be IPv4 loopback too).
    pub async fn new(
        url: &reqwest::Url,
        sources: Option<SourceAddrs>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        if url.scheme() != "http" {
            bail!("the load tool speaks plain http/ws only; got {url}");
        }
        let host = url.host_str().context("the URL has no host")?;
        let port = url.port_or_known_default().unwrap_or(80);
        let addr = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .with_context(|| format!("{host} resolves to nothing"))?;
        let sources = match sources {
            Some(sources) => {
                if !addr.ip().is_loopback() || !addr.is_ipv4() {
                    bail!(
                        "--source-ips and --source-addrs need an IPv4 loopback target, not {addr}"
                    );
                }
                sources.addrs().iter().copied().map(IpAddr::V4).collect()
            }
            None => Vec::new(),
        };
        Ok(Self {
            addr,
            authority: format!("{host}:{port}"),
            prefix: url.path().trim_end_matches('/').to_owned(),
            sources,
            next_source: AtomicUsize::new(0),
            timeout,
        })
    }

    /// Opens `client`'s socket, with the sticky cookie if given and `query` appended (e.g.
    /// `&last_id=…`), and waits for the welcome. Err is the failure's kind.
    pub async fn open(
        &self,
        client: &Client,
        sticky: Option<&str>,
        query: &str,
    ) -> Result<Opened, String> {
        let started = Instant::now();
        match tokio::time::timeout(
            self.timeout,
            self.open_inner(client, sticky, query, started),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err("timeout".to_owned()),
        }
    }

    async fn open_inner(
        &self,
        client: &Client,
        sticky: Option<&str>,
        query: &str,
        started: Instant,
    ) -> Result<Opened, String> {
        let stream = self.tcp().await.map_err(|e| io_kind(&e))?;
        let url = format!(
            "ws://{}{}/ws/{}?token={}{query}",
            self.authority, self.prefix, client.client_id, client.token
        );
        let mut request = url
            .into_client_request()
            .map_err(|_| "bad_request".to_owned())?;
        if let Some(replica) = sticky {
            let cookie = format!("sticky={replica}")
                .parse()
                .map_err(|_| "bad_request".to_owned())?;
            request.headers_mut().insert("cookie", cookie);
        }
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config()))
                .await
                .map_err(|e| ws_kind(&e))?;
        let upgrade = started.elapsed();
        let welcome = loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    break serde_json::from_str::<ReceivedFrame>(&text)
                        .map_err(|_| "bad_welcome".to_owned())?;
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(match frame {
                        Some(f) => format!("closed_{}", u16::from(f.code)),
                        None => "closed".to_owned(),
                    });
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(ws_kind(&e)),
                None => return Err("closed_before_welcome".to_owned()),
            }
        };
        let ReceivedFrame::Welcome {
            replica,
            last_id,
            last_broadcast_id,
            ..
        } = welcome
        else {
            return Err("no_welcome".to_owned());
        };
        Ok(Opened {
            ws,
            replica,
            upgrade,
            welcome: started.elapsed(),
            last_id,
            last_broadcast_id,
        })
    }

    async fn tcp(&self) -> std::io::Result<TcpStream> {
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if !self.sources.is_empty() {
            // The port is chosen at connect, for this destination only (IP_BIND_ADDRESS_NO_PORT).
            // Bound to port 0 without it, each socket would take a port number out of the
            // machine's one ephemeral range for every destination: nginx's own connections to the
            // replicas (from 127.0.0.1, kernel-chosen) would find those numbers taken and run out
            // of ports long before the load tool does.
            nix::sys::socket::setsockopt(
                &socket,
                nix::sys::socket::sockopt::IpBindAddressNoPort,
                &true,
            )?;
            let i = self.next_source.fetch_add(1, Ordering::Relaxed) % self.sources.len();
            socket.bind(SocketAddr::new(self.sources[i], 0))?;
        }
        let stream = socket.connect(self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// Small buffers: tens of thousands of idle sockets should cost the load tool little.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// The kind of a WebSocket failure: `http_<status>` for a refused upgrade.
pub fn ws_kind(err: &WsError) -> String {
    match err {
        WsError::Http(response) => format!("http_{}", response.status().as_u16()),
        WsError::Io(io) => io_kind(io),
        WsError::ConnectionClosed | WsError::AlreadyClosed => "closed".to_owned(),
        // What a client sees when the server process dies: the TCP connection ends without
        // a close frame.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            "reset_without_close".to_owned()
        }
        WsError::Protocol(_) => "protocol".to_owned(),
        WsError::Capacity(_) => "too_large".to_owned(),
        _ => "ws_other".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the sockets come from, as the server sees it: each source address in turn, and
    /// (without them) whatever the kernel picks.
    #[tokio::test]
    async fn sockets_come_from_each_source_address_in_turn() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: reqwest::Url = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let sources: SourceAddrs = "127.0.0.3,127.0.0.7".parse().unwrap();
        let dialer = Dialer::new(&url, Some(sources), Duration::from_secs(5))
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut held = Vec::new();
        for _ in 0..4 {
            let (stream, (accepted, peer)) =
                tokio::join!(dialer.tcp(), async { listener.accept().await.unwrap() });
            let stream = stream.unwrap();
            assert_eq!(stream.local_addr().unwrap(), peer);
            // The port was left to connect, so it is not taken from other destinations.
            let no_port = nix::sys::socket::getsockopt(
                &stream,
                nix::sys::socket::sockopt::IpBindAddressNoPort,
            );
            assert_eq!(no_port, Ok(true));
            seen.push(peer.ip().to_string());
            held.push((stream, accepted));
        }
        assert_eq!(seen, ["127.0.0.3", "127.0.0.7", "127.0.0.3", "127.0.0.7"]);

        let plain = Dialer::new(&url, None, Duration::from_secs(5))
            .await
            .unwrap();
        let (stream, (_accepted, peer)) =
            tokio::join!(plain.tcp(), async { listener.accept().await.unwrap() });
        stream.unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.1");
    }

    #[tokio::test]
    async fn source_addresses_need_a_loopback_target() {
        let url: reqwest::Url = "http://10.0.0.1:9".parse().unwrap();
        let sources: SourceAddrs = "127.0.0.2".parse().unwrap();
        let err = Dialer::new(&url, Some(sources), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("need an IPv4 loopback target"),
            "{err}"
        );
    }
}
