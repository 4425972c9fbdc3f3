//! The HTTP surface's promises at its edges: auth, bad input, probes, metrics, the origin check.
//! Every refusal has the contract's JSON shape, and the replica keeps serving afterwards.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{TestCluster, ws::refused_status};

fn error_code(body: &serde_json::Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_json_errors_and_the_replica_survives() {
    let cluster = TestCluster::single();
    let client = cluster.mint().await;
    let other = cluster.mint().await;
    let path = format!("/api/echo/{}", client.id);
    let good = json!({"text": "hi"}).to_string();
    let big = json!({"text": "x".repeat(5000)}).to_string();
    let huge = "x".repeat(100_000);
    type Case<'a> = (
        &'a str,
        String,
        Option<&'a str>,
        &'a str,
        StatusCode,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "no token",
            path.clone(),
            None,
            good.as_str(),
            StatusCode::UNAUTHORIZED,
            "missing_token",
        ),
        (
            "another client's token",
            path.clone(),
            Some(other.token.as_str()),
            good.as_str(),
            StatusCode::UNAUTHORIZED,
            "bad_token",
        ),
        (
            "forged token",
            path.clone(),
            Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            good.as_str(),
            StatusCode::UNAUTHORIZED,
            "bad_token",
        ),
        (
            "broken JSON",
            path.clone(),
            Some(client.token.as_str()),
            "{\"text\":",
            StatusCode::BAD_REQUEST,
            "bad_body",
        ),
        (
            "unknown field",
            path.clone(),
            Some(client.token.as_str()),
            "{\"text\":\"a\",\"x\":1}",
            StatusCode::BAD_REQUEST,
            "bad_body",
        ),
        (
            "text not a string",
            path.clone(),
            Some(client.token.as_str()),
            "{\"text\":5}",
            StatusCode::BAD_REQUEST,
            "bad_body",
        ),
        (
            "text over the limit",
            path.clone(),
            Some(client.token.as_str()),
            big.as_str(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "text_too_long",
        ),
        (
            "body over the limit",
            path.clone(),
            Some(client.token.as_str()),
            huge.as_str(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            "bad client id",
            "/api/echo/a.b".to_owned(),
            Some(client.token.as_str()),
            good.as_str(),
            StatusCode::BAD_REQUEST,
            "bad_client_id",
        ),
        (
            "client id too long",
            format!("/api/echo/{}", "a".repeat(65)),
            Some(client.token.as_str()),
            good.as_str(),
            StatusCode::BAD_REQUEST,
            "bad_client_id",
        ),
        (
            "unknown endpoint",
            "/api/nothing".to_owned(),
            None,
            good.as_str(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (what, path, token, body, status, code) in cases {
        let (got, answer) = cluster.post(&path, token, None, body).await;
        assert_eq!(
            (got, error_code(&answer)),
            (status, code),
            "{what}: {answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }

    let response = cluster
        .http
        .post(format!("{}{path}", cluster.base()))
        .header("authorization", format!("Bearer {}", client.token))
        .header("content-type", "text/plain")
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let response = cluster
        .http
        .put(format!("{}{path}", cluster.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error_code(&answer), "method_not_allowed");

    // Still alive and serving.
    let (status, answer) = cluster.call("echo", &client, None, "still here").await;
    assert_eq!(
        (status, answer["text"].as_str()),
        (StatusCode::OK, Some("still here"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_acts_for_any_client_and_broadcast_needs_it() {
    let cluster = TestCluster::single();
    let client = cluster.mint().await;
    let mut socket = cluster.connect(&client, None).await;
    let body = json!({"text": "server side"}).to_string();
    let path = format!("/api/publish/{}", client.id);
    let (status, answer) = cluster
        .post(&path, Some(crate::support::API_KEY), None, &body)
        .await;
    assert_eq!(
        (status, answer["receivers"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    assert_eq!(socket.next_json().await["text"], "server side");
    let (status, answer) = cluster.post("/api/broadcast", None, None, &body).await;
    assert_eq!(
        (status, error_code(&answer)),
        (StatusCode::UNAUTHORIZED, "missing_token")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_are_checked_before_the_socket_opens() {
    let cluster = TestCluster::single();
    let client = cluster.mint().await;
    let other = cluster.mint().await;
    let host = cluster.base().trim_start_matches("http://").to_owned();
    let ok = format!("/ws/{}?token={}", client.id, client.token);
    assert_eq!(
        refused_status(&host, &format!("/ws/{}", client.id), &[]).await,
        401,
        "no token"
    );
    assert_eq!(
        refused_status(
            &host,
            &format!("/ws/{}?token={}", client.id, other.token),
            &[]
        )
        .await,
        401,
        "another client's token"
    );
    assert_eq!(
        refused_status(&host, &format!("/ws/a.b?token={}", client.token), &[]).await,
        400,
        "bad id"
    );
    assert_eq!(
        refused_status(&host, &ok, &[("origin", "http://evil.example")]).await,
        403,
        "cross-site"
    );
    let same_origin = format!("http://{host}");
    assert_eq!(
        refused_status(&host, &ok, &[("origin", same_origin.as_str())]).await,
        101,
        "same origin"
    );
    // A plain GET on the socket path is not an upgrade.
    let response = cluster
        .http
        .get(format!("{}{ok}", cluster.base()))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_report_the_replica() {
    let cluster = TestCluster::start(3);
    let health = cluster.get("/healthz", Some("app-2")).await;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(
        health.json::<serde_json::Value>().await.unwrap()["replica"],
        "app-2"
    );
    let ready = cluster.get("/readyz", Some("app-1")).await;
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        (ready["broker"].as_str(), ready["ready"].as_bool()),
        (Some("redis"), Some(true))
    );

    let client = cluster.mint().await;
    let mut socket = cluster.connect(&client, Some("app-3")).await;
    cluster.call("publish", &client, None, "counted").await;
    socket.next_json().await;
    let metrics = cluster.metrics(Some("app-3")).await;
    assert!(metrics.contains("stickyws_sockets 1\n"), "{metrics}");
    assert!(
        metrics.contains("stickyws_messages_delivered_total{via=\"publish\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("stickyws_broker_up 1\n"), "{metrics}");
    assert!(
        metrics.contains("process_resident_memory_bytes "),
        "{metrics}"
    );

    let replicas: serde_json::Value = cluster
        .get("/api/replicas", None)
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = replicas["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, ["app-1", "app-2", "app-3"], "{replicas}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_gets_every_module_it_imports_and_static_serves_nothing_else() {
    let cluster = TestCluster::single();
    let page = cluster.get("/", None).await.text().await.unwrap();
    assert!(
        page.contains(r#"<script type="module" src="/static/main.js">"#),
        "{page}"
    );
    let referenced = static_references(&page, "\"/static/");

    // Every module reachable from main.js through its imports, each served as JavaScript.
    let mut todo = vec!["main.js".to_owned()];
    let mut served = std::collections::BTreeSet::new();
    while let Some(module) = todo.pop() {
        if !served.insert(module.clone()) {
            continue;
        }
        let response = cluster.get(&format!("/static/{module}"), None).await;
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            (response.status(), content_type.as_str()),
            (StatusCode::OK, "text/javascript; charset=utf-8"),
            "{module}"
        );
        let source = response.text().await.unwrap();
        todo.extend(static_references(&source, "from './"));
    }
    let (preloaded, styles): (Vec<String>, Vec<String>) = referenced
        .into_iter()
        .partition(|name| name.ends_with(".js"));
    let preloaded: std::collections::BTreeSet<String> = preloaded.into_iter().collect();
    assert_eq!(
        preloaded, served,
        "the page references other modules than it imports"
    );
    assert!(served.len() > 1, "{served:?}");
    assert_eq!(styles, ["app.css"]);
    let style = cluster.get("/static/app.css", None).await;
    assert_eq!(
        (
            style.status(),
            style.headers()["content-type"].to_str().ok()
        ),
        (StatusCode::OK, Some("text/css; charset=utf-8"))
    );

    for path in ["/static/x.js", "/static/..%2FCargo.toml", "/static/%FF.js"] {
        let response = cluster.get(path, None).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error_code(&answer), "not_found", "{path}: {answer}");
    }
    // Written by hand: an HTTP client would resolve the `..` before sending.
    let (status, answer) = raw_get(&cluster.base(), "/static/../Cargo.toml").await;
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    assert_eq!(error_code(&answer), "not_found", "{answer}");
}

/// The names after each `prefix` in `text`, up to the closing quote.
fn static_references(text: &str, prefix: &str) -> Vec<String> {
    text.split(prefix)
        .skip(1)
        .filter_map(|rest| rest.split(['"', '\'']).next())
        .map(str::to_owned)
        .collect()
}

/// A GET with the path sent exactly as given; the status line and the JSON body.
async fn raw_get(base: &str, path: &str) -> (String, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut raw),
    )
    .await
    .expect("an answer in time")
    .unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete answer");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, serde_json::from_str(body).unwrap_or_default())
}
