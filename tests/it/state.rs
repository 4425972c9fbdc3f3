//! The state lab against the real topology: visit counters, session state kept locally and in
//! Redis, sockets landing away from their page, and the metrics that count all of it, checked
//! with an OpenMetrics parser.

use std::collections::BTreeMap;
use std::time::Duration;

use openmetrics_parser::openmetrics::parse_openmetrics;
use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{Client, Socket, TestCluster};

const REPLICAS: [&str; 3] = ["app-1", "app-2", "app-3"];

/// What a rendered page says about itself.
struct Page {
    replica: String,
    client: Client,
    visits_local: u64,
    visits_shared: u64,
}

fn attr(html: &str, name: &str) -> String {
    let start = html
        .find(&format!("{name}=\""))
        .unwrap_or_else(|| panic!("no {name} in the page"))
        + name.len()
        + 2;
    let len = html[start..].find('"').unwrap();
    html[start..start + len].to_owned()
}

async fn visit(cluster: &TestCluster, sticky: Option<&str>) -> Page {
    let response = cluster.get("/", sticky).await;
    assert_eq!(response.status(), StatusCode::OK);
    let html = response.text().await.unwrap();
    Page {
        replica: attr(&html, "data-replica"),
        client: Client {
            id: attr(&html, "data-client-id"),
            token: attr(&html, "data-token"),
        },
        visits_local: attr(&html, "data-visits-local").parse().unwrap(),
        visits_shared: attr(&html, "data-visits-shared").parse().unwrap(),
    }
}

/// Adds a note to the `store` copy (`local` or `shared`) of the client's state.
async fn note(cluster: &TestCluster, client: &Client, store: &str, sticky: Option<&str>) -> Value {
    let path = format!("/api/notes/{}/{store}", client.id);
    let (status, body) = cluster
        .post(&path, Some(&client.token), sticky, r#"{"text": "n"}"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn notes_of(answer: &Value) -> Vec<String> {
    answer["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

/// One scrape of `/metrics`, parsed as OpenMetrics (what the endpoint declares it serves).
struct Scrape(MetricsExposition<OpenMetricsType, OpenMetricsValue>);

impl Scrape {
    async fn of(cluster: &TestCluster, replica: &str) -> Scrape {
        let text = cluster.metrics(Some(replica)).await;
        Scrape(
            parse_openmetrics(&text)
                .unwrap_or_else(|err| panic!("/metrics does not parse: {err:?}\n{text}")),
        )
    }

    /// A counter's total, a gauge's value or a histogram's count; 0 for a series not there yet.
    fn value(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        let family = self
            .0
            .families
            .get(family)
            .unwrap_or_else(|| panic!("no metric family {family}"));
        let sample = family.iter_samples().find(|sample| {
            let set = sample.get_labelset().unwrap();
            labels
                .iter()
                .all(|(k, v)| set.get_label_value(k) == Some(*v))
        });
        match sample.map(|s| &s.value) {
            None => 0.0,
            Some(OpenMetricsValue::Counter(c)) => c.value.as_f64(),
            Some(OpenMetricsValue::Gauge(g)) => g.as_f64(),
            Some(OpenMetricsValue::Histogram(h)) => h.count.unwrap_or(0) as f64,
            Some(other) => panic!("unexpected value {other:?}"),
        }
    }

    fn kind(&self, family: &str) -> OpenMetricsType {
        self.0
            .families
            .get(family)
            .unwrap_or_else(|| panic!("no metric family {family}"))
            .family_type
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_replica_counts_its_own_visits_while_redis_counts_them_all() {
    let cluster = TestCluster::start(3);
    let mut local: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut shared = Vec::new();
    for _ in 0..30 {
        let page = visit(&cluster, None).await;
        local
            .entry(page.replica)
            .or_default()
            .push(page.visits_local);
        shared.push(page.visits_shared);
    }
    // Redis saw every visit, one after the other.
    assert_eq!(shared, (1..=30).collect::<Vec<_>>());
    // Each replica counted only those it served: 1, 2, 3… on each, about 10 each of 30.
    assert_eq!(
        local.keys().map(String::as_str).collect::<Vec<_>>(),
        REPLICAS
    );
    for (replica, counts) in &local {
        let expected: Vec<u64> = (1..=counts.len() as u64).collect();
        assert_eq!(counts, &expected, "{replica}");
        assert!((5..=15).contains(&counts.len()), "{local:?}");
    }
    // The metrics say the same, replica by replica.
    for (replica, counts) in &local {
        let scrape = Scrape::of(&cluster, replica).await;
        assert_eq!(
            scrape.value("stickyws_page_visits", &[]),
            counts.len() as f64
        );
    }
    // A sticky visit counts on its replica and in Redis only.
    let page = visit(&cluster, Some("app-2")).await;
    assert_eq!(page.replica, "app-2");
    assert_eq!(page.visits_local, local["app-2"].len() as u64 + 1);
    assert_eq!(page.visits_shared, 31);
    let stats: Value = cluster.get("/api/stats", None).await.json().await.unwrap();
    assert_eq!(stats["shared_visits"], 31, "{stats}");
    // One Redis has no shards: asked for a client's and a room's, the answer names none.
    let stats: Value = cluster
        .get("/api/stats?client_id=abc&channel=public:room", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stats["shard"], Value::Null, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_state_is_whole_only_with_the_cookie_and_shared_state_always() {
    let cluster = TestCluster::start(3);
    let client = cluster.mint().await;

    // With the cookie: one replica, one state, whole.
    let first = note(&cluster, &client, "local", Some("app-2")).await;
    assert_eq!(first["replica"], "app-2");
    assert_eq!(
        (first["hit"].as_bool(), first["rebuilt"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(first["message"], "app-2 had never seen you: state rebuilt");
    for n in 2..=8 {
        let answer = note(&cluster, &client, "local", Some("app-2")).await;
        assert_eq!(answer["hit"], true, "{answer}");
        assert_eq!(notes_of(&answer).len(), n);
    }

    // Without it: every replica holds only the notes that happened to land on it.
    let mut sent: BTreeMap<String, usize> = BTreeMap::from([("app-2".to_owned(), 8)]);
    let mut rebuilt_on = Vec::new();
    for _ in 0..24 {
        let answer = note(&cluster, &client, "local", None).await;
        let replica = answer["replica"].as_str().unwrap().to_owned();
        let count = sent.entry(replica.clone()).or_default();
        *count += 1;
        assert_eq!(notes_of(&answer).len(), *count, "{replica}: {answer}");
        if answer["rebuilt"] == true {
            assert_eq!(
                answer["message"],
                format!("{replica} had never seen you: state rebuilt")
            );
            rebuilt_on.push(replica);
        }
    }
    rebuilt_on.sort();
    assert_eq!(
        rebuilt_on,
        ["app-1", "app-3"],
        "each other replica rebuilt once"
    );
    assert!(sent.values().all(|&n| n < 8 + 24), "{sent:?}");

    // The shared state is whole wherever the request lands.
    for n in 1..=12 {
        let answer = note(&cluster, &client, "shared", None).await;
        assert_eq!(notes_of(&answer).len(), n, "{answer}");
        assert_eq!(answer["hit"], n > 1);
    }

    // Counted per replica: app-1 and app-3 each missed once and rebuilt once.
    for replica in ["app-1", "app-3"] {
        let scrape = Scrape::of(&cluster, replica).await;
        let local = [("store", "local")];
        assert_eq!(scrape.value("stickyws_state_misses", &local), 1.0);
        assert_eq!(scrape.value("stickyws_state_rebuilds", &local), 1.0);
        assert_eq!(
            scrape.value("stickyws_state_hits", &local),
            sent[replica] as f64 - 1.0
        );
    }
    let records = cluster.records();
    for event in ["| cache-hit ", "| cache-miss ", "| rebuild "] {
        assert!(records.contains(event), "no {event} line:\n{records}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ttl_expires_both_copies_of_the_state() {
    let cluster = TestCluster::start_with(1, vec![("STATE_TTL_SECS".into(), "1".into())]);
    let client = cluster.mint().await;
    note(&cluster, &client, "local", None).await;
    note(&cluster, &client, "shared", None).await;
    let kept = note(&cluster, &client, "local", None).await;
    assert_eq!(kept["hit"], true, "within the TTL: {kept}");

    tokio::time::sleep(Duration::from_millis(2200)).await;
    for store in ["local", "shared"] {
        let answer = note(&cluster, &client, store, None).await;
        assert_eq!(answer["rebuilt"], true, "{store} after the TTL: {answer}");
        assert_eq!(notes_of(&answer).len(), 1, "{answer}");
    }
    let scrape = Scrape::of(&cluster, "app-1").await;
    assert_eq!(
        scrape.value("stickyws_state_evictions", &[("cause", "expired")]),
        1.0
    );
    let records = cluster.records();
    assert!(
        records.contains("| evict ") && records.contains("expired: unchanged for 1s"),
        "{records}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_entry_limit_bounds_the_local_cache() {
    const LIMIT: usize = 5;
    let cluster = TestCluster::start_with(1, vec![("STATE_MAX_ENTRIES".into(), "5".into())]);
    let kept_of = async |clients: &[Client]| {
        let mut kept = 0;
        for client in clients {
            let response = cluster
                .http
                .get(format!("{}/api/notes/{}", cluster.base(), client.id))
                .bearer_auth(&client.token)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let answer: Value = response.json().await.unwrap();
            kept += usize::from(answer["local"]["hit"] == true);
            assert_eq!(answer["shared"]["hit"], false, "nothing was added there");
        }
        kept
    };
    let mut clients = Vec::new();
    for _ in 0..LIMIT {
        let client = cluster.mint().await;
        note(&cluster, &client, "local", None).await;
        clients.push(client);
    }
    // Up to the limit, every client's state stays (a scrape runs the cache's pending work, so
    // its count is current).
    let scrape = Scrape::of(&cluster, "app-1").await;
    assert_eq!(scrape.value("stickyws_state_entries", &[]), LIMIT as f64);
    assert_eq!(
        scrape.value("stickyws_state_evictions", &[("cause", "size")]),
        0.0
    );
    assert_eq!(kept_of(&clients).await, LIMIT, "all {LIMIT} still held");
    for _ in LIMIT..30 {
        let client = cluster.mint().await;
        note(&cluster, &client, "local", None).await;
        clients.push(client);
    }
    let scrape = Scrape::of(&cluster, "app-1").await;
    assert!(scrape.value("stickyws_state_entries", &[]) <= LIMIT as f64);
    let evicted = scrape.value("stickyws_state_evictions", &[("cause", "size")]);
    assert!(evicted >= 25.0, "{evicted} evicted");
    // At most 5 clients still have their state; the others are rebuilt.
    let kept = kept_of(&clients).await;
    assert!(kept <= LIMIT, "{kept} kept");
    let records = cluster.records();
    assert!(records.contains("size limit: 5 entries"), "{records}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_state_survives_a_replica_kill_and_local_state_does_not() {
    let mut cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    for _ in 0..5 {
        note(&cluster, &client, "local", Some("app-3")).await;
        note(&cluster, &client, "shared", Some("app-3")).await;
    }
    cluster.replica("app-3").proc.kill();
    let local = note(&cluster, &client, "local", Some("app-3")).await;
    assert_ne!(local["replica"], "app-3", "a backup answers");
    assert_eq!(local["rebuilt"], true);
    assert_eq!(notes_of(&local).len(), 1, "the 5 notes died with app-3");
    let shared = note(&cluster, &client, "shared", Some("app-3")).await;
    assert_eq!(shared["hit"], true);
    assert_eq!(notes_of(&shared).len(), 6, "Redis kept all of them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_says_whether_it_landed_on_the_replica_that_rendered_its_page() {
    let cluster = TestCluster::start(3);
    let page = visit(&cluster, None).await;
    let query = format!("&page={}", page.replica);

    // With the cookie the socket joins its page.
    let joined = cluster
        .connect_query(&page.client, Some(&page.replica), &query)
        .await;
    assert_eq!(joined.replica, page.replica);
    assert_eq!(joined.welcome["same_replica"], true, "{}", joined.welcome);
    assert_eq!(joined.welcome["page_replica"], page.replica.as_str());
    drop(joined);

    // The server forgets the cookie on request.
    let forget = cluster
        .http
        .post(format!("{}/api/sticky/forget", cluster.base()))
        .header("cookie", format!("sticky={}", page.replica))
        .send()
        .await
        .unwrap();
    assert_eq!(forget.status(), StatusCode::OK);
    let cleared = forget.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cleared.starts_with("sticky=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    let forgot: Value = forget.json().await.unwrap();
    assert_eq!(forgot["forgot"], page.replica.as_str());

    // Without it, sockets land round robin: on the page's replica or split from it.
    let mut landed: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..12 {
        let socket: Socket = cluster.connect_query(&page.client, None, &query).await;
        let same = socket.replica == page.replica;
        assert_eq!(socket.welcome["same_replica"], same, "{}", socket.welcome);
        let first_here = !landed.contains_key(&socket.replica);
        // A replica meeting the client for the first time rebuilds its state; the page's
        // replica met it with the first socket.
        let rebuilt = first_here && !same;
        assert_eq!(
            socket.welcome["state"],
            if rebuilt { "rebuilt" } else { "hit" },
            "{}",
            socket.welcome
        );
        *landed.entry(socket.replica.clone()).or_default() += 1;
    }
    assert_eq!(
        landed.keys().map(String::as_str).collect::<Vec<_>>(),
        REPLICAS
    );
    for replica in REPLICAS {
        let scrape = Scrape::of(&cluster, replica).await;
        let here = landed[replica] as f64;
        let (same, other) = if replica == page.replica {
            (here + 1.0, 0.0)
        } else {
            (0.0, here)
        };
        assert_eq!(
            scrape.value("stickyws_socket_landings", &[("page", "same")]),
            same
        );
        assert_eq!(
            scrape.value("stickyws_socket_landings", &[("page", "other")]),
            other
        );
    }
    let records = cluster.records();
    assert!(
        records.contains("(split: page and socket on different replicas)"),
        "{records}"
    );

    // A page name that is not a replica id is refused before the upgrade.
    let status = crate::support::ws::refused_status(
        cluster.base().trim_start_matches("http://"),
        &format!(
            "/ws/{}?token={}&page=%3Cscript%3E",
            page.client.id, page.client.token
        ),
        &[],
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scrape_as_openmetrics_and_move_as_things_happen() {
    let cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let mut socket = cluster.connect(&client, Some("app-1")).await;
    let before = Scrape::of(&cluster, "app-1").await;

    // Every family the lesson needs, with the type Prometheus conventions give its name.
    let families = [
        ("stickyws_sockets", OpenMetricsType::Gauge),
        ("stickyws_messages_delivered", OpenMetricsType::Counter),
        ("stickyws_publishes", OpenMetricsType::Counter),
        (
            "stickyws_publish_to_delivery_seconds",
            OpenMetricsType::Histogram,
        ),
        (
            "stickyws_http_request_duration_seconds",
            OpenMetricsType::Histogram,
        ),
        ("stickyws_broker_reconnects", OpenMetricsType::Counter),
        (
            "stickyws_slow_consumer_disconnects",
            OpenMetricsType::Counter,
        ),
        ("stickyws_state_hits", OpenMetricsType::Counter),
        ("stickyws_state_misses", OpenMetricsType::Counter),
        ("stickyws_state_rebuilds", OpenMetricsType::Counter),
        ("stickyws_state_evictions", OpenMetricsType::Counter),
        ("stickyws_page_visits", OpenMetricsType::Counter),
        ("stickyws_shared_page_visits", OpenMetricsType::Gauge),
        ("stickyws_socket_landings", OpenMetricsType::Counter),
        ("process_resident_memory_bytes", OpenMetricsType::Gauge),
        ("process_open_fds", OpenMetricsType::Gauge),
    ];
    for (family, kind) in families {
        assert_eq!(before.kind(family), kind, "{family}");
    }
    assert_eq!(before.value("stickyws_sockets", &[]), 1.0);
    assert!(before.value("process_resident_memory_bytes", &[]) > 1e6);

    // Five publishes, each through some replica, all delivered by app-1.
    for i in 0..5 {
        let (status, body) = cluster
            .call("publish", &client, None, &format!("m{i}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let frame = socket.next_json().await;
        assert_eq!(frame["text"], format!("m{i}"));
    }
    note(&cluster, &client, "local", Some("app-1")).await;
    let after = Scrape::of(&cluster, "app-1").await;
    let moved = |family: &str, labels: &[(&str, &str)]| {
        after.value(family, labels) - before.value(family, labels)
    };
    let publish = [("via", "publish")];
    assert_eq!(moved("stickyws_messages_delivered", &publish), 5.0);
    assert_eq!(moved("stickyws_publish_to_delivery_seconds", &publish), 5.0);
    // The socket's landing already started the client's local state; the note found it.
    let local = [("store", "local")];
    assert_eq!(before.value("stickyws_state_rebuilds", &local), 1.0);
    assert_eq!(moved("stickyws_state_hits", &local), 1.0);
    let route = [("route", "/api/notes/{client_id}/local"), ("status", "2xx")];
    assert_eq!(moved("stickyws_http_request_duration_seconds", &route), 1.0);

    // Histogram buckets are cumulative and end in +Inf = count.
    let family = &after.0.families["stickyws_publish_to_delivery_seconds"];
    for sample in family.iter_samples() {
        let OpenMetricsValue::Histogram(h) = &sample.value else {
            panic!("not a histogram")
        };
        let counts: Vec<f64> = h.buckets.iter().map(|b| b.count.as_f64()).collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
        let last = h.buckets.last().unwrap();
        assert!(last.upper_bound.is_infinite());
        assert_eq!(last.count.as_f64(), h.count.unwrap() as f64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_endpoints_refuse_bad_input_and_keep_notes_bounded() {
    let cluster = TestCluster::start(1);
    let client = cluster.mint().await;
    let other = cluster.mint().await;
    let path = format!("/api/notes/{}/local", client.id);
    let cases: Vec<(&str, Option<&str>, String, StatusCode, &str)> = vec![
        (
            "no token",
            None,
            r#"{"text":"n"}"#.into(),
            StatusCode::UNAUTHORIZED,
            "missing_token",
        ),
        (
            "another client's token",
            Some(&other.token),
            r#"{"text":"n"}"#.into(),
            StatusCode::UNAUTHORIZED,
            "bad_token",
        ),
        (
            "a note over 200 bytes",
            Some(&client.token),
            format!(r#"{{"text":"{}"}}"#, "x".repeat(201)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "note_too_long",
        ),
        (
            "a blank note",
            Some(&client.token),
            r#"{"text":"  "}"#.into(),
            StatusCode::BAD_REQUEST,
            "empty_note",
        ),
        (
            "not JSON",
            Some(&client.token),
            "text=n".into(),
            StatusCode::BAD_REQUEST,
            "bad_body",
        ),
        (
            "a body over the limit",
            Some(&client.token),
            format!(r#"{{"text":"{}"}}"#, "x".repeat(20_000)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
    ];
    for (what, token, body, status, code) in cases {
        let (got, answer) = cluster.post(&path, token, None, &body).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{what}: {answer}"
        );
    }
    let (status, answer) = cluster
        .post(
            "/api/notes/not%20an%20id/local",
            Some(&client.token),
            None,
            r#"{"text":"n"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    for (method, path) in [
        (reqwest::Method::GET, path.as_str()),
        (reqwest::Method::GET, "/api/sticky/forget"),
        (reqwest::Method::POST, "/api/stats"),
    ] {
        let response = cluster
            .http
            .request(method.clone(), format!("{}{path}", cluster.base()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
    }
    // Nothing refused was kept, and a client's notes never grow past MAX_NOTES (20).
    for n in 0..25 {
        let (status, answer) = cluster
            .post(
                &path,
                Some(&client.token),
                None,
                &format!(r#"{{"text":"n{n}"}}"#),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        if n == 0 {
            assert_eq!(answer["notes"], serde_json::json!(["n0"]));
        }
        if n == 24 {
            let kept = notes_of(&answer);
            assert_eq!(kept.len(), 20);
            assert_eq!((kept[0].as_str(), kept[19].as_str()), ("n5", "n24"));
        }
    }
}
