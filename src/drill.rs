//! The fault drills' wire model, shared by the two ends that check it: the replica that takes
//! `/api/drills/{action}` from the page and the cluster's control server that carries it out.
//! Which drills exist, the body each takes, and the limits on both.
//!
//! Running a drill (signals, restarts) is [`crate::ops::control`]'s; forwarding one is the
//! replica's (`/api/drills*` in [`crate::http`]). This module uses neither, so both use it.

use serde::Deserialize;

/// The largest drill body either end reads.
pub const MAX_BODY_BYTES: usize = 1024;
/// A freeze lasts at least this long and at most [`MAX_FREEZE_SECS`]: long enough to see,
/// short enough that a forgotten drill ends by itself.
pub const MIN_FREEZE_SECS: u64 = 1;
pub const MAX_FREEZE_SECS: u64 = 30;
/// Replicas are `app-1` .. `app-99`, as `stickyws cluster --replicas` allows.
pub const MAX_REPLICA: u8 = 99;
/// The header a forwarding replica names itself in, so a drill aimed at it is answered before
/// it is carried out (otherwise the answer would die with the replica).
pub const FROM_HEADER: &str = "x-drills-from";

/// One replica of the local cluster: `app-<n>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplicaId(u8);

impl ReplicaId {
    /// `app-<1..=99>`, no sign, no leading zero.
    pub fn parse(id: &str) -> Option<ReplicaId> {
        let digits = id.strip_prefix("app-")?;
        if digits.is_empty()
            || digits.len() > 2
            || digits.starts_with('0')
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let n: u8 = digits.parse().ok()?;
        (1..=MAX_REPLICA).contains(&n).then_some(ReplicaId(n))
    }

    pub fn new(n: u8) -> Option<ReplicaId> {
        (1..=MAX_REPLICA).contains(&n).then_some(ReplicaId(n))
    }

    /// 1-based, as in the name.
    pub fn number(self) -> u8 {
        self.0
    }
}

impl std::fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "app-{}", self.0)
    }
}

/// A drill, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drill {
    /// SIGKILL, as a crash.
    Kill(ReplicaId),
    /// SIGTERM: the replica drains its sockets and exits.
    Drain(ReplicaId),
    /// Stopped if running, then started again on the same port with the same environment.
    Restart(ReplicaId),
    /// SIGKILL to Redis (no persistence: it comes back empty).
    RedisStop,
    /// Redis again, on the same port.
    RedisStart,
    /// SIGSTOP now, SIGCONT after `seconds`.
    RedisFreeze { seconds: u64 },
}

impl Drill {
    /// The action's name in the URL and in answers.
    pub fn name(self) -> &'static str {
        match self {
            Drill::Kill(_) => "kill",
            Drill::Drain(_) => "drain",
            Drill::Restart(_) => "restart",
            Drill::RedisStop => "redis-stop",
            Drill::RedisStart => "redis-start",
            Drill::RedisFreeze { .. } => "redis-freeze",
        }
    }

    /// What the drill acts on: a replica's id or `redis`.
    pub fn target(self) -> String {
        match self {
            Drill::Kill(r) | Drill::Drain(r) | Drill::Restart(r) => r.to_string(),
            _ => "redis".to_owned(),
        }
    }
}

/// Why a drill request was refused before anything was done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadDrill {
    #[error("no drill {0:?}: kill, drain, restart, redis-stop, redis-start or redis-freeze")]
    UnknownAction(String),
    #[error("a drill body is at most {MAX_BODY_BYTES} bytes, got {0}")]
    TooLarge(usize),
    #[error("bad drill body: {0}")]
    BadBody(String),
    #[error("{0:?} is not a replica: app-1 .. app-{MAX_REPLICA}")]
    BadReplica(String),
    #[error("this drill needs {{\"replica\": \"app-N\"}}")]
    MissingReplica,
    #[error("a freeze lasts {MIN_FREEZE_SECS} to {MAX_FREEZE_SECS} seconds, got {0}")]
    BadSeconds(u64),
    #[error("this drill needs {{\"seconds\": {MIN_FREEZE_SECS}..{MAX_FREEZE_SECS}}}")]
    MissingSeconds,
}

impl BadDrill {
    /// The answer's status: 404 for a drill that does not exist, 413 for a body over the limit,
    /// 400 for anything else wrong in it.
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            BadDrill::UnknownAction(_) => StatusCode::NOT_FOUND,
            BadDrill::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The contract's error code.
    pub fn code(&self) -> &'static str {
        match self {
            BadDrill::UnknownAction(_) => "unknown_drill",
            BadDrill::TooLarge(_) => "too_large",
            BadDrill::BadBody(_) => "bad_body",
            BadDrill::BadReplica(_) | BadDrill::MissingReplica => "bad_replica",
            BadDrill::BadSeconds(_) | BadDrill::MissingSeconds => "bad_seconds",
        }
    }
}

/// Every field any drill takes; each drill refuses the fields it does not take.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    replica: Option<String>,
    seconds: Option<u64>,
}

/// `POST …/{action}` with `body` (empty is `{}`), checked.
pub fn parse(action: &str, body: &[u8]) -> Result<Drill, BadDrill> {
    if body.len() > MAX_BODY_BYTES {
        return Err(BadDrill::TooLarge(body.len()));
    }
    let body: Body = if body.iter().all(u8::is_ascii_whitespace) {
        Body::default()
    } else {
        serde_json::from_slice(body).map_err(|err| BadDrill::BadBody(err.to_string()))?
    };
    let replica = || -> Result<ReplicaId, BadDrill> {
        let id = body.replica.as_deref().ok_or(BadDrill::MissingReplica)?;
        ReplicaId::parse(id).ok_or_else(|| BadDrill::BadReplica(id.chars().take(70).collect()))
    };
    let no_replica = || match &body.replica {
        Some(_) => Err(BadDrill::BadBody("this drill takes no replica".to_owned())),
        None => Ok(()),
    };
    let no_seconds = || match body.seconds {
        Some(_) => Err(BadDrill::BadBody("this drill takes no seconds".to_owned())),
        None => Ok(()),
    };
    let drill = match action {
        "kill" => Drill::Kill(replica()?),
        "drain" => Drill::Drain(replica()?),
        "restart" => Drill::Restart(replica()?),
        "redis-stop" => {
            no_replica()?;
            Drill::RedisStop
        }
        "redis-start" => {
            no_replica()?;
            Drill::RedisStart
        }
        "redis-freeze" => {
            no_replica()?;
            let seconds = body.seconds.ok_or(BadDrill::MissingSeconds)?;
            if !(MIN_FREEZE_SECS..=MAX_FREEZE_SECS).contains(&seconds) {
                return Err(BadDrill::BadSeconds(seconds));
            }
            return Ok(Drill::RedisFreeze { seconds });
        }
        other => return Err(BadDrill::UnknownAction(other.chars().take(40).collect())),
    };
    no_seconds()?;
    Ok(drill)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_ids_are_app_1_to_99_written_plainly() {
        assert_eq!(ReplicaId::parse("app-1"), ReplicaId::new(1));
        assert_eq!(ReplicaId::parse("app-99"), ReplicaId::new(99));
        for bad in [
            "app-0", "app-100", "app-01", "app-+1", "app-", "app-1x", "APP-1", "app1",
        ] {
            assert_eq!(ReplicaId::parse(bad), None, "{bad}");
        }
        assert_eq!(
            ReplicaId::new(7).map(|r| r.to_string()).as_deref(),
            Some("app-7")
        );
    }

    #[test]
    fn each_drill_takes_only_its_own_fields_within_their_bounds() {
        let app2 = ReplicaId::new(2).unwrap();
        assert_eq!(
            parse("kill", br#"{"replica":"app-2"}"#),
            Ok(Drill::Kill(app2))
        );
        assert_eq!(
            parse("restart", br#"{"replica":"app-2"}"#),
            Ok(Drill::Restart(app2))
        );
        assert_eq!(parse("redis-stop", b""), Ok(Drill::RedisStop));
        assert_eq!(parse("redis-start", b"{}"), Ok(Drill::RedisStart));
        assert_eq!(
            parse("redis-freeze", br#"{"seconds":30}"#),
            Ok(Drill::RedisFreeze { seconds: 30 })
        );
        assert_eq!(parse("kill", b"{}"), Err(BadDrill::MissingReplica));
        assert!(matches!(
            parse("kill", br#"{"replica":"app-100"}"#),
            Err(BadDrill::BadReplica(_))
        ));
        assert_eq!(
            parse("redis-freeze", br#"{"seconds":0}"#),
            Err(BadDrill::BadSeconds(0))
        );
        assert_eq!(
            parse("redis-freeze", br#"{"seconds":31}"#),
            Err(BadDrill::BadSeconds(31))
        );
        assert!(matches!(
            parse("redis-freeze", br#"{"seconds":-1}"#),
            Err(BadDrill::BadBody(_))
        ));
        assert!(matches!(
            parse("redis-freeze", br#"{"seconds":1.5}"#),
            Err(BadDrill::BadBody(_))
        ));
        assert!(matches!(
            parse("kill", br#"{"replica":"app-1","x":1}"#),
            Err(BadDrill::BadBody(_))
        ));
        assert!(matches!(
            parse("redis-stop", br#"{"replica":"app-1"}"#),
            Err(BadDrill::BadBody(_))
        ));
        assert!(matches!(
            parse("kill", br#"{"replica":"app-1","seconds":2}"#),
            Err(BadDrill::BadBody(_))
        ));
        assert!(matches!(
            parse("kill", b"not json"),
            Err(BadDrill::BadBody(_))
        ));
        assert!(matches!(
            parse("explode", b""),
            Err(BadDrill::UnknownAction(_))
        ));
        let big = format!(r#"{{"replica":"app-1","pad":"{}"}}"#, "x".repeat(1100));
        assert!(matches!(
            parse("kill", big.as_bytes()),
            Err(BadDrill::TooLarge(_))
        ));
    }
}
