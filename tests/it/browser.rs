//! The demo page in headless Chromium, through nginx, as a person sees it: which replica
//! rendered it and holds its socket, what each of the six buttons does over many presses, the
//! page moving its socket when that replica dies, with nothing published meanwhile lost, and
//! the state lab (counters, notes, a page split from its socket, every replica's figures),
//! and the room: two people on different replicas chatting in a channel, with a second member.
//! Also the screenshots in docs/ (an ignored test that `scripts/screenshots` runs).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use fantoccini::Locator;
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::browser::{Browser, Chromedriver, DemoCluster};
use crate::support::{Client, TestCluster};

const REPLICAS: [&str; 3] = ["app-1", "app-2", "app-3"];
const BUTTONS: [&str; 6] = [
    "btn-echo-rr",
    "btn-echo-sticky",
    "btn-ws",
    "btn-publish",
    "btn-direct-rr",
    "btn-direct-sticky",
];
/// Presses per button: enough that round robin shows more than one replica, and that in-memory
/// delivery without the cookie both succeeds and fails.
const PRESSES: usize = 12;

/// The press entries of the feed, oldest first, as their `data-*` attributes.
const PRESSES_JS: &str = "return [...document.querySelectorAll('#feed > li[data-kind=press]')]\
    .reverse().map((li) => ({ ...li.dataset }));";

/// Every tally, by button, as its `data-*` attributes.
const TALLIES_JS: &str = "return Object.fromEntries([...document.querySelectorAll('.tally')]\
    .map((t) => [t.dataset.button, { ...t.dataset }]));";

/// Holds when the topology picture draws app-1..app-3.
const DRAWN_JS: &str = "return [...document.querySelectorAll('#topology [data-node-replica]')]\
    .map((g) => g.dataset.nodeReplica).join() === 'app-1,app-2,app-3';";

/// Messages that no press sent (broadcasts, publishes by scripts), oldest first.
const MESSAGES_JS: &str = "return [...document.querySelectorAll('#feed > li[data-kind=event][data-via]')]\
    .reverse().map((li) => ({ ...li.dataset, text: li.querySelector('.event-text').textContent }));";

/// The socket events of the feed, newest first.
const EVENTS_JS: &str = "return [...document.querySelectorAll('#feed > li[data-kind=event]')]\
    .map((li) => li.textContent);";

/// Holds when the page's socket is open.
const OPEN_JS: &str = "return window.stickyws && window.stickyws.state().wsState === 'open';";

/// Holds when no press is waiting for its answer or frame.
const SETTLED_JS: &str = "return [...document.querySelectorAll('.tally')]\
    .every((t) => t.dataset.pending === '0');";

/// Starts recording every value `ws-state`'s `data-state` takes, into `window.wsStates`.
const RECORD_STATES_JS: &str = "const node = document.getElementById('ws-state');\
    window.wsStates = [];\
    new MutationObserver(() => window.wsStates.push(node.dataset.state))\
    .observe(node, { attributes: true, attributeFilter: ['data-state'] }); return true;";

/// The state lab's entries in the feed, newest first, as their `data-*` attributes and text.
const LAB_ENTRIES_JS: &str = "return [...document.querySelectorAll('#feed > li[data-kind=lab]')]\
    .map((li) => ({ ...li.dataset, text: li.textContent }));";

/// The per-replica panel: figure -> replica -> the cell's text.
const STATS_JS: &str = "return Object.fromEntries([...document.querySelectorAll('#stats tbody tr')]\
    .map((tr) => [tr.dataset.figure, Object.fromEntries([...tr.querySelectorAll('td')]\
    .map((td) => [td.dataset.col, td.textContent]))]));";

/// The visit counts the lab shows: replica -> its own count.
const VISITS_JS: &str = "return Object.fromEntries([...document.querySelectorAll('#lab-visits [data-local]')]\
    .map((n) => [n.dataset.col, Number(n.dataset.local)]));";

/// Logged by the test itself, proving that the console log it checks is really collected.
const CANARY: &str = "browser test: console log capture works";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_every_path_and_keeps_its_messages_when_its_socket_moves() {
    let mut cluster = TestCluster::start(3);
    let driver = Chromedriver::start(cluster.dir.path());
    let page = open_page(&cluster, &driver, 1280, 900).await;
    arm_console_check(&page).await;

    let shown = who_serves_the_page(&cluster, &page).await;
    press_every_button(&page, &shown).await;
    page.wait_until("the topology to draw app-1..app-3", secs(5), DRAWN_JS)
        .await;
    kill_the_socket_replica_and_publish_meanwhile(&mut cluster, &page, &shown).await;

    // No console errors, apart from the page's socket failing while its replica was down.
    assert_no_console_errors(&page, |message| is_failed_socket(message, &shown.client_id)).await;
}

/// Logs a canary error, by which [`assert_no_console_errors`] knows the console is collected.
async fn arm_console_check(page: &Browser) {
    page.eval(&format!("console.error('{CANARY}'); return true;"))
        .await;
}

/// The console holds the canary and no other error but those `expected` allows.
async fn assert_no_console_errors(page: &Browser, expected: impl Fn(&str) -> bool) {
    let console = page.console().await;
    assert!(
        console.iter().any(|e| e.message.contains(CANARY)),
        "the console log was not captured: {console:#?}"
    );
    let unexpected: Vec<_> = console
        .iter()
        .filter(|e| e.level == "SEVERE" && !e.message.contains(CANARY))
        .filter(|e| !expected(&e.message))
        .collect();
    assert!(unexpected.is_empty(), "console errors: {unexpected:#?}");
}

/// What the page's header shows.
struct Shown {
    page_by: String,
    ws_by: String,
    client_id: String,
}

/// Who rendered the page and who holds its socket: as shown, and as the servers say.
async fn who_serves_the_page(cluster: &TestCluster, page: &Browser) -> Shown {
    let shown = Shown {
        page_by: page.text("page-by").await,
        ws_by: page.text("ws-by").await,
        client_id: page.text("client-id").await,
    };
    let Shown {
        page_by,
        ws_by,
        client_id,
    } = &shown;
    let cookie = page.client.get_named_cookie("sticky").await.unwrap();
    assert_eq!(
        cookie.value(),
        page_by,
        "page-by names the cookie's replica"
    );
    assert!(REPLICAS.contains(&page_by.as_str()), "{page_by}");
    assert_eq!(
        ws_by, page_by,
        "the socket is opened with the page's cookie, so nginx sends it to the page's replica"
    );
    let state = page.state().await;
    assert_eq!(state["pageBy"], page_by.as_str());
    assert_eq!(state["wsBy"], ws_by.as_str());
    assert_eq!(state["clientId"], client_id.as_str());
    assert_eq!(page.attr("ws-state", "data-state").await, "open");
    let records = cluster.records();
    for (replica, event) in [(page_by, "page"), (ws_by, "connect")] {
        let line = format!("| {replica} | {event:<15} | {client_id} |");
        assert!(records.contains(&line), "no `{line}` in\n{records}");
    }
    shown
}

/// Every button, [`PRESSES`] times: each keeps its promise, and its tally matches its entries.
async fn press_every_button(page: &Browser, shown: &Shown) {
    for button in BUTTONS {
        page.press(button, PRESSES).await;
    }
    page.wait_until("every press to settle", secs(8), SETTLED_JS)
        .await;
    let presses = page.eval(PRESSES_JS).await;
    let presses = presses.as_array().unwrap();
    let tallies = page.eval(TALLIES_JS).await;
    for button in BUTTONS {
        tally_matches_feed(button, &tallies[button], &entries_of(presses, button));
    }

    let (page_by, ws_by) = (shown.page_by.as_str(), shown.ws_by.as_str());
    let of = |button: &str, key: &str| -> BTreeSet<String> {
        entries_of(presses, button)
            .iter()
            .map(|e| str_of(&e[key]).to_owned())
            .collect()
    };
    let one = |name: &str| BTreeSet::from([name.to_owned()]);
    // 1: HTTP without the cookie is spread; 2: with it, always the page's replica.
    assert_eq!(of("btn-echo-rr", "outcome"), one("answered"));
    let answered_by = of("btn-echo-rr", "took");
    assert!(answered_by.len() >= 2, "{answered_by:?}");
    assert_eq!(of("btn-echo-sticky", "outcome"), one("answered"));
    assert_eq!(of("btn-echo-sticky", "took"), one(page_by));
    // 3: the socket's replica answers on the socket; 4: publish always reaches it.
    for button in ["btn-ws", "btn-publish"] {
        assert_eq!(of(button, "outcome"), one("delivered"), "{button}");
        assert_eq!(of(button, "deliveredBy"), one(ws_by), "{button}");
    }
    assert_eq!(of("btn-ws", "took"), one(ws_by));
    // 5: in-memory delivery works exactly when the request lands on the socket's replica.
    for entry in entries_of(presses, "btn-direct-rr") {
        let expected = if entry["took"] == ws_by {
            "delivered"
        } else {
            "not-delivered"
        };
        assert_eq!(entry["outcome"], expected, "{entry}");
    }
    assert_eq!(
        of("btn-direct-rr", "outcome"),
        BTreeSet::from(["delivered".to_owned(), "not-delivered".to_owned()]),
        "round robin over 3 replicas both finds and misses the socket in {PRESSES} presses"
    );
    // 6: the cookie sends the request to the socket's replica, every time.
    assert_eq!(of("btn-direct-sticky", "outcome"), one("delivered"));
    assert_eq!(of("btn-direct-sticky", "took"), one(page_by));
    assert_eq!(of("btn-direct-sticky", "deliveredBy"), one(ws_by));
}

/// A button's tally counts what its feed entries show, and nothing failed or was lost.
fn tally_matches_feed(button: &str, tally: &Value, entries: &[&Value]) {
    assert_eq!(entries.len(), PRESSES, "{button}: {entries:#?}");
    assert_eq!(tally["sent"], PRESSES.to_string(), "{button}: {tally}");
    for key in ["lost", "errors", "pending"] {
        assert_eq!(tally[key], "0", "{button} {key}: {tally}\n{entries:#?}");
    }
    let count = |outcome: &str| {
        let n = entries.iter().filter(|e| e["outcome"] == outcome).count();
        n.to_string()
    };
    assert_eq!(tally["answered"], count("answered"), "{button}: {tally}");
    assert_eq!(tally["delivered"], count("delivered"), "{button}: {tally}");
    assert_eq!(tally["notDelivered"], count("not-delivered"), "{button}");
    let took = counts_attr(entries.iter().map(|e| str_of(&e["took"])));
    assert_eq!(tally["took"], took, "{button}: {tally}");
    let delivered_by = counts_attr(entries.iter().map(|e| str_of(&e["deliveredBy"])));
    assert_eq!(tally["deliveredBy"], delivered_by, "{button}: {tally}");
}

/// SIGKILLs the socket's replica, publishes 5 messages through the API and presses publish on
/// the page while it reconnects: the page says it moved, and shows every message once, in
/// order, the replayed ones marked as recovered.
async fn kill_the_socket_replica_and_publish_meanwhile(
    cluster: &mut TestCluster,
    page: &Browser,
    shown: &Shown,
) {
    let (ws_by, client_id) = (shown.ws_by.as_str(), shown.client_id.as_str());
    let client = page_client(page).await;
    page.eval(RECORD_STATES_JS).await;

    cluster.replica(ws_by).proc.kill();
    let texts: Vec<String> = (1..=5).map(|i| format!("while away {i}")).collect();
    for text in &texts {
        let (status, body) = cluster.call("publish", &client, None, text).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    page.click("btn-publish").await;

    // The page reconnects elsewhere and says so.
    let moved = page
        .wait_until(
            "the socket to reopen on another replica",
            secs(10),
            &format!(
                "const s = window.stickyws.state(); \
                 return s.wsState === 'open' && s.wsBy !== '{ws_by}' && s.wsBy;"
            ),
        )
        .await;
    let moved = str_of(&moved).to_owned();
    assert!(REPLICAS.contains(&moved.as_str()), "{moved}");
    assert_eq!(page.text("ws-by").await, moved);
    let detail = page.text("ws-detail").await;
    assert!(detail.contains(&format!("moved from {ws_by}")), "{detail}");
    let states = page.eval("return window.wsStates;").await;
    let states: Vec<&str> = states.as_array().unwrap().iter().map(str_of).collect();
    let reconnecting = states.iter().position(|s| *s == "reconnecting");
    assert!(
        reconnecting.is_some_and(|i| states[i..].contains(&"open")),
        "ws-state went {states:?}"
    );
    let events = page.eval(EVENTS_JS).await;
    let told = format!("socket moved from {ws_by} to {moved}");
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| str_of(e).contains(&told)),
        "no feed event says `{told}`: {events:#}"
    );

    // Every message arrives once, in order. The first was published before the page could
    // notice the loss, so at least it was replayed; replayed ones come before live ones.
    let arrived = format!(
        "const got = (() => {{ {MESSAGES_JS} }})(); \
         return got.filter((m) => m.text.includes('while away')).length >= {};",
        texts.len()
    );
    page.wait_until("the messages published while away", secs(5), &arrived)
        .await;
    page.wait_until("the press while away", secs(5), SETTLED_JS)
        .await;
    let messages = page.eval(MESSAGES_JS).await;
    let away: Vec<&Value> = messages
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| str_of(&m["text"]).contains("while away"))
        .collect();
    let in_feed: Vec<&str> = away
        .iter()
        .map(|m| {
            let text = str_of(&m["text"]);
            texts
                .iter()
                .find(|t| text.contains(&format!(": {t}")))
                .map_or(text, String::as_str)
        })
        .collect();
    assert_eq!(in_feed, texts, "{away:#?}");
    let replayed: Vec<bool> = away.iter().map(|m| m["replayed"] == "true").collect();
    assert!(replayed[0], "{away:#?}");
    assert!(replayed.is_sorted_by(|a, b| a >= b), "{away:#?}");
    for message in &away {
        assert_eq!(message["via"], "publish", "{message}");
        let marked = str_of(&message["text"]).contains("recovered after reconnect");
        assert_eq!(marked, message["replayed"] == "true", "{message}");
    }

    // The press made while away is delivered by the new replica, live or replayed.
    let presses = page.eval(PRESSES_JS).await;
    let press = presses.as_array().unwrap().last().unwrap();
    assert_eq!(press["button"], "btn-publish", "{press}");
    assert_eq!(press["outcome"], "delivered", "{press}");
    assert_eq!(press["deliveredBy"], moved.as_str(), "{press}");
    // The page's cursor is the newest one it has shown (the message's own `cursor`, epoch
    // and all), ready for the next reconnect.
    let cursors = page.state().await["cursors"].clone();
    assert_eq!(cursors["lastId"], press["cursor"], "{cursors}");
    assert!(
        str_of(&press["cursor"]).ends_with(&format!(":{}", str_of(&press["id"]))),
        "{press}"
    );
    // And the new replica replayed exactly what the page shows as replayed.
    let count = replayed.iter().filter(|r| **r).count() + usize::from(press["replayed"] == "true");
    let replay = format!(
        "| {moved} | {:<15} | {client_id} | replayed {count} missed",
        "replay"
    );
    let records = cluster.records();
    assert!(records.contains(&replay), "no `{replay}` in\n{records}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_says_so_when_messages_it_missed_are_no_longer_kept() {
    // Each client's history keeps its 2 newest messages.
    let mut cluster = TestCluster::start_with(3, vec![("HISTORY_LEN".into(), "2".into())]);
    let driver = Chromedriver::start(cluster.dir.path());
    let page = open_page(&cluster, &driver, 1280, 900).await;
    let ws_by = page.text("ws-by").await;
    let client = page_client(&page).await;

    cluster.replica(&ws_by).proc.kill();
    for i in 1..=4 {
        let text = format!("missed {i}");
        let (status, body) = cluster.call("publish", &client, None, &text).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let told = "const lost = document.querySelector('#feed > li[data-history-lost]'); \
                return lost && lost.dataset.historyLost;";
    let stream = page
        .wait_until("the page to say messages were lost", secs(10), told)
        .await;
    assert_eq!(stream, "client");
    let kept = format!(
        "const got = (() => {{ {MESSAGES_JS} }})(); \
         return got.filter((m) => m.text.includes('missed')).length >= 2;"
    );
    page.wait_until("the messages still kept", secs(5), &kept)
        .await;

    // Oldest first: the warning, then the two messages still kept, replayed in order.
    let feed = page
        .eval(
            "return [...document.querySelectorAll('#feed > li[data-kind=event]')].reverse()\
             .map((li) => ({ ...li.dataset, text: li.textContent }))\
             .filter((e) => e.historyLost || e.text.includes('missed'));",
        )
        .await;
    let feed = feed.as_array().unwrap();
    assert_eq!(feed.len(), 3, "{feed:#?}");
    assert_eq!(feed[0]["historyLost"], "client", "{feed:#?}");
    assert!(
        str_of(&feed[0]["text"]).contains("may be missing"),
        "{feed:#?}"
    );
    for (entry, text) in feed[1..].iter().zip(["missed 3", "missed 4"]) {
        assert!(
            str_of(&entry["text"]).contains(&format!(": {text}")),
            "{feed:#?}"
        );
        assert_eq!(entry["replayed"], "true", "{feed:#?}");
    }
}

/// Local notes added with the cookie before any go round robin.
const NOTES_WITH_COOKIE: usize = 4;
/// Presses without the cookie: enough that round robin over 3 replicas reaches another one.
const NOTES_WITHOUT_COOKIE: usize = 12;
const SHARED_NOTES: usize = 6;
const VISITS: u64 = 9;
/// Reconnects after forgetting the cookie before the socket must have landed away from the page.
const RECONNECTS: usize = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_lab_shows_what_process_local_state_does_behind_nginx() {
    let cluster = TestCluster::start(3);
    let driver = Chromedriver::start(cluster.dir.path());
    let page = open_page(&cluster, &driver, 1280, 900).await;
    arm_console_check(&page).await;
    let page_by = page.text("page-by").await;
    assert_eq!(page.text("ws-split").await, "same replica");

    local_notes_are_whole_only_with_the_cookie(&page, &page_by).await;
    shared_notes_are_whole_wherever_they_land(&page).await;
    let visits = visits_without_the_cookie_count_apart(&page).await;
    the_panel_shows_every_replica(&page, &visits).await;

    // A new page: a new client, whose state only the page's replica holds (its socket landed
    // there), so the first socket that lands elsewhere must rebuild it.
    page.goto(&format!("{}/", cluster.base())).await;
    page.wait_until("the new page's socket to open", secs(10), OPEN_JS)
        .await;
    forgetting_the_cookie_splits_page_and_socket(&cluster, &page).await;

    assert_no_console_errors(&page, |_| false).await;
}

/// With the cookie every local note goes to the page's replica, which holds them all; without
/// it, round robin reaches replicas that have never seen this client and start it over, and
/// each replica holds only the notes that landed on it.
async fn local_notes_are_whole_only_with_the_cookie(page: &Browser, page_by: &str) {
    for n in 1..=NOTES_WITH_COOKIE {
        let entry = lab_press_one(page, "btn-note-local").await;
        let n = n.to_string();
        for (key, expected) in [
            ("store", "local"),
            ("cookie", "true"),
            ("replica", page_by),
            ("hit", "true"),
            ("whole", "true"),
            ("count", n.as_str()),
            ("total", n.as_str()),
        ] {
            assert_eq!(entry[key], expected, "{key}: {entry:#}");
        }
        let shown = words(&page.text("lab-note-local").await);
        assert!(shown.contains(&format!("{n} of {n} note")), "{shown}");
    }

    page.click("notes-no-cookie").await;
    // Each replica's local copy holds exactly the notes that landed on it.
    let mut held = BTreeMap::from([(page_by.to_owned(), NOTES_WITH_COOKIE)]);
    for total in NOTES_WITH_COOKIE + 1..=NOTES_WITH_COOKIE + NOTES_WITHOUT_COOKIE {
        let entry = lab_press_one(page, "btn-note-local").await;
        assert_eq!(entry["cookie"], "false", "{entry:#}");
        assert_eq!(entry["total"], total.to_string(), "{entry:#}");
        let replica = str_of(&entry["replica"]).to_owned();
        assert!(REPLICAS.contains(&replica.as_str()), "{entry:#}");
        let new_here = !held.contains_key(&replica);
        let count = held.entry(replica.clone()).or_default();
        *count += 1;
        assert_eq!(entry["count"], count.to_string(), "{entry:#}");
        assert_eq!(entry["whole"], (*count == total).to_string(), "{entry:#}");
        if new_here {
            let message = format!("{replica} had never seen you: state rebuilt");
            assert_eq!(entry["rebuilt"], "true", "{entry:#}");
            assert_eq!(entry["hit"], "false", "{entry:#}");
            assert!(str_of(&entry["text"]).contains(&message), "{entry:#}");
            assert_eq!(page.text("lab-message-local").await, message);
        } else {
            assert_eq!(entry["hit"], "true", "{entry:#}");
            assert_eq!(entry["rebuilt"], "false", "{entry:#}");
        }
        if replica != page_by {
            assert!(*count < total, "{entry:#}");
            // A replica holding only part of the notes is no "hit" for the reader.
            let badges = page
                .eval("return [...document.querySelectorAll('#lab-note-local .badge')].map((b) => b.textContent);")
                .await;
            let badges: Vec<&str> = badges.as_array().unwrap().iter().map(str_of).collect();
            assert!(!badges.contains(&"hit"), "{badges:?}");
            let shown = words(&page.text("lab-note-local").await);
            let missing = total - *count;
            assert!(
                shown.contains(&format!("{count} of {total} notes"))
                    && shown.contains(&format!("{missing} missing")),
                "{shown}"
            );
        }
    }
    assert!(
        held.len() >= 2,
        "{NOTES_WITHOUT_COOKIE} notes without the cookie all landed on {page_by}: {held:?}"
    );
}

/// Without the cookie too, whichever replica answers has every shared note.
async fn shared_notes_are_whole_wherever_they_land(page: &Browser) {
    let mut answered_by = BTreeSet::new();
    for n in 1..=SHARED_NOTES {
        let entry = lab_press_one(page, "btn-note-shared").await;
        let n_text = n.to_string();
        for (key, expected) in [
            ("store", "shared"),
            ("cookie", "false"),
            ("whole", "true"),
            ("count", n_text.as_str()),
            ("total", n_text.as_str()),
            ("hit", if n == 1 { "false" } else { "true" }),
        ] {
            assert_eq!(entry[key], expected, "{key}: {entry:#}");
        }
        answered_by.insert(str_of(&entry["replica"]).to_owned());
    }
    assert!(answered_by.len() >= 2, "{answered_by:?}");
    let shown = words(&page.text("lab-note-shared").await);
    assert!(
        shown.contains(&format!("{SHARED_NOTES} of {SHARED_NOTES} notes whole")),
        "{shown}"
    );
}

/// Visits without the cookie land round robin: Redis counts each one, each replica only its
/// own. Returns the local counts shown.
async fn visits_without_the_cookie_count_apart(page: &Browser) -> BTreeMap<String, u64> {
    async fn shared(page: &Browser) -> u64 {
        let shown = page.attr("lab-visits", "data-shared").await;
        shown
            .parse()
            .unwrap_or_else(|_| panic!("shared visits shown: {shown:?}"))
    }
    let before = shared(page).await;
    for _ in 0..VISITS {
        let entry = lab_press_one(page, "btn-visit").await;
        assert_eq!(entry["outcome"], "answered", "{entry:#}");
    }
    let after = shared(page).await;
    assert_eq!(after, before + VISITS, "Redis counts every visit");
    assert_eq!(page.text("visits-shared").await, after.to_string());
    let local: BTreeMap<String, u64> = serde_json::from_value(page.eval(VISITS_JS).await).unwrap();
    assert!(local.len() >= 2, "{local:?}");
    for (replica, count) in &local {
        assert!(
            *count < after,
            "{replica} counted {count} of {after}: {local:?}"
        );
    }
    // Nothing else visits this cluster: the replicas' own counts add up to Redis's.
    assert_eq!(local.values().sum::<u64>(), after, "{local:?}");
    local
}

/// The panel lists the three replicas with a number in every cell, and its visit figures
/// catch up with the counts the visits showed (other replicas' figures are up to 2 s old).
async fn the_panel_shows_every_replica(page: &Browser, visits: &BTreeMap<String, u64>) {
    let expected: BTreeMap<&str, String> = REPLICAS
        .iter()
        .map(|r| (*r, visits.get(*r).copied().unwrap_or(0).to_string()))
        .collect();
    let caught_up = format!(
        "const s = (() => {{ {STATS_JS} }})(); \
         return JSON.stringify(s.visits) === '{}';",
        serde_json::to_string(&expected).unwrap()
    );
    page.wait_until("the panel's visit figures", secs(10), &caught_up)
        .await;
    let stats = page.eval(STATS_JS).await;
    let figures = stats.as_object().unwrap();
    assert_eq!(figures.len(), 11, "{stats:#}");
    for (figure, cells) in figures {
        let cells = cells.as_object().unwrap();
        assert_eq!(
            cells.keys().map(String::as_str).collect::<Vec<_>>(),
            REPLICAS,
            "{figure}: {stats:#}"
        );
        for cell in cells.values() {
            let numbers = str_of(cell).split(" / ");
            assert!(
                numbers.clone().all(|n| n.parse::<f64>().is_ok()),
                "{figure}: {stats:#}"
            );
        }
    }
    let total: u64 = visits.values().sum();
    assert_eq!(page.text("stats-shared").await, total.to_string());
    // Every rebuild the notes showed is counted by the replica that did it.
    let rebuilds: u64 = figures["rebuilds"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| str_of(n).parse::<u64>().unwrap())
        .sum();
    let entries = page.eval(LAB_ENTRIES_JS).await;
    let shown = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["store"] == "local" && e["rebuilt"] == "true")
        .count() as u64;
    assert!(
        rebuilds > shown,
        "{rebuilds} rebuilds counted, {shown} shown"
    );
}

/// The server clears the cookie and the page reopens its socket; reconnecting without the
/// cookie, the socket soon lands away from the page's replica, which rebuilds the client's
/// state, and the header says the two are split.
async fn forgetting_the_cookie_splits_page_and_socket(cluster: &TestCluster, page: &Browser) {
    let page_by = page.text("page-by").await;
    let client_id = page.text("client-id").await;
    assert_eq!(page.attr("cookie-state", "data-cookie").await, "set");
    assert!(page.client.get_named_cookie("sticky").await.is_ok());

    let pressed = lab_press(page, "btn-forget").await;
    let [forget, reopened] = pressed.as_slice() else {
        panic!("forgetting makes two entries: {pressed:#?}")
    };
    assert!(
        str_of(&forget["text"]).contains(&format!("cleared sticky={page_by}")),
        "{forget:#}"
    );
    assert_eq!(page.attr("cookie-state", "data-cookie").await, "none");
    let told = words(&page.text("cookie-state").await);
    assert!(told.contains("Reload the page to get one again"), "{told}");
    assert!(
        page.client.get_named_cookie("sticky").await.is_err(),
        "the browser still has a sticky cookie"
    );

    let mut landing = reopened.clone();
    for _ in 0..RECONNECTS {
        if landing["split"] == "split" {
            break;
        }
        // Back on the page's replica, which has held this client's state since the page loaded.
        assert_eq!(landing["replica"], page_by.as_str(), "{landing:#}");
        assert_eq!(landing["state"], "hit", "{landing:#}");
        landing = lab_press_one(page, "btn-reconnect").await;
    }
    assert_eq!(
        landing["split"], "split",
        "{RECONNECTS} reconnects without the cookie all landed on {page_by}"
    );
    let socket_by = str_of(&landing["replica"]).to_owned();
    assert_ne!(socket_by, page_by);
    assert_eq!(landing["state"], "rebuilt", "{landing:#}");
    let message = format!("{socket_by} had never seen you: state rebuilt");
    assert!(str_of(&landing["text"]).contains(&message), "{landing:#}");
    assert_eq!(page.text("landing-message").await, message);
    assert_eq!(page.text("ws-by").await, socket_by);
    assert_eq!(page.text("ws-split").await, "split");
    let title = page.attr("ws-split", "title").await;
    assert_eq!(
        title,
        format!("Socket on {socket_by} — page came from {page_by}: split")
    );
    let connect = format!(
        "| {socket_by} | {:<15} | {client_id} | tabs=1 page={page_by} (split",
        "connect"
    );
    let records = cluster.records();
    assert!(records.contains(&connect), "no `{connect}` in\n{records}");
}

/// Clicks a lab control once and returns the one feed entry it makes, once settled.
async fn lab_press_one(page: &Browser, id: &str) -> Value {
    let mut entries = lab_press(page, id).await;
    assert_eq!(entries.len(), 1, "#{id}: {entries:#?}");
    entries.remove(0)
}

/// Clicks a lab control and waits until the feed entries it makes are settled; oldest first.
async fn lab_press(page: &Browser, id: &str) -> Vec<Value> {
    let count = |entries: &Value| entries.as_array().map_or(0, Vec::len);
    let before = count(&page.eval(LAB_ENTRIES_JS).await);
    page.click(id).await;
    let settled = format!(
        "const all = (() => {{ {LAB_ENTRIES_JS} }})(); \
         return all.length > {before} && all.every((e) => e.outcome !== 'pending') && all;"
    );
    let entries = page
        .wait_until(&format!("#{id} to be answered"), secs(10), &settled)
        .await;
    let mut new: Vec<Value> = entries.as_array().unwrap()[..count(&entries) - before].to_vec();
    new.reverse();
    new
}

/// The page's client id and token, as the page holds them.
async fn page_client(page: &Browser) -> Client {
    let id = page.text("client-id").await;
    let token = page.eval("return document.body.dataset.token;").await;
    Client {
        id,
        token: str_of(&token).to_owned(),
    }
}

/// Chromium's own line for the page's WebSocket failing to connect or breaking off, e.g.
/// `WebSocket connection to 'ws://…/ws/<id>?token=…' failed: … net::ERR_CONNECTION_REFUSED`;
/// an HTTP refusal (401, 502, …) is not one of them.
fn is_failed_socket(message: &str, client_id: &str) -> bool {
    let Some((url, reason)) = message
        .split_once("WebSocket connection to 'ws://")
        .and_then(|(_, rest)| rest.split_once("' failed:"))
    else {
        return false;
    };
    let reason = reason.trim();
    url.contains(&format!("/ws/{client_id}?"))
        && (reason.is_empty()
            || reason.contains("net::ERR_")
            || reason.contains("Connection closed before receiving a handshake response"))
}

/// `docs/demo.png` (1280x900), `docs/state-lab.png` (the lab's section at that width) and
/// `docs/demo-narrow.png` (a 390x844 phone, the whole page)
/// after a few presses of each lab control (first, so the feed's newest entries are the six
/// buttons') and of each button. Without `STICKYWS_SCREENSHOTS=1` they are written to a
/// temporary directory instead, so running every ignored test leaves docs/ alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "renders docs/demo.png, docs/state-lab.png and docs/demo-narrow.png; run scripts/screenshots"]
async fn screenshots_of_the_page_in_use() {
    let cluster = TestCluster::start(3);
    let out = if std::env::var("STICKYWS_SCREENSHOTS").as_deref() == Ok("1") {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/docs"))
    } else {
        cluster.dir.path().to_owned()
    };
    let driver = Chromedriver::start(cluster.dir.path());
    let page = open_page(&cluster, &driver, 1280, 900).await;
    populate_the_lab(&page).await;
    // Each button a few times, one press at a time as a person presses, so the feed reads in
    // order; the round-robin ones until they show their lesson (all replicas; hit and miss).
    for (button, at_most, done) in [
        (
            "btn-echo-rr",
            6,
            "t.sent >= 3 && t.took.split(' ').length === 3",
        ),
        ("btn-echo-sticky", 2, "false"),
        ("btn-ws", 2, "false"),
        ("btn-publish", 2, "false"),
        (
            "btn-direct-rr",
            6,
            "t.sent >= 3 && t.delivered > 0 && t.notDelivered > 0",
        ),
        ("btn-direct-sticky", 2, "false"),
    ] {
        let done =
            format!("const t = document.getElementById('tally-{button}').dataset; return {done};");
        for _ in 0..at_most {
            page.click(button).await;
            page.wait_until("the press to settle", secs(5), SETTLED_JS)
                .await;
            if page.eval(&done).await == true {
                break;
            }
        }
    }
    page.wait_until("the topology to draw app-1..app-3", secs(5), DRAWN_JS)
        .await;
    // The pointer rests on the title, not on the last button pressed.
    let title = page.client.find(Locator::Css("h1")).await.unwrap();
    title.click().await.unwrap();
    let still = "return document.querySelectorAll('.trail, .miss').length === 0 \
                 && document.getAnimations().every((a) => a.playState !== 'running');";
    page.wait_until("the animations to end", secs(5), still)
        .await;
    // Clicks scroll what they press into view; the picture is of the page's top.
    page.eval("window.scrollTo(0, 0); return true;").await;
    let wide = page.screenshot().await;
    assert_eq!(png_size(&wide), (1280, 900));
    std::fs::write(out.join("demo.png"), wide).unwrap();
    // The state lab, below the fold at this width, on its own.
    let lab = page.screenshot_of("section.lab").await;
    assert_eq!(png_size(&lab).0, 1232, "the lab spans the layout's width");
    std::fs::write(out.join("state-lab.png"), lab).unwrap();

    // A phone: 390 CSS pixels wide, the whole page at once.
    page.viewport(390, 844, true).await;
    let narrow = "return document.querySelector('#topology svg').viewBox.baseVal.width < 400;";
    page.wait_until("the narrow layout", secs(5), narrow).await;
    let narrow = page.screenshot_full_page(390).await;
    let (width, height) = png_size(&narrow);
    assert!(width == 390 && height > 844, "{width}x{height}");
    std::fs::write(out.join("demo-narrow.png"), narrow).unwrap();
}

/// The lab as a newcomer leaves it after a few clicks: notes with and without the cookie until
/// one lands on a replica that rebuilds, shared notes, and visits until two replicas counted.
async fn populate_the_lab(page: &Browser) {
    for _ in 0..2 {
        lab_press_one(page, "btn-note-local").await;
    }
    page.click("notes-no-cookie").await;
    for _ in 0..6 {
        let entry = lab_press_one(page, "btn-note-local").await;
        if entry["rebuilt"] == "true" {
            break;
        }
    }
    for _ in 0..3 {
        lab_press_one(page, "btn-note-shared").await;
    }
    for n in 0..6 {
        lab_press_one(page, "btn-visit").await;
        let seen = page.eval(VISITS_JS).await;
        if n >= 2 && seen.as_object().is_some_and(|s| s.len() >= 2) {
            break;
        }
    }
}

async fn open_page(
    cluster: &TestCluster,
    driver: &Chromedriver,
    width: u32,
    height: u32,
) -> Browser {
    let page = driver.open(width, height).await;
    page.goto(&format!("{}/", cluster.base())).await;
    page.wait_until("the page's socket to open", secs(10), OPEN_JS)
        .await;
    page
}

/// The feed's presses of one button.
fn entries_of<'a>(presses: &'a [Value], button: &str) -> Vec<&'a Value> {
    presses.iter().filter(|p| p["button"] == button).collect()
}

/// `"app-1:2 app-3:1"`, the form of a tally's `data-took` and `data-delivered-by`.
fn counts_attr<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for name in names.filter(|n| !n.is_empty()) {
        *counts.entry(name).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    parts.join(" ")
}

/// Text with its runs of white space (line breaks between inline boxes) made single spaces.
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn str_of(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Width and height from a PNG's header.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let word = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (word(16), word(20))
}

/// The room's log, oldest first: each line's `data-*` attributes and text.
const ROOM_LOG_JS: &str = "return [...document.querySelectorAll('#room-log > li')]\
    .map((li) => ({ ...li.dataset, text: li.textContent }));";

/// The room's member list as shown: client id -> the replicas holding it ("app-1 app-2").
const ROOM_MEMBERS_JS: &str = "return Object.fromEntries([...document.querySelectorAll('#room-members > li[data-client-id]')]\
    .map((li) => [li.dataset.clientId, li.dataset.replicas]));";

const LOBBY: &str = "public:lobby";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_in_a_room_on_different_replicas_chat_see_each_other_and_the_fan_out() {
    let mut cluster = TestCluster::start(3);
    let driver = Chromedriver::start(cluster.dir.path());
    let alice = open_page(&cluster, &driver, 1280, 900).await;
    arm_console_check(&alice).await;
    let alice_on = alice.text("ws-by").await;
    let alice_id = alice.text("client-id").await;
    // Bob's browser carries a cookie naming another replica, so his page and socket land there.
    let bob_on = REPLICAS
        .iter()
        .find(|r| **r != alice_on)
        .unwrap()
        .to_string();
    let bob = open_page_on(&cluster, &driver, &bob_on).await;
    let bob_id = bob.text("client-id").await;
    assert_eq!(bob.text("ws-by").await, bob_on);

    // A name outside the rules is refused by the page, which then joins nothing.
    set_value(&alice, "room-name", "lobby").await;
    alice.click("btn-room-join").await;
    assert!(
        alice.text("room-error").await.contains("public:"),
        "{}",
        alice.text("room-error").await
    );
    assert_eq!(alice.attr("room-status", "data-status").await, "out");

    join_room(&alice, LOBBY).await;
    join_room(&bob, LOBBY).await;
    // Bob's join reaches Alice live, naming his replica; both lists show both, with replicas.
    let joined = format!(
        "return (() => {{ {ROOM_LOG_JS} }})().find((l) => l.kind === 'presence' \
         && l.event === 'join' && l.clientId === '{bob_id}');"
    );
    let line = alice
        .wait_until("Bob's join in Alice's room", secs(5), &joined)
        .await;
    assert_eq!(line["replica"], bob_on.as_str(), "{line:#}");
    let both = BTreeMap::from([
        (alice_id.clone(), alice_on.clone()),
        (bob_id.clone(), bob_on.clone()),
    ]);
    for page in [&alice, &bob] {
        wait_members(page, &both).await;
    }

    // Bob says something: taken by his replica, delivered to Alice by hers.
    say(&bob, "btn-room-send", "hello from bob").await;
    let line = wait_message(&alice, "hello from bob").await;
    assert_eq!(line["from"], bob_on.as_str(), "{line:#}");
    assert_eq!(line["delivered"], format!("you={alice_on}"), "{line:#}");
    assert_eq!(line["replayed"], "false", "{line:#}");
    let told = words(str_of(&line["text"]));
    assert!(
        told.contains(&format!(
            "taken by {bob_on} → delivered by {alice_on} to you"
        )),
        "{told}"
    );
    let line = wait_message(&bob, "hello from bob").await;
    assert_eq!(line["delivered"], format!("you={bob_on}"), "{line:#}");

    // Alice opens a second member: another client, whose socket lands away from hers.
    alice.click("btn-second").await;
    let open = "const s = document.querySelector('[data-testid=room-socket-second]'); \
                return s && s.dataset.status === 'open' && s.dataset.replica;";
    let second_on = alice
        .wait_until("the second member's socket to open", secs(15), open)
        .await;
    let second_on = str_of(&second_on).to_owned();
    assert_ne!(
        second_on, alice_on,
        "the second member shares Alice's replica"
    );
    // The rows are redrawn as the sockets change: read both in one go.
    let sockets = alice
        .eval(
            "return Object.fromEntries([...document.querySelectorAll('#room-sockets > li')]\
             .map((li) => [li.dataset.member, { ...li.dataset, text: li.textContent }]));",
        )
        .await;
    assert_eq!(sockets["you"]["replica"], alice_on.as_str(), "{sockets:#}");
    let second = &sockets["second member"];
    assert_eq!(second["replica"], second_on.as_str(), "{sockets:#}");
    assert!(
        words(str_of(&second["text"])).contains(&format!("socket on {second_on}")),
        "{sockets:#}"
    );
    let second_id = str_of(&second["clientId"]).to_owned();
    assert!(!both.contains_key(&second_id));
    let mut three = both.clone();
    three.insert(second_id.clone(), second_on.clone());
    wait_members(&alice, &three).await;
    wait_members(&bob, &three).await;

    // One message from Alice: her page collects who delivered it to each of its sockets.
    say(&alice, "btn-room-send", "hello from alice").await;
    let delivered = format!("you={alice_on},second member={second_on}");
    let has_both = format!(
        "return (() => {{ {ROOM_LOG_JS} }})().find((l) => l.kind === 'message' \
         && l.text.startsWith('hello from alice') && l.delivered === '{delivered}');"
    );
    let line = alice
        .wait_until(
            "both of Alice's sockets to get her message",
            secs(5),
            &has_both,
        )
        .await;
    assert_eq!(line["from"], alice_on.as_str(), "{line:#}");
    let line = wait_message(&bob, "hello from alice").await;
    assert_eq!(line["from"], alice_on.as_str(), "{line:#}");
    assert_eq!(line["delivered"], format!("you={bob_on}"), "{line:#}");
    // And one sent by the second member is taken by its own replica.
    say(
        &alice,
        "btn-room-send-second",
        "hello from the second member",
    )
    .await;
    let line = wait_message(&bob, "hello from the second member").await;
    assert_eq!(line["from"], second_on.as_str(), "{line:#}");

    // Bob closes his browser: Alice sees him leave, and the list drops him.
    drop(bob);
    let left = format!(
        "return (() => {{ {ROOM_LOG_JS} }})().find((l) => l.kind === 'presence' \
         && l.event === 'leave' && l.clientId === '{bob_id}');"
    );
    let line = alice
        .wait_until("Bob's leave in Alice's room", secs(5), &left)
        .await;
    assert_eq!(line["replica"], bob_on.as_str(), "{line:#}");
    three.remove(&bob_id);
    wait_members(&alice, &three).await;

    // Alice's replica dies; what is published meanwhile comes back when her page rejoins.
    alice.click("btn-second").await;
    cluster.replica(&alice_on).proc.kill();
    for text in ["missed 1", "missed 2"] {
        let (status, body) = cluster
            .post(
                &format!("/api/channels/{LOBBY}/publish"),
                Some(crate::support::API_KEY),
                None,
                &serde_json::json!({ "text": text }).to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let replayed = "return (() => { const log = (() => { ".to_owned()
        + ROOM_LOG_JS
        + " })(); return log.filter((l) => l.kind === 'message' && l.text.startsWith('missed')); })()\
           .filter((l) => l.replayed === 'true').length === 2;";
    alice
        .wait_until("the messages missed to be replayed", secs(15), &replayed)
        .await;
    let log = alice.eval(ROOM_LOG_JS).await;
    let log = log.as_array().unwrap();
    let missed: Vec<_> = log
        .iter()
        .filter(|l| l["kind"] == "message" && str_of(&l["text"]).starts_with("missed"))
        .collect();
    assert_eq!(missed.len(), 2, "each once: {log:#?}");
    assert!(
        str_of(&missed[0]["text"]).starts_with("missed 1"),
        "in order: {log:#?}"
    );
    let now_on = alice.text("ws-by").await;
    assert_ne!(now_on, alice_on);
    for line in &missed {
        assert_eq!(line["delivered"], format!("you={now_on}"), "{line:#}");
        assert!(
            str_of(&line["text"]).contains("replayed after reconnect"),
            "{line:#}"
        );
    }
    assert!(
        log.iter().any(|l| l["event"] == "rejoined"),
        "no rejoin line: {log:#?}"
    );
    assert_eq!(alice.attr("room-status", "data-status").await, "in");
    assert_no_console_errors(&alice, |message| is_failed_socket(message, &alice_id)).await;
}

/// A page whose browser carries `sticky=<replica>`, so nginx renders it there and puts its
/// socket there.
async fn open_page_on(cluster: &TestCluster, driver: &Chromedriver, replica: &str) -> Browser {
    let page = open_page(cluster, driver, 1280, 900).await;
    // The page's own cookie is HttpOnly: removed through WebDriver, then set anew as a
    // person's browser would have it from an earlier visit.
    page.client.delete_cookie("sticky").await.unwrap();
    page.eval(&format!(
        "document.cookie = 'sticky={replica}; Path=/; SameSite=Lax'; return true;"
    ))
    .await;
    page.goto(&format!("{}/", cluster.base())).await;
    page.wait_until("the page's socket to open", secs(10), OPEN_JS)
        .await;
    assert_eq!(page.text("page-by").await, replica);
    page
}

async fn set_value(page: &Browser, id: &str, value: &str) {
    let value = serde_json::to_string(value).unwrap();
    page.eval(&format!(
        "document.getElementById('{id}').value = {value}; return true;"
    ))
    .await;
}

async fn join_room(page: &Browser, room: &str) {
    set_value(page, "room-name", room).await;
    page.click("btn-room-join").await;
    page.wait_until(
        "the room to be joined",
        secs(5),
        "return document.getElementById('room-status').dataset.status === 'in';",
    )
    .await;
    assert_eq!(page.text("room-status").await, format!("in {room}"));
}

async fn say(page: &Browser, button: &str, text: &str) {
    set_value(page, "room-text", text).await;
    page.click(button).await;
}

/// The room's line for the message whose text starts with `text`, once it is there.
async fn wait_message(page: &Browser, text: &str) -> Value {
    let found = format!(
        "return (() => {{ {ROOM_LOG_JS} }})().find((l) => l.kind === 'message' \
         && l.text.startsWith({}));",
        serde_json::to_string(text).unwrap()
    );
    page.wait_until(&format!("`{text}` in the room"), secs(5), &found)
        .await
}

/// Waits until the member list shows exactly `members` (client id -> replica).
async fn wait_members(page: &Browser, members: &BTreeMap<String, String>) {
    let want = serde_json::to_string(members).unwrap();
    let shown = format!(
        "const shown = (() => {{ {ROOM_MEMBERS_JS} }})(); const want = {want}; \
         return Object.keys(shown).length === Object.keys(want).length \
         && Object.entries(want).every(([id, r]) => shown[id] === r);"
    );
    page.wait_until("the member list", secs(5), &shown).await;
}

/// The text of every lesson step, by id, with whether it is done and whether it is next.
const LESSONS_JS: &str = "return Object.fromEntries([...document.querySelectorAll('#lessons > li')]\
    .map((li) => [li.dataset.lesson, { done: li.dataset.done, next: li.dataset.next, text: li.textContent }]));";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sentence_follows_what_the_page_knows_now() {
    let mut cluster = TestCluster::start(3);
    let driver = Chromedriver::start(cluster.dir.path());
    let page = open_page(&cluster, &driver, 1280, 900).await;
    arm_console_check(&page).await;
    let page_by = page.text("page-by").await;
    let client_id = page.text("client-id").await;
    page.wait_until("the topology to draw app-1..app-3", secs(5), DRAWN_JS)
        .await;

    // A replica's colour is its id's: another replica appearing changes no one's colour.
    let colours = "return JSON.stringify(window.stickyws.state().replicas\
                   .filter((r) => r.id !== 'app-0').map((r) => [r.id, r.colour]));";
    let before = page.eval(colours).await;
    page.eval(
        "import('/static/replicas.js').then((m) => { m.noteReplica('app-0'); window.added = true; }); \
         return true;",
    )
    .await;
    page.wait_until(
        "app-0 to be noted",
        secs(5),
        "return window.added === true;",
    )
    .await;
    assert_eq!(page.eval(colours).await, before);
    let distinct: BTreeSet<String> = serde_json::from_str::<Vec<(String, String)>>(str_of(&before))
        .unwrap()
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    assert_eq!(distinct.len(), 3, "{before}");

    // The guided path starts at round robin; without drills, the drill steps say so.
    let lessons = page.eval(LESSONS_JS).await;
    assert_eq!(lessons["round-robin"]["next"], "true", "{lessons:#}");
    for drill in ["kill", "drain", "restart", "redis-stop", "redis-start"] {
        let text = str_of(&lessons[drill]["text"]);
        assert!(text.contains("does not offer"), "{drill}: {text}");
    }
    assert_eq!(page.attr("drills", "hidden").await, "true");
    page.press("btn-echo-rr", 6).await;
    page.wait_until("every press to settle", secs(8), SETTLED_JS)
        .await;
    page.wait_until(
        "round robin ticked off",
        secs(3),
        "return document.querySelector('[data-lesson=round-robin]').dataset.done === 'true';",
    )
    .await;

    // The records log panel shows this client's own lines: the page, its socket, the presses.
    page.click("btn-records").await;
    let shown = page
        .wait_until(
            "the records log lines",
            secs(5),
            "const r = document.getElementById('records'); return r.dataset.state === 'shown' \
             && [...r.querySelectorAll('.records-line')].map((l) => l.dataset.event);",
        )
        .await;
    let events: BTreeSet<&str> = shown.as_array().unwrap().iter().map(str_of).collect();
    for event in ["page", "connect", "http-echo"] {
        assert!(events.contains(event), "{event} not in {events:?}");
    }
    let titles = page
        .eval("return [...document.querySelectorAll('.records-line')].map((l) => l.title);")
        .await;
    for line in titles.as_array().unwrap() {
        assert!(str_of(line).contains(&format!("| {client_id} |")), "{line}");
    }
    page.wait_until(
        "the records lesson ticked off",
        secs(3),
        "return document.querySelector('[data-lesson=records]').dataset.done === 'true';",
    )
    .await;

    // Before anything fails, the cookie's replica is where sticky requests go.
    let hint = page.text("notes-cookie-hint").await;
    assert_eq!(
        hint,
        format!("The cookie names {page_by}, so nginx sends these there.")
    );

    // The page's replica drains (SIGTERM): it closes the socket with 1012 and exits. The page
    // says it stopped, not that it restarts, and no sentence still sends anything there.
    let status = cluster
        .replica(&page_by)
        .proc
        .signal_and_wait(nix::sys::signal::Signal::SIGTERM, secs(15));
    assert!(status.is_some(), "{page_by} did not exit on SIGTERM");
    let moved = page
        .wait_until(
            "the socket to reopen elsewhere",
            secs(10),
            &format!(
                "const s = window.stickyws.state(); \
                 return s.wsState === 'open' && s.wsBy !== '{page_by}' && s.wsBy;"
            ),
        )
        .await;
    let moved = str_of(&moved).to_owned();
    let closed = format!("socket on {page_by} closed: replica stopping (1012)");
    let said = format!("return (() => {{ {EVENTS_JS} }})().some((e) => e.includes('{closed}'));");
    page.wait_until("the feed to say the socket closed", secs(3), &said)
        .await;
    let events = page.eval(EVENTS_JS).await;
    let events: Vec<&str> = events.as_array().unwrap().iter().map(str_of).collect();
    assert!(
        !events.iter().any(|e| e.contains("restarting")),
        "{events:#?}"
    );
    // At once, without waiting for its announcement to expire.
    for (id, says) in [
        ("notes-cookie-hint", "backup"),
        ("why-btn-echo-sticky", "backup"),
        ("why-reconnect", "backup"),
        ("replica-count", page_by.as_str()),
    ] {
        let text = page.text(id).await;
        assert!(text.contains(says), "#{id}: {text}");
        assert!(!text.contains("sends these there"), "#{id}: {text}");
    }
    // Once the replicas' list drops it (announcements live 6 s, the page polls every 3 s).
    page.wait_until(
        "the count to drop",
        secs(12),
        "return document.getElementById('replica-count').textContent.startsWith('2 replicas announced');",
    )
    .await;
    let node = format!(
        "return document.querySelector('#topology [data-node-replica=\"{page_by}\"]').dataset.status;"
    );
    assert_eq!(page.eval(&node).await, "down");
    assert_eq!(page.text("ws-by").await, moved);

    // Forgetting the cookie: the sticky buttons and the hints say there is none now.
    lab_press(&page, "btn-forget").await;
    for (id, says) in [
        ("why-btn-echo-sticky", "no sticky cookie now"),
        ("why-btn-direct-sticky", "no sticky cookie now"),
        ("notes-cookie-hint", "no sticky cookie now"),
        ("why-reconnect", "round robin"),
    ] {
        let text = page.text(id).await;
        assert!(text.contains(says), "#{id}: {text}");
    }

    // A feed longer than its panel says there is more below.
    page.press("btn-echo-rr", 30).await;
    page.wait_until("every press to settle", secs(10), SETTLED_JS)
        .await;
    page.wait_until(
        "the feed to say it holds more",
        secs(3),
        "return !document.getElementById('feed-more').hidden;",
    )
    .await;

    // A second tab of this page: a client of its own, which the first tab learns of.
    let first = page.client.window().await.unwrap();
    let tab = page.client.new_window(true).await.unwrap();
    page.client.switch_to_window(tab.handle).await.unwrap();
    page.goto(&format!("{}/", cluster.base())).await;
    page.wait_until("the second tab's socket to open", secs(10), OPEN_JS)
        .await;
    let second_id = page.text("client-id").await;
    assert_ne!(second_id, client_id);
    page.client.switch_to_window(first).await.unwrap();
    let step = page
        .wait_until(
            "the second tab's step ticked off",
            secs(5),
            "const s = document.querySelector('[data-lesson=\"second-tab\"]');              return s.dataset.done === 'true' && s.textContent;",
        )
        .await;
    assert!(str_of(&step).contains(&second_id[..8]), "{step}");
    assert_no_console_errors(&page, |message| is_failed_socket(message, &client_id)).await;
}

/// A page on the real `stickyws cluster`, once its drills panel shows the supervisor's rows.
async fn open_drills_page(cluster: &DemoCluster, driver: &Chromedriver) -> Browser {
    let page = driver.open(1280, 900).await;
    page.goto(&format!("{}/", cluster.url)).await;
    page.wait_until("the page's socket to open", secs(15), OPEN_JS)
        .await;
    page.wait_until(
        "the drills panel with three replicas",
        secs(5),
        "return !document.getElementById('drills').hidden \
         && document.querySelectorAll('#drills-rows [data-replica-row]').length === 3;",
    )
    .await;
    page.wait_until(
        "three replicas up",
        secs(5),
        "return document.getElementById('replica-count').textContent.startsWith('3 of 3 replicas up');",
    )
    .await;
    page
}

/// Holds once the feed says the drill `action` was carried out; its outcome ("ok", "error").
fn drill_done_js(action: &str) -> String {
    format!(
        "const d = document.querySelector('#feed > li[data-drill=\"{action}\"][data-drill-outcome]'); \
         return d && d.dataset.drillOutcome;"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_kill_moves_the_socket_and_recovers_what_was_published_while_away() {
    let cluster = DemoCluster::start().await;
    let driver = Chromedriver::start(cluster.dir.path());
    let page = open_drills_page(&cluster, &driver).await;
    arm_console_check(&page).await;
    let ws_by = page.text("ws-by").await;
    let client_id = page.text("client-id").await;
    let mine =
        format!("return document.querySelector('[data-replica-row=\"{ws_by}\"]').dataset.mine;");
    assert_eq!(
        page.eval(&mine).await,
        "true",
        "the row of my socket's replica is marked"
    );
    assert_eq!(page.attr("away-armed", "checked").await, "true");

    page.click(&format!("drill-kill-{ws_by}")).await;
    let outcome = page
        .wait_until("the kill to be done", secs(5), &drill_done_js("kill"))
        .await;
    assert_eq!(outcome, "ok");
    let answered = std::time::Instant::now();
    // The count and the picture follow the supervisor within a second of its answer.
    page.wait_until(
        "the count to drop",
        secs(2),
        "return document.getElementById('replica-count').textContent.startsWith('2 of 3 replicas up');",
    )
    .await;
    let dropped = answered.elapsed();
    assert!(dropped < Duration::from_millis(1500), "took {dropped:?}");
    eprintln!("replica count dropped {dropped:?} after the kill was answered");
    let node = format!(
        "return document.querySelector('#topology [data-node-replica=\"{ws_by}\"]').dataset.status;"
    );
    assert_eq!(page.eval(&node).await, "down");

    // The socket moves; the five published while it was down all come back.
    let moved = page
        .wait_until(
            "the socket to reopen elsewhere",
            secs(15),
            &format!(
                "const s = window.stickyws.state(); \
                 return s.wsState === 'open' && s.wsBy !== '{ws_by}' && s.wsBy;"
            ),
        )
        .await;
    let moved = str_of(&moved).to_owned();
    let result = page
        .wait_until(
            "5 of 5 recovered",
            secs(10),
            "const r = document.getElementById('away-result').dataset; \
             return r.state === 'back' && r.recovered === '5' && r;",
        )
        .await;
    assert_eq!(result["sent"], "5", "{result}");
    assert_eq!(result["failed"], "0", "{result}");
    assert_eq!(
        result["replayed"], "5",
        "the reconnect waited for them: {result}"
    );
    let named = page
        .eval(&format!("return (() => {{ {MESSAGES_JS} }})().filter((m) => m.text.includes('away ')).map((m) => m.text);"))
        .await;
    let named = named.as_array().unwrap();
    assert_eq!(named.len(), 5, "{named:#?}");
    for text in named {
        assert!(
            str_of(text).starts_with("Published by this page while its socket was away"),
            "{text}"
        );
    }
    let said = words(&page.text("away-recovered").await);
    assert!(said.starts_with("5 of 5 recovered"), "{said}");
    assert!(said.contains(&format!("on {moved}")), "{said}");

    // Nothing still claims the dead replica: not the header, the hints, the buttons' reasons.
    assert_eq!(page.text("ws-by").await, moved);
    for id in ["notes-cookie-hint", "why-btn-echo-sticky", "why-reconnect"] {
        let text = page.text(id).await;
        assert!(
            !text.contains("sends these there") && !text.contains("puts it back there"),
            "#{id}: {text}"
        );
        if page.text("page-by").await == ws_by {
            assert!(
                text.contains("down") || text.contains("backup"),
                "#{id}: {text}"
            );
        }
    }
    let kill_step = page.eval(LESSONS_JS).await["kill"].clone();
    assert_eq!(kill_step["done"], "true", "{kill_step:#}");
    // nginx does not try a POST again on another replica, so a publish that reached the dead
    // one fails with 502; the page tries it again with the same Idempotency-Key.
    let retried = |message: &str| {
        message.contains("/api/publish/") && (message.contains(" 502") || message.contains(" 504"))
    };
    assert_no_console_errors(&page, |message| {
        is_failed_socket(message, &client_id) || retried(message)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_drain_and_restart_a_replica_whose_counter_starts_over() {
    let cluster = DemoCluster::start().await;
    let driver = Chromedriver::start(cluster.dir.path());
    let page = open_drills_page(&cluster, &driver).await;
    let page_by = page.text("page-by").await;
    let other = REPLICAS
        .iter()
        .find(|r| **r != page_by)
        .unwrap()
        .to_string();

    // Drain another replica: it exits, the row and the count say so.
    page.click(&format!("drill-drain-{other}")).await;
    page.wait_until("the drain to be done", secs(20), &drill_done_js("drain"))
        .await;
    let row =
        format!("return document.querySelector('[data-replica-row=\"{other}\"]').dataset.state;");
    page.wait_until(
        "the drained replica down",
        secs(15),
        &format!("return ((() => {{ {row} }})()) === 'down';"),
    )
    .await;
    assert!(
        page.text("replica-count")
            .await
            .starts_with("2 of 3 replicas up")
    );
    // Start it again from its row: the same button now says Start.
    assert_eq!(page.text(&format!("drill-restart-{other}")).await, "Start");

    // Restart the page's own replica, which counted this page's visit: once back, its
    // counter has started over, and the page says so.
    let before = page.attr("lab-visits", "data-shared").await;
    assert!(!before.is_empty());
    page.click(&format!("drill-restart-{page_by}")).await;
    let shown = page
        .wait_until(
            "the restart and its counter starting over",
            secs(30),
            "const n = document.getElementById('drill-restart'); return !n.hidden && { ...n.dataset };",
        )
        .await;
    assert_eq!(shown["replica"], page_by.as_str(), "{shown}");
    let (was, now): (u64, u64) = (
        str_of(&shown["before"]).parse().unwrap(),
        str_of(&shown["after"]).parse().unwrap(),
    );
    assert!(was >= 1 && now < was, "{shown}");
    let said = words(&page.text("drill-restart").await);
    assert!(
        said.contains(&format!("was {was} and started over at {now}")),
        "{said}"
    );
    let restart_step = page.eval(LESSONS_JS).await["restart"].clone();
    assert_eq!(restart_step["done"], "true", "{restart_step:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_redis_stop_turns_the_box_red_refuses_publishes_and_keeps_the_rest_working() {
    let cluster = DemoCluster::start().await;
    let driver = Chromedriver::start(cluster.dir.path());
    let page = open_drills_page(&cluster, &driver).await;
    let health = "return document.querySelector('#topology [data-node=\"redis\"]').dataset.health;";
    assert_eq!(page.eval(health).await, "up");

    page.click("drill-redis-stop").await;
    page.wait_until("Redis stopped", secs(5), &drill_done_js("redis-stop"))
        .await;
    page.wait_until(
        "the Redis box red",
        secs(2),
        &format!("return ((() => {{ {health} }})()) === 'down';"),
    )
    .await;
    assert_eq!(page.attr("drill-redis-row", "data-health").await, "down");
    let why = page.text("why-btn-publish").await;
    assert!(why.contains("503"), "{why}");

    // A publish is refused with 503, said why; echo, the socket and in-memory delivery work.
    for button in ["btn-publish", "btn-echo-rr", "btn-ws", "btn-direct-sticky"] {
        page.click(button).await;
    }
    page.wait_until("every press to settle", secs(10), SETTLED_JS)
        .await;
    let presses = page.eval(PRESSES_JS).await;
    let presses = presses.as_array().unwrap();
    let of = |button: &str| entries_of(presses, button)[0].clone();
    assert_eq!(of("btn-publish")["outcome"], "error");
    let note = page
        .eval("return document.querySelector('#feed > li[data-button=btn-publish] .entry-note').textContent;")
        .await;
    assert!(
        str_of(&note).contains("503") && str_of(&note).contains("still work"),
        "{note}"
    );
    assert_eq!(of("btn-echo-rr")["outcome"], "answered");
    assert_eq!(of("btn-ws")["outcome"], "delivered");
    assert_eq!(of("btn-direct-sticky")["outcome"], "delivered");

    // Redis back: the box turns green again and publishes go through.
    page.click("drill-redis-start").await;
    page.wait_until("Redis started", secs(10), &drill_done_js("redis-start"))
        .await;
    page.wait_until(
        "the Redis box green again",
        secs(15),
        &format!("return ((() => {{ {health} }})()) === 'up';"),
    )
    .await;
    page.wait_until(
        "a publish to go through",
        secs(15),
        "document.getElementById('btn-publish').click(); \
         return [...document.querySelectorAll('#feed > li[data-button=btn-publish]')]\
         .some((li) => li.dataset.outcome === 'delivered');",
    )
    .await;

    // Frozen for 2 s: amber while it holds every request, green once it resumes.
    page.eval("document.getElementById('drill-freeze-seconds').value = '2'; return true;")
        .await;
    page.click("drill-freeze").await;
    page.wait_until(
        "the Redis box frozen",
        secs(3),
        &format!("return ((() => {{ {health} }})()) === 'frozen';"),
    )
    .await;
    page.wait_until(
        "the Redis box green after the freeze",
        secs(15),
        &format!("return ((() => {{ {health} }})()) === 'up';"),
    )
    .await;
}

/// `docs/drill-{kill,restart,redis}.png` (1280x900, the page's top) and
/// `docs/drill-{kill,restart,redis}-narrow.png` (a 390x844 phone: the picture, the drills panel
/// and the feed), each right after its drill on the real `stickyws cluster`. As with
/// [`screenshots_of_the_page_in_use`], docs/ is written only with `STICKYWS_SCREENSHOTS=1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "renders docs/drill-*.png; run scripts/screenshots"]
async fn screenshots_of_each_drill() {
    let cluster = DemoCluster::start().await;
    let out = if std::env::var("STICKYWS_SCREENSHOTS").as_deref() == Ok("1") {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/docs"))
    } else {
        cluster.dir.path().to_owned()
    };
    let driver = Chromedriver::start(cluster.dir.path());
    let page = open_drills_page(&cluster, &driver).await;
    let still = "return document.querySelectorAll('.trail, .miss').length === 0 \
                 && document.getAnimations().every((a) => a.playState !== 'running');";
    let shoot = |name: &'static str| {
        let (page, out) = (&page, out.clone());
        async move {
            page.wait_until("the animations to end", secs(5), still)
                .await;
            page.eval("window.scrollTo(0, 0); return true;").await;
            std::fs::write(out.join(format!("{name}.png")), page.screenshot().await).unwrap();
            page.viewport(390, 844, true).await;
            let narrow =
                "return document.querySelector('#topology svg').viewBox.baseVal.width < 400;";
            page.wait_until("the narrow layout", secs(5), narrow).await;
            let shot = page.screenshot_of(".side").await;
            std::fs::write(out.join(format!("{name}-narrow.png")), shot).unwrap();
            page.viewport(1280, 900, false).await;
        }
    };
    for button in [
        "btn-echo-rr",
        "btn-echo-rr",
        "btn-echo-rr",
        "btn-publish",
        "btn-direct-rr",
    ] {
        page.click(button).await;
        page.wait_until("the press to settle", secs(5), SETTLED_JS)
            .await;
    }

    // Kill the socket's replica, publishing while away: moved, 5 of 5 recovered.
    let ws_by = page.text("ws-by").await;
    page.click(&format!("drill-kill-{ws_by}")).await;
    page.wait_until(
        "5 of 5 recovered",
        secs(20),
        "const r = document.getElementById('away-result').dataset; \
         return r.state === 'back' && r.recovered === '5';",
    )
    .await;
    page.click("btn-publish").await;
    page.wait_until("the press to settle", secs(5), SETTLED_JS)
        .await;
    shoot("drill-kill").await;

    // Start it again (Restart on a down replica starts it), then restart the page's replica.
    page.click(&format!("drill-restart-{ws_by}")).await;
    page.wait_until(
        "the replica back",
        secs(20),
        "return document.getElementById('replica-count').textContent.startsWith('3 of 3 replicas up');",
    )
    .await;
    let page_by = page.text("page-by").await;
    page.click(&format!("drill-restart-{page_by}")).await;
    page.wait_until(
        "the counter starting over",
        secs(30),
        "return !document.getElementById('drill-restart').hidden;",
    )
    .await;
    shoot("drill-restart").await;

    // Redis stopped: the box red, a publish refused with 503, echo and the socket working.
    page.click("drill-redis-stop").await;
    page.wait_until("Redis stopped", secs(5), &drill_done_js("redis-stop"))
        .await;
    page.wait_until(
        "the Redis box red",
        secs(3),
        "return document.querySelector('#topology [data-node=\"redis\"]').dataset.health === 'down';",
    )
    .await;
    for button in ["btn-publish", "btn-echo-rr", "btn-ws", "btn-direct-sticky"] {
        page.click(button).await;
        page.wait_until("the press to settle", secs(5), SETTLED_JS)
            .await;
    }
    shoot("drill-redis").await;
}

/// On `stickyws cluster --redis-cluster` the page names the slot of its client and the master
/// serving it, and that master does serve it (it answers a key of the slot without MOVED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_the_page_shows_its_clients_slot_and_master() {
    let cluster = DemoCluster::start_with(&["--redis-cluster"]).await;
    let driver = Chromedriver::start(cluster.dir.path());
    let page = driver.open(1280, 900).await;
    page.goto(&format!("{}/", cluster.url)).await;
    page.wait_until("the page's socket to open", secs(15), OPEN_JS)
        .await;
    let text = page
        .wait_until(
            "the shard line",
            secs(10),
            "const s = document.getElementById('shard'); \
             return !s.hidden && /slot \\d+ on 127\\.0\\.0\\.1:\\d+/.test(s.textContent) && s.textContent;",
        )
        .await;
    let text = text.as_str().unwrap().to_owned();
    let client_id = page.eval("return document.body.dataset.clientId;").await;
    let client_id = client_id.as_str().unwrap();
    let after = text.split("your client: slot ").nth(1).unwrap();
    let (slot, rest) = after.split_once(" on ").unwrap();
    let master: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect::<String>()
        .trim_end_matches('.')
        .to_owned();
    let slot: i64 = slot
        .parse()
        .unwrap_or_else(|_| panic!("a slot number: {text}"));
    let key = format!("stickyws:{{client:{client_id}}}");
    crate::support::redis_cluster::assert_master_serves(&master, &key, slot).await;
}
