//! The cheap, cloneable handle through which the node talks to the event loop.

use std::collections::HashSet;
use std::sync::Arc;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use crate::protocol::{
    raft_batch_size_bound, RaftBatch, SnapshotChunk, KV_STREAM_PROTOCOL_NAME, RAFT_FRAME_OVERHEAD,
    RAFT_STREAM_PROTOCOL_NAME, SNAPSHOT_PROTOCOL_NAME,
};
use crate::stats::Counters;
use crate::{NetError, NetStats};

/// Which protocol a raw frame goes to (tests only).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawProtocol {
    /// `/swarmkv/raft-stream/1`: the bytes are written as they are (length prefixes included)
    /// on a new stream, which is then closed; the answer is empty.
    RaftStream,
    /// `/swarmkv/kv-stream/1`: the bytes are written as they are on a new stream, whose
    /// writing side is then closed; the answer is every byte the peer writes back within 2 s.
    KvStream,
    /// `/swarmkv/snapshot/1`: the bytes are sent as one request (the codec adds the length
    /// prefix); the answer is the peer's response, undecoded.
    Snapshot,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, NetError>>;

/// A request to the event loop. Each one that has an answer carries the oneshot for it.
#[derive(Debug)]
pub(crate) enum Command {
    SendRaft {
        peer: PeerId,
        batch: RaftBatch,
    },
    Kv {
        peer: PeerId,
        payload: Vec<u8>,
        reply: Reply<Vec<u8>>,
    },
    Snapshot {
        peer: PeerId,
        chunk: SnapshotChunk,
        reply: Reply<()>,
    },
    Dial {
        addr: Multiaddr,
        reply: Reply<PeerId>,
    },
    SetClusterId {
        id: Option<u64>,
        reply: Reply<()>,
    },
    SetAppPayload {
        app: Vec<u8>,
        reply: Reply<()>,
    },
    ListenAddrs {
        reply: Reply<Vec<Multiaddr>>,
    },
    ClusterPeers {
        reply: Reply<Vec<PeerId>>,
    },
    Raw {
        peer: PeerId,
        protocol: RawProtocol,
        bytes: Vec<u8>,
        reply: Reply<Vec<u8>>,
    },
    Shutdown {
        reply: Reply<()>,
    },
    SetAllowedPeers {
        allowed: Option<HashSet<PeerId>>,
        reply: Reply<()>,
    },
    /// From a peer's Raft link task (`raft_stream`): frame `id` was written, or not.
    RaftWritten {
        peer: PeerId,
        id: u64,
        result: Result<(), String>,
    },
    /// From a Raft stream reader: one frame, not decoded yet.
    RaftInbound {
        peer: PeerId,
        frame: Vec<u8>,
    },
    /// From a stream reader: a frame was refused (undecodable, or too large: then the
    /// stream was dropped unread).
    StreamFrameRefused {
        peer: PeerId,
        protocol: &'static str,
        reason: String,
    },
    /// From a kv link's reader: the answer to request `id`.
    KvAnswer {
        peer: PeerId,
        id: u64,
        result: Result<Vec<u8>, String>,
    },
    /// From a kv link: its stream could not be opened or broke; requests waiting on it fail.
    KvLinkBroken {
        peer: PeerId,
        generation: u64,
        reason: String,
        /// Whether the stream was open (requests may have reached the peer).
        opened: bool,
    },
    /// From a kv stream server: a request, and where its answer goes.
    KvStreamRequest {
        peer: PeerId,
        id: u64,
        payload: Vec<u8>,
        answers: mpsc::UnboundedSender<Vec<u8>>,
    },
}

/// The node's handle on the network: clone it freely, every clone talks to the same loop.
///
/// Every method sends a command to the event loop; none takes a lock. When the loop has
/// stopped, methods return [`NetError::Shutdown`].
#[derive(Debug, Clone)]
pub struct NetHandle {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) local_peer_id: PeerId,
    pub(crate) max_raft_frame: usize,
    pub(crate) max_kv_frame: usize,
    pub(crate) max_snapshot_frame: usize,
    /// What the stream tasks have written; read without asking the event loop.
    pub(crate) counters: Arc<Counters>,
}

async fn ask<T>(
    commands: &mpsc::Sender<Command>,
    make: impl FnOnce(Reply<T>) -> Command,
) -> Result<T, NetError> {
    let (tx, rx) = oneshot::channel();
    commands
        .send(make(tx))
        .await
        .map_err(|_| NetError::Shutdown)?;
    rx.await.map_err(|_| NetError::Shutdown)?
}

impl NetHandle {
    /// This node's PeerId.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Queues a Raft batch for `peer`. Returns once the event loop has it.
    ///
    /// Batches to one peer are delivered in order, each once, while both ends stay up. A batch
    /// that cannot be delivered is reported as [`crate::NetEvent::RaftSendFailed`]: Raft
    /// tolerates loss and resends, so this call does not wait for the peer.
    pub async fn send_raft(&self, peer: PeerId, batch: RaftBatch) -> Result<(), NetError> {
        let size = raft_batch_size_bound(&batch) + RAFT_FRAME_OVERHEAD;
        if size > self.max_raft_frame {
            return Err(NetError::FrameTooLarge {
                protocol: RAFT_STREAM_PROTOCOL_NAME,
                size,
                limit: self.max_raft_frame,
            });
        }
        self.commands
            .send(Command::SendRaft { peer, batch })
            .await
            .map_err(|_| NetError::Shutdown)
    }

    /// Sends a client request to `peer` on the kv stream to it and waits for its answer.
    ///
    /// [`NetError::Unreachable`] means the request never left (safe to send elsewhere);
    /// [`NetError::RequestFailed`] that it may have been processed.
    pub async fn kv_request(&self, peer: PeerId, payload: Vec<u8>) -> Result<Vec<u8>, NetError> {
        let size = payload.len() + 16;
        if size > self.max_kv_frame {
            return Err(NetError::FrameTooLarge {
                protocol: KV_STREAM_PROTOCOL_NAME,
                size,
                limit: self.max_kv_frame,
            });
        }
        ask(&self.commands, |reply| Command::Kv {
            peer,
            payload,
            reply,
        })
        .await
    }

    /// Sends one snapshot chunk and waits until the peer has taken it (one chunk per call
    /// gives the sender natural flow control).
    pub async fn send_snapshot_chunk(
        &self,
        peer: PeerId,
        chunk: SnapshotChunk,
    ) -> Result<(), NetError> {
        let size = chunk.data.len() + 64;
        if size > self.max_snapshot_frame {
            return Err(NetError::FrameTooLarge {
                protocol: SNAPSHOT_PROTOCOL_NAME,
                size,
                limit: self.max_snapshot_frame,
            });
        }
        ask(&self.commands, |reply| Command::Snapshot {
            peer,
            chunk,
            reply,
        })
        .await
    }

    /// Dials an address (a `--join` given at run time, or a test's explicit dial) and returns
    /// the PeerId that answered once the connection is up.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, NetError> {
        ask(&self.commands, |reply| Command::Dial { addr, reply }).await
    }

    /// Sets the cluster id once the cluster has formed. Connected peers are told at once, and
    /// peers of another id are disconnected.
    pub async fn set_cluster_id(&self, id: Option<u64>) -> Result<(), NetError> {
        ask(&self.commands, |reply| Command::SetClusterId { id, reply }).await
    }

    /// Closes the network to every PeerId but `allowed` (`Some`), or opens it again (`None`).
    ///
    /// A closed network denies connections from and to other peers right after the noise
    /// handshake (before any request is read) and drops connected peers not in the list;
    /// each refused peer is logged once. The node calls this with its cluster's registry when
    /// new nodes are not allowed, and again whenever the registry changes.
    pub async fn set_allowed_peers(
        &self,
        allowed: Option<HashSet<PeerId>>,
    ) -> Result<(), NetError> {
        ask(&self.commands, |reply| Command::SetAllowedPeers {
            allowed,
            reply,
        })
        .await
    }

    /// Sets the opaque payload carried by this node's next heartbeats.
    pub async fn set_app_payload(&self, app: Vec<u8>) -> Result<(), NetError> {
        ask(&self.commands, |reply| Command::SetAppPayload {
            app,
            reply,
        })
        .await
    }

    /// The addresses the swarm listens on (concrete ports).
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        ask(&self.commands, |reply| Command::ListenAddrs { reply }).await
    }

    /// Peers currently connected and verified as members of our cluster.
    pub async fn cluster_peers(&self) -> Result<Vec<PeerId>, NetError> {
        ask(&self.commands, |reply| Command::ClusterPeers { reply }).await
    }

    /// Stops the event loop; its connections close and every handle starts failing.
    pub async fn shutdown(&self) -> Result<(), NetError> {
        ask(&self.commands, |reply| Command::Shutdown { reply }).await
    }

    /// What the long-lived Raft and kv streams have written since the network started:
    /// frames, and the stream writes that carried them (each a yamux frame and a socket
    /// write). Read from shared counters, so it works after the loop has stopped too.
    pub fn stats(&self) -> NetStats {
        self.counters.snapshot()
    }

    /// Sends arbitrary bytes as one frame and returns the raw response. Exists so tests can
    /// prove that garbage is refused without harming the connection; not for the node.
    #[doc(hidden)]
    pub async fn send_raw_frame(
        &self,
        peer: PeerId,
        protocol: RawProtocol,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>, NetError> {
        ask(&self.commands, |reply| Command::Raw {
            peer,
            protocol,
            bytes,
            reply,
        })
        .await
    }
}
