//! The WebSocket upgrade, refused exactly: bad credentials, a foreign origin, and the
//! `ALLOWED_ORIGINS` list, through nginx in front of three replicas. What comes after a good
//! upgrade is `ws_wire.rs`'s.

use super::{UpgradeCase, assert_every_replica_serves, host_of, run_upgrade_table};
use crate::support::{API_KEY, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_with_bad_credentials_or_a_foreign_origin_are_refused_exactly() {
    let mut cluster = TestCluster::start(3);
    let client = cluster.mint().await;
    let other = cluster.mint().await;
    let host = host_of(&cluster.base());
    let (id, tok) = (client.id.as_str(), client.token.as_str());
    let ok = format!("/ws/{id}?token={tok}");
    let none = Vec::new;
    let cases: Vec<UpgradeCase> = vec![
        ("a good upgrade", ok.clone(), none(), 101, None),
        (
            "no token",
            format!("/ws/{id}"),
            none(),
            401,
            Some("missing_token"),
        ),
        (
            "the token in Authorization instead of the query",
            format!("/ws/{id}"),
            vec![("authorization", format!("Bearer {tok}"))],
            401,
            Some("missing_token"),
        ),
        (
            "the token in a cookie",
            format!("/ws/{id}"),
            vec![("cookie", format!("token={tok}"))],
            401,
            Some("missing_token"),
        ),
        (
            "the token in the path",
            format!("/ws/{id}/{tok}"),
            none(),
            404,
            Some("not_found"),
        ),
        (
            "another client's token",
            format!("/ws/{id}?token={}", other.token),
            none(),
            401,
            Some("bad_token"),
        ),
        (
            "a forged token",
            format!("/ws/{id}?token={}", "A".repeat(43)),
            none(),
            401,
            Some("bad_token"),
        ),
        (
            "the API key is not a socket token",
            format!("/ws/{id}?token={API_KEY}"),
            none(),
            401,
            Some("bad_token"),
        ),
        (
            "a token with an encoded NUL appended",
            format!("{ok}%00"),
            none(),
            401,
            Some("bad_token"),
        ),
        (
            "a bad client id",
            format!("/ws/a.b?token={tok}"),
            none(),
            400,
            Some("bad_client_id"),
        ),
        (
            "a bad resume id",
            format!("{ok}&last_id=1-x"),
            none(),
            400,
            Some("bad_last_id"),
        ),
        (
            "a cross-site Origin",
            ok.clone(),
            vec![("origin", "http://evil.example".to_owned())],
            403,
            Some("forbidden_origin"),
        ),
        (
            "an origin only ALLOWED_ORIGINS would admit (unset here)",
            ok.clone(),
            vec![("origin", "http://allowed.example".to_owned())],
            403,
            Some("forbidden_origin"),
        ),
        (
            "the opaque origin null",
            ok.clone(),
            vec![("origin", "null".to_owned())],
            403,
            Some("forbidden_origin"),
        ),
        (
            "the page's own origin",
            ok.clone(),
            vec![("origin", format!("http://{host}"))],
            101,
            None,
        ),
        (
            "a cookie naming an unknown replica",
            ok.clone(),
            vec![("cookie", "sticky=app-7".to_owned())],
            101,
            None,
        ),
    ];
    run_upgrade_table(&host, "upgrades", &cases).await;
    assert_every_replica_serves(&mut cluster, "upgrades").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origins_widens_the_origin_check_to_exactly_the_listed_origins() {
    let env = vec![(
        "ALLOWED_ORIGINS".to_owned(),
        "http://allowed.example, https://other.example".to_owned(),
    )];
    let mut cluster = TestCluster::start_with(3, env);
    let client = cluster.mint().await;
    let host = host_of(&cluster.base());
    let ok = format!("/ws/{}?token={}", client.id, client.token);
    let origin = |value: &str| vec![("origin", value.to_owned())];
    let cases: Vec<UpgradeCase> = vec![
        (
            "a listed origin",
            ok.clone(),
            origin("http://allowed.example"),
            101,
            None,
        ),
        (
            "the second listed origin",
            ok.clone(),
            origin("https://other.example"),
            101,
            None,
        ),
        (
            "a listed origin in capitals",
            ok.clone(),
            origin("http://ALLOWED.example"),
            101,
            None,
        ),
        (
            "the page's own origin",
            ok.clone(),
            origin(&format!("http://{host}")),
            101,
            None,
        ),
        (
            "a cross-site origin",
            ok.clone(),
            origin("http://evil.example"),
            403,
            Some("forbidden_origin"),
        ),
        (
            "a listed origin as a prefix",
            ok.clone(),
            origin("http://allowed.example.evil.example"),
            403,
            Some("forbidden_origin"),
        ),
        (
            "a listed host on another port",
            ok.clone(),
            origin("http://allowed.example:8080"),
            403,
            Some("forbidden_origin"),
        ),
        (
            "a listed host with another scheme",
            ok.clone(),
            origin("https://allowed.example"),
            403,
            Some("forbidden_origin"),
        ),
        (
            "a listed origin with a path",
            ok.clone(),
            origin("http://allowed.example/"),
            403,
            Some("forbidden_origin"),
        ),
    ];
    run_upgrade_table(&host, "allowed origins", &cases).await;
    assert_every_replica_serves(&mut cluster, "allowed origins").await;
}
