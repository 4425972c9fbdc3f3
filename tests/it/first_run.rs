//! What a newcomer meets in the first minutes: a mistake in the configuration or a busy port is
//! one readable line (with `RUST_BACKTRACE=1` in the environment too), for `serve` and for
//! `cluster`; process logs written to a file are plain text; a `REDIS_URL` that points at
//! nothing is said out loud while the rest keeps working; every answer through nginx says which
//! replica gave it; and `scripts/demo` shows its build and hands its arguments to the cluster.

use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{
    API_KEY, ReplicaEnv, ReplicaProc, TestCluster, free_port, sample, servers::loopback,
};

/// Runs `stickyws serve` with `env` (and `RUST_BACKTRACE=1`) until it exits, within 15 s;
/// returns (success, stderr).
fn serve_and_fail(env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_stickyws"));
    command
        .arg("serve")
        .env_clear()
        .env("RUST_BACKTRACE", "1")
        .env("STICKY_SECRET", "test-secret-0123456789abcdef")
        .env("RECORDS_LOG", dir.path().join("records.log"))
        .envs(env.iter().copied());
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = exit_within(
        &mut child,
        Duration::from_secs(15),
        &format!("stickyws serve with {env:?}"),
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.success(), stderr)
}

#[test]
fn config_and_start_up_errors_are_one_line_whatever_rust_backtrace_says() {
    // A port that is taken, held for the whole test.
    let busy = std::net::TcpListener::bind(loopback(0)).unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    // (what is wrong, the environment, what the error line names)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        ("unparsable BIND", vec![("BIND", "nonsense")], "nonsense"),
        ("bad APP_ID", vec![("APP_ID", "bad id")], "APP_ID"),
        ("WORKERS=0", vec![("WORKERS", "0")], "WORKERS"),
        (
            "short secret",
            vec![("STICKY_SECRET", "short")],
            "STICKY_SECRET",
        ),
        (
            "busy port",
            vec![("BIND", busy_addr.as_str())],
            "Address already in use",
        ),
        (
            "records log in a missing folder",
            vec![
                ("BIND", "127.0.0.1:0"),
                ("RECORDS_LOG", "/nonexistent-stickyws/records.log"),
            ],
            "records log",
        ),
    ];
    for (what, env, says) in cases {
        let (ok, stderr) = serve_and_fail(&env);
        assert!(!ok, "{what}: exited successfully\n{stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{what}: one `error:` line\n{stderr}");
        assert!(errors[0].contains(says), "{what}: names {says:?}\n{stderr}");
        assert!(
            !stderr.contains("backtrace") && !stderr.contains("Caused by"),
            "{what}: no backtrace, no multi-line chain\n{stderr}"
        );
        // clap's usage errors add a blank line and a `--help` hint; nothing longer.
        assert!(
            stderr.lines().count() <= 3,
            "{what}: short stderr\n{stderr}"
        );
    }
    drop(busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_logs_written_to_a_file_are_plain_text() {
    let cluster = TestCluster::single();
    // A warning and a debug line at least: the page render and the socket.
    let client = cluster.mint().await;
    let mut socket = cluster.connect(&client, None).await;
    socket.assert_echo("hi").await;
    let log = cluster.replicas[0].proc.log_tail();
    assert!(log.contains("replica started"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "ANSI escape codes in a log file:\n{log:?}"
    );
}

/// A replica whose `REDIS_URL` names a port nothing listens on, as a [`TestCluster`] with no
/// Redis and no nginx, so its helpers can drive it.
fn replica_without_its_redis() -> (TestCluster, String) {
    let dir = tempfile::tempdir().unwrap();
    let dead = format!("127.0.0.1:{}", free_port());
    let env = ReplicaEnv {
        redis_url: Some(format!("redis://{dead}")),
        secret: "test-secret-0123456789abcdef".to_owned(),
        api_key: API_KEY.to_owned(),
        records_log: dir
            .path()
            .join("records.log")
            .to_string_lossy()
            .into_owned(),
        extra: Vec::new(),
    };
    let replica = ReplicaProc::start("lonely", free_port(), &env, dir.path());
    let cluster = TestCluster {
        dir,
        redis: None,
        replicas: vec![replica],
        nginx: None,
        env,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    };
    (cluster, dead)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_is_warned_about_and_the_rest_keeps_serving() {
    let (cluster, dead) = replica_without_its_redis();

    // Said at start-up, in the process log and in the records log, naming the address.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = cluster.replicas[0].proc.log_tail();
        let records = cluster.records();
        let warned = log
            .lines()
            .any(|l| l.contains("WARN") && l.contains("cannot reach redis") && l.contains(&dead));
        let recorded = records.lines().any(|l| {
            l.contains("| broker-lost") && l.contains("unreachable at start") && l.contains(&dead)
        });
        if warned && recorded {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no warning about {dead} (warned {warned}, recorded {recorded})\n{log}\n{records}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Not ready, but alive.
    let ready = cluster.get("/readyz", None).await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["broker_ready"], false, "{ready}");
    assert_eq!(cluster.get("/healthz", None).await.status(), StatusCode::OK);

    // What needs no broker works: the page, minting, echo, a socket and its echo, direct.
    assert_eq!(cluster.get("/", None).await.status(), StatusCode::OK);
    let client = cluster.mint().await;
    let (status, body) = cluster.call("echo", &client, None, "over http").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["text"], "over http", "{body}");
    let mut socket = cluster.connect(&client, None).await;
    socket.assert_echo("over the socket").await;
    let (status, body) = cluster.call("direct", &client, None, "direct").await;
    assert_eq!(
        (status, &body["delivered"]),
        (StatusCode::OK, &1.into()),
        "{body}"
    );
    let frame = socket.next_non_presence().await;
    assert_eq!(
        (frame["via"].as_str(), frame["text"].as_str()),
        (Some("direct"), Some("direct"))
    );

    // What needs it says so.
    let (status, body) = cluster.call("publish", &client, None, "publish").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let metrics = cluster.metrics(None).await;
    assert_eq!(sample(&metrics, "stickyws_broker_up"), 0.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_through_nginx_names_the_replica_that_gave_it() {
    let cluster = TestCluster::start(2);
    let named = |response: &reqwest::Response| -> String {
        response
            .headers()
            .get("x-replica")
            .unwrap_or_else(|| panic!("no X-Replica on {}", response.url()))
            .to_str()
            .unwrap()
            .to_owned()
    };

    // Two scrapes without a cookie go round robin: each says which replica it is, in the
    // header and in the exposition, and the two agree.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let response = cluster.get("/metrics", None).await;
        let header = named(&response);
        let text = response.text().await.unwrap();
        let series = format!("stickyws_replica_info{{replica=\"{header}\"}}");
        assert_eq!(sample(&text, &series), 1.0, "{series} in\n{text}");
        assert_eq!(
            text.matches("stickyws_replica_info{").count(),
            1,
            "one replica per scrape\n{text}"
        );
        seen.push(header);
    }
    seen.sort();
    assert_eq!(seen, ["app-1", "app-2"], "round robin over both replicas");

    // With a cookie, the named replica, on /metrics, /api/stats and even a 404.
    for replica in ["app-1", "app-2"] {
        for path in ["/metrics", "/api/stats", "/readyz", "/no-such-page"] {
            let response = cluster.get(path, Some(replica)).await;
            assert_eq!(named(&response), replica, "{path}");
        }
    }
}

/// `scripts/demo`, run with a stand-in `cargo` first on `PATH` that writes down how it was
/// called (the real one would spend minutes on a release build): what the script asks cargo
/// for, and what it says meanwhile.
#[test]
fn the_demo_shows_its_build_and_passes_its_arguments_to_the_cluster() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("calls");
    let cargo = dir.path().join("cargo");
    std::fs::write(
        &cargo,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\necho '   Compiling stickyws (stand-in)' >&2\n",
            calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo"))
        .args(["--port", "8080"])
        .env("PATH", path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let calls = std::fs::read_to_string(&calls).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    let build = calls
        .iter()
        .find(|c| c.starts_with("build"))
        .unwrap_or_else(|| panic!("no cargo build in {calls:?}"));
    // cargo's own progress gets through: no --quiet on the build that takes minutes.
    assert!(
        !build.split(' ').any(|a| a == "--quiet" || a == "-q"),
        "{build}"
    );
    assert!(
        build.contains("stickyws-load"),
        "the load tool too: {build}"
    );
    assert!(
        stderr.contains("demo: building"),
        "says what it builds:\n{stderr}"
    );
    assert!(
        stderr.contains("Compiling"),
        "cargo's output shows:\n{stderr}"
    );
    let run = calls.last().unwrap();
    assert!(
        run.ends_with("cluster --port 8080"),
        "arguments reach the cluster: {run}"
    );
}

#[test]
fn the_cluster_on_a_busy_port_fails_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind(loopback(0)).unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stickyws"))
        .args(["cluster", "--port", &port, "--nginx-conf"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/nginx.conf"))
        .arg("--records-log")
        .arg(dir.path().join("records.log"))
        .env("RUST_BACKTRACE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = exit_within(
        &mut child,
        Duration::from_secs(60),
        &format!("the cluster on busy port {port}"),
    );
    let output = child.wait_with_output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!status.success(), "{all}");
    let errors: Vec<&str> = all.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one `error:` line\n{all}");
    assert_eq!(
        errors[0],
        format!("error: port {port} is in use; pass --port N (e.g. scripts/demo --port 8080)"),
        "names the port and the way out\n{all}"
    );
    assert!(!all.contains("backtrace"), "no backtrace\n{all}");
    drop(busy);
}

/// The child's exit status once it exits; killed (and the test failed) if it has not within
/// `limit`.
fn exit_within(
    child: &mut std::process::Child,
    limit: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
