//! The deployment under load, over plain HTTP: its address and HTTP client (which
//! [`crate::client`] mints clients with), the page, learning the replicas' names (`/api/replicas`) and reading each one's `/metrics` — through the
//! front door with the cookie `sticky=<name>`, since `/metrics` answers for whichever replica
//! gets it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

/// A replica's figures from `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplicaFigures {
    pub sockets: u64,
    pub resident_bytes: u64,
}

/// HTTP access to one deployment.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub base: String,
    pub http: reqwest::Client,
    /// Sent as the bearer when minting clients: a deployment limits minting per source address
    /// (`MINT_RATE`) except with its API key, and a load run mints many from one address.
    pub api_key: Option<String>,
}

impl Deployment {
    /// A client pooling up to `concurrency` connections to the front door.
    pub fn new(base: &str, concurrency: usize) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(concurrency.max(1))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
            api_key: None,
        })
    }

    /// The same deployment, minting with `key` when there is one.
    pub fn with_api_key(self, key: Option<String>) -> Self {
        Self {
            api_key: key,
            ..self
        }
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

    /// The replicas' names, as `/api/replicas` lists them.
    pub async fn replicas(&self) -> anyhow::Result<Vec<String>> {
        let body: Value = self
            .http
            .get(format!("{}/api/replicas", self.base))
            .send()
            .await
            .with_context(|| format!("reaching {}", self.base))?
            .error_for_status()?
            .json()
            .await?;
        let mut names: Vec<String> = body["replicas"]
            .as_array()
            .context("/api/replicas answered without a list")?
            .iter()
            .filter_map(|r| r["id"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    /// One replica's `/metrics`, reached with its sticky cookie.
    pub async fn figures(&self, replica: &str) -> anyhow::Result<ReplicaFigures> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .header("cookie", format!("sticky={replica}"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(parse_metrics(&text))
    }

    /// Every replica's figures, by name; a replica that does not answer is left out.
    pub async fn all_figures(&self, replicas: &[String]) -> BTreeMap<String, ReplicaFigures> {
        let mut out = BTreeMap::new();
        for name in replicas {
            if let Ok(f) = self.figures(name).await {
                out.insert(name.clone(), f);
            }
        }
        out
    }
}

/// The two figures this tool reads from a Prometheus text exposition.
pub fn parse_metrics(text: &str) -> ReplicaFigures {
    let mut figures = ReplicaFigures::default();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        match name {
            "stickyws_sockets" => figures.sockets = value as u64,
            "process_resident_memory_bytes" => figures.resident_bytes = value as u64,
            _ => {}
        }
    }
    figures
}

/// The kind of an HTTP client failure, as the report counts it.
pub fn reqwest_kind(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return "timeout".to_owned();
    }
    if err.is_connect() {
        let mut source = std::error::Error::source(err);
        while let Some(inner) = source {
            if let Some(io) = inner.downcast_ref::<std::io::Error>() {
                return crate::report::io_kind(io);
            }
            source = inner.source();
        }
        return "connect".to_owned();
    }
    if err.is_body() || err.is_decode() {
        return "bad_body".to_owned();
    }
    "http_error".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_gives_sockets_and_resident_memory() {
        let text = "# HELP x\nprocess_resident_memory_bytes 1048576\nstickyws_sockets 12\n\
                    stickyws_clients 3\n# EOF\n";
        let f = parse_metrics(text);
        assert_eq!(f.sockets, 12);
        assert_eq!(f.resident_bytes, 1_048_576);
    }
}
