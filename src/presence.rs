//! Replica presence: what a replica tells the others about itself every few seconds (its socket
//! and client counts and the page panel's figures), and the list of live replicas built from
//! those announcements with this replica as it is right now. The broker only stores the
//! announcements; what they say is decided here.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::broker::{Announcement, Broker, Driver};
use crate::lab::StateLab;
use crate::metrics::Figures;
use crate::registry::Registry;

/// How often a replica tells the others it is alive (`/api/replicas`).
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

/// What a replica announces: who it is, what it holds, its key figures.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaInfo {
    pub id: String,
    /// Sockets held.
    pub sockets: usize,
    /// Distinct clients held.
    pub clients: usize,
    /// Its key figures (the page's panel); absent from replicas of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub figures: Option<Figures>,
}

/// Handle on this replica's presence; cheap to clone.
#[derive(Clone, Debug)]
pub struct Presence {
    replica: Arc<str>,
    registry: Registry,
    lab: StateLab,
    broker: Broker,
}

impl Presence {
    pub fn new(replica: Arc<str>, registry: Registry, lab: StateLab, broker: Broker) -> Self {
        Self {
            replica,
            registry,
            lab,
            broker,
        }
    }

    /// This replica as it is now.
    pub fn me(&self) -> ReplicaInfo {
        let (sockets, clients) = self.registry.counts();
        ReplicaInfo {
            id: self.replica.to_string(),
            sockets,
            clients,
            figures: Some(self.lab.figures()),
        }
    }

    /// Every replica as it last announced itself, with this one as it is now, sorted by id;
    /// `complete` is false when the broker could not be asked (then only this replica is listed).
    pub async fn all(&self) -> (Vec<ReplicaInfo>, bool) {
        let me = self.me();
        let (mut list, complete) = match self.broker.replicas().await {
            Ok(listed) => (
                listed
                    .iter()
                    // An announcement this version cannot read is left out, not fatal.
                    .filter_map(|a| serde_json::from_str::<ReplicaInfo>(&a.body).ok())
                    .collect(),
                true,
            ),
            Err(_) => (Vec::new(), false),
        };
        list.retain(|r: &ReplicaInfo| r.id != me.id);
        list.push(me);
        list.sort_by(|a, b| a.id.cmp(&b.id));
        (list, complete)
    }

    /// Announces this replica every [`ANNOUNCE_EVERY`] until `token` is cancelled; a failed
    /// announcement is tried again at the next tick.
    pub async fn announce_until(self, token: CancellationToken) {
        let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = token.cancelled() => return,
            }
            let me = self.me();
            let announcement = Announcement {
                replica: me.id.clone(),
                body: serde_json::to_string(&me).unwrap_or_default(),
            };
            if let Err(err) = self.broker.announce(&announcement).await {
                tracing::debug!(cause = %err, "announce failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_reads_back_as_what_was_announced() {
        let info = ReplicaInfo {
            id: "app-1".to_owned(),
            sockets: 3,
            clients: 2,
            figures: Some(Figures {
                visits: 7,
                ..Default::default()
            }),
        };
        let body = serde_json::to_string(&info).unwrap();
        assert_eq!(serde_json::from_str::<ReplicaInfo>(&body).unwrap(), info);
    }

    #[test]
    fn an_announcement_without_figures_is_still_read() {
        let old: ReplicaInfo =
            serde_json::from_str(r#"{"id":"app-9","sockets":1,"clients":1}"#).unwrap();
        assert_eq!(old.figures, None);
    }
}
