//! What the network layer reports to the node.

use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;

use crate::protocol::{PeerInfo, RaftBatch, SnapshotChunk};
use crate::NetError;

/// Events from the event loop, in the order they happened.
///
/// Messages from one peer are delivered only after that peer has proven, with a hello, that it
/// belongs to our cluster; a peer of another cluster never produces a message event.
#[derive(Debug)]
pub enum NetEvent {
    /// The swarm listens on a new address.
    Listening {
        /// The address (with a concrete port).
        addr: Multiaddr,
    },
    /// A cluster peer is alive (first contact, or heard again after Suspect/Down).
    PeerUp {
        /// The peer.
        peer: PeerId,
    },
    /// A cluster peer went quiet or lost its connection; it may be gone.
    PeerSuspect {
        /// The peer.
        peer: PeerId,
    },
    /// A cluster peer has been silent longer than the down timeout.
    PeerDown {
        /// The peer.
        peer: PeerId,
    },
    /// A membership heartbeat of a cluster peer (addresses, version, app payload).
    Heartbeat {
        /// What the peer says about itself.
        info: PeerInfo,
    },
    /// A peer of another cluster (name or id) connected; it has been disconnected.
    ForeignPeer {
        /// The peer.
        peer: PeerId,
        /// Its cluster name.
        cluster_name: String,
        /// Its cluster id.
        cluster_id: Option<u64>,
    },
    /// A Raft batch from a peer. Batches of one peer arrive in the order they were sent.
    Raft {
        /// The sender.
        peer: PeerId,
        /// Its `(group id, message bytes)` pairs.
        batch: RaftBatch,
    },
    /// Raft batches that were queued for a peer and will not be delivered (peer down, foreign,
    /// refused, queue full, request failed). Raft recovers by resending.
    RaftSendFailed {
        /// The peer.
        peer: PeerId,
        /// How many batches were dropped.
        batches: usize,
        /// Why.
        reason: String,
    },
    /// A client request; answer it with [`KvResponder::respond`].
    KvRequest {
        /// The requesting peer.
        peer: PeerId,
        /// The opaque request payload.
        payload: Vec<u8>,
        /// Where the answer goes.
        responder: KvResponder,
    },
    /// A snapshot chunk; it has been acknowledged to the sender once this event was queued.
    SnapshotChunk {
        /// The sender.
        peer: PeerId,
        /// The chunk.
        chunk: SnapshotChunk,
    },
    /// A frame from a peer was refused (too large or undecodable). The connection stays up.
    FrameRejected {
        /// The peer.
        peer: PeerId,
        /// The protocol name.
        protocol: &'static str,
        /// Why.
        reason: String,
    },
}

/// The reply slot of one [`NetEvent::KvRequest`].
///
/// Dropping it without responding makes the requester's call fail, which it must handle
/// anyway (the node may crash at any time).
#[derive(Debug)]
pub struct KvResponder {
    /// The request's id on its kv stream.
    pub(crate) id: u64,
    /// The stream's writer task: answers go straight to it, not through the event loop.
    pub(crate) answers: mpsc::UnboundedSender<Vec<u8>>,
}

impl KvResponder {
    /// Sends `payload` back to the requester: it is queued for the stream's writer task at
    /// once, without waiting (the writer joins what queued into one write).
    pub fn respond(self, payload: Vec<u8>) -> Result<(), NetError> {
        let frame = crate::kv_stream::encode_answer(self.id, Ok(payload))?;
        // The writer is gone only with its stream: the requester sees that instead.
        self.answers.send(frame).map_err(|_| NetError::Shutdown)
    }
}

/// The stream of [`NetEvent`]s returned by [`crate::new`].
#[derive(Debug)]
pub struct NetEvents {
    pub(crate) rx: mpsc::Receiver<NetEvent>,
}

impl NetEvents {
    /// The next event; `None` once the event loop has stopped.
    pub async fn recv(&mut self) -> Option<NetEvent> {
        self.rx.recv().await
    }
}

impl futures::Stream for NetEvents {
    type Item = NetEvent;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<NetEvent>> {
        self.rx.poll_recv(cx)
    }
}
