//! `stickyws load tour`: presses each of the demo page's six buttons `count` times, like a
//! visitor, then the state lab's, prints what happened per button, and fails if any button
//! broke its promise.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::bail;

use stickyws::frame::ReceivedFrame;

use crate::client::{Client, Socket};
use crate::deployment::Deployment;

/// What one button did over its presses.
#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    /// Requests taken, by replica.
    took: BTreeMap<String, usize>,
    /// Frames delivered over the socket.
    delivered: usize,
}

impl Tally {
    fn took_by(&mut self, replica: &str) {
        self.sent += 1;
        *self.took.entry(replica.to_owned()).or_default() += 1;
    }

    fn row(&self, name: &str) -> String {
        let took: Vec<String> = self.took.iter().map(|(r, n)| format!("{r}×{n}")).collect();
        format!(
            "{name:<34} {:>4} {:>9}   {}",
            self.sent,
            self.delivered,
            took.join(" ")
        )
    }
}

pub(super) async fn run(base: &str, count: usize) -> anyhow::Result<()> {
    let deployment = Deployment::new(base, 1)?;
    let d = &deployment;
    let me = Client::mint(d)
        .await
        .map_err(|kind| anyhow::anyhow!("minting a client at {base}: {kind}"))?;
    let page_by = d.page_by().await?;
    let mut socket = me.connect(d, None).await?;
    let ws_by = socket.replica.clone();
    println!(
        "page rendered by {page_by}; socket held by {ws_by}; client {}",
        me.client_id
    );
    let mut broken = Vec::new();
    let mut rows = Vec::new();

    http_buttons(d, &me, &page_by, count, &mut rows, &mut broken).await?;
    socket_buttons(d, &me, &mut socket, count, &mut rows, &mut broken).await?;
    direct_buttons(d, &me, &mut socket, count, &mut rows, &mut broken).await?;
    state_lab(d, &me, count, &mut rows, &mut broken).await?;

    let mut report = format!(
        "{:<34} {:>4} {:>9}   {}\n",
        "button", "sent", "delivered", "taken by"
    );
    for row in rows {
        let _ = writeln!(report, "{row}");
    }
    print!("{report}");
    if broken.is_empty() {
        println!("every button kept its promise");
        Ok(())
    } else {
        bail!("broken promises:\n  {}", broken.join("\n  "))
    }
}

/// Buttons 1 and 2: echo over HTTP without the cookie (round robin) and with it (sticky).
async fn http_buttons(
    d: &Deployment,
    me: &Client,
    page_by: &str,
    count: usize,
    rows: &mut Vec<String>,
    broken: &mut Vec<String>,
) -> anyhow::Result<()> {
    // 1. HTTP & round robin: no cookie, answers from changing replicas.
    let mut t = Tally::default();
    for i in 0..count {
        let answer = me.call(d, "echo", None, &format!("rr {i}")).await?;
        t.took_by(answer["replica"].as_str().unwrap_or("?"));
    }
    if count >= 6 && t.took.len() < 2 {
        broken.push(format!(
            "round robin: {count} requests all went to {:?}",
            t.took
        ));
    }
    rows.push(t.row("1 HTTP & round robin"));

    // 2. HTTP & sticky: always the page's replica.
    let mut t = Tally::default();
    for i in 0..count {
        let answer = me
            .call(d, "echo", Some(page_by), &format!("sticky {i}"))
            .await?;
        t.took_by(answer["replica"].as_str().unwrap_or("?"));
    }
    if t.took.keys().any(|r| r != page_by) {
        broken.push(format!(
            "sticky: answered by {:?}, expected only {page_by}",
            t.took
        ));
    }
    rows.push(t.row("2 HTTP & sticky"));

    Ok(())
}

/// Buttons 3 and 4: the socket's own echo, and a publish through the broker.
async fn socket_buttons(
    d: &Deployment,
    me: &Client,
    socket: &mut Socket,
    count: usize,
    rows: &mut Vec<String>,
    broken: &mut Vec<String>,
) -> anyhow::Result<()> {
    let ws_by = socket.replica.clone();
    // 3. WebSocket only: always the socket's replica.
    let mut t = Tally::default();
    for i in 0..count {
        let text = format!("ws {i}");
        socket.send_text(&text).await?;
        t.took_by(&ws_by);
        if expect_frame(socket, &text, "ws", &ws_by).await? {
            t.delivered += 1;
        }
    }
    if t.delivered != count {
        broken.push(format!("websocket: {} of {count} echoed", t.delivered));
    }
    rows.push(t.row("3 WebSocket only"));

    // 4. Publish through the broker: always arrives, delivered by the socket's replica.
    let t = pressed_until_arrived(d, me, socket, "publish", None, "publish", count).await?;
    if t.delivered != count {
        broken.push(format!("publish: {} of {count} arrived", t.delivered));
    }
    rows.push(t.row("4 Publish through the broker"));

    Ok(())
}

/// Buttons 5 and 6: `/api/direct` without the cookie (delivers only where it lands on the
/// socket's replica) and with it (always).
async fn direct_buttons(
    d: &Deployment,
    me: &Client,
    socket: &mut Socket,
    count: usize,
    rows: &mut Vec<String>,
    broken: &mut Vec<String>,
) -> anyhow::Result<()> {
    let ws_by = socket.replica.clone();
    // 5. Direct without the cookie: arrives exactly when the request lands on the holder.
    let mut t = Tally::default();
    for i in 0..count {
        let text = format!("direct {i}");
        let answer = me.call(d, "direct", None, &text).await?;
        let taker = answer["replica"].as_str().unwrap_or("?").to_owned();
        t.took_by(&taker);
        let promised = answer["delivered"].as_u64() == Some(1);
        if promised != (taker == ws_by) {
            broken.push(format!(
                "direct: {taker} said delivered={} to a socket on {ws_by}",
                answer["delivered"]
            ));
        }
        if promised && expect_frame(socket, &text, "direct", &ws_by).await? {
            t.delivered += 1;
        }
    }
    if let Some(stray) = socket.next(Duration::from_millis(300)).await? {
        broken.push(format!("a frame nobody promised arrived: {stray:?}"));
    }
    rows.push(t.row("5 Non-sticky HTTP & in-memory WS"));

    // 6. Direct with the cookie: always arrives.
    let sticky = Some(ws_by.as_str());
    let t = pressed_until_arrived(d, me, socket, "direct", sticky, "sticky direct", count).await?;
    if t.delivered != count {
        broken.push(format!("sticky direct: {} of {count} arrived", t.delivered));
    }
    rows.push(t.row("6 Sticky HTTP & in-memory WS"));

    Ok(())
}

/// `count` presses of an HTTP button whose message should reach the socket (`action` with the
/// cookie `sticky`, texts `"<label> <i>"`): who took each, and how many arrived.
async fn pressed_until_arrived(
    d: &Deployment,
    me: &Client,
    socket: &mut Socket,
    action: &str,
    sticky: Option<&str>,
    label: &str,
    count: usize,
) -> anyhow::Result<Tally> {
    let ws_by = socket.replica.clone();
    let mut t = Tally::default();
    for i in 0..count {
        let text = format!("{label} {i}");
        let answer = me.call(d, action, sticky, &text).await?;
        t.took_by(answer["replica"].as_str().unwrap_or("?"));
        if expect_frame(socket, &text, action, &ws_by).await? {
            t.delivered += 1;
        }
    }
    Ok(t)
}

/// The state lab: notes kept in each replica's memory or in Redis, sent without the cookie,
/// and the two visit counters. "delivered" counts answers that held every note sent so far,
/// and visits that Redis counted.
async fn state_lab(
    d: &Deployment,
    me: &Client,
    count: usize,
    rows: &mut Vec<String>,
    broken: &mut Vec<String>,
) -> anyhow::Result<()> {
    // A deployment keeps the newest MAX_NOTES of a client's notes; the tour assumes the default.
    let max_notes = stickyws::limits::Limits::default().max_notes;
    // Local notes: each replica holds only the notes that landed on it.
    let mut t = Tally::default();
    let path = format!("/api/notes/{}/local", me.client_id);
    for i in 0..count {
        let answer = me.post(d, &path, None, &format!("local {i}")).await?;
        let taker = answer["replica"].as_str().unwrap_or("?").to_owned();
        t.took_by(&taker);
        let held = answer["notes"].as_array().map_or(0, Vec::len);
        let landed_here = t.took.get(&taker).copied().unwrap_or(0);
        if held != landed_here.min(max_notes) {
            broken.push(format!(
                "local notes: {taker} holds {held}, but {landed_here} landed there"
            ));
        }
        t.delivered += usize::from(held == i + 1);
    }
    rows.push(t.row("7 Local state, no cookie"));

    // Shared notes: whole wherever the request lands.
    let mut t = Tally::default();
    let path = format!("/api/notes/{}/shared", me.client_id);
    for i in 0..count {
        let answer = me.post(d, &path, None, &format!("shared {i}")).await?;
        t.took_by(answer["replica"].as_str().unwrap_or("?"));
        let held = answer["notes"].as_array().map_or(0, Vec::len);
        t.delivered += usize::from(held == (i + 1).min(max_notes));
    }
    if t.delivered != count {
        broken.push(format!("shared notes: whole in {} of {count}", t.delivered));
    }
    rows.push(t.row("8 Shared state (Redis), no cookie"));

    // Visits: each replica's own count vs the shared one.
    let mut t = Tally::default();
    let mut local = BTreeMap::new();
    let mut shared = Vec::new();
    for _ in 0..count {
        let (replica, mine, all) = d.visit().await?;
        t.took_by(&replica);
        local.insert(replica, mine);
        t.delivered += usize::from(all.is_some());
        shared.extend(all);
    }
    if shared.windows(2).any(|w| w[1] <= w[0]) {
        broken.push(format!("the shared visit count did not grow: {shared:?}"));
    }
    let counts: Vec<String> = local.iter().map(|(r, n)| format!("{r}={n}")).collect();
    rows.push(format!(
        "{} (last seen: {}; shared={})",
        t.row("9 Visits, no cookie"),
        counts.join(" "),
        shared
            .last()
            .map_or("unavailable".to_owned(), u64::to_string)
    ));
    Ok(())
}

/// Waits for the frame carrying `text`; true if it came as promised.
async fn expect_frame(
    socket: &mut Socket,
    text: &str,
    via: &str,
    replica: &str,
) -> anyhow::Result<bool> {
    let Some(frame) = socket.next(Duration::from_secs(3)).await? else {
        return Ok(false);
    };
    Ok(
        matches!(frame, ReceivedFrame::Message { text: t, via: v, replica: r, .. }
        if t == text && v.as_str() == via && r == replica),
    )
}
