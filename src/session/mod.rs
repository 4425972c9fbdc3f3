//! One WebSocket session: the reader loop parses the client's frames, the writer drains the
//! socket's queue and pings; both watch shutdown, and when either side ends the other does too.
//!
//! Written over `Sink<Message>` + `Stream<Item = Result<Message, _>>`, so tests can drive it
//! with channels instead of a network socket. Channel frames are [`channels`]'; what the
//! writer writes around a subscription is [`gate`]'s.

mod channels;
mod gate;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::future::BoxFuture;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use self::gate::Gate;
use crate::alarm::Reason;
use crate::broker::Broker;
use crate::channel::ChannelName;
use crate::delivery::Delivery;
use crate::frame::{
    ClientFrame, FrameError, Outgoing, ServerFrame, channel_named, parse_client_frame,
};
use crate::lab::Landing;
use crate::limits::RateLimit;
use crate::records::Event;
use crate::registry::Registration;
use crate::resume::{self, Seen};
use crate::socket_queue;
use crate::target::Target;
use crate::token::{ClientId, Signer};

/// How often an idle socket is pinged; below every proxy's idle timeout (nginx: 60 s default).
pub const PING_EVERY: Duration = Duration::from_secs(25);
/// How long a slow consumer's close frame may wait behind what the client has not yet read.
const SLOW_CLOSE_WAIT: Duration = Duration::from_secs(10);
/// Longest wait for the broker to confirm a new client's subscription before the welcome.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(3);

/// Close codes this server uses (RFC 6455 §7.4.1 and the IANA registry).
pub mod close_code {
    /// The client broke the WebSocket protocol (unmasked or reserved bits, bad opcode, ...).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message (or close reason) was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A message or frame over `MAX_WS_MESSAGE_BYTES`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server is restarting: reconnect, probably elsewhere.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The socket's queue overflowed: it did not read fast enough.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Everything one session needs.
#[derive(Debug)]
pub struct Session {
    pub client: ClientId,
    pub registration: Registration,
    /// The replica's name, records, metrics and the echo: one handle for all of them.
    pub delivery: Delivery,
    pub max_text_bytes: usize,
    pub shutdown: CancellationToken,
    pub broker: Broker,
    /// What a reconnecting client has already seen; None for a fresh one.
    pub resume: Option<Seen>,
    /// Where the socket landed relative to its page, told in the welcome.
    pub landing: Landing,
    /// Checks subscription tokens.
    pub signer: Signer,
    /// Channel publishes per client (`CHANNEL_PUBLISH_RATE`), shared with HTTP.
    pub channel_rate: Arc<RateLimit>,
    /// The socket's queue size (`SOCKET_QUEUE`): also the most messages held back while a
    /// channel subscription is set up.
    pub queue_len: usize,
    /// How much a reconnecting client is replayed, and how long its greeting may take.
    pub replay: ReplayBounds,
}

/// The bounds of one socket's greeting (`MAX_REPLAY_BYTES`, `REPLAY_TIMEOUT_SECS`).
#[derive(Clone, Copy, Debug)]
pub struct ReplayBounds {
    pub max_bytes: usize,
    pub timeout: Duration,
}

impl ReplayBounds {
    pub fn from_limits(limits: &crate::limits::Limits) -> Self {
        Self {
            max_bytes: limits.max_replay_bytes,
            timeout: limits.replay_timeout(),
        }
    }
}

/// Why a session ended, for the records log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    ClientClosed,
    SlowConsumer,
    Shutdown,
    /// Missed messages could not be filled after a lost broker subscription.
    Resync,
    SendFailed,
    PeerSilent,
    /// The client broke the protocol; the socket is closed with this code.
    Fault(u16),
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::ClientClosed => "closed by client",
            End::SlowConsumer => "slow consumer (1013)",
            End::Shutdown => "replica stopping (1012)",
            End::Resync => "missed messages not fillable, resume (1012)",
            End::SendFailed => "send failed",
            End::PeerSilent => "no pong",
            End::Fault(close_code::INVALID_PAYLOAD) => "invalid UTF-8 (1007)",
            End::Fault(close_code::MESSAGE_TOO_BIG) => "message too big (1009)",
            End::Fault(_) => "protocol error (1002)",
        }
    }
}

impl Session {
    // An async block rather than an async fn: an async fn moves its arguments into locals of
    // its own, and its future keeps both copies (360 bytes twice, for every socket's life);
    // the block uses the ones it captured.
    #[allow(clippy::manual_async_fn)]
    pub fn run<S, R>(mut self, mut sink: S, mut stream: R) -> impl Future<Output = ()>
    where
        S: Sink<Message, Error = axum::Error> + Unpin + Send,
        R: Stream<Item = Result<Message, axum::Error>> + Unpin + Send,
    {
        async move {
            // The opening and the closing are boxed: this future lives as long as the socket,
            // and inline their states (broker look-ups, timers) would make every idle socket
            // carry them for its whole life.
            let Some((mut outbox, mut gate)) = Box::pin(self.open(&mut sink)).await else {
                return;
            };
            // Set by the reader whenever anything arrives; the writer closes a socket whose
            // peer stayed silent for two ping periods.
            let heard = AtomicBool::new(true);
            let end = tokio::select! {
                // Lent, not moved: a moved-in copy would sit in the future beside this one.
                end = self.write(&mut sink, &mut outbox, &mut gate, &heard) => end,
                end = self.read(&mut stream, &heard) => end,
            };
            Box::pin(self.close_with(end, &mut sink)).await;
        }
    }

    /// Histories the broker could not read for this resume are replayed by the gap fill once it
    /// can (the socket's queue holds them after the welcome, as any fill); where a fill cannot
    /// stand for the replay (see [`Registration::refill`]) they are said lost.
    fn leave_unread_to_fill(&self, start: &mut resume::Start) {
        for name in std::mem::take(&mut start.unread) {
            let (target, from) = if name == "client" {
                (Target::Client(self.client.clone()), start.welcome.client)
            } else {
                (Target::Broadcast, start.welcome.broadcast)
            };
            if from == crate::cursor::Position::default() {
                // The client named no position in this history: nothing to replay or lose.
                continue;
            }
            if self.registration.refill(&target, from) {
                self.delivery.records().record(
                    Event::Replay,
                    Some(self.client.as_str()),
                    format_args!("{name} history unreadable now: replayed once the broker answers"),
                );
            } else {
                start.lost.push(name);
            }
        }
    }

    /// Waits for the broker's subscription, works out where the stream starts and greets the
    /// client; None when the socket is gone or was closed here. The greeting is bounded like
    /// everything else a socket is sent: by `replay_timeout` (a client that does not read it in
    /// time is a slow consumer, 1013), by the slow-consumer signal, and by shutdown (1012).
    async fn open<S>(&mut self, sink: &mut S) -> Option<(socket_queue::Receiver<Outgoing>, Gate)>
    where
        S: Sink<Message, Error = axum::Error> + Unpin,
    {
        let client = self.client.as_str();
        // With the subscriber connection down the subscription waits for it; a resume is then
        // left to the gap fill, which runs after the resubscribe, so there is nothing to wait
        // for.
        if let Some(subscribed) = self
            .registration
            .subscribed
            .take()
            .filter(|_| !self.broker.subscriber_down())
        {
            match tokio::time::timeout(SUBSCRIBE_WAIT, subscribed).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::warn!(client = %client, cause = %err, "socket held without broker subscription")
                }
                Err(_) => {
                    tracing::warn!(client = %client, "broker subscription not confirmed in time")
                }
            }
        }
        let mut start = resume::start(
            &self.broker,
            &self.client,
            self.delivery.replica(),
            self.resume,
            self.replay.max_bytes,
        )
        .await;
        self.leave_unread_to_fill(&mut start);
        let greeted = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => Err(End::Shutdown),
            _ = self.registration.alarm.slow() => Err(End::SlowConsumer),
            sent = tokio::time::timeout(self.replay.timeout, self.greet(sink, &start)) => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => return None,
                Err(_) => Err(End::SlowConsumer),
            },
        };
        let skip = start.skip;
        // Where this socket's streams start, for the gap fill after a lost subscription: what
        // it was replayed up to, else where it was welcomed.
        let seen = skip.seen();
        for (target, at, welcome) in [
            (
                Target::Client(self.client.clone()),
                seen.client,
                start.welcome.client,
            ),
            (Target::Broadcast, seen.broadcast, start.welcome.broadcast),
        ] {
            let at = if at.epoch.is_known() { at } else { welcome };
            self.registration.started(&target, at);
        }
        // What was not sent is not kept while the close frame waits.
        drop(start);
        if let Err(end) = greeted {
            if end == End::SlowConsumer && self.registration.alarm.raise(Reason::Slow) {
                self.delivery.metrics().slow_consumer();
            }
            Box::pin(self.close_with(end, sink)).await;
            return None;
        }
        let outbox = self.registration.outbox.take()?;
        Some((outbox, Gate::new(skip, self.queue_len)))
    }

    /// Ends the socket as `end` requires, and records it.
    async fn close_with<S>(&mut self, end: End, sink: &mut S)
    where
        S: Sink<Message, Error = axum::Error> + Unpin,
    {
        match end {
            // tungstenite answers a client's close by queueing the reply frame; only a flush
            // writes it, and nothing else is left to flush once the reader has stopped.
            End::ClientClosed => {
                let _ = tokio::time::timeout(CLOSE_WAIT, sink.flush()).await;
            }
            End::Shutdown => {
                let reason = "replica stopping";
                close(sink, close_code::SERVICE_RESTART, reason, CLOSE_WAIT).await;
            }
            End::Fault(code) => {
                // What the client sent after the fault stays unread (tungstenite stops reading
                // there), so dropping the socket now resets the connection, and a proxy whose
                // write upstream fails first (nginx) then drops the close frame on its way.
                // Leave the registry at once; keep only the socket a moment longer.
                self.registration.leave();
                close(sink, code, fault_reason(code), CLOSE_WAIT).await;
                tokio::select! {
                    () = tokio::time::sleep(FAULT_LINGER) => {}
                    () = self.shutdown.cancelled() => {}
                }
            }
            End::SlowConsumer => {
                // Out of the registry at once, so nothing more queues up for it; the close
                // frame then waits behind the backlog for as long as the client takes to read
                // it.
                self.registration.leave();
                let reason = "too slow: send queue full";
                close(sink, close_code::TRY_AGAIN_LATER, reason, SLOW_CLOSE_WAIT).await;
            }
            End::Resync => {
                self.registration.leave();
                let reason = "missed messages: resume from your cursor";
                close(sink, close_code::SERVICE_RESTART, reason, CLOSE_WAIT).await;
            }
            End::SendFailed | End::PeerSilent => {}
        }
        let client = Some(self.client.as_str());
        self.delivery
            .records()
            .record(Event::Disconnect, client, end.as_str());
        if end == End::SlowConsumer {
            self.delivery.records().record(
                Event::SlowConsumer,
                client,
                "queue full, closed with 1013",
            );
        }
    }

    /// The welcome, then what a reconnecting client missed (and whether history was lost).
    async fn greet<S>(&self, sink: &mut S, start: &resume::Start) -> Result<(), axum::Error>
    where
        S: Sink<Message, Error = axum::Error> + Unpin,
    {
        let client = self.client.as_str();
        let welcome = ServerFrame::Welcome {
            replica: self.delivery.replica(),
            client_id: client,
            last_id: start.welcome.client,
            last_broadcast_id: start.welcome.broadcast,
            page_replica: self.landing.page_replica.as_deref(),
            same_replica: self.landing.same_replica,
            state: if self.landing.state_hit {
                "hit"
            } else {
                "rebuilt"
            },
        };
        sink.feed(Message::Text(welcome.to_bytes())).await?;
        for stream in &start.lost {
            let lost = ServerFrame::HistoryLost {
                stream,
                message: "some messages since your last id are no longer kept",
            };
            sink.feed(Message::Text(lost.to_bytes())).await?;
        }
        for frame in &start.replay {
            sink.feed(Message::Text(frame.bytes.clone())).await?;
        }
        for stream in &start.cut {
            let cut = ServerFrame::HistoryLost {
                stream,
                message: "the replay stopped at MAX_REPLAY_BYTES: newer missed messages were not sent",
            };
            sink.feed(Message::Text(cut.to_bytes())).await?;
        }
        if self.resume.is_some() {
            let detail = format!(
                "replayed {} missed, lost: {:?}, cut: {:?}",
                start.replay.len(),
                start.lost,
                start.cut
            );
            self.delivery
                .records()
                .record(Event::Replay, Some(client), &detail);
        }
        sink.flush().await
    }

    async fn write<S>(
        &self,
        sink: &mut S,
        outbox: &mut socket_queue::Receiver<Outgoing>,
        gate: &mut Gate,
        heard: &AtomicBool,
    ) -> End
    where
        S: Sink<Message, Error = axum::Error> + Unpin,
    {
        let alarm = &self.registration.alarm;
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        let mut silent_ticks = 0u8;
        loop {
            tokio::select! {
                biased;
                reason = alarm.any() => return match reason {
                    Reason::Slow => End::SlowConsumer,
                    Reason::Resync => End::Resync,
                },
                // The close frame goes out in `close_with`.
                () = self.shutdown.cancelled() => return End::Shutdown,
                frame = outbox.recv() => {
                    let Some(frame) = frame else { return End::Shutdown };
                    // A peer that stopped reading blocks the send; the overflow signal must
                    // still get through, so race them.
                    // Boxed: a batch's state (the frame, the sink's feed) lives only while it
                    // is written, and inline it would size every idle socket's task for it.
                    tokio::select! {
                        sent = Box::pin(send_batch(sink, frame, outbox, gate)) => match sent {
                            Ok(()) => {}
                            Err(Sent::Failed) => return End::SendFailed,
                            Err(Sent::Overflow) => {
                                self.delivery.metrics().slow_consumer();
                                return End::SlowConsumer;
                            }
                        },
                        _ = alarm.slow() => return End::SlowConsumer,
                    }
                }
                _ = ping.tick() => {
                    if heard.swap(false, Ordering::Relaxed) {
                        silent_ticks = 0;
                    } else {
                        silent_ticks += 1;
                        if silent_ticks >= 2 {
                            return End::PeerSilent;
                        }
                    }
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        return End::SendFailed;
                    }
                }
            }
        }
    }

    async fn read<R>(&self, stream: &mut R, heard: &AtomicBool) -> End
    where
        R: Stream<Item = Result<Message, axum::Error>> + Unpin,
    {
        // Each message is handled by a plain function: the task holds the message only while
        // that runs, and across an await only the read or a boxed broker round trip.
        loop {
            let next = stream.next().await;
            match self.on_message(next, heard) {
                Read::Next => {}
                Read::Wait(pending) => pending.await,
                Read::End(end) => return end,
            }
        }
    }

    fn on_message<'a>(
        &'a self,
        next: Option<Result<Message, axum::Error>>,
        heard: &AtomicBool,
    ) -> Read<'a> {
        let message = match next {
            Some(Ok(message)) => message,
            // A protocol fault (bad UTF-8, an oversized frame) ends the stream with an error
            // and tungstenite sends nothing for it: the session closes with the code.
            Some(Err(err)) => {
                return Read::End(fault_code(&err).map_or(End::ClientClosed, End::Fault));
            }
            None => return Read::End(End::ClientClosed),
        };
        heard.store(true, Ordering::Relaxed);
        match message {
            Message::Text(text) => self.on_text(&text).map_or(Read::Next, Read::Wait),
            Message::Binary(_) => {
                self.send_own(error_frame(&FrameError::Binary, None).into());
                Read::Next
            }
            Message::Close(_) => Read::End(End::ClientClosed),
            Message::Ping(_) | Message::Pong(_) => Read::Next,
        }
    }

    /// Handles one text frame, in the order the client sent them: what it returns (a
    /// subscription being set up, a channel publish) is awaited before the next frame is read.
    /// Subscribe and publish are boxed, like the opening and the closing: their broker round
    /// trips are rare in an idle socket's life, and inline they would size every socket's task
    /// for it.
    fn on_text<'a>(&'a self, raw: &str) -> Option<BoxFuture<'a, ()>> {
        match parse_client_frame(raw, self.max_text_bytes) {
            Ok(ClientFrame::Echo { text }) => {
                self.send_own(self.delivery.echo(&self.client, &text))
            }
            Ok(ClientFrame::Subscribe {
                channel,
                token,
                since,
            }) => return Some(Box::pin(self.subscribe(channel, token, since))),
            Ok(ClientFrame::Unsubscribe { channel }) => self.unsubscribe(channel),
            Ok(ClientFrame::Publish { channel, text }) => {
                return Some(Box::pin(self.publish(channel, text)));
            }
            Err(err) => {
                let channel = channel_named(raw);
                self.send_own(error_frame(&err, channel.as_ref()).into())
            }
        }
        None
    }

    /// Queues a frame for this socket only, behind whatever is already queued for it.
    fn send_own(&self, frame: Outgoing) {
        if let Err(socket_queue::TrySendError::Full(_)) = self.registration.queue.try_send(frame)
            && self.registration.alarm.raise(Reason::Slow)
        {
            self.delivery.metrics().slow_consumer();
        }
    }
}

/// What the reader does after one message.
enum Read<'a> {
    Next,
    /// A subscription being set up or a channel publish, before the next message is read.
    Wait(BoxFuture<'a, ()>),
    End(End),
}

/// Why a batch was not written.
enum Sent {
    Failed,
    /// A channel being subscribed held back more messages than the socket's queue holds.
    Overflow,
}

/// Writes `first` and whatever else is already queued (as far as the gate lets it through),
/// then flushes once: one write system call for a burst instead of one per frame.
async fn send_batch<S>(
    sink: &mut S,
    first: Outgoing,
    outbox: &mut socket_queue::Receiver<Outgoing>,
    gate: &mut Gate,
) -> Result<(), Sent>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    const MAX_BATCH: usize = 64;
    let mut next = Some(first);
    let mut out = Vec::new();
    for _ in 0..MAX_BATCH {
        let Some(frame) = next.take().or_else(|| outbox.try_recv().ok()) else {
            break;
        };
        gate.admit(frame, &mut out).map_err(|_| Sent::Overflow)?;
        for bytes in out.drain(..) {
            sink.feed(Message::Text(bytes))
                .await
                .map_err(|_| Sent::Failed)?;
        }
    }
    sink.flush().await.map_err(|_| Sent::Failed)
}

/// The close code for a read error that is the client's fault; None when the peer is simply
/// gone (reset, I/O error). axum wraps tungstenite's error, which names the fault.
fn fault_code(err: &axum::Error) -> Option<u16> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    let source = std::error::Error::source(err)?;
    match source.downcast_ref::<WsError>()? {
        WsError::Utf8(_) => Some(close_code::INVALID_PAYLOAD),
        WsError::Capacity(_) => Some(close_code::MESSAGE_TOO_BIG),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) => Some(close_code::PROTOCOL_ERROR),
        _ => None,
    }
}

fn fault_reason(code: u16) -> &'static str {
    match code {
        close_code::INVALID_PAYLOAD => "text is not valid UTF-8",
        close_code::MESSAGE_TOO_BIG => "message too big",
        _ => "protocol error",
    }
}

/// The error frame for a refused client frame, naming the channel it named (if valid).
fn error_frame(err: &FrameError, channel: Option<&ChannelName>) -> Utf8Bytes {
    ServerFrame::Error {
        code: err.code(),
        message: &err.to_string(),
        channel: channel.map(ChannelName::as_str),
    }
    .to_bytes()
}

/// How long an ordinary close frame may take to go out.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long a socket closed for a protocol fault stays open for its close frame to arrive.
const FAULT_LINGER: Duration = Duration::from_secs(1);

async fn close<S>(sink: &mut S, code: u16, reason: &'static str, wait: Duration)
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    // The peer may already be gone; there is nobody left to tell.
    let _ = tokio::time::timeout(wait, sink.send(Message::Close(Some(frame)))).await;
}

#[cfg(test)]
mod tests {
    use futures_channel::mpsc as fmpsc;

    use super::*;
    use crate::broker::Broker;
    use crate::broker::memory::MemoryBroker;
    use crate::limits::Limits;
    use crate::metrics::Metrics;
    use crate::records::Records;
    use crate::registry::Registry;
    use std::sync::Arc;

    struct Harness {
        /// The session's records log, read by [`Harness::disconnects`].
        records: Records,
        log: tempfile::NamedTempFile,
        to_session: fmpsc::UnboundedSender<Result<Message, axum::Error>>,
        from_session: fmpsc::UnboundedReceiver<Message>,
        registry: Registry,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(limits: Limits) -> Harness {
        let broker = Broker::Memory(MemoryBroker::new(
            "app-1",
            Arc::new(|_, _, _| {}),
            Limits::default().window(),
        ));
        let metrics = Metrics::new();
        let registry = Registry::new(metrics.clone(), &limits);
        let client = ClientId::parse("c1").unwrap();
        let registration = registry.register(&client, &broker).unwrap();
        let shutdown = CancellationToken::new();
        let log = tempfile::NamedTempFile::new().unwrap();
        let records = Records::open("app-1", log.path()).unwrap();
        let delivery = Delivery::new("app-1".into(), registry.clone(), records.clone(), metrics);
        let session = Session {
            client,
            registration,
            delivery,
            max_text_bytes: limits.max_text_bytes,
            shutdown: shutdown.clone(),
            broker,
            resume: None,
            landing: Landing::default(),
            signer: crate::token::Signer::new(b"test secret"),
            channel_rate: Arc::new(crate::limits::rate_limit(limits.channel_publish_rate)),
            queue_len: limits.socket_queue,
            replay: ReplayBounds::from_limits(&limits),
        };
        let (to_session, incoming) = fmpsc::unbounded();
        let (outgoing, from_session) = fmpsc::unbounded::<Message>();
        let sink = outgoing.sink_map_err(axum::Error::new);
        let task = tokio::spawn(session.run(Box::pin(sink), incoming));
        Harness {
            records,
            log,
            to_session,
            from_session,
            registry,
            shutdown,
            task,
        }
    }

    impl Harness {
        /// `event: detail` of every line the session wrote about how it ended.
        fn disconnects(&self) -> Vec<String> {
            self.records.close();
            std::fs::read_to_string(self.log.path())
                .unwrap()
                .lines()
                .filter_map(|line| {
                    let cols: Vec<&str> = line.split(" | ").map(str::trim).collect();
                    matches!(cols[2], "disconnect" | "slow-consumer")
                        .then(|| format!("{}: {}", cols[2], cols[4]))
                })
                .collect()
        }
    }

    async fn next_json(h: &mut Harness) -> serde_json::Value {
        let message = tokio::time::timeout(Duration::from_secs(2), h.from_session.next())
            .await
            .expect("a frame in time")
            .expect("session open");
        match message {
            Message::Text(text) => serde_json::from_str(&text).unwrap(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    async fn next_close_code(h: &mut Harness) -> u16 {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(2), h.from_session.next())
                .await
                .expect("a frame in time")
                .expect("session open");
            if let Message::Close(Some(frame)) = message {
                return frame.code;
            }
        }
    }

    #[tokio::test]
    async fn welcome_comes_first_then_text_is_echoed_via_ws() {
        let mut h = start(Limits::default());
        let mut welcome = next_json(&mut h).await;
        // Each history's cursor starts at 0-0 in an epoch of its own.
        for cursor in ["last_id", "last_broadcast_id"] {
            let text = welcome[cursor].take();
            let (epoch, id) = text.as_str().unwrap().split_once(':').unwrap();
            assert!(
                u64::from_str_radix(epoch, 16).is_ok_and(|e| e > 0),
                "{text}"
            );
            assert_eq!(id, "0-0");
        }
        assert_eq!(
            welcome,
            serde_json::json!({"type": "welcome", "replica": "app-1", "client_id": "c1",
                               "last_id": null, "last_broadcast_id": null,
                               "state": "rebuilt"})
        );
        h.to_session
            .unbounded_send(Ok(Message::Text(r#"{"text":"<b>hi</b>"}"#.into())))
            .unwrap();
        assert_eq!(
            next_json(&mut h).await,
            serde_json::json!({"type": "message", "via": "ws", "from": "app-1",
                               "replica": "app-1", "text": "<b>hi</b>"})
        );
    }

    #[tokio::test]
    async fn bad_frames_get_an_error_frame_and_the_socket_stays_open() {
        let mut h = start(Limits {
            max_text_bytes: 5,
            ..Limits::default()
        });
        next_json(&mut h).await;
        let cases: [(Message, &str); 4] = [
            (Message::Binary(vec![1, 2, 3].into()), "binary_frame"),
            (Message::Text("not json".into()), "bad_frame"),
            (
                Message::Text(r#"{"text":"a","extra":1}"#.into()),
                "bad_frame",
            ),
            (
                Message::Text(r#"{"text":"toolong"}"#.into()),
                "text_too_long",
            ),
        ];
        for (message, code) in cases {
            h.to_session.unbounded_send(Ok(message)).unwrap();
            let frame = next_json(&mut h).await;
            assert_eq!(frame["type"], "error");
            assert_eq!(frame["code"], code);
        }
        h.to_session
            .unbounded_send(Ok(Message::Text(r#"{"text":"ok"}"#.into())))
            .unwrap();
        assert_eq!(next_json(&mut h).await["text"], "ok");
    }

    #[tokio::test]
    async fn shutdown_closes_with_service_restart() {
        let mut h = start(Limits::default());
        next_json(&mut h).await;
        h.shutdown.cancel();
        assert_eq!(next_close_code(&mut h).await, close_code::SERVICE_RESTART);
        tokio::time::timeout(Duration::from_secs(2), &mut h.task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(h.registry.counts(), (0, 0), "the socket left the registry");
    }

    #[tokio::test]
    async fn a_consumer_that_falls_behind_is_closed_with_try_again_later() {
        let mut h = start(Limits {
            socket_queue: 4,
            ..Limits::default()
        });
        next_json(&mut h).await;
        let client = ClientId::parse("c1").unwrap();
        let frame = Outgoing::from(Utf8Bytes::from_static(r#"{"type":"message"}"#));
        // The test does not read from_session while delivering, but the channel sink is
        // unbounded, so fill the queue faster than the session can forward it.
        let mut overflowed = 0;
        for _ in 0..10_000 {
            overflowed += h
                .registry
                .deliver(&crate::target::Target::Client(client.clone()), &frame)
                .overflowed;
            if overflowed > 0 {
                break;
            }
        }
        assert!(overflowed > 0, "the queue never filled");
        assert_eq!(next_close_code(&mut h).await, close_code::TRY_AGAIN_LATER);
        tokio::time::timeout(Duration::from_secs(2), &mut h.task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            h.disconnects(),
            vec![
                "disconnect: slow consumer (1013)".to_owned(),
                "slow-consumer: queue full, closed with 1013".to_owned()
            ]
        );
    }

    // Paused time: each fault's linger passes at once.
    #[tokio::test(start_paused = true)]
    async fn protocol_faults_close_with_their_code_and_a_vanished_peer_without_one() {
        use tokio_tungstenite::tungstenite::Error as WsError;
        use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
        let faults = [
            (
                WsError::Utf8("bad".to_owned()),
                Some((close_code::INVALID_PAYLOAD, "text is not valid UTF-8")),
            ),
            (
                WsError::Capacity(CapacityError::MessageTooLong {
                    size: 20,
                    max_size: 10,
                }),
                Some((close_code::MESSAGE_TOO_BIG, "message too big")),
            ),
            (
                WsError::Protocol(ProtocolError::UnmaskedFrameFromClient),
                Some((close_code::PROTOCOL_ERROR, "protocol error")),
            ),
            (
                WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake),
                None,
            ),
            (WsError::Io(std::io::ErrorKind::BrokenPipe.into()), None),
        ];
        for (fault, code) in faults {
            let what = fault.to_string();
            let mut h = start(Limits::default());
            next_json(&mut h).await;
            h.to_session
                .unbounded_send(Err(axum::Error::new(fault)))
                .unwrap();
            tokio::time::timeout(Duration::from_secs(2), &mut h.task)
                .await
                .unwrap()
                .unwrap();
            let mut sent = Vec::new();
            while let Ok(message) = h.from_session.try_recv() {
                sent.push(message);
            }
            // The code a client branches on, and the reason a person reads.
            let closed = sent.iter().find_map(|m| match m {
                Message::Close(Some(frame)) => Some((frame.code, frame.reason.to_string())),
                _ => None,
            });
            let expected = code.map(|(code, reason)| (code, reason.to_owned()));
            assert_eq!(closed, expected, "{what}: {sent:?}");
            assert_eq!(h.registry.counts(), (0, 0), "{what}");
        }
    }

    #[tokio::test]
    async fn client_close_ends_the_session_and_frees_the_registration() {
        let mut h = start(Limits::default());
        next_json(&mut h).await;
        h.to_session
            .unbounded_send(Ok(Message::Close(None)))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(2), &mut h.task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(h.registry.counts(), (0, 0));
        assert_eq!(
            h.disconnects(),
            vec!["disconnect: closed by client".to_owned()]
        );
    }
}
