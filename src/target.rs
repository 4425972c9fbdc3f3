//! Where a message goes: one client (all its sockets), the subscribers of a channel, or every
//! socket. The registry, the broker, the histories, the cursors and the metrics all take a
//! [`Target`], so a new kind of target is added here and matched where it behaves differently,
//! not threaded through in pairs.

use crate::channel::ChannelName;
use crate::token::ClientId;

/// Where a message goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Client(ClientId),
    Channel(ChannelName),
    Broadcast,
}

/// The kind of a target, for labels and fixed-size tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Client = 0,
    Channel = 1,
    Broadcast = 2,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Client, Kind::Channel, Kind::Broadcast];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Client => "client",
            Kind::Channel => "channel",
            Kind::Broadcast => "broadcast",
        }
    }
}

impl Target {
    /// The client's id, for a message to one client.
    pub fn client(&self) -> Option<&str> {
        match self {
            Target::Client(client) => Some(client.as_str()),
            Target::Channel(_) | Target::Broadcast => None,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Target::Client(_) => Kind::Client,
            Target::Channel(_) => Kind::Channel,
            Target::Broadcast => Kind::Broadcast,
        }
    }

    /// What the records log shows in its client column: the client, or `#channel`.
    pub fn label(&self) -> Option<String> {
        match self {
            Target::Client(client) => Some(client.to_string()),
            Target::Channel(channel) => Some(format!("#{channel}")),
            Target::Broadcast => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_client_target_names_a_client() {
        let alice = Target::Client(ClientId::parse("alice").unwrap());
        let lobby = Target::Channel(ChannelName::parse("public:lobby").unwrap());
        assert_eq!(alice.client(), Some("alice"));
        assert_eq!(lobby.client(), None);
        assert_eq!(Target::Broadcast.client(), None);
        assert_eq!(
            [alice.kind(), lobby.kind(), Target::Broadcast.kind()],
            Kind::ALL
        );
        assert!(Kind::ALL.iter().enumerate().all(|(i, k)| *k as usize == i));
        assert_eq!(lobby.label().as_deref(), Some("#public:lobby"));
        assert_eq!(Target::Broadcast.label(), None);
    }
}
