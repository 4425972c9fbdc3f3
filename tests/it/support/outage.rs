//! What a user sees through nginx while the broker is down, one round of checks at a time: the
//! paths that need no broker answer as usual, the ones that do answer 503 `broker_unavailable`
//! promptly. Each check reports what went wrong instead of panicking, so a test can sample for
//! the whole outage and show every failed second. Stopping Redis is left to [`TestCluster`].

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{API_KEY, Client, Socket, TestCluster};

/// How long a broker path may take to say the broker is down.
pub const BROKER_ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// A WebSocket through nginx, or why the upgrade (or its welcome) failed.
pub async fn try_connect(
    cluster: &TestCluster,
    client: &Client,
    sticky: Option<&str>,
) -> Result<Socket, String> {
    let host = cluster.base().trim_start_matches("http://").to_owned();
    let url = format!("ws://{host}/ws/{}?token={}", client.id, client.token);
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    if let Some(replica) = sticky {
        let cookie = format!("sticky={replica}").parse().map_err(|_| "cookie")?;
        request.headers_mut().insert("cookie", cookie);
    }
    let upgrade = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .map_err(|_| "upgrade: no answer within 5 s".to_owned())?;
    let (ws, _) = upgrade.map_err(|err| match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            format!("upgrade answered {}", response.status())
        }
        other => format!("upgrade failed: {other}"),
    })?;
    let mut socket = Socket {
        ws,
        replica: String::new(),
        welcome: Value::Null,
    };
    let welcome = socket
        .next_json_within(Duration::from_secs(5))
        .await
        .ok_or("no welcome frame within 5 s")?;
    if welcome["type"] != "welcome" {
        return Err(format!("first frame is not a welcome: {welcome}"));
    }
    socket.replica = welcome["replica"].as_str().unwrap_or_default().to_owned();
    socket.welcome = welcome;
    Ok(socket)
}

/// Sends `text` on the socket and waits for its echo; the error says what came instead.
pub async fn echo_on(socket: &mut Socket, text: &str) -> Result<(), String> {
    socket.send_text(text).await;
    expect_frame(socket, "ws", text).await
}

/// The next frame is a message with this `via` and text.
pub async fn expect_frame(socket: &mut Socket, via: &str, text: &str) -> Result<(), String> {
    match socket.next_json_within(Duration::from_secs(5)).await {
        Some(frame) if frame["via"] == via && frame["text"] == text => Ok(()),
        Some(frame) => Err(format!("expected {via} {text:?}, got {frame}")),
        None => Err(format!("no {via} frame {text:?} within 5 s")),
    }
}

/// One round of everything that needs no broker, through nginx; `socket` is an open socket of
/// `client` (its replica is where `direct` is sent, with the cookie). Returns what failed.
pub async fn broker_free_paths(
    cluster: &TestCluster,
    client: &Client,
    socket: &mut Socket,
    round: usize,
) -> Vec<String> {
    let mut failed = Vec::new();
    let mut check = |what: &str, outcome: Result<(), String>| {
        if let Err(why) = outcome {
            failed.push(format!("{what}: {why}"));
        }
    };

    let page = cluster.get("/", None).await.status();
    check("GET /", status_is(page, StatusCode::OK));
    let health = cluster.get("/healthz", None).await.status();
    check("GET /healthz", status_is(health, StatusCode::OK));
    // A monitor polling readiness through nginx: it reaches one replica and hears its answer
    // (503 while that replica has no broker), never nginx's own 502.
    let ready = cluster.get("/readyz", None).await;
    let status = ready.status();
    let body: Value = ready.json().await.unwrap_or(Value::Null);
    check(
        "GET /readyz",
        if body["replica"].is_string() && body["broker_ready"].is_boolean() {
            Ok(())
        } else {
            Err(format!("{status}, not a replica's answer: {body}"))
        },
    );

    let text = format!("round {round}");
    let (status, body) = cluster.call("echo", client, None, &text).await;
    check(
        "POST /api/echo",
        status_is(status, StatusCode::OK).and_then(|()| field_is(&body, "text", &text)),
    );

    let sticky = socket.replica.clone();
    let (status, body) = cluster.call("direct", client, Some(&sticky), &text).await;
    let delivered = status_is(status, StatusCode::OK).and_then(|()| {
        if body["delivered"] == 1 {
            Ok(())
        } else {
            Err(format!("delivered {} (want 1): {body}", body["delivered"]))
        }
    });
    let delivered = match delivered {
        Ok(()) => expect_frame(socket, "direct", &text).await,
        err => err,
    };
    check("POST /api/direct with the cookie", delivered);
    check("echo on the open socket", echo_on(socket, &text).await);

    let note = json!({ "text": text }).to_string();
    let (status, body) = cluster
        .post(
            &format!("/api/notes/{}/local", client.id),
            Some(&client.token),
            Some(&sticky),
            &note,
        )
        .await;
    check(
        "POST /api/notes/…/local",
        status_is(status, StatusCode::OK).map_err(|e| format!("{e} {body}")),
    );

    // A new visitor: a fresh client id, a fresh socket wherever nginx sends it, and its echo.
    // Without a fresh id (minting failed), a second tab of `client` stands in for it.
    let (status, body) = cluster.post("/api/clients", None, None, "").await;
    let fresh = match status_is(status, StatusCode::OK) {
        Ok(()) => Client {
            id: body["client_id"].as_str().unwrap_or_default().to_owned(),
            token: body["token"].as_str().unwrap_or_default().to_owned(),
        },
        Err(why) => {
            check("POST /api/clients", Err(why));
            client.clone()
        }
    };
    match try_connect(cluster, &fresh, None).await {
        Ok(mut fresh_socket) => {
            check(
                "echo on a new socket",
                echo_on(&mut fresh_socket, &text).await,
            );
        }
        Err(why) => check("a new socket", Err(why)),
    }
    failed
}

/// publish and broadcast through nginx: 503 `broker_unavailable`, within
/// [`BROKER_ANSWER_WITHIN`] — or `outcome_unknown` for one caught on the connection Redis just
/// dropped (the replica cannot tell whether it was sent). Returns what failed.
pub async fn broker_paths_refuse(cluster: &TestCluster, client: &Client) -> Vec<String> {
    let mut failed = Vec::new();
    let body = json!({ "text": "nowhere" }).to_string();
    let publish = format!("/api/publish/{}", client.id);
    for (path, bearer) in [
        (publish.as_str(), client.token.as_str()),
        ("/api/broadcast", API_KEY),
    ] {
        let asked = Instant::now();
        let (status, answer) = cluster.post(path, Some(bearer), None, &body).await;
        let took = asked.elapsed();
        if status != StatusCode::SERVICE_UNAVAILABLE
            || !["broker_unavailable", "outcome_unknown"]
                .contains(&answer["error"]["code"].as_str().unwrap_or_default())
        {
            failed.push(format!("POST {path}: {status} {answer}"));
        } else if took > BROKER_ANSWER_WITHIN {
            failed.push(format!("POST {path}: answered after {took:?}"));
        }
    }
    failed
}

fn status_is(got: StatusCode, want: StatusCode) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{got}"))
    }
}

fn field_is(body: &Value, field: &str, want: &str) -> Result<(), String> {
    if body[field] == want {
        Ok(())
    } else {
        Err(format!("{field} is not {want:?}: {body}"))
    }
}
