//! The records log: one line per event, for people, appended by every replica to one shared file.
//!
//! `time | replica | event | client | detail`. Each line reaches the file in a single `write` on
//! a descriptor opened with `O_APPEND`, so lines from several processes never interleave within
//! a line. Writing happens on a thread of its own, so a slow disk never stalls a socket; nothing
//! is dropped (the queue is unbounded, and `Records::close` waits for it to drain).

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::SystemTime;

/// Events of the records log (the contract names these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Start,
    Page,
    Subscribed,
    BrokerLost,
    Connect,
    Disconnect,
    HttpEcho,
    Direct,
    Publish,
    Broadcast,
    Deliver,
    NotHere,
    WsRecv,
    Replay,
    SlowConsumer,
    Subscribe,
    Unsubscribe,
    ChannelPublish,
    ChannelDeliver,
    Join,
    Leave,
    CacheHit,
    CacheMiss,
    Rebuild,
    Evict,
    /// A fault drill this replica forwarded to the cluster's supervisor.
    Drill,
    Stop,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Start => "start",
            Event::Page => "page",
            Event::Subscribed => "subscribed",
            Event::BrokerLost => "broker-lost",
            Event::Connect => "connect",
            Event::Disconnect => "disconnect",
            Event::HttpEcho => "http-echo",
            Event::Direct => "direct",
            Event::Publish => "publish",
            Event::Broadcast => "broadcast",
            Event::Deliver => "deliver",
            Event::NotHere => "not-here",
            Event::WsRecv => "ws-recv",
            Event::Replay => "replay",
            Event::Subscribe => "subscribe",
            Event::Unsubscribe => "unsubscribe",
            Event::ChannelPublish => "channel-publish",
            Event::ChannelDeliver => "channel-deliver",
            Event::Join => "join",
            Event::Leave => "leave",
            Event::SlowConsumer => "slow-consumer",
            Event::CacheHit => "cache-hit",
            Event::CacheMiss => "cache-miss",
            Event::Rebuild => "rebuild",
            Event::Evict => "evict",
            Event::Drill => "drill",
            Event::Stop => "stop",
        }
    }
}

/// Handle on the records log; cheap to clone.
#[derive(Clone, Debug)]
pub struct Records {
    replica: Arc<str>,
    writer: Option<Arc<Writer>>,
}

#[derive(Debug)]
struct Writer {
    // Mutex only so `close` can take the sender and join the thread; `send` is the hot path
    // and holds the lock for a queue push.
    lines: Mutex<Option<mpsc::Sender<String>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Longest detail kept; a record is a line for a person, not a copy of the message.
const MAX_DETAIL: usize = 160;

impl Records {
    /// Opens `path` for appending (creating it) and starts the writer thread.
    pub fn open(replica: &str, path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let (tx, rx) = mpsc::channel::<String>();
        let thread = std::thread::Builder::new()
            .name("records".to_owned())
            .spawn(move || write_lines(file, rx))?;
        Ok(Self {
            replica: replica.into(),
            writer: Some(Arc::new(Writer {
                lines: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
            })),
        })
    }

    /// A records log that writes nothing (`RECORDS_LOG=off`).
    pub fn disabled(replica: &str) -> Self {
        Self {
            replica: replica.into(),
            writer: None,
        }
    }

    /// Appends one record. `client` is `-` when the event has none. `detail` is formatted only
    /// when the log is on (pass `format_args!` on hot paths: with `RECORDS_LOG=off` they then
    /// format nothing).
    pub fn record(&self, event: Event, client: Option<&str>, detail: impl std::fmt::Display) {
        let Some(writer) = &self.writer else { return };
        let detail = detail.to_string();
        let line = format_line(SystemTime::now(), &self.replica, event, client, &detail);
        let guard = writer.lines.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = guard.as_ref() {
            // The writer thread only stops after `close`, so a send cannot fail before it.
            let _ = tx.send(line);
        }
    }

    /// Flushes every queued record and stops the writer thread.
    pub fn close(&self) {
        let Some(writer) = &self.writer else { return };
        drop(
            writer
                .lines
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        if let Some(thread) = writer
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = thread.join();
        }
    }
}

/// Writes lines as they come; what has queued up meanwhile goes out in one `write` (whole lines
/// only, so the O_APPEND guarantee still holds per line).
fn write_lines(mut file: File, rx: mpsc::Receiver<String>) {
    let mut batch = String::new();
    while let Ok(first) = rx.recv() {
        batch.clear();
        batch.push_str(&first);
        while batch.len() < 32 * 1024 {
            match rx.try_recv() {
                Ok(line) => batch.push_str(&line),
                Err(_) => break,
            }
        }
        if let Err(err) = file.write_all(batch.as_bytes()) {
            tracing::warn!(cause = %err, "records log write failed");
        }
    }
}

/// One line, newline-terminated. Separators and line breaks in client-controlled text are
/// replaced, so a record always has exactly five fields.
pub fn format_line(
    time: SystemTime,
    replica: &str,
    event: Event,
    client: Option<&str>,
    detail: &str,
) -> String {
    let mut line = String::with_capacity(96 + detail.len().min(MAX_DETAIL));
    let _ = write!(
        line,
        "{} | {} | {:<15} | {} | ",
        humantime::format_rfc3339_millis(time),
        replica,
        event.as_str(),
        client.unwrap_or("-"),
    );
    for (i, c) in detail.chars().enumerate() {
        if i == MAX_DETAIL {
            line.push('…');
            break;
        }
        line.push(match c {
            '|' => '¦',
            c if c.is_control() => ' ',
            c => c,
        });
    }
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn a_line_has_five_fields_in_contract_order() {
        let time = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let line = format_line(time, "app-1", Event::Publish, Some("c1"), "receivers=1");
        assert_eq!(
            line,
            "2023-11-14T22:13:20.123Z | app-1 | publish         | c1 | receivers=1\n"
        );
    }

    #[test]
    fn client_text_cannot_break_the_line_or_add_fields() {
        let line = format_line(SystemTime::now(), "a", Event::WsRecv, None, "x | y\nz\r");
        assert_eq!(line.matches(" | ").count(), 4, "{line}");
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.ends_with("| x ¦ y z \n"), "{line}");
    }

    #[test]
    fn long_details_are_cut() {
        let line = format_line(
            SystemTime::now(),
            "a",
            Event::WsRecv,
            None,
            &"é".repeat(500),
        );
        assert!(line.chars().count() < 260, "{}", line.len());
        assert!(line.ends_with("…\n"));
    }

    #[test]
    fn records_from_two_handles_land_whole_in_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.log");
        let a = Records::open("app-1", &path).unwrap();
        let b = Records::open("app-2", &path).unwrap();
        let writers: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .map(|records| {
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        records.record(
                            Event::Deliver,
                            Some("c"),
                            format!("n={i} {}", "x".repeat(100)),
                        );
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        a.close();
        b.close();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 4000);
        for line in lines {
            let fields: Vec<_> = line.split(" | ").collect();
            assert_eq!(fields.len(), 5, "{line}");
            assert!(
                fields[4].starts_with("n=") && fields[4].ends_with(&"x".repeat(100)),
                "{line}"
            );
        }
    }
}
