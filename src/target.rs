//! Where a message goes: one client (all its sockets) or every socket. The registry, the broker,
//! the histories and the metrics all take a [`Target`], so a new kind of target is added here
//! and matched where it behaves differently, not threaded through in pairs.

use crate::token::ClientId;

/// Where a message goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Client(ClientId),
    Broadcast,
}

impl Target {
    /// The client's id, for a message to one client.
    pub fn client(&self) -> Option<&str> {
        match self {
            Target::Client(client) => Some(client.as_str()),
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
        assert_eq!(alice.client(), Some("alice"));
        assert_eq!(Target::Broadcast.client(), None);
    }
}
