//! `WORKERS=3`: one replica address, three processes behind it. The kernel spreads connections
//! over the workers; in-memory delivery reaches a socket only when the request lands on its
//! worker, while publish through Redis always arrives. A worker that dies comes back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::StatusCode;

use crate::support::{ReplicaProc, TestCluster, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_a_port_and_a_cookie_cannot_tell_them_apart() {
    let mut cluster = TestCluster::start(0);
    cluster
        .env
        .extra
        .push(("WORKERS".to_owned(), "3".to_owned()));
    let replica = ReplicaProc::start("box", free_port(), &cluster.env, cluster.dir.path());
    let base = format!("http://{}", replica.addr);
    cluster.replicas.push(replica);
    cluster.nginx = None;
    // A new connection per request, as many browsers behind one address would make.
    cluster.http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    // Wait until all three workers answer.
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = loop {
        if let Ok(response) = cluster
            .http
            .post(format!("{base}/api/clients"))
            .send()
            .await
            && response.status() == StatusCode::OK
        {
            break response.json::<serde_json::Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "workers did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let client = crate::support::Client {
        id: client["client_id"].as_str().unwrap().to_owned(),
        token: client["token"].as_str().unwrap().to_owned(),
    };
    let mut socket = cluster.connect(&client, None).await;
    assert!(socket.replica.starts_with("box.w"), "{}", socket.replica);

    let mut took = BTreeMap::<String, usize>::new();
    let mut delivered = 0;
    for i in 0..60 {
        let (status, body) = cluster
            .call("direct", &client, Some("box"), &format!("d {i}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let worker = body["replica"].as_str().unwrap().to_owned();
        let reached = body["delivered"].as_u64().unwrap();
        assert_eq!(
            reached,
            u64::from(worker == socket.replica),
            "{worker} vs {}",
            socket.replica
        );
        delivered += reached;
        *took.entry(worker).or_default() += 1;
    }
    assert_eq!(
        took.len(),
        3,
        "connections spread over every worker: {took:?}"
    );
    // About a third; 60 requests over 3 workers put between 5 and 40 on the socket's worker.
    assert!((5..=40).contains(&delivered), "{delivered} of 60, {took:?}");
    assert_eq!(
        socket.drain(Duration::from_millis(300)).await.len() as u64,
        delivered
    );
    for i in 0..10 {
        let (_, body) = cluster
            .call("publish", &client, Some("box"), &format!("p {i}"))
            .await;
        assert_eq!(body["receivers"], 1);
        assert_eq!(
            socket.next_json().await["text"],
            format!("p {i}"),
            "publish always arrives"
        );
    }
    eprintln!("workers: direct delivered {delivered} of 60; requests by worker {took:?}");

    // A worker that dies is restarted, under the same name.
    let supervisor = cluster.replicas[0].proc.pid();
    let workers = crate::cluster_command::children_of(supervisor);
    assert_eq!(workers.len(), 3, "{workers:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(workers[0] as i32),
        Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = crate::cluster_command::children_of(supervisor);
        if now.len() == 3 && !now.contains(&workers[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "worker not restarted: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut answering = std::collections::BTreeSet::new();
    while answering.len() < 3 && Instant::now() < deadline {
        if let Ok(response) = cluster
            .http
            .post(format!("{base}/api/clients"))
            .send()
            .await
            && let Ok(body) = response.json::<serde_json::Value>().await
        {
            answering.insert(body["replica"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(
        answering.len(),
        3,
        "all three workers answer again: {answering:?}"
    );

    // SIGTERM to the supervisor reaches every worker, and it exits cleanly.
    let status = cluster.replicas[0]
        .proc
        .signal_and_wait(Signal::SIGTERM, Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let records = cluster.records();
    for w in 1..=3 {
        assert!(
            records.contains(&format!("| box.w{w} | stop ")),
            "box.w{w} stopped\n{records}"
        );
    }
}
