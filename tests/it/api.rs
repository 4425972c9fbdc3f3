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
