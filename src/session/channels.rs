//! The reader's side of channels: what a socket's `subscribe`, `unsubscribe` and `publish`
//! frames do. Permission and limits are checked here, the registry records the subscription,
//! the broker confirms it, and the writer is told through the socket's own queue (marks, see
//! [`super::gate`]) so the `subscribed` answer and the replay come before live messages.

use std::time::Duration;

use axum::extract::ws::Utf8Bytes;

use super::Session;
use crate::broker::Driver;
use crate::channel::{self, ChannelName};
use crate::cursor::Position;
use crate::frame::{Mark, Outgoing, ServerFrame, Via};
use crate::records::Event;
use crate::resume;
use crate::target::Target;

/// Longest wait for the broker to confirm a channel subscription before history is read.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(3);

/// An error frame about `channel`.
pub fn refusal(code: &str, message: &str, channel: &ChannelName) -> Utf8Bytes {
    ServerFrame::Error {
        code,
        message,
        channel: Some(channel.as_str()),
    }
    .to_bytes()
}

impl Session {
    pub(super) async fn subscribe(
        &self,
        channel: ChannelName,
        token: Option<String>,
        since: Option<Position>,
    ) {
        let client = Some(self.client.as_str());
        if let Err(denied) =
            channel::may_subscribe(&self.signer, &self.client, &channel, token.as_deref())
        {
            self.send_own(refusal(denied.code(), &denied.to_string(), &channel).into());
            return;
        }
        let registration = &self.registration;
        if registration.is_subscribed(&channel) {
            let err = crate::registry::SubscribeError::AlreadySubscribed;
            self.send_own(refusal(err.code(), &err.to_string(), &channel).into());
            return;
        }
        // Before the registry queues any of the channel's messages for this socket.
        self.send_own(Outgoing::mark(Mark::Pending(channel.clone())));
        let confirmation = match registration.subscribe(&channel) {
            Ok(confirmation) => confirmation,
            Err(err) => {
                let frame = refusal(err.code(), &err.to_string(), &channel);
                self.send_own(Outgoing::mark(Mark::Left {
                    channel,
                    frame: Some(frame),
                }));
                return;
            }
        };
        if let Some(confirmation) = confirmation {
            match tokio::time::timeout(SUBSCRIBE_WAIT, confirmation).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::warn!(%channel, cause = %err, "channel held without broker subscription")
                }
                Err(_) => tracing::warn!(%channel, "channel subscription not confirmed in time"),
            }
        }
        let start = resume::channel(
            &self.broker,
            &channel,
            self.delivery.replica(),
            since,
            self.replay.max_bytes,
        )
        .await;
        let detail = match start.recovered {
            Some(recovered) => format!(
                "channel={channel} since={} recovered={recovered} replayed={}",
                since.unwrap_or_default(),
                start.replayed
            ),
            None => format!("channel={channel}"),
        };
        self.delivery
            .records()
            .record(Event::Subscribe, client, &detail);
        self.registration
            .started(&Target::Channel(channel.clone()), start.upto);
        self.send_own(Outgoing::mark(Mark::Ready {
            channel,
            frames: start.frames,
            upto: start.upto,
        }));
    }

    pub(super) fn unsubscribe(&self, channel: ChannelName) {
        match self.registration.unsubscribe(&channel) {
            Ok(()) => {
                self.delivery.records().record(
                    Event::Unsubscribe,
                    Some(self.client.as_str()),
                    format_args!("channel={channel}"),
                );
                let frame = ServerFrame::Unsubscribed {
                    channel: channel.as_str(),
                }
                .to_bytes();
                self.send_own(Outgoing::mark(Mark::Left {
                    channel,
                    frame: Some(frame),
                }));
            }
            Err(err) => self.send_own(refusal(err.code(), &err.to_string(), &channel).into()),
        }
    }

    pub(super) async fn publish(&self, channel: ChannelName, text: String) {
        // A private channel is published to over a socket only by one subscribed to it with
        // its token; over HTTP it takes the API key.
        if !channel.is_public() && !self.registration.is_subscribed(&channel) {
            let message = "publish to this channel from a socket subscribed to it with its token";
            self.send_own(refusal("forbidden", message, &channel).into());
            return;
        }
        if self.channel_rate.check_key(&self.client).is_err() {
            let message = "too many channel publishes per second for this client; slow down";
            self.send_own(refusal("rate_limited", message, &channel).into());
            return;
        }
        let target = Target::Channel(channel);
        let envelope = self.delivery.envelope(Via::Channel, &text);
        let published = self.broker.publish(&target, envelope.encode()).await;
        self.delivery
            .metrics()
            .published(&target, published.is_ok());
        let Target::Channel(channel) = target else {
            return;
        };
        match published {
            Ok(published) => self.delivery.records().record(
                Event::ChannelPublish,
                Some(self.client.as_str()),
                format_args!("channel={channel} receivers={}", published.receivers),
            ),
            Err(err) => {
                // A socket publish carries no idempotency key: an unknown outcome is only said.
                let message = match err {
                    crate::broker::BrokerError::OutcomeUnknown(_) => {
                        format!("perhaps not published: {err}")
                    }
                    _ => format!("not published: {err}"),
                };
                self.send_own(refusal("broker_unavailable", &message, &channel).into());
            }
        }
    }
}
