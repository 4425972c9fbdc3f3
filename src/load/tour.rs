//! `stickyws load tour`: presses each of the demo page's six buttons `count` times, like a
//! visitor, prints what happened per button, and fails if any button broke its promise.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::bail;

use super::client::{Identity, Socket};

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
    let me = Identity::mint(base).await?;
    let page_by = me.page_by().await?;
    let mut socket = me.connect(None).await?;
    let ws_by = socket.replica.clone();
    println!(
        "page rendered by {page_by}; socket held by {ws_by}; client {}",
        me.id
    );
    let mut broken = Vec::new();
    let mut rows = Vec::new();

    // 1. HTTP & round robin: no cookie, answers from changing replicas.
    let mut t = Tally::default();
    for i in 0..count {
        let answer = me.call("echo", None, &format!("rr {i}")).await?;
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
            .call("echo", Some(&page_by), &format!("sticky {i}"))
            .await?;
        t.took_by(answer["replica"].as_str().unwrap_or("?"));
    }
    if t.took.keys().any(|r| *r != page_by) {
        broken.push(format!(
            "sticky: answered by {:?}, expected only {page_by}",
            t.took
        ));
    }
    rows.push(t.row("2 HTTP & sticky"));

    // 3. WebSocket only: always the socket's replica.
    let mut t = Tally::default();
    for i in 0..count {
        let text = format!("ws {i}");
        socket.send_text(&text).await?;
        t.took_by(&ws_by);
        if expect_frame(&mut socket, &text, "ws", &ws_by).await? {
            t.delivered += 1;
        }
    }
    if t.delivered != count {
        broken.push(format!("websocket: {} of {count} echoed", t.delivered));
    }
    rows.push(t.row("3 WebSocket only"));

    // 4. Publish through the broker: always arrives, delivered by the socket's replica.
    let mut t = Tally::default();
    for i in 0..count {
        let text = format!("publish {i}");
        let answer = me.call("publish", None, &text).await?;
        t.took_by(answer["replica"].as_str().unwrap_or("?"));
        if expect_frame(&mut socket, &text, "publish", &ws_by).await? {
            t.delivered += 1;
        }
    }
    if t.delivered != count {
        broken.push(format!("publish: {} of {count} arrived", t.delivered));
    }
    rows.push(t.row("4 Publish through the broker"));

    // 5. Direct without the cookie: arrives exactly when the request lands on the holder.
    let mut t = Tally::default();
    for i in 0..count {
        let text = format!("direct {i}");
        let answer = me.call("direct", None, &text).await?;
        let taker = answer["replica"].as_str().unwrap_or("?").to_owned();
        t.took_by(&taker);
        let promised = answer["delivered"].as_u64() == Some(1);
        if promised != (taker == ws_by) {
            broken.push(format!(
                "direct: {taker} said delivered={} to a socket on {ws_by}",
                answer["delivered"]
            ));
        }
        if promised && expect_frame(&mut socket, &text, "direct", &ws_by).await? {
            t.delivered += 1;
        }
    }
    if let Some(stray) = socket.next(Duration::from_millis(300)).await? {
        broken.push(format!("a frame nobody promised arrived: {stray}"));
    }
    rows.push(t.row("5 Non-sticky HTTP & in-memory WS"));

    // 6. Direct with the cookie: always arrives.
    let mut t = Tally::default();
    for i in 0..count {
        let text = format!("sticky direct {i}");
        let answer = me.call("direct", Some(&ws_by), &text).await?;
        t.took_by(answer["replica"].as_str().unwrap_or("?"));
        if expect_frame(&mut socket, &text, "direct", &ws_by).await? {
            t.delivered += 1;
        }
    }
    if t.delivered != count {
        broken.push(format!("sticky direct: {} of {count} arrived", t.delivered));
    }
    rows.push(t.row("6 Sticky HTTP & in-memory WS"));

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
    Ok(frame["text"] == text && frame["via"] == via && frame["replica"] == replica)
}
