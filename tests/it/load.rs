//! `stickyws load` against a real three-replica cluster: small bounded runs of each scenario,
//! checked the way a user reads the results — through the JSON lines the tool writes.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::{API_KEY, TestCluster};

/// Runs `stickyws load <args>` with `--json`, and returns every JSON line it wrote.
fn load(cluster: &TestCluster, dir: &Path, args: &[&str]) -> Vec<Value> {
    let json = dir.join(format!("{}.jsonl", args[0]));
    let json_arg = json.to_string_lossy();
    let mut all = args.to_vec();
    all.extend(["--timeout", "20", "--json", &json_arg]);
    run_load(cluster, &all);
    let text = std::fs::read_to_string(&json).unwrap();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// Runs `stickyws load <args> --url <the cluster>`, asserts it succeeded, returns its stdout.
fn run_load(cluster: &TestCluster, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_stickyws"))
        .arg("load")
        .args(args)
        .args(["--url", &cluster.base()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "load {args:?} failed\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn summary(lines: &[Value]) -> &Value {
    lines
        .iter()
        .find(|l| l["type"] == "summary")
        .expect("a summary line")
}

fn replica_pids(cluster: &TestCluster) -> String {
    cluster
        .replicas
        .iter()
        .map(|r| r.proc.pid().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn targeted_publishes_all_arrive_once_at_their_client() {
    let cluster = TestCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let plots = dir.path().join("plots");
    let pids = replica_pids(&cluster);
    let lines = load(
        &cluster,
        dir.path(),
        &[
            "targeted",
            "--sockets",
            "20",
            "--messages",
            "300",
            "--server-pids",
            &pids,
            "--plots",
            plots.to_str().unwrap(),
        ],
    );
    let s = summary(&lines);
    assert_eq!(s["sockets"], 20, "{s}");
    assert_eq!(s["sent"], 300, "{s}");
    assert_eq!(s["accepted"], 300, "{s}");
    assert_eq!(s["delivered"], 300, "{s}");
    assert_eq!(s["lost"], 0, "{s}");
    assert_eq!(s["duplicates"], 0, "{s}");
    assert_eq!(s["misdelivered"], 0, "{s}");
    assert!(s["latency"]["p99_ms"].as_f64().unwrap() > 0.0, "{s}");
    assert!(s["cpu"]["total_ms"].is_number(), "{s}");
    assert!(lines.iter().any(|l| l["type"] == "second"));
    for plot in ["latency-cdf", "throughput", "sockets"] {
        let svg = std::fs::read_to_string(plots.join(format!("targeted-{plot}.svg"))).unwrap();
        assert!(svg.starts_with("<svg"), "{plot}");
    }
}

#[test]
fn sticky_cookie_makes_direct_delivery_certain() {
    let cluster = TestCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let lines = load(
        &cluster,
        dir.path(),
        &["sticky", "--sockets", "6", "--messages", "90"],
    );
    let s = summary(&lines);
    let with = &s["modes"]["with_cookie"];
    let without = &s["modes"]["without_cookie"];
    assert_eq!(with["requests"], 90, "{s}");
    assert_eq!(with["success_percent"], 100.0, "{s}");
    assert_eq!(with["broken_promises"], 0, "{s}");
    // Round robin over 3 replicas lands on the socket's replica about 1 time in 3.
    let without_pct = without["success_percent"].as_f64().unwrap();
    assert!((10.0..=60.0).contains(&without_pct), "{s}");
    assert_eq!(without["broken_promises"], 0, "{s}");
    assert_eq!(
        without["by_replica"].as_object().unwrap().len(),
        3,
        "requests without the cookie reach every replica: {s}"
    );
    assert_eq!(s["misdelivered"], 0, "{s}");
}

#[test]
fn connect_opens_every_socket_and_the_replicas_count_them() {
    let cluster = TestCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let lines = load(
        &cluster,
        dir.path(),
        &["connect", "--sockets", "60", "--hold", "0.3"],
    );
    let s = summary(&lines);
    assert_eq!(s["opened"], 60, "{s}");
    assert_eq!(s["failures"], 0, "{s}");
    assert_eq!(s["still_open"], 60, "{s}");
    assert_eq!(
        s["metrics_sockets"], 60,
        "per-replica /metrics sum to N: {s}"
    );
    assert_eq!(s["metrics_by_replica"].as_object().unwrap().len(), 3, "{s}");
    let replicas: Vec<&Value> = lines.iter().filter(|l| l["type"] == "replica").collect();
    assert_eq!(replicas.len(), 3);
    assert!(s["welcome"]["p50_ms"].as_f64().unwrap() > 0.0, "{s}");
}

#[test]
fn broadcast_reaches_every_socket_once() {
    let cluster = TestCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let lines = load(
        &cluster,
        dir.path(),
        &[
            "broadcast",
            "--sockets",
            "12",
            "--messages",
            "25",
            "--api-key",
            API_KEY,
        ],
    );
    let s = summary(&lines);
    assert_eq!(s["accepted"], 25, "{s}");
    assert_eq!(s["expected"], 300, "{s}");
    assert_eq!(s["delivered"], 300, "{s}");
    assert_eq!(s["lost"], 0, "{s}");
    assert_eq!(s["duplicates"], 0, "{s}");
}

#[test]
fn failover_clients_of_a_killed_replica_come_back_and_nothing_is_lost() {
    let mut cluster = TestCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let victim = cluster.replica("app-2").proc.pid().to_string();
    let lines = load(
        &cluster,
        dir.path(),
        &[
            "failover",
            "--sockets",
            "12",
            "--messages",
            "600",
            "--rate",
            "400",
            "--kill-pid",
            &victim,
            "--fault-after",
            "0.4",
        ],
    );
    let s = summary(&lines);
    assert!(s["sockets_closed"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["closed_on"].as_object().unwrap().len(), 1, "{s}");
    assert!(s["closed_on"]["app-2"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["never_back"], 0, "{s}");
    assert_eq!(s["lost"], 0, "history replay covers the outage: {s}");
    assert_eq!(
        s["duplicates"], 0,
        "a replay resends only what was missed: {s}"
    );
    // The killed replica's clients wait for a publish before reconnecting, so there is always
    // something to replay: without it, "lost 0" would prove nothing.
    assert!(s["replayed"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["misdelivered"], 0, "{s}");
}

#[test]
fn the_tour_presses_every_button_and_every_promise_holds() {
    let cluster = TestCluster::start(3);
    let stdout = run_load(&cluster, &["tour", "--count", "6", "--timeout", "60"]);
    assert!(stdout.contains("every button kept its promise"), "{stdout}");
    // A heading that fits every row, then nine rows: the page's six buttons and the state
    // lab's three checks, each pressed 6 times, each saying what its count counts.
    assert!(
        stdout.lines().any(|l| l.starts_with("what was pressed")
            && l.contains("what came back")
            && !l.contains("delivered")),
        "{stdout}"
    );
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("button ") || l.starts_with("state lab · "))
        .collect();
    assert_eq!(rows.len(), 9, "{stdout}");
    let row = |starts: &str| {
        *rows
            .iter()
            .find(|r| r.starts_with(starts))
            .unwrap_or_else(|| panic!("no row {starts}\n{stdout}"))
    };
    // The HTTP buttons answer over HTTP, all six: no "delivered 0" beside them.
    for button in ["button 1 ", "button 2 "] {
        assert!(
            row(button).contains(" 6   6 answered over HTTP"),
            "{stdout}"
        );
    }
    assert!(
        row("button 3 ").contains(" 6   6 echoed on the socket"),
        "{stdout}"
    );
    assert!(
        row("button 4 ").contains(" 6   6 arrived on the socket"),
        "{stdout}"
    );
    assert!(
        row("button 6 ").contains(" 6   6 arrived on the socket"),
        "{stdout}"
    );
    let shared = row("state lab · shared notes");
    assert!(
        shared.contains(" 6   6 answers held every note"),
        "{shared}"
    );
    let records = cluster.records();
    for event in ["| rebuild ", "| cache-hit ", "| cache-miss "] {
        assert!(records.contains(event), "{event}");
    }
}

#[test]
fn channel_publishes_reach_every_subscriber_once_on_every_replica() {
    let cluster = TestCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let pids = replica_pids(&cluster);
    // Spread: 9 subscribers over 3 channels, through nginx onto all three replicas.
    let lines = load(
        &cluster,
        dir.path(),
        &[
            "channel",
            "--sockets",
            "9",
            "--channels",
            "3",
            "--messages",
            "30",
            "--api-key",
            API_KEY,
            "--server-pids",
            &pids,
            "--idle",
            "0.2",
        ],
    );
    let s = summary(&lines);
    assert_eq!(s["sockets"], 9, "{s}");
    assert_eq!(s["accepted"], 30, "{s}");
    // Each publish is due at the 3 subscribers of its channel.
    assert_eq!(s["expected"], 90, "{s}");
    assert_eq!(s["delivered"], 90, "{s}");
    assert_eq!(s["lost"], 0, "{s}");
    assert_eq!(s["duplicates"], 0, "{s}");
    assert_eq!(s["misdelivered"], 0, "{s}");
    assert_eq!(
        s["sockets_by_replica"].as_object().unwrap().len(),
        3,
        "the subscribers spread over the replicas: {s}"
    );
    assert!(s["latency"]["p99_ms"].as_f64().unwrap() > 0.0, "{s}");
    assert_eq!(s["processes"].as_array().unwrap().len(), 3, "{s}");

    // Pinned: every subscriber on one replica, so only it subscribes in Redis.
    let dir = tempfile::tempdir().unwrap();
    let lines = load(
        &cluster,
        dir.path(),
        &[
            "channel",
            "--sockets",
            "4",
            "--messages",
            "20",
            "--on-one-replica",
            "--api-key",
            API_KEY,
            "--server-pids",
            &pids,
            "--idle",
            "0.2",
        ],
    );
    let s = summary(&lines);
    assert_eq!(s["delivered"], 80, "{s}");
    assert_eq!(s["lost"], 0, "{s}");
    assert_eq!(s["sockets_by_replica"]["app-1"], 4, "{s}");
    assert_eq!(
        s["numsub"]["max"], 1,
        "Redis counts one subscribing replica: {s}"
    );
    assert_eq!(s["receivers"]["max"], 1, "{s}");
}

#[test]
fn jitter_resets_every_socket_and_the_resume_delivers_everything_once() {
    let cluster = TestCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    // 12 clients, 60 broadcasts over 3 s; each socket reset about every 1 s and offline about
    // 0.3 s, so every socket misses messages and must get them back from its cursor.
    let lines = load(
        &cluster,
        dir.path(),
        &[
            "jitter",
            "--clients",
            "12",
            "--messages",
            "60",
            "--rate",
            "20",
            "--jitter-every",
            "1",
            "--offline",
            "0.3",
            "--api-key",
            API_KEY,
        ],
    );
    let s = summary(&lines);
    assert_eq!(s["sockets"], 12, "{s}");
    assert_eq!(s["accepted"], 60, "{s}");
    assert!(s["jitter"]["drops"].as_u64().unwrap() >= 12, "{s}");
    assert_eq!(s["never_back"], 0, "{s}");
    // Without the cursors on the reconnect the server replays from the start (duplicates), and
    // without replay the drops lose messages: either fails here (and the tool exits non-zero).
    assert_eq!(s["expected"], 720, "{s}");
    assert_eq!(s["delivered"], 720, "{s}");
    assert_eq!(s["delivery_percent"], 100.0, "{s}");
    assert_eq!(s["duplicates"], 0, "{s}");
    // Something was replayed, so "100 %" means the resume worked, not that nothing was missed.
    assert!(s["replayed"].as_u64().unwrap() > 0, "{s}");
    assert!(s["catch_up"]["samples"].as_u64().unwrap() > 0, "{s}");
}

/// `stickyws load <scenario> --help`, or with `args`: (success, stdout, stderr).
fn load_cli(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_stickyws"))
        .arg("load")
        .args(args)
        .env_remove("API_KEY")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn each_scenarios_help_shows_only_its_own_options() {
    // (scenario, options its help shows, options of other scenarios it must not show)
    let cases = [
        (
            "tour",
            &["--url", "--count", "--timeout"][..],
            &[
                "--sockets",
                "--messages",
                "--api-key",
                "--jitter-every",
                "--kill-pid",
            ][..],
        ),
        (
            "targeted",
            &[
                "--url",
                "--sockets",
                "--messages",
                "--rate",
                "--api-key",
                "--json",
            ][..],
            &[
                "--count",
                "--jitter-every",
                "--kill-pid",
                "--channels",
                "--hold",
            ][..],
        ),
        (
            "jitter",
            &["--sockets", "--jitter-every", "--offline"][..],
            &["--count", "--kill-pid", "--channels", "--hold"][..],
        ),
        (
            "channel",
            &["--channels", "--on-one-replica", "--redis-url"][..],
            &["--count", "--jitter-every", "--kill-pid", "--hold"][..],
        ),
    ];
    for (scenario, shown, hidden) in cases {
        let (ok, help, stderr) = load_cli(&[scenario, "--help"]);
        assert!(ok, "{scenario} --help failed: {stderr}");
        let flags: Vec<&str> = help
            .split_whitespace()
            .filter(|w| w.starts_with("--"))
            .collect();
        for flag in shown {
            assert!(
                flags.contains(flag),
                "{scenario} --help lacks {flag}\n{help}"
            );
        }
        for flag in hidden {
            assert!(
                !flags.contains(flag),
                "{scenario} --help shows {flag}\n{help}"
            );
        }
    }
    // The overview lists the scenarios; another scenario's flag is refused, naming the help.
    let (_, overview, _) = load_cli(&["--help"]);
    for scenario in ["tour", "targeted", "channel", "avalanche"] {
        assert!(overview.contains(&format!("  {scenario} ")), "{overview}");
    }
    let (ok, _, stderr) = load_cli(&["tour", "--sockets", "3"]);
    assert!(!ok);
    assert!(
        stderr.contains("--sockets is not an option of `tour`")
            && stderr.contains("stickyws load tour --help"),
        "{stderr}"
    );
}

#[test]
fn minting_sends_the_api_key_so_a_mint_limit_does_not_stop_a_run() {
    // Two new clients a second per address (a burst of four): a run minting 30 from one
    // address is refused most of them, unless it mints with the API key.
    let cluster = TestCluster::start_with(2, vec![("MINT_RATE".to_owned(), "2".to_owned())]);
    let dir = tempfile::tempdir().unwrap();
    let connect = ["connect", "--sockets", "30", "--hold", "0.1"];

    let with_key = [&connect[..], &["--api-key", API_KEY]].concat();
    let lines = load(&cluster, dir.path(), &with_key);
    let s = summary(&lines);
    assert_eq!(s["opened"], 30, "{s}");
    assert_eq!(s["failures"], 0, "{s}");

    let without = dir.path().join("without");
    std::fs::create_dir(&without).unwrap();
    let lines = load(&cluster, &without, &connect);
    let s = summary(&lines);
    assert!(
        s["opened"].as_u64().unwrap() < 30,
        "the limit holds without the key: {s}"
    );
}
