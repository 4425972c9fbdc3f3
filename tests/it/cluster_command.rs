//! `stickyws cluster`: starts the topology, serves the page through nginx, and leaves nothing
//! behind when stopped — by SIGTERM, or by its own sudden death.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::process::Proc;

/// PIDs whose parent is `pid`, from /proc.
pub(crate) fn children_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // The fields after the command name, which is in parentheses and may hold spaces.
        let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) && fields[0] != "Z" {
            found.push(child);
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Starts `stickyws cluster` and waits for the URL it prints.
fn start(dir: &std::path::Path) -> (Proc, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stickyws"));
    command
        .args([
            "cluster",
            "--port",
            "0",
            "--nginx-conf",
            concat!(env!("CARGO_MANIFEST_DIR"), "/nginx.conf"),
        ])
        .arg("--records-log")
        .arg(dir.join("records.log"))
        .arg("--logs-dir")
        .arg(dir.join("logs"));
    let proc = Proc::spawn("cluster", &mut command, dir);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(dir.join("cluster.log")).unwrap_or_default();
        if let Some(url) = log.lines().find_map(|l| l.split("open ").nth(1)) {
            return (proc, url.trim().trim_end_matches('/').to_owned());
        }
        assert!(
            Instant::now() < deadline,
            "cluster did not print its URL\n{}",
            proc.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn wait_all_gone(pids: &[u32], limit: Duration) -> Vec<u32> {
    let deadline = Instant::now() + limit;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_serves_the_page_and_sigterm_stops_every_child() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, url) = start(dir.path());
    let page = reqwest::get(format!("{url}/")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("sticky=app-")
    );
    let children = children_of(cluster.pid());
    assert_eq!(
        children.len(),
        5,
        "redis, three replicas, nginx: {children:?}\n{}",
        cluster.log_tail()
    );

    let status = cluster.signal_and_wait(Signal::SIGTERM, Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        cluster.log_tail()
    );
    assert_eq!(
        wait_all_gone(&children, Duration::from_secs(5)),
        Vec::<u32>::new(),
        "children outlived the cluster"
    );
    let records = std::fs::read_to_string(dir.path().join("records.log")).unwrap();
    for replica in ["app-1", "app-2", "app-3"] {
        assert!(
            records.contains(&format!("| {replica} | stop ")),
            "{replica} drained\n{records}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_die_with_a_killed_cluster() {
    // Without setpriv the cluster cannot give its children a parent-death signal, which is
    // what this test checks: a missing setpriv is a failure, not a pass.
    if let Err(missing) = stickyws::ops::host::find("setpriv", "util-linux", None) {
        panic!("{missing} (the parent-death signal needs it; scripts/install-deps installs it)");
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, _) = start(dir.path());
    let children = children_of(cluster.pid());
    assert_eq!(children.len(), 5, "{children:?}");
    // Only the cluster process itself (its children share its process group, which
    // `Proc::kill` would take down too).
    let status = cluster.signal_and_wait(Signal::SIGKILL, Duration::from_secs(5));
    assert!(status.is_some(), "the cluster did not die");
    assert_eq!(
        wait_all_gone(&children, Duration::from_secs(15)),
        Vec::<u32>::new(),
        "orphans left behind"
    );
}

#[test]
fn a_missing_nginx_conf_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_stickyws"))
        .args([
            "cluster",
            "--port",
            "0",
            "--nginx-conf",
            "/nonexistent/nginx.conf",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/nginx.conf"), "{stderr}");
}
