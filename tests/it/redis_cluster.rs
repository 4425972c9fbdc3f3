//! The broker on a real local Redis Cluster (six `redis-server` nodes, three masters with a
//! replica each), three replicas behind nginx: targeted, channel and broadcast fan-out reach
//! exactly the right sockets once; only the replicas holding a recipient subscribe, and only
//! the shard owning a target carries its channel (each master's own `PUBSUB` answers); a
//! master killed with SIGKILL is replaced by its replica and deliveries resume; a real
//! `redis-cli --cluster reshard` under load loses nothing for live sockets and keeps order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::support::redis_cluster::{OnRedisCluster, assert_master_serves, next_or_close};
use crate::support::{API_KEY, Socket, TestCluster};

fn client_channel(id: &str) -> String {
    format!("stickyws:{{client:{id}}}")
}

fn room_channel(name: &str) -> String {
    format!("stickyws:{{channel:{name}}}")
}

const BROADCAST: &str = "stickyws:{broadcast}";

/// `POST /api/publish/{id}` with the API key: (status, receivers).
async fn publish_to(web: &TestCluster, id: &str, text: &str) -> (StatusCode, Option<u64>) {
    let body = json!({ "text": text }).to_string();
    let (status, answer) = web
        .post(&format!("/api/publish/{id}"), Some(API_KEY), None, &body)
        .await;
    (status, answer["receivers"].as_u64())
}

/// The texts a socket got until `last`, then whatever else comes within a quiet 300 ms,
/// presence skipped: messages from different shards have no order between them, so callers
/// compare sorted texts.
async fn texts_until(socket: &mut Socket, last: &str) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let frame = socket.next_non_presence().await;
        let text = frame["text"].as_str().unwrap_or("<no text>").to_owned();
        let done = text == last;
        got.push(text);
        if done {
            break;
        }
    }
    for frame in socket.drain(Duration::from_millis(300)).await {
        if frame["type"] != "presence" {
            got.push(frame["text"].as_str().unwrap_or("<no text>").to_owned());
        }
    }
    got.sort();
    got
}

fn sorted(texts: &[&str]) -> Vec<String> {
    let mut texts: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
    texts.sort();
    texts
}

/// Polls until every master's `PUBSUB SHARDNUMSUB <channel>` is `want` on the owner and 0
/// elsewhere, within 5 s; returns the counts seen.
async fn await_shard_numsub(cluster: &OnRedisCluster, channel: &str, want: i64) {
    let owner = cluster.owner(channel).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counts = cluster.shard_numsub(channel).await;
        let expected: Vec<(u16, i64)> = counts
            .iter()
            .map(|(port, _)| (*port, if *port == owner { want } else { 0 }))
            .collect();
        if counts == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{channel}: SHARDNUMSUB per master {counts:?}, want {expected:?} (owner {owner})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reaches_exactly_the_right_sockets_once_and_only_the_owning_shard_carries_it() {
    let cluster = OnRedisCluster::start(3).await;
    let web = &cluster.web;
    let alice = web.mint().await;
    let bob = web.mint().await;
    let carol = web.mint().await;
    let dave = web.mint().await;
    let erin = web.mint().await;
    // alice has a tab on app-1 and one on app-2; carol (app-1) and dave (app-3) are in the
    // room; bob (app-3) and erin (app-2) only look on.
    let mut a1 = web.connect(&alice, Some("app-1")).await;
    let mut a2 = web.connect(&alice, Some("app-2")).await;
    let mut b = web.connect(&bob, Some("app-3")).await;
    let mut c = web.connect(&carol, Some("app-1")).await;
    let mut d = web.connect(&dave, Some("app-3")).await;
    let mut e = web.connect(&erin, Some("app-2")).await;
    for (socket, replica) in [
        (&a1, "app-1"),
        (&a2, "app-2"),
        (&b, "app-3"),
        (&c, "app-1"),
        (&d, "app-3"),
        (&e, "app-2"),
    ] {
        assert_eq!(socket.replica, replica, "the cookie placed the socket");
    }
    let room = "public:cluster-room";
    c.subscribed(room).await;
    d.subscribed(room).await;

    // Only holders subscribe, each on the shard that owns the target only.
    await_shard_numsub(&cluster, &client_channel(&alice.id), 2).await;
    await_shard_numsub(&cluster, &client_channel(&bob.id), 1).await;
    await_shard_numsub(&cluster, &room_channel(room), 2).await;
    await_shard_numsub(&cluster, BROADCAST, 3).await;
    let mut carried: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for (port, channels) in cluster.shard_channels().await {
        for channel in channels {
            carried.entry(channel).or_default().push(port);
        }
    }
    let mut expected = vec![
        BROADCAST.to_owned(),
        room_channel(room),
        client_channel(&alice.id),
        client_channel(&bob.id),
        client_channel(&carol.id),
        client_channel(&dave.id),
        client_channel(&erin.id),
    ];
    expected.sort();
    assert_eq!(
        carried.keys().cloned().collect::<Vec<_>>(),
        expected,
        "the shard channels are exactly the held targets and broadcast"
    );
    for (channel, ports) in &carried {
        assert_eq!(
            ports,
            &[cluster.owner(channel).await],
            "{channel} is carried by its owning master only"
        );
    }
    let spread: std::collections::BTreeSet<u16> = carried.values().flatten().copied().collect();
    assert!(
        spread.len() >= 2,
        "seven targets over three shards: {carried:?}"
    );

    // Targeted: both of alice's replicas, no one else.
    assert_eq!(
        publish_to(web, &alice.id, "for alice").await,
        (StatusCode::OK, Some(2))
    );
    // Channel: the two replicas with a subscriber.
    let (status, answer) = web
        .post(
            &format!("/api/channels/{room}/publish"),
            Some(API_KEY),
            None,
            &json!({ "text": "for the room" }).to_string(),
        )
        .await;
    assert_eq!(
        (status, answer["receivers"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{answer}"
    );
    // Broadcast: every replica.
    let (status, answer) = web
        .post(
            "/api/broadcast",
            Some(API_KEY),
            None,
            &json!({ "text": "for all" }).to_string(),
        )
        .await;
    assert_eq!(
        (status, answer["receivers"].as_u64()),
        (StatusCode::OK, Some(3)),
        "{answer}"
    );
    for id in [&alice.id, &bob.id, &carol.id, &dave.id, &erin.id] {
        let (status, _) = publish_to(web, id, "end").await;
        assert_eq!(status, StatusCode::OK);
    }
    for socket in [&mut a1, &mut a2] {
        assert_eq!(
            texts_until(socket, "end").await,
            sorted(&["for alice", "for all", "end"]),
            "alice's tab on {}",
            socket.replica
        );
    }
    for socket in [&mut c, &mut d] {
        assert_eq!(
            texts_until(socket, "end").await,
            sorted(&["for the room", "for all", "end"]),
            "room member on {}",
            socket.replica
        );
    }
    for socket in [&mut b, &mut e] {
        assert_eq!(
            texts_until(socket, "end").await,
            sorted(&["for all", "end"]),
            "bystander on {}",
            socket.replica
        );
    }

    // The last socket of a client going unsubscribes its replica on the owning shard.
    drop(a2);
    await_shard_numsub(&cluster, &client_channel(&alice.id), 1).await;
    assert_eq!(
        publish_to(web, &alice.id, "one tab left").await,
        (StatusCode::OK, Some(1))
    );
    assert_eq!(a1.next_non_presence().await["text"], "one tab left");
}

/// What the publisher saw of one message.
#[derive(Clone, Debug)]
struct Sent {
    text: String,
    /// When its publish was sent, from the start of the run.
    at: Duration,
    status: u16,
}

/// What is done to the cluster a second into the run.
enum Disruption {
    /// SIGKILL the master owning the client's slot.
    KillOwner,
    /// Move the client's slot to another master, keys and all, as a reshard does.
    MoveSlot,
}

/// One run: a publisher sends m0, m1, … to alice every 50 ms through nginx while her socket on
/// app-1 reads (reconnecting with its cursor if the replica closes it, as the page does); a
/// second in, `disruption`; it ends 2 s after a message published after the disruption
/// arrived, or after 40 s.
struct Run {
    sent: Vec<Sent>,
    got: Vec<String>,
    disrupted: Duration,
    /// When the first message published after the disruption was delivered.
    resumed: Option<Duration>,
    resumes: Vec<(String, Duration)>,
    history_lost: Vec<String>,
    /// The master that owned alice's slot before.
    owner: u16,
}

impl Run {
    async fn through(cluster: &mut OnRedisCluster, disruption: Disruption) -> Run {
        let alice = cluster.web.mint().await;
        let mut socket = cluster.web.connect(&alice, Some("app-1")).await;
        let channel = client_channel(&alice.id);
        await_shard_numsub(cluster, &channel, 1).await;
        let owner = cluster.owner(&channel).await;

        let started = Instant::now();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let http = cluster.web.http.clone();
        let url = format!("{}/api/publish/{}", cluster.web.base(), alice.id);
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Sent>::new()));
        let sent = log.clone();
        let publisher = tokio::spawn(async move {
            for i in 0..800 {
                if stop_rx.try_recv().is_ok() {
                    break;
                }
                let text = format!("m{i}");
                let at = started.elapsed();
                let status = http
                    .post(&url)
                    .bearer_auth(API_KEY)
                    .header("content-type", "application/json")
                    .body(json!({ "text": text }).to_string())
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                sent.lock().unwrap().push(Sent { text, at, status });
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });

        let mut got = Vec::new();
        let mut disrupted = None;
        let mut resumed = None;
        let mut resumes = Vec::new();
        let mut history_lost = Vec::new();
        let mut last_id = socket.welcome["cursor"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let deadline = started + Duration::from_secs(40);
        while Instant::now() < deadline {
            if disrupted.is_none() && started.elapsed() > Duration::from_secs(1) {
                match disruption {
                    Disruption::KillOwner => cluster.nodes.kill(owner),
                    Disruption::MoveSlot => {
                        let to = cluster
                            .nodes
                            .masters()
                            .into_iter()
                            .find(|port| *port != owner)
                            .unwrap();
                        cluster.move_slot(&channel, owner, to).await;
                    }
                }
                disrupted = Some(started.elapsed());
            }
            match next_or_close(&mut socket, Duration::from_millis(100)).await {
                Ok(Some(frame)) if frame["type"] == "history_lost" => {
                    history_lost.push(frame.to_string());
                }
                Ok(Some(frame)) if frame["via"] == "publish" => {
                    if let Some(cursor) = frame["cursor"].as_str() {
                        last_id = cursor.to_owned();
                    }
                    let text = frame["text"].as_str().unwrap_or_default().to_owned();
                    let after = disrupted.is_some_and(|at| {
                        log.lock()
                            .unwrap()
                            .iter()
                            .any(|s| s.text == text && s.at > at)
                    });
                    if after && resumed.is_none() {
                        resumed = Some(started.elapsed());
                    }
                    got.push(text);
                }
                Ok(_) => {}
                Err(why) => {
                    resumes.push((why, started.elapsed()));
                    socket = cluster
                        .web
                        .connect_query(&alice, Some("app-1"), &format!("&last_id={last_id}"))
                        .await;
                }
            }
            if resumed.is_some_and(|at| started.elapsed() > at + Duration::from_secs(2)) {
                break;
            }
        }
        let _ = stop_tx.send(());
        publisher.await.unwrap();
        while let Ok(Some(frame)) = next_or_close(&mut socket, Duration::from_millis(500)).await {
            if frame["via"] == "publish" {
                got.push(frame["text"].as_str().unwrap_or_default().to_owned());
            }
        }
        let sent = log.lock().unwrap().clone();
        Run {
            sent,
            got,
            disrupted: disrupted.unwrap(),
            resumed: resumed.map(|at| at.saturating_sub(disrupted.unwrap_or_default())),
            resumes,
            history_lost,
            owner,
        }
    }

    fn accepted(&self) -> Vec<&str> {
        self.sent
            .iter()
            .filter(|s| s.status == 200)
            .map(|s| s.text.as_str())
            .collect()
    }

    /// Says what happened, then checks what holds whatever the disruption: every accepted
    /// message reached the socket exactly once, no one was told of a loss that did not
    /// happen, and deliveries resumed within `limit`.
    fn report_and_check(&self, what: &str, limit: Duration, records: &str) {
        let accepted = self.accepted();
        let lost: Vec<&str> = accepted
            .iter()
            .copied()
            .filter(|t| !self.got.iter().any(|g| g == t))
            .collect();
        let refused: Vec<&Sent> = self.sent.iter().filter(|s| s.status != 200).collect();
        eprintln!(
            "{what} (master {}) at {:?}: deliveries resumed {:?} after; publishes refused {} \
             (statuses {:?}) from {:?} to {:?}; accepted {}, delivered {}, accepted but not \
             delivered {lost:?}; socket resumes {:?}; history_lost {:?}",
            self.owner,
            self.disrupted,
            self.resumed,
            refused.len(),
            refused
                .iter()
                .map(|s| s.status)
                .collect::<std::collections::BTreeSet<_>>(),
            refused.first().map(|s| s.at),
            refused.last().map(|s| s.at),
            accepted.len(),
            self.got.len(),
            self.resumes,
            self.history_lost,
        );
        // Redis replicates asynchronously, but a message is accepted (200) only once the
        // master ran the publish, which wrote it to every subscriber on the shard in the same
        // step: accepted messages reach the socket live or from history.
        assert!(
            lost.is_empty(),
            "accepted but never delivered: {lost:?}\n{records}\nsent {:?}",
            self.sent
        );
        // Nothing accepted was lost, so no client may be told otherwise: the replica waits for
        // the slot's master before filling the gap from history, rather than giving up on it.
        assert!(
            self.history_lost.is_empty(),
            "a false history_lost: {:?}",
            self.history_lost
        );
        let mut seen = std::collections::HashSet::new();
        assert!(
            self.got.iter().all(|t| seen.insert(t)),
            "each message at most once: {:?}",
            self.got
        );
        let resumed = self.resumed.expect("deliveries resumed within 40 s");
        assert!(resumed < limit, "resumed after {resumed:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_is_replaced_by_its_replica_and_deliveries_resume() {
    let mut cluster = OnRedisCluster::start(3).await;
    let run = Run::through(&mut cluster, Disruption::KillOwner).await;
    run.report_and_check(
        "master killed (SIGKILL)",
        Duration::from_secs(15),
        &cluster.web.records(),
    );
    let masters = cluster.nodes.masters();
    assert_eq!(masters.len(), 3, "the replica took the dead master's place");
    assert!(!masters.contains(&run.owner));
    cluster.web.wait_all_ready(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_to_another_master_under_load_loses_nothing_for_a_live_socket() {
    let mut cluster = OnRedisCluster::start(3).await;
    let run = Run::through(&mut cluster, Disruption::MoveSlot).await;
    run.report_and_check(
        "slot moved",
        Duration::from_secs(10),
        &cluster.web.records(),
    );
    assert!(
        run.resumes.is_empty(),
        "the socket stayed open: {:?}",
        run.resumes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stickyws_cluster_redis_cluster_runs_the_replicas_on_six_nodes_and_sigterm_stops_them() {
    use crate::cluster_command::{children_of, wait_all_gone};
    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_stickyws"));
    command
        .args([
            "cluster",
            "--redis-cluster",
            "--replicas",
            "2",
            "--port",
            "0",
        ])
        .args([
            "--nginx-conf",
            concat!(env!("CARGO_MANIFEST_DIR"), "/nginx.conf"),
        ])
        .arg("--records-log")
        .arg(dir.path().join("records.log"))
        .env("API_KEY", API_KEY);
    let mut cluster = crate::support::process::Proc::spawn("cluster", &mut command, dir.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    let (url, banner) = loop {
        let log = std::fs::read_to_string(dir.path().join("cluster.log")).unwrap_or_default();
        if let Some(url) = log.lines().find_map(|l| l.split("open ").nth(1)) {
            break (url.trim().trim_end_matches('/').to_owned(), log.clone());
        }
        assert!(
            Instant::now() < deadline,
            "no URL printed\n{}",
            cluster.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        banner.contains("Redis Cluster on 127.0.0.1: masters"),
        "{banner}"
    );
    let children = children_of(cluster.pid());
    assert_eq!(
        children.len(),
        9,
        "six redis nodes, two replicas, nginx: {children:?}\n{}",
        cluster.log_tail()
    );

    // A client's message goes through the cluster to its socket.
    let http = reqwest::Client::new();
    let minted: serde_json::Value = http
        .post(format!("{url}/api/clients"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client = crate::support::Client {
        id: minted["client_id"].as_str().unwrap().to_owned(),
        token: minted["token"].as_str().unwrap().to_owned(),
    };
    let host = url.trim_start_matches("http://");
    let mut socket = Socket::connect(host, &client, None).await;
    let answer: serde_json::Value = http
        .post(format!("{url}/api/publish/{}", client.id))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(json!({ "text": "via the cluster" }).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["receivers"], 1, "{answer}");
    assert_eq!(socket.next_non_presence().await["text"], "via the cluster");
    let records = std::fs::read_to_string(dir.path().join("records.log")).unwrap();
    assert!(records.contains("broker redis-cluster"), "{records}");

    let status =
        cluster.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        cluster.log_tail()
    );
    assert_eq!(
        wait_all_gone(&children, Duration::from_secs(5)),
        Vec::<u32>::new(),
        "children (redis nodes included) outlived the cluster"
    );
}

/// Slots `redis-cli --cluster reshard` moves in the resharding test: a fifth of a master's.
const RESHARD_SLOTS: usize = 1000;

/// The slots `master` serves now, ascending, by `CLUSTER SLOTS`.
async fn slots_of(cluster: &OnRedisCluster, master: u16) -> Vec<i64> {
    let ranges: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut cluster.node(master).await)
        .await
        .unwrap();
    let mut slots = Vec::new();
    for parts in ranges {
        let start = redis::from_redis_value_ref::<i64>(&parts[0]).unwrap();
        let end = redis::from_redis_value_ref::<i64>(&parts[1]).unwrap();
        let owner: Vec<redis::Value> = redis::from_redis_value_ref(&parts[2]).unwrap();
        if redis::from_redis_value_ref::<u16>(&owner[1]).unwrap() == master {
            slots.extend(start..=end);
        }
    }
    slots.sort_unstable();
    slots
}

async fn keyslot(cluster: &OnRedisCluster, port: u16, key: &str) -> i64 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut cluster.node(port).await)
        .await
        .unwrap()
}

async fn node_id(cluster: &OnRedisCluster, port: u16) -> String {
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query_async(&mut cluster.node(port).await)
        .await
        .unwrap()
}

/// What one socket read during the reshard: its texts in arrival order, when each came, and
/// why it closed if it did.
struct Read {
    texts: Vec<String>,
    at: Vec<Duration>,
    closed: Option<String>,
}

/// Reads `socket` until `stop`, then for a quiet second; bounded by 90 s in all.
fn read_socket(
    mut socket: Socket,
    started: Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<(Read, Socket)> {
    tokio::spawn(async move {
        let mut read = Read {
            texts: Vec::new(),
            at: Vec::new(),
            closed: None,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut quiet_since: Option<Instant> = None;
        while Instant::now() < deadline {
            match next_or_close(&mut socket, Duration::from_millis(100)).await {
                Ok(Some(frame)) if frame["type"] == "message" => {
                    read.texts
                        .push(frame["text"].as_str().unwrap_or("<no text>").to_owned());
                    read.at.push(started.elapsed());
                    quiet_since = None;
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    if *stop.borrow_and_update() {
                        let since = *quiet_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_secs(1) {
                            break;
                        }
                    }
                }
                Err(why) => {
                    read.closed = Some(why);
                    break;
                }
            }
        }
        (read, socket)
    })
}

/// `redis-cli --cluster reshard` of `RESHARD_SLOTS` slots from `from` to `to`, bounded by 120 s
/// (the child is killed, by its own handle, if it runs over): (success, output). Its output
/// goes to a file in `dir`: it prints a line per slot, more than a pipe holds.
async fn reshard(dir: &std::path::Path, seed: u16, from: &str, to: &str) -> (bool, String) {
    let log = dir.join("reshard.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new("redis-cli")
        .args(["--cluster", "reshard", &format!("127.0.0.1:{seed}")])
        .args(["--cluster-from", from, "--cluster-to", to])
        .args([
            "--cluster-slots",
            &RESHARD_SLOTS.to_string(),
            "--cluster-yes",
        ])
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let success = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    (success, std::fs::read_to_string(&log).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshard_by_redis_cli_under_load_loses_nothing_and_keeps_order_for_live_sockets() {
    let cluster = OnRedisCluster::start(2).await;
    let web = &cluster.web;
    let masters = cluster.nodes.masters();
    // redis-cli moves a source's lowest slots first: pick a client whose slot is among the
    // first RESHARD_SLOTS of its master, and a room in the same range of the same master, so
    // the reshard carries both.
    let mut picked = None;
    for _ in 0..60 {
        let alice = web.mint().await;
        let channel = client_channel(&alice.id);
        let owner = cluster.owner(&channel).await;
        let slots = slots_of(&cluster, owner).await;
        let slot = keyslot(&cluster, owner, &channel).await;
        if slots.iter().position(|s| *s == slot) < Some(RESHARD_SLOTS) {
            picked = Some((alice, owner, slots));
            break;
        }
    }
    let (alice, from, slots) = picked.expect("a client in the first slots of its master");
    let moved: std::collections::BTreeSet<i64> =
        slots.iter().take(RESHARD_SLOTS).copied().collect();
    let mut room = None;
    for i in 0..2000 {
        let name = format!("public:reshard-{i}");
        if moved.contains(&keyslot(&cluster, from, &room_channel(&name)).await) {
            room = Some(name);
            break;
        }
    }
    let room = room.expect("a room in the moved slots");
    let to = *masters.iter().find(|port| **port != from).unwrap();
    let carol = web.mint().await;
    let dave = web.mint().await;
    // Sockets on both replicas for each target.
    let a1 = web.connect(&alice, Some("app-1")).await;
    let a2 = web.connect(&alice, Some("app-2")).await;
    let mut c = web.connect(&carol, Some("app-1")).await;
    let mut d = web.connect(&dave, Some("app-2")).await;
    c.subscribed(&room).await;
    d.subscribed(&room).await;
    await_shard_numsub(&cluster, &client_channel(&alice.id), 2).await;
    await_shard_numsub(&cluster, &room_channel(&room), 2).await;
    assert_eq!(cluster.owner(&room_channel(&room)).await, from);

    let started = Instant::now();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let readers = [
        (
            "alice@app-1",
            'c',
            read_socket(a1, started, stop_rx.clone()),
        ),
        (
            "alice@app-2",
            'c',
            read_socket(a2, started, stop_rx.clone()),
        ),
        ("carol@app-1", 'r', read_socket(c, started, stop_rx.clone())),
        ("dave@app-2", 'r', read_socket(d, started, stop_rx.clone())),
    ];
    // One publisher, alternating the client and the room every 20 ms, until told to stop.
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    let http = web.http.clone();
    let client_url = format!("{}/api/publish/{}", web.base(), alice.id);
    let room_url = format!("{}/api/channels/{room}/publish", web.base());
    let publisher = tokio::spawn(async move {
        let mut sent: Vec<Sent> = Vec::new();
        for i in 0..6000 {
            if done_rx.try_recv().is_ok() {
                break;
            }
            for (prefix, url) in [("c", &client_url), ("r", &room_url)] {
                let text = format!("{prefix}{i}");
                let at = started.elapsed();
                let status = http
                    .post(url)
                    .bearer_auth(API_KEY)
                    .header("content-type", "application/json")
                    .body(json!({ "text": text }).to_string())
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                sent.push(Sent { text, at, status });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent
    });

    tokio::time::sleep(Duration::from_secs(1)).await;
    let reshard_from = started.elapsed();
    let (ok, output) = reshard(
        web.dir.path(),
        from,
        &node_id(&cluster, from).await,
        &node_id(&cluster, to).await,
    )
    .await;
    let reshard_to = started.elapsed();
    assert!(
        ok,
        "redis-cli --cluster reshard failed:\n{}",
        &output[output.len().saturating_sub(3000)..]
    );
    assert_eq!(cluster.owner(&client_channel(&alice.id)).await, to);
    assert_eq!(cluster.owner(&room_channel(&room)).await, to);
    // Load for a while after the reshard: the targets now publish on their new shard.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = done_tx.send(());
    let sent = publisher.await.unwrap();
    let _ = stop_tx.send(true);

    let refused: Vec<&Sent> = sent.iter().filter(|s| s.status != 200).collect();
    let mut report = Vec::new();
    let mut gap_max = Duration::ZERO;
    let mut sockets = Vec::new();
    for (who, prefix, reader) in readers {
        let (read, socket) = reader.await.unwrap();
        sockets.push(socket);
        let accepted: Vec<&str> = sent
            .iter()
            .filter(|s| s.status == 200 && s.text.starts_with(prefix))
            .map(|s| s.text.as_str())
            .collect();
        assert!(
            read.closed.is_none(),
            "{who}'s socket stayed open: {:?}",
            read.closed
        );
        assert_eq!(
            read.texts,
            accepted,
            "{who} got every accepted message once, in order\n{}",
            web.records()
        );
        let gap = read
            .at
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        gap_max = gap_max.max(gap);
        report.push(format!(
            "{who} {} delivered, max gap {gap:?}",
            read.texts.len()
        ));
    }
    eprintln!(
        "redis-cli --cluster reshard of {RESHARD_SLOTS} slots {from} -> {to} from {reshard_from:?} \
         to {reshard_to:?} ({:?}); publishes {} sent, {} refused (statuses {:?}); {}; max \
         delivery gap {gap_max:?}",
        reshard_to - reshard_from,
        sent.len(),
        refused.len(),
        refused
            .iter()
            .map(|s| s.status)
            .collect::<std::collections::BTreeSet<_>>(),
        report.join("; "),
    );
    // Both targets' subscriptions followed their slot to the new owner, and only there.
    await_shard_numsub(&cluster, &client_channel(&alice.id), 2).await;
    await_shard_numsub(&cluster, &room_channel(&room), 2).await;
    drop(sockets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_name_the_slot_and_master_of_a_client_and_a_channel_and_refuse_bad_names() {
    let cluster = OnRedisCluster::start(1).await;
    let web = &cluster.web;
    let alice = web.mint().await;
    let room = "public:shard-room";
    let stats: serde_json::Value = web
        .get(
            &format!("/api/stats?client_id={}&channel={room}", alice.id),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    for (part, channel) in [
        ("client", client_channel(&alice.id)),
        ("channel", room_channel(room)),
    ] {
        let shown = &stats["shard"][part];
        let owner = cluster.owner(&channel).await;
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&channel)
            .query_async(&mut cluster.node(owner).await)
            .await
            .unwrap();
        assert_eq!(
            (shown["slot"].as_i64(), shown["master"].as_str()),
            (Some(slot), Some(format!("127.0.0.1:{owner}").as_str())),
            "{stats}"
        );
    }
    // Asked for nothing, it says nothing of either.
    let plain: serde_json::Value = web.get("/api/stats", None).await.json().await.unwrap();
    assert_eq!(
        plain["shard"],
        json!({"client": null, "channel": null}),
        "{plain}"
    );
    let long = "a".repeat(65);
    for query in [
        "client_id=a%7Bb%7D".to_owned(),
        format!("client_id={long}"),
        "channel=public:a%20b".to_owned(),
        format!("channel=public:{}", "x".repeat(200)),
        "client_id=".to_owned(),
    ] {
        let response = web.get(&format!("/api/stats?{query}"), None).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
    }
}

/// `stickyws cluster --redis-cluster`, as a person runs it, serves the page where every button
/// keeps its promise: `stickyws load tour` presses the six buttons and the state lab's checks
/// six times each and fails on the first promise broken (button 4's publish goes through the
/// cluster's shards, the state lab's shared notes live on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stickyws_cluster_redis_cluster_serves_the_page_where_every_button_keeps_its_promise() {
    let cluster = crate::support::browser::DemoCluster::start_with(&["--redis-cluster"]).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_stickyws"))
        .args(["load", "tour", "--count", "6", "--timeout", "60"])
        .args(["--url", &cluster.url])
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success() && stdout.contains("every button kept its promise"),
        "the tour failed\n{stdout}\n{stderr}"
    );
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("button ") || l.starts_with("state lab · "))
        .collect();
    assert_eq!(
        rows.len(),
        9,
        "six buttons, three state lab checks\n{stdout}"
    );
    // Each row that promises every press shows all six back: not button 5 (it reaches its
    // socket only when round robin lands on the socket's replica) nor the local notes without
    // a cookie (each replica keeps its own), whose misses are their lesson.
    let all_back = rows
        .iter()
        .filter(|r| !r.starts_with("button 5 ") && !r.starts_with("state lab · local notes"));
    assert_eq!(all_back.clone().count(), 7, "{stdout}");
    for row in all_back {
        assert!(row.contains(" 6   6 "), "{row}\n{stdout}");
    }
    let records = std::fs::read_to_string(cluster.dir.path().join("records.log")).unwrap();
    assert!(records.contains("broker redis-cluster"), "{records}");
}

/// The page names the slot of the room its name field holds, and the master serving it, before
/// it joins (marked "not joined"), follows the field when it changes, and drops the mark once
/// joined; that master does serve the slot (a key of it is read there without `MOVED`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_the_page_names_the_rooms_shard_before_it_joins() {
    use crate::support::browser::{Chromedriver, DemoCluster};
    let cluster = DemoCluster::start_with(&["--redis-cluster"]).await;
    let driver = Chromedriver::start(cluster.dir.path());
    let page = driver.open(1280, 900).await;
    page.goto(&format!("{}/", cluster.url)).await;
    page.wait_until(
        "the page's socket to open",
        Duration::from_secs(15),
        "return window.stickyws && window.stickyws.state().wsState === 'open';",
    )
    .await;
    // Waits for the shard line to name `room` (with `mark` after it), then checks the slot and
    // master it shows against the cluster itself.
    let shows = |what: &'static str, room: &'static str, mark: &'static str| {
        let js = format!(
            "const s = document.getElementById('shard'); \
             const m = !s.hidden && s.textContent.match(/room {}{}: slot (\\d+) on (127\\.0\\.0\\.1:\\d+)/); \
             return m && [m[1], m[2]];",
            room.replace('.', "\\."),
            mark.replace('(', "\\(").replace(')', "\\)")
        );
        let page = &page;
        async move {
            let shown = page.wait_until(what, Duration::from_secs(10), &js).await;
            let slot: i64 = shown[0].as_str().unwrap().parse().unwrap();
            let master = shown[1].as_str().unwrap();
            assert_master_serves(master, &room_channel(room), slot).await;
        }
    };
    // Not joined: the name field's room (the page's default).
    shows(
        "the default room's shard before joining",
        "public:lobby",
        " (not joined)",
    )
    .await;
    assert_eq!(
        page.state().await["room"]["status"],
        "out",
        "nothing was joined"
    );
    // Another name typed: the line follows it at the next poll.
    page.eval(
        "const f = document.getElementById('room-name'); f.value = 'public:shard.elsewhere'; \
         f.dispatchEvent(new Event('input', { bubbles: true }));",
    )
    .await;
    shows(
        "the typed room's shard",
        "public:shard.elsewhere",
        " (not joined)",
    )
    .await;
    // Joined: the same room, no longer marked.
    page.click("btn-room-join").await;
    shows("the joined room's shard", "public:shard.elsewhere", "").await;
}
