//! `GET /api/records/{client_id}` through nginx: a client reads the records log lines that
//! name it and no others, only with its own token, only the log's tail however large the file
//! has grown, and a clear 404 where the log is off.

use std::io::Write;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{Client, TestCluster};

async fn records(cluster: &TestCluster, id: &str, bearer: Option<&str>) -> (StatusCode, Value) {
    let mut request = cluster
        .http
        .get(format!("{}/api/records/{id}", cluster.base()));
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn lines(body: &Value) -> Vec<String> {
    body["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("no lines: {body}"))
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_client_reads_only_its_own_lines_with_its_own_token() {
    let cluster = TestCluster::start(2);
    let (me, other): (Client, Client) = (cluster.mint().await, cluster.mint().await);
    for client in [&me, &other] {
        let (status, body) = cluster.call("echo", client, None, "hello").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // The log is written by a thread of each replica: wait for both echoes to be there.
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster.records().matches("http-echo").count() < 2 {
        assert!(Instant::now() < deadline, "{}", cluster.records());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (status, body) = records(&cluster, &me.id, Some(&me.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mine = lines(&body);
    assert!(mine.iter().any(|l| l.contains("| http-echo")), "{mine:#?}");
    for line in &mine {
        assert_eq!(
            line.split(" | ").nth(3).map(str::trim),
            Some(me.id.as_str()),
            "{line}"
        );
    }

    // Without a token, with another client's, or for a malformed id: refused.
    let (status, body) = records(&cluster, &me.id, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = records(&cluster, &me.id, Some(&other.token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "bad_token", "{body}");
    let (status, body) = records(&cluster, "not%20an%20id", Some(&me.token)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn only_the_tail_of_a_large_log_is_read_and_at_most_fifty_lines_come_back() {
    let cluster = TestCluster::start(1);
    let me = cluster.mint().await;
    // 8 MiB of other clients' lines, then 80 of ours: the answer holds our newest 50, and
    // reading stays fast because only the last 256 KiB are looked at.
    {
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(&cluster.env.records_log)
            .unwrap();
        let filler = format!(
            "{} | app-1 | publish         | someone-else | {}\n",
            "t",
            "x".repeat(200)
        );
        for _ in 0..(8 << 20) / filler.len() {
            log.write_all(filler.as_bytes()).unwrap();
        }
        for n in 0..80 {
            writeln!(log, "t | app-1 | publish         | {} | #{n}", me.id).unwrap();
        }
    }
    let started = Instant::now();
    let (status, body) = records(&cluster, &me.id, Some(&me.token)).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    let got = lines(&body);
    assert_eq!(got.len(), 50, "{got:#?}");
    assert!(
        got[0].ends_with("#30") && got[49].ends_with("#79"),
        "{got:#?}"
    );
    assert!(took < Duration::from_millis(500), "took {took:?}");
}

#[tokio::test]
async fn with_the_log_off_the_answer_says_so() {
    let cluster = TestCluster::start_with(1, vec![("RECORDS_LOG".into(), "off".into())]);
    let me = cluster.mint().await;
    let (status, body) = records(&cluster, &me.id, Some(&me.token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "records_off", "{body}");
}
