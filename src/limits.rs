//! Every limit a client can run into, in one place, each configurable by flag or environment.
//! The defaults sit well below the libraries' own (axum reads bodies up to 2 MiB, tungstenite
//! accepts 64 MiB messages and buffers writes without bound).

use clap::Args;

/// Limits on what a client may send and hold.
#[derive(Debug, Clone, Args)]
pub struct Limits {
    /// Largest HTTP request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,

    /// Longest message text, in bytes of UTF-8.
    #[arg(long, env = "MAX_TEXT_BYTES", default_value_t = 4 * 1024)]
    pub max_text_bytes: usize,

    /// Largest WebSocket message (and frame) a client may send, in bytes.
    #[arg(long, env = "MAX_WS_MESSAGE_BYTES", default_value_t = 16 * 1024)]
    pub max_ws_message_bytes: usize,

    /// Sockets one replica holds at most; further upgrades get 503.
    #[arg(long, env = "MAX_SOCKETS", default_value_t = 100_000)]
    pub max_sockets: usize,

    /// Sockets one client id may hold on one replica (tabs); further upgrades get 429.
    #[arg(long, env = "MAX_SOCKETS_PER_CLIENT", default_value_t = 16)]
    pub max_sockets_per_client: usize,

    /// Frames queued for one socket before it counts as a slow consumer and is closed (1013).
    #[arg(long, env = "SOCKET_QUEUE", default_value_t = 256)]
    pub socket_queue: usize,

    /// Messages kept per client for recovery after a reconnect; 0 turns recovery off.
    #[arg(long, env = "HISTORY_LEN", default_value_t = 1000)]
    pub history_len: usize,

    /// Broadcast messages kept for recovery.
    #[arg(long, env = "HISTORY_BROADCAST_LEN", default_value_t = 10_000)]
    pub history_broadcast_len: usize,

    /// How long history is kept after a client's last message, in seconds.
    #[arg(long, env = "HISTORY_TTL_SECS", default_value_t = 300)]
    pub history_ttl_secs: u64,

    /// Publishes (and directs) one client may make per second on one replica; bursts of twice
    /// that pass. Over it: 429.
    #[arg(long, env = "PUBLISH_RATE", default_value_t = 200)]
    pub publish_rate: u32,

    /// Messages kept per channel for recovery.
    #[arg(long, env = "HISTORY_CHANNEL_LEN", default_value_t = 1000)]
    pub history_channel_len: usize,

    /// Channels one socket may subscribe to at once.
    #[arg(long, env = "CHANNELS_PER_SOCKET", default_value_t = 64)]
    pub channels_per_socket: usize,

    /// Channel publishes one client may make per second on one replica (socket and HTTP
    /// together); bursts of twice that pass. Over it: an error frame, or 429.
    #[arg(long, env = "CHANNEL_PUBLISH_RATE", default_value_t = 100)]
    pub channel_publish_rate: u32,
    /// Clients one source address may mint per second (`POST /api/clients`); bursts of twice
    /// that pass. Over it: 429 with Retry-After. The API key is not limited.
    #[arg(long, env = "MINT_RATE", default_value_t = 20)]
    pub mint_rate: u32,

    /// Most bytes of missed history one reconnecting socket is replayed; past it the replay
    /// stops and the client is told with `history_lost`.
    #[arg(long, env = "MAX_REPLAY_BYTES", default_value_t = 1024 * 1024)]
    pub max_replay_bytes: usize,

    /// Seconds the welcome and replay may take to reach a client; one that does not read them
    /// in time is closed as a slow consumer (1013).
    #[arg(long, env = "REPLAY_TIMEOUT_SECS", default_value_t = 10)]
    pub replay_timeout_secs: u64,

    /// Seconds a client's session state (the state lab's notes) lives after its last change,
    /// in the replica's cache and in Redis alike.
    #[arg(long, env = "STATE_TTL_SECS", default_value_t = 600)]
    pub state_ttl_secs: u64,

    /// Clients whose session state one replica keeps in memory; the least useful go first.
    #[arg(long, env = "STATE_MAX_ENTRIES", default_value_t = 10_000)]
    pub state_max_entries: u64,

    /// Notes kept per client; adding one more drops the oldest.
    #[arg(long, env = "MAX_NOTES", default_value_t = 20)]
    pub max_notes: usize,

    /// Longest note, in bytes of UTF-8 (notes are kept in memory per client: keep them short).
    #[arg(long, env = "MAX_NOTE_BYTES", default_value_t = 200)]
    pub max_note_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024,
            max_text_bytes: 4 * 1024,
            max_ws_message_bytes: 16 * 1024,
            max_sockets: 100_000,
            max_sockets_per_client: 16,
            socket_queue: 256,
            history_len: 1000,
            history_broadcast_len: 10_000,
            history_ttl_secs: 300,
            publish_rate: 200,
            history_channel_len: 1000,
            channels_per_socket: 64,
            channel_publish_rate: 100,
            mint_rate: 20,
            max_replay_bytes: 1024 * 1024,
            replay_timeout_secs: 10,
            state_ttl_secs: 600,
            state_max_entries: 10_000,
            max_notes: 20,
            max_note_bytes: 200,
        }
    }
}

impl Limits {
    /// The recovery window these limits describe.
    pub fn window(&self) -> crate::broker::Window {
        crate::broker::Window {
            per_client: self.history_len,
            // Recovery is on or off for every history at once.
            per_channel: if self.history_len == 0 {
                0
            } else {
                self.history_channel_len
            },
            broadcast: if self.history_len == 0 {
                0
            } else {
                self.history_broadcast_len
            },
            ttl: std::time::Duration::from_secs(self.history_ttl_secs),
            read_bytes: self.max_replay_bytes,
        }
    }

    /// Refuses limits that would make the replica useless or unsafe.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("MAX_BODY_BYTES", self.max_body_bytes),
            ("MAX_TEXT_BYTES", self.max_text_bytes),
            ("MAX_WS_MESSAGE_BYTES", self.max_ws_message_bytes),
            ("MAX_SOCKETS", self.max_sockets),
            ("MAX_SOCKETS_PER_CLIENT", self.max_sockets_per_client),
            ("SOCKET_QUEUE", self.socket_queue),
            ("HISTORY_TTL_SECS", self.history_ttl_secs as usize),
            ("PUBLISH_RATE", self.publish_rate as usize),
            ("CHANNELS_PER_SOCKET", self.channels_per_socket),
            ("CHANNEL_PUBLISH_RATE", self.channel_publish_rate as usize),
            ("MINT_RATE", self.mint_rate as usize),
            ("MAX_REPLAY_BYTES", self.max_replay_bytes),
            ("REPLAY_TIMEOUT_SECS", self.replay_timeout_secs as usize),
            ("STATE_TTL_SECS", self.state_ttl_secs as usize),
            ("STATE_MAX_ENTRIES", self.state_max_entries as usize),
            ("MAX_NOTES", self.max_notes),
            ("MAX_NOTE_BYTES", self.max_note_bytes),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        if self.max_text_bytes > self.max_body_bytes {
            return Err("MAX_TEXT_BYTES must not exceed MAX_BODY_BYTES".to_owned());
        }
        if self.max_text_bytes > self.max_ws_message_bytes {
            return Err("MAX_TEXT_BYTES must not exceed MAX_WS_MESSAGE_BYTES".to_owned());
        }
        if self.max_ws_message_bytes > 16 * 1024 * 1024 {
            return Err("MAX_WS_MESSAGE_BYTES must be at most 16 MiB".to_owned());
        }
        if self.max_notes > 1000 {
            return Err("MAX_NOTES must be at most 1000".to_owned());
        }
        if self.max_note_bytes > self.max_text_bytes {
            return Err("MAX_NOTE_BYTES must not exceed MAX_TEXT_BYTES".to_owned());
        }
        Ok(())
    }

    pub fn replay_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.replay_timeout_secs)
    }

    pub fn state_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.state_ttl_secs)
    }
}

/// A token bucket per client id.
pub type RateLimit = governor::DefaultKeyedRateLimiter<crate::token::ClientId>;

/// The per-client limiter for `per_second` sends, with bursts of twice that.
pub fn rate_limit(per_second: u32) -> RateLimit {
    let rate = std::num::NonZeroU32::new(per_second).unwrap_or(std::num::NonZeroU32::MIN);
    let burst = rate.saturating_mul(std::num::NonZeroU32::new(2).unwrap_or(rate));
    governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `limits` with one change, validated.
    fn validated(change: impl FnOnce(&mut Limits)) -> Result<(), String> {
        let mut limits = Limits::default();
        change(&mut limits);
        limits.validate()
    }

    #[test]
    fn the_state_ttl_is_its_seconds() {
        let limits = Limits {
            state_ttl_secs: 7,
            ..Limits::default()
        };
        assert_eq!(limits.state_ttl(), std::time::Duration::from_secs(7));
    }

    #[test]
    fn each_cross_limit_allows_its_bound_and_refuses_one_more() {
        let mib16 = 16 * 1024 * 1024;
        assert_eq!(validated(|_| {}), Ok(()));
        // Text as large as the body and the WebSocket message may be, and no larger.
        let at_bound = |l: &mut Limits| {
            l.max_body_bytes = 8192;
            l.max_ws_message_bytes = 8192;
            l.max_text_bytes = 8192;
        };
        assert_eq!(validated(at_bound), Ok(()));
        assert_eq!(
            validated(|l| {
                at_bound(l);
                l.max_ws_message_bytes = 9000;
                l.max_text_bytes = 8193;
            }),
            Err("MAX_TEXT_BYTES must not exceed MAX_BODY_BYTES".to_owned())
        );
        assert_eq!(
            validated(|l| {
                at_bound(l);
                l.max_body_bytes = 9000;
                l.max_text_bytes = 8193;
            }),
            Err("MAX_TEXT_BYTES must not exceed MAX_WS_MESSAGE_BYTES".to_owned())
        );
        assert_eq!(validated(|l| l.max_ws_message_bytes = mib16), Ok(()));
        assert_eq!(
            validated(|l| l.max_ws_message_bytes = mib16 + 1),
            Err("MAX_WS_MESSAGE_BYTES must be at most 16 MiB".to_owned())
        );
        assert_eq!(validated(|l| l.max_notes = 1000), Ok(()));
        assert_eq!(
            validated(|l| l.max_notes = 1001),
            Err("MAX_NOTES must be at most 1000".to_owned())
        );
        assert_eq!(validated(|l| l.max_note_bytes = l.max_text_bytes), Ok(()));
        assert_eq!(
            validated(|l| l.max_note_bytes = l.max_text_bytes + 1),
            Err("MAX_NOTE_BYTES must not exceed MAX_TEXT_BYTES".to_owned())
        );
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Limits::default().validate(), Ok(()));
    }

    #[test]
    fn the_default_impl_is_what_the_flags_default_to() {
        // Tests build `Limits::default()`; replicas parse flags. Both must be the same limits.
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            limits: Limits,
        }
        let parsed = <Cli as clap::Parser>::try_parse_from(["serve"])
            .expect("no flags parse")
            .limits;
        assert_eq!(format!("{parsed:?}"), format!("{:?}", Limits::default()));
        assert_eq!(
            Limits::default().socket_queue,
            256,
            "README: SOCKET_QUEUE 256"
        );
    }

    #[test]
    fn zero_limits_are_refused() {
        let limits = Limits {
            socket_queue: 0,
            ..Limits::default()
        };
        assert_eq!(
            limits.validate().unwrap_err(),
            "SOCKET_QUEUE must be at least 1"
        );
    }

    #[test]
    fn text_larger_than_a_body_is_refused() {
        let limits = Limits {
            max_text_bytes: 32 * 1024,
            ..Limits::default()
        };
        assert!(limits.validate().is_err());
    }
}
