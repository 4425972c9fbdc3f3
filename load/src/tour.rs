//! `stickyws load tour`: presses each of the demo page's six buttons `count` times, like a
//! visitor, then the state lab's three checks, prints one row for each (what was pressed, what
//! came back and how, which replicas took it), and fails if any of them broke its promise.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::bail;

use stickyws::frame::ReceivedFrame;

use crate::client::{Client, Socket};
use crate::deployment::Deployment;

/// What one button (or state-lab check) did over its presses.
#[derive(Debug)]
struct Tally {
    sent: usize,
    /// Requests taken, by replica.
    took: BTreeMap<String, usize>,
    /// Presses whose answer came back as `outcome` says.
    came_back: usize,
    /// What `came_back` counts, in words ("answered over HTTP", "arrived on the socket"), so
    /// no row shows a bare number that means something else on the next row.
    outcome: &'static str,
}

/// The table's column headings and widths (the rows are formatted to the same).
const HEADING: (&str, &str, &str, &str) =
    ("what was pressed", "sent", "what came back", "taken by");

impl Tally {
    fn counting(outcome: &'static str) -> Self {
        Self {
            sent: 0,
            took: BTreeMap::new(),
            came_back: 0,
            outcome,
        }
    }

    fn took_by(&mut self, replica: &str) {
        self.sent += 1;
        *self.took.entry(replica.to_owned()).or_default() += 1;
    }

    fn row(&self, name: &str) -> String {
        let took: Vec<String> = self.took.iter().map(|(r, n)| format!("{r}×{n}")).collect();
        line(
            name,
            &self.sent.to_string(),
            &format!("{} {}", self.came_back, self.outcome),
            &took.join(" "),
        )
    }
}

fn line(name: &str, sent: &str, came_back: &str, took: &str) -> String {
    format!("{name:<44} {sent:>4}   {came_back:<30} {took}")
}

const ANSWERED: &str = "answered over HTTP";
const ARRIVED: &str = "arrived on the socket";
const HELD_ALL: &str = "answers held every note";

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

    let (name, sent, came_back, took) = HEADING;
    let mut report = format!("{}\n", line(name, sent, came_back, took));
    for row in rows {
        let _ = writeln!(report, "{row}");
    }
    print!("{report}");
    if broken.is_empty() {
        println!("every button kept its promise");
        Ok(())
    } else {
        bail!("broken promises: {}", broken.join("; "))
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
    let mut t = Tally::counting(ANSWERED);
    for i in 0..count {
        let text = format!("rr {i}");
        let answer = me.call(d, "echo", None, &text).await?;
        t.took_by(answer["replica"].as_str().unwrap_or("?"));
        t.came_back += usize::from(answer["text"] == text.as_str());
    }
    if t.came_back != count {
        broken.push(format!("round robin: {} of {count} echoed", t.came_back));
    }
    if count >= 6 && t.took.len() < 2 {
        broken.push(format!(
            "round robin: {count} requests all went to {:?}",
            t.took
        ));
    }
    rows.push(t.row("button 1 · HTTP & round robin"));

    // 2. HTTP & sticky: always the page's replica.
    let mut t = Tally::counting(ANSWERED);
    for i in 0..count {
        let text = format!("sticky {i}");
        let answer = me.call(d, "echo", Some(page_by), &text).await?;
        t.took_by(answer["replica"].as_str().unwrap_or("?"));
        t.came_back += usize::from(answer["text"] == text.as_str());
    }
    if t.came_back != count {
        broken.push(format!("sticky: {} of {count} echoed", t.came_back));
    }
    if t.took.keys().any(|r| r != page_by) {
        broken.push(format!(
            "sticky: answered by {:?}, expected only {page_by}",
            t.took
        ));
    }
    rows.push(t.row("button 2 · HTTP & sticky"));

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
    let mut t = Tally::counting("echoed on the socket");
    for i in 0..count {
        let text = format!("ws {i}");
        socket.send_text(&text).await?;
        t.took_by(&ws_by);
        if expect_frame(socket, &text, "ws", &ws_by).await? {
            t.came_back += 1;
        }
    }
    if t.came_back != count {
        broken.push(format!("websocket: {} of {count} echoed", t.came_back));
    }
    rows.push(t.row("button 3 · WebSocket only"));

    // 4. Publish through the broker: always arrives, delivered by the socket's replica.
    let t = pressed_until_arrived(d, me, socket, "publish", None, "publish", count).await?;
    if t.came_back != count {
        broken.push(format!("publish: {} of {count} arrived", t.came_back));
    }
    rows.push(t.row("button 4 · Publish through the broker"));

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
    let mut t = Tally::counting(ARRIVED);
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
            t.came_back += 1;
        }
    }
    if let Some(stray) = socket.next(Duration::from_millis(300)).await? {
        broken.push(format!("a frame nobody promised arrived: {stray:?}"));
    }
    rows.push(t.row("button 5 · Non-sticky HTTP & in-memory WS"));

    // 6. Direct with the cookie: always arrives.
    let sticky = Some(ws_by.as_str());
    let t = pressed_until_arrived(d, me, socket, "direct", sticky, "sticky direct", count).await?;
    if t.came_back != count {
        broken.push(format!("sticky direct: {} of {count} arrived", t.came_back));
    }
    rows.push(t.row("button 6 · Sticky HTTP & in-memory WS"));

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
    let mut t = Tally::counting(ARRIVED);
    for i in 0..count {
        let text = format!("{label} {i}");
        let answer = me.call(d, action, sticky, &text).await?;
        t.took_by(answer["replica"].as_str().unwrap_or("?"));
        if expect_frame(socket, &text, action, &ws_by).await? {
            t.came_back += 1;
        }
    }
    Ok(t)
}

/// The state lab: notes kept in each replica's memory or in Redis, sent without the cookie,
/// and the two visit counters: answers that held every note sent so far, and visits that Redis
/// counted.
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
    let mut t = Tally::counting(HELD_ALL);
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
        t.came_back += usize::from(held == i + 1);
    }
    rows.push(t.row("state lab · local notes, no cookie"));

    // Shared notes: whole wherever the request lands.
    let mut t = Tally::counting(HELD_ALL);
    let path = format!("/api/notes/{}/shared", me.client_id);
    for i in 0..count {
        let answer = me.post(d, &path, None, &format!("shared {i}")).await?;
        t.took_by(answer["replica"].as_str().unwrap_or("?"));
        let held = answer["notes"].as_array().map_or(0, Vec::len);
        t.came_back += usize::from(held == (i + 1).min(max_notes));
    }
    if t.came_back != count {
        broken.push(format!("shared notes: whole in {} of {count}", t.came_back));
    }
    rows.push(t.row("state lab · shared notes (Redis), no cookie"));

    // Visits: each replica's own count vs the shared one.
    let mut t = Tally::counting("counted in Redis too");
    let mut local = BTreeMap::new();
    let mut shared = Vec::new();
    for _ in 0..count {
        let (replica, mine, all) = d.visit().await?;
        t.took_by(&replica);
        local.insert(replica, mine);
        t.came_back += usize::from(all.is_some());
        shared.extend(all);
    }
    if shared.windows(2).any(|w| w[1] <= w[0]) {
        broken.push(format!("the shared visit count did not grow: {shared:?}"));
    }
    let counts: Vec<String> = local.iter().map(|(r, n)| format!("{r}={n}")).collect();
    rows.push(format!(
        "{} (last seen: {}; shared={})",
        t.row("state lab · page visits, no cookie"),
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
