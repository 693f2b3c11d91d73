//! The hello/gate handler: who is connected, who has proven it belongs to our cluster, and what
//! waits for that proof.
//!
//! Every new connection starts with a hello exchange (`/swarmkv/hello/1`, request-response,
//! both ends ask) carrying the cluster name, id and software version. Until a peer's hello
//! matches ours, what it sends is held here (bounded per peer and in total, so a stranger
//! cannot make us buffer much) and what we would send it is parked here; a peer that never
//! says hello is disconnected after the hello timeout, and a peer of another cluster is marked
//! foreign, reported once and disconnected. The gate (`gate.rs`) refuses unlisted PeerIds even
//! before that, right after the transport handshake.
//!
//! The handler owns the per-peer connection state; the other handlers ask it whether a peer is
//! connected or ready. What admission means for them (held frames to deliver, parked requests
//! to send) goes back to the event loop, which dispatches it.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::core::ConnectedPoint;
use libp2p::request_response::{self, ResponseChannel};
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;

use crate::codec::Frame;
use crate::handle::{RawProtocol, Reply};
use crate::membership::Liveness;
use crate::protocol::{decode, encode, Hello, HelloFrame, HELLO_PROTOCOL_NAME};
use crate::shared::Shared;
use crate::{NetError, NetEvent};

/// Inbound frames held per peer while it has not said hello yet, by count...
const MAX_HELD: usize = 256;
/// ... and by bytes: a stranger must not make us buffer much before it proves anything.
const MAX_HELD_BYTES: usize = 16 << 20;
/// How long a foreign peer's connection stays open so that our hello answer reaches it.
const FOREIGN_GRACE: Duration = Duration::from_millis(100);
/// How long a foreign peer is remembered (to report it once, not on every reconnect).
const FOREIGN_MEMORY: Duration = Duration::from_secs(60);
/// At most this many addresses are remembered per peer.
pub(crate) const MAX_ADDRS: usize = 8;

/// An inbound frame from a peer that has not proven its cluster yet.
pub(crate) enum Held {
    /// A frame read from the peer's Raft stream (nothing to answer).
    Raft(Vec<u8>),
    /// A request read from one of the peer's kv streams: its id, payload and answer writer.
    Kv {
        id: u64,
        payload: Vec<u8>,
        answers: mpsc::UnboundedSender<Vec<u8>>,
    },
    /// A snapshot chunk request and its response channel.
    Snapshot(Vec<u8>, ResponseChannel<Vec<u8>>),
}

impl Held {
    fn len(&self) -> usize {
        match self {
            Held::Raft(b) | Held::Snapshot(b, _) | Held::Kv { payload: b, .. } => b.len(),
        }
    }

    /// Drops the frame; a kv requester is told why (it waits on a stream shared with other
    /// requests, so a dropped request would otherwise only time out). A snapshot sender sees
    /// its channel dropped.
    fn refuse(self, reason: &str) {
        if let Held::Kv { id, answers, .. } = self {
            if let Ok(frame) = crate::kv_stream::encode_answer(id, Err(reason.to_string())) {
                let _ = answers.send(frame);
            }
        }
    }
}

/// An outbound request waiting for its peer to connect and say hello.
pub(crate) enum Outbound {
    Kv(Vec<u8>, Reply<Vec<u8>>),
    Snapshot(Vec<u8>, Reply<()>),
    Raw(RawProtocol, Vec<u8>, Reply<Vec<u8>>),
}

impl Outbound {
    pub(crate) fn fail(self, err: NetError) {
        // The caller may have given up waiting; nobody to tell then.
        match self {
            Outbound::Kv(_, reply) | Outbound::Raw(_, _, reply) => {
                let _ = reply.send(Err(err));
            }
            Outbound::Snapshot(_, reply) => {
                let _ = reply.send(Err(err));
            }
        }
    }
}

/// A peer whose hello names another cluster.
pub(crate) struct Foreign {
    pub peer: PeerId,
    pub cluster_name: String,
    pub cluster_id: Option<u64>,
}

/// What a hello led to.
pub(crate) enum HelloOutcome {
    /// The peer belongs to our cluster: what was held and parked for it may go now.
    Admitted {
        peer: PeerId,
        held: Vec<Held>,
        parked: Vec<Outbound>,
    },
    Foreign(Foreign),
}

#[derive(Default)]
struct Peer {
    connections: HashSet<ConnectionId>,
    connected_since: Option<Instant>,
    verified: bool,
    hello: Option<Hello>,
    foreign_since: Option<Instant>,
    held: Vec<Held>,
    addrs: Vec<Multiaddr>,
}

impl Peer {
    fn ready(&self) -> bool {
        self.verified && !self.connections.is_empty()
    }

    fn remember_addr(&mut self, addr: Multiaddr) {
        if !self.addrs.contains(&addr) {
            if self.addrs.len() >= MAX_ADDRS {
                self.addrs.remove(0);
            }
            self.addrs.push(addr);
        }
    }
}

#[derive(Default)]
pub(crate) struct Admission {
    peers: HashMap<PeerId, Peer>,
    /// Bytes held for unverified peers, all together (`max_held_bytes`).
    held_total: usize,
    /// Outbound requests waiting for their peer, since when.
    parked: Vec<(PeerId, Instant, Outbound)>,
}

impl Admission {
    /// Whether `peer` is connected and has proven its cluster.
    pub(crate) fn ready(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(Peer::ready)
    }

    /// Whether `peer` has a connection (verified or not).
    pub(crate) fn connected(&self, peer: &PeerId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| !p.connections.is_empty())
    }

    /// Whether `peer` was found to belong to another cluster.
    pub(crate) fn foreign(&self, peer: &PeerId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| p.foreign_since.is_some())
    }

    /// The connected peers of our cluster.
    pub(crate) fn ready_peers(&self) -> Vec<PeerId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.ready())
            .map(|(id, _)| *id)
            .collect()
    }

    /// A connection is up: the first one to a peer starts the hello exchange.
    pub(crate) fn on_connected(
        &mut self,
        sh: &mut Shared,
        peer: PeerId,
        id: ConnectionId,
        endpoint: &ConnectedPoint,
    ) {
        let p = self.peers.entry(peer).or_default();
        if let ConnectedPoint::Dialer { address, .. } = endpoint {
            p.remember_addr(address.clone());
        }
        let first = p.connections.is_empty();
        p.connections.insert(id);
        if first {
            p.connected_since = Some(Instant::now());
            send_hello(sh, peer);
        }
    }

    /// A connection closed. Returns true when it was the peer's last one and nobody will
    /// redial the peer (no address known): what waits for it can only fail.
    pub(crate) fn on_disconnected(
        &mut self,
        sh: &mut Shared,
        peer: PeerId,
        id: ConnectionId,
        remaining: u32,
    ) -> bool {
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        p.connections.remove(&id);
        if remaining > 0 || !p.connections.is_empty() {
            return false;
        }
        p.connected_since = None;
        p.verified = false;
        // Held frames die with their connection (snapshot channels are dropped).
        let released: usize = p.held.drain(..).map(|h| h.len()).sum();
        self.held_total = self.held_total.saturating_sub(released);
        let unreachable = !sh.dialer.knows(&peer);
        if unreachable {
            self.fail_parked(peer, || NetError::NotConnected(peer));
        }
        if sh.detector.connection_lost(&peer) == Some(Liveness::Suspect) {
            sh.emit(NetEvent::PeerSuspect { peer });
        }
        unreachable
    }

    /// Addresses a peer listens on (from identify): redialed once it is a member.
    pub(crate) fn remember_addrs(
        &mut self,
        sh: &mut Shared,
        peer: PeerId,
        addrs: impl IntoIterator<Item = Multiaddr>,
    ) {
        let p = self.peers.entry(peer).or_default();
        for addr in addrs.into_iter().take(MAX_ADDRS) {
            p.remember_addr(addr);
        }
        if p.ready() {
            let now = Instant::now();
            for addr in p.addrs.clone() {
                sh.dialer.learn(peer, addr, now, sh.config.reconnect_min);
            }
        }
    }

    /// An inbound frame: returned to be delivered now if its peer is ready, else held (or
    /// refused when too much is held already, for this peer or with `max_held_bytes` for all
    /// peers together).
    pub(crate) fn inbound(
        &mut self,
        max_held_bytes: usize,
        peer: PeerId,
        frame: Held,
    ) -> Option<Held> {
        let p = self.peers.entry(peer).or_default();
        if p.ready() {
            return Some(frame);
        }
        let held_bytes: usize = p.held.iter().map(Held::len).sum();
        if p.foreign_since.is_none()
            && p.held.len() < MAX_HELD
            && held_bytes + frame.len() <= MAX_HELD_BYTES
            && self.held_total + frame.len() <= max_held_bytes
        {
            self.held_total += frame.len();
            p.held.push(frame);
        } else {
            frame.refuse("refused: too much held for a peer that has not said hello");
        }
        None
    }

    /// An outbound request: returned to be sent now if its peer is ready, else parked until
    /// it is (or failed when it cannot become ready).
    pub(crate) fn outbound(
        &mut self,
        sh: &mut Shared,
        peer: PeerId,
        request: Outbound,
    ) -> Option<Outbound> {
        let Some(p) = self.peers.get(&peer).filter(|p| !p.connections.is_empty()) else {
            let known = sh.dialer.knows(&peer);
            if known {
                sh.dialer.hurry(&peer, Instant::now());
            }
            if known && !sh.config.light_client {
                self.parked.push((peer, Instant::now(), request));
            } else {
                // A light client talks to several nodes and picks another when one is gone:
                // it hears so at once rather than after the request timeout.
                request.fail(NetError::NotConnected(peer));
            }
            return None;
        };
        if p.foreign_since.is_some() {
            request.fail(NetError::ForeignPeer(peer));
            None
        } else if p.verified {
            Some(request)
        } else {
            self.parked.push((peer, Instant::now(), request));
            None
        }
    }

    /// Handles the hello exchange's events.
    pub(crate) fn on_hello_event(
        &mut self,
        sh: &mut Shared,
        event: request_response::Event<Frame, Vec<u8>>,
    ) -> Option<HelloOutcome> {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let Ok(request) = request.into_bytes() else {
                        // Dropping the channel closes the stream: no answer to a giant hello.
                        log::debug!("oversized hello from {peer}");
                        return None;
                    };
                    // Always answer, so a foreign peer learns why it is being dropped.
                    if let Ok(frame) = encode(&HelloFrame::V1(local_hello(sh))) {
                        let _ = sh.swarm.behaviour_mut().hello.send_response(channel, frame);
                    }
                    self.on_hello(sh, peer, &request)
                }
                request_response::Message::Response { response, .. } => {
                    self.on_hello(sh, peer, &response)
                }
            },
            request_response::Event::InboundFailure { peer, error, .. } => {
                log::debug!("inbound hello from {peer} failed: {error}");
                None
            }
            request_response::Event::OutboundFailure { peer, error, .. } => {
                log::debug!("hello to {peer} failed: {error}");
                None
            }
            request_response::Event::ResponseSent { .. } => None,
        }
    }

    fn on_hello(&mut self, sh: &mut Shared, peer: PeerId, frame: &[u8]) -> Option<HelloOutcome> {
        let hello = match decode::<HelloFrame>(frame) {
            Ok(HelloFrame::V1(hello)) => hello,
            Err(reason) => {
                sh.reject(peer, HELLO_PROTOCOL_NAME, reason);
                return None;
            }
        };
        if sh.same_cluster(&hello.cluster_name, hello.cluster_id) {
            self.verify(sh, peer, hello)
        } else {
            Some(HelloOutcome::Foreign(Foreign {
                peer,
                cluster_name: hello.cluster_name,
                cluster_id: hello.cluster_id,
            }))
        }
    }

    fn verify(&mut self, sh: &mut Shared, peer: PeerId, hello: Hello) -> Option<HelloOutcome> {
        let now = Instant::now();
        let p = self.peers.get_mut(&peer)?;
        if p.connections.is_empty() {
            return None;
        }
        p.hello = Some(hello);
        p.foreign_since = None;
        let newly = !p.verified;
        p.verified = true;
        let held = std::mem::take(&mut p.held);
        let released: usize = held.iter().map(Held::len).sum();
        self.held_total = self.held_total.saturating_sub(released);
        if newly {
            for addr in p.addrs.clone() {
                sh.dialer.learn(peer, addr, now, sh.config.reconnect_min);
            }
            sh.dialer.connected(&peer);
        }
        if sh.detector.heard(peer, now) == Some(Liveness::Up) {
            sh.emit(NetEvent::PeerUp { peer });
        }
        let parked = self.take_parked(peer);
        Some(HelloOutcome::Admitted { peer, held, parked })
    }

    /// Marks `peer` as belonging to another cluster: what is held or parked for it is
    /// dropped, it is forgotten by the failure detector and the dialer, and reported once.
    pub(crate) fn mark_foreign(&mut self, sh: &mut Shared, foreign: Foreign) {
        let Foreign {
            peer,
            cluster_name,
            cluster_id,
        } = foreign;
        let p = self.peers.entry(peer).or_default();
        let known_before = p.foreign_since.is_some();
        p.foreign_since = Some(Instant::now());
        p.verified = false;
        p.hello = None;
        let released: usize = p.held.drain(..).map(|h| h.len()).sum();
        self.held_total = self.held_total.saturating_sub(released);
        self.fail_parked(peer, || NetError::ForeignPeer(peer));
        if matches!(
            sh.detector.liveness(&peer),
            Some(Liveness::Up | Liveness::Suspect)
        ) {
            sh.emit(NetEvent::PeerDown { peer });
        }
        sh.detector.forget(&peer);
        sh.dialer.forget(&peer);
        if !known_before {
            log::info!("peer {peer} belongs to cluster {cluster_name} {cluster_id:?}; dropping it");
            sh.emit(NetEvent::ForeignPeer {
                peer,
                cluster_name,
                cluster_id,
            });
        }
    }

    /// Takes a new cluster id: returns the peers whose hello no longer matches, to be marked
    /// foreign before [`Admission::greet_connected`] tells the others.
    pub(crate) fn set_cluster_id(&mut self, sh: &mut Shared, id: Option<u64>) -> Vec<Foreign> {
        sh.cluster_id = id;
        let mut foreign = Vec::new();
        for (peer, p) in &mut self.peers {
            // A peer refused under the old id may be a member under the new one.
            p.foreign_since = None;
            if let Some(h) = &p.hello {
                if !sh.same_cluster(&h.cluster_name, h.cluster_id) {
                    foreign.push(Foreign {
                        peer: *peer,
                        cluster_name: h.cluster_name.clone(),
                        cluster_id: h.cluster_id,
                    });
                }
            }
        }
        foreign
    }

    /// Says hello again to every connected peer not known as foreign (our credentials
    /// changed).
    pub(crate) fn greet_connected(&self, sh: &mut Shared) {
        for (peer, p) in &self.peers {
            if !p.connections.is_empty() && p.foreign_since.is_none() {
                send_hello(sh, *peer);
            }
        }
    }

    /// Opens or closes the gate (see `gate.rs`), and drops connected peers it now refuses.
    pub(crate) fn set_allowed_peers(&self, sh: &mut Shared, allowed: Option<HashSet<PeerId>>) {
        let gate = &mut sh.swarm.behaviour_mut().gate;
        gate.set_allowed(allowed);
        let refused: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(peer, p)| !p.connections.is_empty() && !gate.admits(peer))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in refused {
            log::info!("disconnecting {peer}: no longer allowed (not in the registry)");
            let _ = sh.swarm.disconnect_peer_id(peer);
        }
    }

    /// Closes connections of foreign peers (after the grace that lets our hello answer reach
    /// them) and of peers that did not prove their cluster in time; fails parked requests that
    /// waited longer than the request timeout; forgets disconnected peers.
    pub(crate) fn tick(&mut self, sh: &mut Shared, now: Instant) {
        let mut close = Vec::new();
        for (peer, p) in &self.peers {
            if p.connections.is_empty() {
                continue;
            }
            let foreign_done = p
                .foreign_since
                .is_some_and(|t| now.saturating_duration_since(t) >= FOREIGN_GRACE);
            let hello_late = !p.verified
                && p.connected_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= sh.config.hello_timeout);
            if foreign_done || hello_late {
                close.push(*peer);
            }
        }
        for peer in close {
            let _ = sh.swarm.disconnect_peer_id(peer);
        }

        let timeout = sh.config.request_timeout;
        let (expired, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|(_, since, _)| now.saturating_duration_since(*since) >= timeout);
        self.parked = waiting;
        for (peer, _, request) in expired {
            request.fail(NetError::Unreachable {
                peer,
                reason: "peer did not become reachable in time".to_string(),
            });
        }

        self.peers.retain(|_, p| {
            !p.connections.is_empty()
                || p.foreign_since
                    .is_some_and(|t| now.saturating_duration_since(t) < FOREIGN_MEMORY)
        });
    }

    fn take_parked(&mut self, peer: PeerId) -> Vec<Outbound> {
        let (mine, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|(p, _, _)| *p == peer);
        self.parked = waiting;
        mine.into_iter().map(|(_, _, request)| request).collect()
    }

    fn fail_parked(&mut self, peer: PeerId, err: impl Fn() -> NetError) {
        for request in self.take_parked(peer) {
            request.fail(err());
        }
    }
}

fn local_hello(sh: &Shared) -> Hello {
    Hello {
        cluster_name: sh.config.cluster_name.clone(),
        cluster_id: sh.cluster_id,
        software_version: sh.config.software_version.clone(),
    }
}

fn send_hello(sh: &mut Shared, peer: PeerId) {
    match encode(&HelloFrame::V1(local_hello(sh))) {
        Ok(frame) => {
            sh.swarm
                .behaviour_mut()
                .hello
                .send_request(&peer, Frame::Data(frame));
        }
        Err(e) => log::warn!("cannot encode hello: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(id: u64, len: usize) -> (Held, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (answers, rx) = mpsc::unbounded_channel();
        let frame = Held::Kv {
            id,
            payload: vec![0; len],
            answers,
        };
        (frame, rx)
    }

    #[test]
    fn frames_of_a_peer_without_hello_are_held_up_to_the_limits_and_then_refused(
    ) -> anyhow::Result<()> {
        let mut admission = Admission::default();
        let (stranger, other) = (PeerId::random(), PeerId::random());
        // Per peer by count: MAX_HELD small frames are held, the next is refused.
        for _ in 0..MAX_HELD {
            assert!(admission
                .inbound(usize::MAX, stranger, Held::Raft(vec![1]))
                .is_none());
        }
        let (frame, mut answers) = kv(7, 1);
        assert!(admission.inbound(usize::MAX, stranger, frame).is_none());
        // A refused kv request is answered with its id, so its requester does not wait.
        let answer = answers.try_recv()?;
        let (id, result) =
            crate::fuzzing::decode_kv_stream_answer(&answer).map_err(anyhow::Error::msg)?;
        assert_eq!(id, 7);
        assert!(result.is_err_and(|reason| reason.contains("hello")));
        // All peers together by bytes: other peers get what is left of the total.
        let total = MAX_HELD + 1000;
        let (frame, mut answers) = kv(8, 1000);
        assert!(admission.inbound(total, other, frame).is_none());
        assert!(
            answers.try_recv().is_err(),
            "a frame within the total was refused"
        );
        let (frame, mut answers) = kv(9, 1);
        assert!(admission.inbound(total, PeerId::random(), frame).is_none());
        assert!(
            answers.try_recv().is_ok(),
            "a frame over the total was held"
        );
        // Per peer by bytes.
        let (frame, mut answers) = kv(10, MAX_HELD_BYTES + 1);
        assert!(admission
            .inbound(usize::MAX, PeerId::random(), frame)
            .is_none());
        assert!(
            answers.try_recv().is_ok(),
            "a frame over the peer's bytes was held"
        );
        Ok(())
    }
}
