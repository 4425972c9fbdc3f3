//! Channels against the real topology (Redis, nginx from `nginx.conf`, three replica
//! processes): fan-out across replicas, Redis subscriptions held only by replicas with a local
//! subscriber (by Redis's own `PUBSUB` counts), presence, recovery after a replica or Redis is
//! lost, permissions and the limits of every channel frame.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{API_KEY, Client, Socket, TestCluster};

/// Redis's count of subscribers to a channel's pub/sub name: one per replica holding it.
async fn numsub(conn: &mut redis::aio::MultiplexedConnection, channel: &str) -> i64 {
    let (_, count): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("stickyws:channel:{channel}"))
        .query_async(conn)
        .await
        .unwrap();
    count
}

/// Every channel some replica is subscribed to, as Redis lists them.
async fn channels_in_redis(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let mut names: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg("stickyws:channel:*")
        .query_async(conn)
        .await
        .unwrap();
    names.sort();
    names
}

/// Polls `PUBSUB NUMSUB` until it is `want`, within 5 s.
async fn await_numsub(conn: &mut redis::aio::MultiplexedConnection, channel: &str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = numsub(conn, channel).await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "PUBSUB NUMSUB {channel} stayed {now}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The message frames a socket gets up to and including the one whose text is `last`,
/// presence events skipped: what a chat client would show.
async fn messages_until(socket: &mut Socket, last: &str) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let frame = socket.next_non_presence().await;
        let done = frame["text"] == last;
        got.push(frame);
        if done {
            return got;
        }
    }
}

fn texts(frames: &[Value]) -> Vec<&str> {
    frames
        .iter()
        .map(|f| f["text"].as_str().unwrap_or("<no text>"))
        .collect()
}

fn api_key() -> (&'static str, String) {
    ("authorization", format!("Bearer {API_KEY}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_reaches_every_subscriber_on_every_replica_once_and_no_one_else() {
    let cluster = TestCluster::start(3);
    let channel = "public:fanout";
    let names = ["app-1", "app-2", "app-3"];
    let mut subscribers = Vec::new();
    let mut bystanders = Vec::new();
    for name in names {
        let client = cluster.mint().await;
        let mut socket = cluster.connect(&client, Some(name)).await;
        assert_eq!(socket.replica, name, "the cookie placed the subscriber");
        socket.subscribed(channel).await;
        subscribers.push(socket);
        let other = cluster.mint().await;
        let socket = cluster.connect(&other, Some(name)).await;
        assert_eq!(socket.replica, name);
        bystanders.push((other, socket));
    }

    let published = cluster.channel_publish(channel, "over http").await;
    assert_eq!(published["receivers"], 3, "{published}");
    let http_from = published["replica"].as_str().unwrap().to_owned();
    // Over a socket, from a bystander on app-2 (a public channel takes publishes from anyone).
    bystanders[1]
        .1
        .send_json(&json!({"type": "publish", "channel": channel, "text": "over a socket"}))
        .await;
    // The marker goes out once the socket's publish has surely gone through Redis (one
    // subscriber saw it): two publishers have no order between them otherwise.
    let mut seen_first = messages_until(&mut subscribers[0], "over a socket").await;
    cluster.channel_publish(channel, "marker").await;

    for (i, socket) in subscribers.iter_mut().enumerate() {
        let mut got = if i == 0 {
            std::mem::take(&mut seen_first)
        } else {
            Vec::new()
        };
        got.extend(messages_until(socket, "marker").await);
        assert_eq!(
            texts(&got),
            ["over http", "over a socket", "marker"],
            "each once, in order, on {}",
            socket.replica
        );
        for frame in &got {
            assert_eq!(frame["type"], "message");
            assert_eq!(frame["via"], "channel");
            assert_eq!(frame["channel"], channel);
            assert_eq!(frame["replica"], socket.replica.as_str(), "{frame}");
            assert!(frame["cursor"].is_string(), "{frame}");
        }
        assert_eq!(got[0]["from"], http_from.as_str());
        assert_eq!(got[1]["from"], "app-2");
    }
    // Bystanders: a message to each one's own stream, sent after everything above, must be the
    // first frame it sees; a channel message would have come before it.
    for (client, socket) in &mut bystanders {
        let (status, body) = cluster.call("publish", client, None, "own marker").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let first = socket.next_json().await;
        assert_eq!(
            (first["via"].as_str(), first["text"].as_str()),
            (Some("publish"), Some("own marker")),
            "a non-subscriber on {} got channel traffic: {first}",
            socket.replica
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_replicas_with_a_subscriber_hold_the_redis_subscription() {
    let mut cluster = TestCluster::start(3);
    let mut redis = cluster.redis_conn().await;
    let channel = "public:holders";
    let key = format!("stickyws:channel:{channel}");
    assert_eq!(numsub(&mut redis, channel).await, 0);

    let (a, b, c) = (
        cluster.mint().await,
        cluster.mint().await,
        cluster.mint().await,
    );
    let mut a1 = cluster.connect(&a, Some("app-1")).await;
    let mut b1 = cluster.connect(&b, Some("app-1")).await;
    let mut c2 = cluster.connect(&c, Some("app-2")).await;
    a1.subscribed(channel).await;
    b1.subscribed(channel).await;
    await_numsub(&mut redis, channel, 1).await;
    c2.subscribed(channel).await;
    await_numsub(&mut redis, channel, 2).await;
    assert!(channels_in_redis(&mut redis).await.contains(&key));
    let published = cluster.channel_publish(channel, "to two replicas").await;
    assert_eq!(published["receivers"], 2, "{published}");

    for socket in [&mut a1, &mut b1, &mut c2] {
        assert_eq!(socket.next_non_presence().await["text"], "to two replicas");
    }

    // app-1 keeps its subscription while b is still there.
    a1.send_json(&json!({"type": "unsubscribe", "channel": channel}))
        .await;
    let answer = a1.next_non_presence().await;
    assert_eq!(answer["type"], "unsubscribed", "{answer}");
    a1.assert_echo("still here").await;
    assert_eq!(numsub(&mut redis, channel).await, 2, "b still holds app-1");

    // The last unsubscribe on app-1 drops it.
    b1.send_json(&json!({"type": "unsubscribe", "channel": channel}))
        .await;
    await_numsub(&mut redis, channel, 1).await;

    // The last subscriber's socket closing drops app-2: no channel left in Redis.
    c2.ws.close(None).await.unwrap();
    drop(c2);
    await_numsub(&mut redis, channel, 0).await;
    assert!(
        !channels_in_redis(&mut redis).await.contains(&key),
        "{:?}",
        channels_in_redis(&mut redis).await
    );

    // A replica that dies: Redis closes its connection, and with it the subscription.
    let d = cluster.mint().await;
    let mut d3 = cluster.connect(&d, Some("app-3")).await;
    let mut c2 = cluster.connect(&c, Some("app-2")).await;
    d3.subscribed(channel).await;
    c2.subscribed(channel).await;
    await_numsub(&mut redis, channel, 2).await;
    cluster.replica("app-3").proc.kill();
    await_numsub(&mut redis, channel, 1).await;
    assert_eq!(channels_in_redis(&mut redis).await, [key]);
    let published = cluster.channel_publish(channel, "to app-2 only").await;
    assert_eq!(published["receivers"], 1, "{published}");
}

/// The presence list's entry for `client`, if listed.
fn listed<'a>(presence: &'a Value, client: &Client) -> Option<&'a Value> {
    presence["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == client.id.as_str())
}

/// The next presence event about someone other than `me` (whether a socket is told of its own
/// join is not what these tests are about).
async fn others_presence(socket: &mut Socket, me: &Client) -> Value {
    loop {
        let frame = socket.next_presence().await;
        if frame["client_id"] != me.id.as_str() {
            return frame;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lists_clients_with_their_replica_and_sockets_and_forgets_a_dead_replica() {
    let mut cluster = TestCluster::start(3);
    let channel = "public:room";
    let auth = api_key();
    let headers = [(auth.0, auth.1.as_str())];
    let (a, b, c, d) = (
        cluster.mint().await,
        cluster.mint().await,
        cluster.mint().await,
        cluster.mint().await,
    );
    let mut watcher = cluster.connect(&b, Some("app-2")).await;
    watcher.subscribed(channel).await;

    let mut tab1 = cluster.connect(&a, Some("app-1")).await;
    let mut tab2 = cluster.connect(&a, Some("app-1")).await;
    tab1.subscribed(channel).await;
    tab2.subscribed(channel).await;
    let mut c3 = cluster.connect(&c, Some("app-3")).await;
    c3.subscribed(channel).await;
    // e has a tab on each of two replicas: still one member, one join.
    let e = cluster.mint().await;
    let mut e2 = cluster.connect(&e, Some("app-2")).await;
    let mut e3 = cluster.connect(&e, Some("app-3")).await;
    e2.subscribed(channel).await;
    e3.subscribed(channel).await;
    // Two tabs, one join: the event after a's join is c's.
    let join = others_presence(&mut watcher, &b).await;
    assert_eq!(
        json!([
            join["event"],
            join["client_id"],
            join["replica"],
            join["channel"]
        ]),
        json!(["join", a.id, "app-1", channel]),
        "{join}"
    );
    let join = others_presence(&mut watcher, &b).await;
    assert_eq!(
        json!([join["event"], join["client_id"], join["replica"]]),
        json!(["join", c.id, "app-3"]),
        "a second tab must not join again: {join}"
    );
    let join = others_presence(&mut watcher, &b).await;
    assert_eq!(
        json!([join["event"], join["client_id"], join["replica"]]),
        json!(["join", e.id, "app-2"]),
        "{join}"
    );

    let (status, presence) = cluster.presence(channel, &headers).await;
    assert_eq!(status, StatusCode::OK, "{presence}");
    assert_eq!(presence["count"], 4, "{presence}");
    let entry = |client: &Client| listed(&presence, client).cloned().unwrap_or(Value::Null);
    assert_eq!(
        json!([entry(&a)["replica"], entry(&a)["sockets"]]),
        json!(["app-1", 2]),
        "{presence}"
    );
    assert_eq!(
        json!([entry(&b)["replica"], entry(&b)["sockets"]]),
        json!(["app-2", 1])
    );
    assert_eq!(
        json!([entry(&c)["replica"], entry(&c)["sockets"]]),
        json!(["app-3", 1])
    );
    assert_eq!(
        json!([entry(&e)["sockets"], entry(&e)["replicas"]]),
        json!([2, ["app-2", "app-3"]]),
        "{presence}"
    );

    // One tab leaves: a is still there with one socket, no leave event (d's join comes first).
    tab1.send_json(&json!({"type": "unsubscribe", "channel": channel}))
        .await;
    assert_eq!(tab1.next_non_presence().await["type"], "unsubscribed");
    let mut d1 = cluster.connect(&d, Some("app-1")).await;
    d1.subscribed(channel).await;
    let next = others_presence(&mut watcher, &b).await;
    assert_eq!(
        json!([next["event"], next["client_id"]]),
        json!(["join", d.id]),
        "closing one of two tabs must not leave, nor e's second tab join: {next}"
    );
    let (_, presence) = cluster.presence(channel, &headers).await;
    assert_eq!(listed(&presence, &a).unwrap()["sockets"], 1, "{presence}");
    // The last tab closes: a leaves, for everyone still there.
    tab2.ws.close(None).await.unwrap();
    let leave = others_presence(&mut watcher, &b).await;
    assert_eq!(
        json!([leave["event"], leave["client_id"], leave["replica"]]),
        json!(["leave", a.id, "app-1"]),
        "{leave}"
    );
    let leave = others_presence(&mut d1, &d).await;
    assert_eq!(
        json!([leave["event"], leave["client_id"]]),
        json!(["leave", a.id])
    );

    // app-3 dies holding c and one of e's tabs: both go within 10 s, though nobody said
    // goodbye (each part expires on its own clock, so both are polled for).
    cluster.replica("app-3").proc.kill();
    let killed = Instant::now();
    loop {
        let (status, presence) = cluster.presence(channel, &headers).await;
        assert_eq!(status, StatusCode::OK, "{presence}");
        let e_now = listed(&presence, &e).cloned().unwrap_or(Value::Null);
        let e_sockets = e_now["sockets"].as_u64();
        assert!(
            matches!(e_sockets, Some(1 | 2)),
            "e's app-2 tab stays listed: {presence}"
        );
        if listed(&presence, &c).is_none() && e_sockets == Some(1) {
            assert_eq!(presence["count"], 3, "b, d and e stay: {presence}");
            assert_eq!(
                json!([e_now["replica"], e_now.get("replicas")]),
                json!(["app-2", null]),
                "{presence}"
            );
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "app-3's entries still listed 10 s after it died: {presence}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "presence: dead replica's entry gone after {:?}",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_whose_replica_was_killed_recovers_what_it_missed_once_in_order() {
    let mut cluster = TestCluster::start(3);
    let channel = "public:recover";
    let client = cluster.mint().await;
    let mut socket = cluster.connect(&client, Some("app-3")).await;
    assert_eq!(socket.replica, "app-3");
    socket.subscribed(channel).await;
    cluster.channel_publish(channel, "before").await;
    let seen = socket.next_non_presence().await;
    assert_eq!(seen["text"], "before");
    let cursor = seen["cursor"].as_str().unwrap().to_owned();

    cluster.replica("app-3").proc.kill();
    assert!(
        socket
            .next_json_within(Duration::from_secs(5))
            .await
            .is_none(),
        "the socket died with app-3"
    );
    let away: Vec<String> = (0..20).map(|i| format!("away {i}")).collect();
    for text in &away {
        let body = cluster.channel_publish(channel, text).await;
        assert_eq!(body["receivers"], 0, "nobody subscribed meanwhile: {body}");
    }

    // Back through nginx with the dead replica's cookie; live publishes keep coming while it
    // subscribes, so the replay has to be stitched to them.
    let mut socket = cluster.connect(&client, Some("app-3")).await;
    assert_ne!(socket.replica, "app-3");
    let live_publisher = {
        let base = cluster.base();
        let http = cluster.http.clone();
        tokio::spawn(async move {
            for i in 0..20 {
                let response = http
                    .post(format!("{base}/api/channels/{channel}/publish"))
                    .header("authorization", format!("Bearer {API_KEY}"))
                    .json(&json!({ "text": format!("live {i}") }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let answer = socket.subscribe(channel, None, Some(&cursor)).await;
    assert_eq!(
        (answer["type"].as_str(), answer["recovered"].as_bool()),
        (Some("subscribed"), Some(true)),
        "{answer}"
    );
    let got = messages_until(&mut socket, "live 19").await;
    live_publisher.await.unwrap();
    let live: Vec<String> = (0..20).map(|i| format!("live {i}")).collect();
    let want: Vec<&str> = away.iter().chain(&live).map(String::as_str).collect();
    assert_eq!(texts(&got), want, "every missed one, then live, each once");
    for frame in &got[..20] {
        assert_eq!(frame["replayed"], true, "{frame}");
    }
    for frame in &got {
        assert_eq!(frame["replica"], socket.replica.as_str(), "{frame}");
    }
    // Nothing after live 19 (a late duplicate would come before this marker).
    cluster.channel_publish(channel, "marker").await;
    assert_eq!(socket.next_non_presence().await["text"], "marker");
}

/// The epoch part of a cursor (`<epoch>:<ms>-<seq>`).
fn epoch(cursor: &str) -> &str {
    cursor.split_once(':').map_or("", |(epoch, _)| epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_restarts_empty_old_cursors_are_told_history_was_lost() {
    let mut cluster = TestCluster::start(3);
    let channel = "public:epochs";
    let subscriber = cluster.mint().await;
    let mut socket = cluster.connect(&subscriber, Some("app-1")).await;
    socket.subscribed(channel).await;
    cluster.channel_publish(channel, "c1").await;
    let seen = socket.next_non_presence().await;
    let channel_cursor = seen["cursor"].as_str().unwrap().to_owned();
    drop(socket);

    // The client's own stream: it saw "x", then went away; m1 was published.
    let client = cluster.mint().await;
    let mut own = cluster.connect(&client, Some("app-2")).await;
    let (status, _) = cluster.call("publish", &client, None, "x").await;
    assert_eq!(status, StatusCode::OK);
    let x = own.next_json().await;
    assert_eq!(x["text"], "x");
    let last_id = x["cursor"].as_str().unwrap().to_owned();
    let broadcast = |text: &str| json!({ "text": text }).to_string();
    let (status, _) = cluster
        .post("/api/broadcast", Some(API_KEY), None, &broadcast("b0"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let b0 = own.next_json().await;
    assert_eq!(b0["text"], "b0");
    let last_broadcast_id = b0["cursor"].as_str().unwrap().to_owned();
    drop(own);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = cluster.call("publish", &client, None, "m1").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = cluster
        .post("/api/broadcast", Some(API_KEY), None, &broadcast("b1"))
        .await;
    assert_eq!(status, StatusCode::OK);

    cluster.kill_redis();
    cluster.restart_redis();
    cluster.wait_all_ready(Duration::from_secs(15)).await;
    // Published after the restart: a history exists again, just not the old one. A replica's
    // first command after the restart may still meet the dead connection (503), as a producer
    // would, so each is retried until accepted.
    let deadline = Instant::now() + Duration::from_secs(15);
    let publish_c2 = format!("/api/channels/{channel}/publish");
    let publish_m2 = format!("/api/publish/{}", client.id);
    for (path, bearer, text) in [
        (publish_c2.as_str(), API_KEY, "c2"),
        (publish_m2.as_str(), client.token.as_str(), "m2"),
        ("/api/broadcast", API_KEY, "b2"),
    ] {
        loop {
            let body = json!({ "text": text }).to_string();
            let (status, answer) = cluster.post(path, Some(bearer), None, &body).await;
            if status == StatusCode::OK {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{text} not accepted: {status} {answer}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let mut socket = cluster.connect(&subscriber, Some("app-3")).await;
    let answer = socket.subscribe(channel, None, Some(&channel_cursor)).await;
    assert_eq!(
        (answer["type"].as_str(), answer["recovered"].as_bool()),
        (Some("subscribed"), Some(false)),
        "{answer}"
    );
    assert_ne!(
        epoch(answer["cursor"].as_str().unwrap()),
        epoch(&channel_cursor),
        "a new history, a new epoch: {answer}"
    );

    // m1 and b1 went with Redis; m2 and b2 came after. Resuming must say both streams lost
    // history before replaying anything.
    // (A replica whose link is not ready at that moment leaves the check to its gap fill,
    // which finds the new epoch and closes the socket with 1012: the client resumes again.)
    let query = format!("&last_id={last_id}&last_broadcast_id={last_broadcast_id}");
    let mut lost = Vec::new();
    for _attempt in 0..3 {
        let mut own = cluster.connect_query(&client, Some("app-1"), &query).await;
        lost.clear();
        while lost.len() < 2 {
            match own.next_json_or_close(Duration::from_secs(10)).await {
                Ok(frame) => {
                    assert_eq!(frame["type"], "history_lost", "before any replay: {frame}");
                    lost.push(frame["stream"].as_str().unwrap().to_owned());
                }
                Err(code) => {
                    assert_eq!(code, Some(1012), "closed only to resume");
                    break;
                }
            }
        }
        if lost.len() == 2 {
            break;
        }
    }
    lost.sort();
    assert_eq!(lost, ["broadcast", "client"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_channels_take_a_token_for_that_client_and_channel() {
    let cluster = TestCluster::start(3);
    let (a, b) = (cluster.mint().await, cluster.mint().await);
    let mut socket = cluster.connect(&a, Some("app-1")).await;
    socket.subscribed("public:open").await;

    let private = "team.red";
    let refused = |answer: &Value, code: &str| {
        assert_eq!(
            json!([answer["type"], answer["code"], answer["channel"]]),
            json!(["error", code, private]),
            "{answer}"
        );
    };
    refused(
        &socket.subscribe(private, None, None).await,
        "token_required",
    );
    let bs = cluster.channel_token(private, &b.id).await;
    refused(
        &socket.subscribe(private, Some(&bs), None).await,
        "bad_subscription_token",
    );
    let other_channel = cluster.channel_token("team.blue", &a.id).await;
    refused(
        &socket.subscribe(private, Some(&other_channel), None).await,
        "bad_subscription_token",
    );
    let valid = cluster.channel_token(private, &a.id).await;
    let mut forged = valid.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    for bad in [forged.as_str(), "not-a-token", &a.token] {
        refused(
            &socket.subscribe(private, Some(bad), None).await,
            "bad_subscription_token",
        );
    }
    socket.assert_echo("still open").await;

    // Minting takes the API key, not a client token.
    let (status, _) = cluster
        .post(
            &format!("/api/channels/{private}/tokens"),
            Some(&a.token),
            None,
            &json!({"client_id": a.id}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let answer = socket.subscribe(private, Some(&valid), None).await;
    assert_eq!(answer["type"], "subscribed", "{answer}");
    let published = cluster.channel_publish(private, "for the team").await;
    assert_eq!(published["receivers"], 1);
    let got = socket.next_non_presence().await;
    assert_eq!(
        json!([got["channel"], got["text"]]),
        json!([private, "for the team"])
    );

    // HTTP publish and presence of a private channel: a client token is not enough.
    let client_headers = [
        ("authorization", format!("Bearer {}", a.token)),
        ("x-client-id", a.id.clone()),
    ];
    let mut request = cluster
        .http
        .post(format!("{}/api/channels/{private}/publish", cluster.base()))
        .json(&json!({"text": "from a client"}));
    for (name, value) in &client_headers {
        request = request.header(*name, value);
    }
    assert_eq!(
        request.send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let borrowed: Vec<(&str, &str)> = client_headers
        .iter()
        .map(|(n, v)| (*n, v.as_str()))
        .collect();
    let (status, body) = cluster.presence(private, &borrowed).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = cluster.presence(private, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let auth = api_key();
    let (status, body) = cluster
        .presence(private, &[(auth.0, auth.1.as_str())])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 1, "{body}");
    // For a public channel the client token (with its id) does list.
    let (status, body) = cluster.presence("public:open", &borrowed).await;
    assert_eq!(
        (status, body["count"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{body}"
    );
    // Nothing from the refused publish reached the subscriber.
    cluster.channel_publish(private, "marker").await;
    assert_eq!(socket.next_non_presence().await["text"], "marker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_channel_frame_gets_its_error_and_the_socket_and_replicas_carry_on() {
    let extra = vec![
        ("CHANNELS_PER_SOCKET".to_owned(), "3".to_owned()),
        ("CHANNEL_PUBLISH_RATE".to_owned(), "5".to_owned()),
    ];
    let cluster = TestCluster::start_with(3, extra);
    let long_text = "x".repeat(4 * 1024 + 1);
    let name_128 = format!("public:{}", "n".repeat(128 - 7));
    let name_129 = format!("public:{}", "n".repeat(129 - 7));
    // (what is tried, the raw frame, the code expected or "subscribed"/"unsubscribed", channel)
    let table: Vec<(&str, String, &str, Option<&str>)> = vec![
        ("not JSON", "hello".into(), "bad_frame", None),
        (
            "unknown type",
            json!({"type": "dance"}).to_string(),
            "unknown_type",
            None,
        ),
        (
            "subscribe, no channel",
            json!({"type": "subscribe"}).to_string(),
            "missing_field",
            None,
        ),
        (
            "unsubscribe, no channel",
            json!({"type": "unsubscribe"}).to_string(),
            "missing_field",
            None,
        ),
        (
            "publish, no text",
            json!({"type": "publish", "channel": "public:a"}).to_string(),
            "missing_field",
            Some("public:a"),
        ),
        (
            "a field the type does not take",
            json!({"type": "unsubscribe", "channel": "public:a", "since": "x"}).to_string(),
            "bad_frame",
            Some("public:a"),
        ),
        (
            "empty name",
            json!({"type": "subscribe", "channel": ""}).to_string(),
            "bad_channel",
            None,
        ),
        (
            "129 characters",
            json!({"type": "subscribe", "channel": name_129}).to_string(),
            "bad_channel",
            None,
        ),
        (
            "a space",
            json!({"type": "subscribe", "channel": "public:a b"}).to_string(),
            "bad_channel",
            None,
        ),
        (
            "a slash",
            json!({"type": "subscribe", "channel": "public:a/b"}).to_string(),
            "bad_channel",
            None,
        ),
        (
            "not ASCII",
            json!({"type": "subscribe", "channel": "public:café"}).to_string(),
            "bad_channel",
            None,
        ),
        (
            "128 characters",
            json!({"type": "subscribe", "channel": name_128}).to_string(),
            "subscribed",
            Some(&name_128),
        ),
        (
            "leave it",
            json!({"type": "unsubscribe", "channel": name_128}).to_string(),
            "unsubscribed",
            Some(&name_128),
        ),
        (
            "bad cursor",
            json!({"type": "subscribe", "channel": "public:a", "since": "yesterday"}).to_string(),
            "bad_cursor",
            Some("public:a"),
        ),
        (
            "token too long",
            json!({"type": "subscribe", "channel": "team.x", "token": "t".repeat(200)}).to_string(),
            "bad_subscription_token",
            Some("team.x"),
        ),
        (
            "private, no token",
            json!({"type": "subscribe", "channel": "team.x"}).to_string(),
            "token_required",
            Some("team.x"),
        ),
        (
            "first subscribe",
            json!({"type": "subscribe", "channel": "public:a"}).to_string(),
            "subscribed",
            Some("public:a"),
        ),
        (
            "subscribing twice",
            json!({"type": "subscribe", "channel": "public:a"}).to_string(),
            "already_subscribed",
            Some("public:a"),
        ),
        (
            "never joined",
            json!({"type": "unsubscribe", "channel": "public:never"}).to_string(),
            "not_subscribed",
            Some("public:never"),
        ),
        (
            "second channel",
            json!({"type": "subscribe", "channel": "public:b"}).to_string(),
            "subscribed",
            Some("public:b"),
        ),
        (
            "third channel",
            json!({"type": "subscribe", "channel": "public:c"}).to_string(),
            "subscribed",
            Some("public:c"),
        ),
        (
            "one over CHANNELS_PER_SOCKET",
            json!({"type": "subscribe", "channel": "public:d"}).to_string(),
            "too_many_channels",
            Some("public:d"),
        ),
        (
            "publish to a private channel not joined",
            json!({"type": "publish", "channel": "team.x", "text": "hi"}).to_string(),
            "forbidden",
            Some("team.x"),
        ),
        (
            "channel text too long",
            json!({"type": "publish", "channel": "public:a", "text": long_text}).to_string(),
            "text_too_long",
            Some("public:a"),
        ),
        (
            "echo text too long",
            json!({"text": long_text}).to_string(),
            "text_too_long",
            None,
        ),
    ];
    for replica in ["app-1", "app-2", "app-3"] {
        let client = cluster.mint().await;
        let mut socket = cluster.connect(&client, Some(replica)).await;
        for (i, (what, raw, code, channel)) in table.iter().enumerate() {
            socket.send_raw(raw).await;
            let answer = socket.next_non_presence().await;
            let kind = match *code {
                "subscribed" | "unsubscribed" => *code,
                _ => "error",
            };
            assert_eq!(answer["type"], kind, "{what} on {replica}: {answer}");
            if kind == "error" {
                assert_eq!(answer["code"], *code, "{what} on {replica}: {answer}");
                assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
            }
            assert_eq!(
                answer["channel"].as_str(),
                *channel,
                "{what} on {replica}: the channel named: {answer}"
            );
            socket.assert_echo(&format!("alive after {i}")).await;
        }

        // Publishing faster than CHANNEL_PUBLISH_RATE (5/s, bursts of 10).
        for i in 0..30 {
            socket
                .send_json(
                    &json!({"type": "publish", "channel": "public:a", "text": format!("fast {i}")}),
                )
                .await;
        }
        socket.send_text("after the burst").await;
        let mut limited = 0;
        let mut delivered = 0;
        let mut echoed = false;
        // The refusals and the echo come from this replica, the accepted ones back through
        // Redis: read until every publish is accounted for and the echo came.
        while !echoed || limited + delivered < 30 {
            let frame = socket.next_non_presence().await;
            match (frame["type"].as_str(), frame["via"].as_str()) {
                (Some("error"), _) => {
                    assert_eq!(
                        json!([frame["code"], frame["channel"]]),
                        json!(["rate_limited", "public:a"]),
                        "{frame}"
                    );
                    limited += 1;
                }
                (Some("message"), Some("channel")) => delivered += 1,
                (Some("message"), Some("ws")) => echoed = true,
                _ => panic!("unexpected {frame}"),
            }
        }
        assert!(limited >= 15, "30 at once, {limited} refused on {replica}");
        assert_eq!(limited + delivered, 30, "each publish answered once");
        socket.assert_echo("alive after the burst").await;
    }
    for replica in &cluster.replicas {
        let response = cluster
            .http
            .get(format!("http://{}/healthz", replica.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{} after the table",
            replica.name
        );
    }
}
