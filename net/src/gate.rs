//! The gate: which PeerIds may hold a connection at all.
//!
//! Open by default (any peer may connect and then prove its cluster in the hello exchange).
//! Once the application closes it with a list of PeerIds (a cluster whose registry is closed
//! to new nodes), every connection from or to another PeerId is denied as soon as the noise
//! handshake has proven who the peer is, before a single request is read from it. The peer
//! cannot read, write or disturb anything; it only learns that it was refused.
//!
//! Refusals are logged once per peer, not on every reconnect: a stranger redialing in a loop
//! must not fill the log. The memory of who was logged is bounded; past that, refusals are
//! counted and summed up at most once a minute.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// How many refused peers are remembered (to log each once).
const MAX_REMEMBERED: usize = 4096;
/// How often refusals beyond that memory are summed up in the log.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Why the gate denied a connection (carried in libp2p's `ConnectionDenied`).
#[derive(Debug, thiserror::Error)]
#[error("peer {0} is not in the cluster's registry and new nodes are not allowed")]
pub struct NotAllowed(pub PeerId);

/// The behaviour that enforces the allow list; no protocol of its own.
#[derive(Default)]
pub(crate) struct Gate {
    allowed: Option<HashSet<PeerId>>,
    /// Peers refused until a moment, whatever the allow list says (flooders).
    banned: HashMap<PeerId, Instant>,
    logged: HashSet<PeerId>,
    unlogged: u64,
    last_summary: Option<Instant>,
}

impl Gate {
    /// `None` opens the gate to every peer; `Some(list)` admits only those PeerIds.
    pub fn set_allowed(&mut self, allowed: Option<HashSet<PeerId>>) {
        self.allowed = allowed;
    }

    /// Whether `peer` may be connected.
    pub fn admits(&self, peer: &PeerId) -> bool {
        let banned = self
            .banned
            .get(peer)
            .is_some_and(|until| Instant::now() < *until);
        !banned && self.allowed.as_ref().is_none_or(|a| a.contains(peer))
    }

    /// Refuses `peer` until `until`, whatever the allow list says (a peer caught flooding).
    pub fn ban(&mut self, peer: PeerId, until: Instant) {
        let now = Instant::now();
        self.banned.retain(|_, t| *t > now);
        if self.banned.len() < MAX_REMEMBERED {
            self.banned.insert(peer, until);
        }
    }

    fn enforce(&mut self, peer: PeerId) -> Result<(), ConnectionDenied> {
        if self.admits(&peer) {
            return Ok(());
        }
        if !self.banned.contains_key(&peer) {
            self.report(peer);
        }
        Err(ConnectionDenied::new(NotAllowed(peer)))
    }

    /// Logs a refusal once per peer.
    fn report(&mut self, peer: PeerId) {
        if self.logged.contains(&peer) {
            return;
        }
        if self.logged.len() < MAX_REMEMBERED {
            self.logged.insert(peer);
            log::warn!("refusing connection from {peer}: not in the cluster's registry and new nodes are not allowed (--allow-new-nodes false)");
            return;
        }
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .last_summary
            .is_none_or(|t| now.saturating_duration_since(t) >= SUMMARY_EVERY)
        {
            log::warn!(
                "refused {} more connections from peers not in the registry",
                self.unlogged
            );
            self.unlogged = 0;
            self.last_summary = Some(now);
        }
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.enforce(peer)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.enforce(peer)?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_gate_admits_everyone_and_a_closed_one_only_its_list() {
        let member = PeerId::random();
        let stranger = PeerId::random();
        let mut gate = Gate::default();
        assert!(gate.admits(&member) && gate.admits(&stranger));
        gate.set_allowed(Some([member].into_iter().collect()));
        assert!(gate.admits(&member));
        assert!(!gate.admits(&stranger));
        assert!(gate.enforce(stranger).is_err());
        assert!(gate.enforce(stranger).is_err());
        assert_eq!(
            gate.logged.len(),
            1,
            "a peer is remembered (and logged) once"
        );
        gate.set_allowed(None);
        assert!(gate.admits(&stranger));
        gate.ban(stranger, Instant::now() + Duration::from_secs(60));
        assert!(
            !gate.admits(&stranger),
            "a ban holds even with the gate open"
        );
        gate.ban(member, Instant::now());
        assert!(gate.admits(&member), "an expired ban is no ban");
    }

    #[test]
    fn the_memory_of_refused_peers_is_bounded() {
        let mut gate = Gate::default();
        gate.set_allowed(Some(HashSet::new()));
        for _ in 0..MAX_REMEMBERED + 100 {
            let _ = gate.enforce(PeerId::random());
        }
        assert_eq!(gate.logged.len(), MAX_REMEMBERED);
    }
}
