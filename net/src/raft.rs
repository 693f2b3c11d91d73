//! The Raft handler: per-peer send queues and links for outbound Raft batches, and delivery
//! of inbound Raft frames.
//!
//! A batch queues in its peer's [`Outbox`] and leaves, coalesced with what queued behind it,
//! on the peer's link (`raft_stream.rs`) once the peer is ready and no frame is in flight.
//! Batches that cannot be delivered are reported as [`NetEvent::RaftSendFailed`]: Raft resends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use libp2p::PeerId;
use tokio::sync::mpsc;

use crate::admission::Admission;
use crate::outbox::Outbox;
use crate::protocol::{decode, encode, RaftBatch, RaftFrame, RAFT_STREAM_PROTOCOL_NAME};
use crate::raft_stream::{self, LinkFrame};
use crate::shared::Shared;
use crate::{NetError, NetEvent};

#[derive(Default)]
struct RaftPeer {
    outbox: Outbox,
    /// The writer task of our Raft stream to the peer, started on first use.
    link: Option<mpsc::UnboundedSender<LinkFrame>>,
}

#[derive(Default)]
pub(crate) struct Raft {
    peers: HashMap<PeerId, RaftPeer>,
    /// The id of the next frame handed to a link.
    next_frame_id: u64,
}

impl Raft {
    /// Queues a batch for `peer` and sends it if the peer is ready, or reports it failed.
    pub(crate) fn queue(
        &mut self,
        sh: &mut Shared,
        admission: &Admission,
        peer: PeerId,
        batch: RaftBatch,
    ) {
        // Encoded now, while an earlier frame may be on the wire (see `outbox`).
        let encoded = match encode(&batch) {
            Ok(encoded) => encoded,
            Err(e) => {
                sh.emit(NetEvent::RaftSendFailed {
                    peer,
                    batches: 1,
                    reason: e.to_string(),
                });
                return;
            }
        };
        let limit = sh.config.raft_queue_limit;
        let connected = admission.connected(&peer);
        let refusal = if peer == sh.local {
            Some("cannot send to self".to_string())
        } else if admission.foreign(&peer) {
            Some(NetError::ForeignPeer(peer).to_string())
        } else if !connected && !sh.dialer.knows(&peer) {
            Some(NetError::NotConnected(peer).to_string())
        } else if !self
            .peers
            .entry(peer)
            .or_default()
            .outbox
            .push(encoded, limit)
        {
            Some(NetError::QueueFull { peer, limit }.to_string())
        } else {
            None
        };
        if let Some(reason) = refusal {
            sh.emit(NetEvent::RaftSendFailed {
                peer,
                batches: 1,
                reason,
            });
            return;
        }
        if !connected {
            sh.dialer.hurry(&peer, Instant::now());
        }
        self.pump(sh, admission, peer);
    }

    /// Sends the next frame to `peer` if it is ready and has none in flight.
    pub(crate) fn pump(&mut self, sh: &mut Shared, admission: &Admission, peer: PeerId) {
        if !admission.ready(&peer) {
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.outbox.busy() {
            return;
        }
        let Some((parts, n)) = p.outbox.next_frame(sh.config.max_raft_frame) else {
            return;
        };
        let id = self.next_frame_id;
        self.next_frame_id += 1;
        let spawn = || {
            raft_stream::spawn_link(
                sh.streams.clone(),
                peer,
                sh.commands.clone(),
                sh.config.request_timeout,
                Arc::clone(&sh.counters.raft),
            )
        };
        let link = p.link.get_or_insert_with(spawn);
        if let Err(mpsc::error::SendError((_, parts))) = link.send((id, parts)) {
            // The task is gone (only if it panicked): start another for this frame.
            let link = spawn();
            let _ = link.send((id, parts));
            p.link = Some(link);
        }
        p.outbox.sent(id, n);
    }

    /// A link reports frame `id` written (or failed): the next one may go.
    pub(crate) fn written(
        &mut self,
        sh: &mut Shared,
        admission: &Admission,
        peer: PeerId,
        id: u64,
        result: Result<(), String>,
    ) {
        let Some(batches) = self
            .peers
            .get_mut(&peer)
            .and_then(|p| p.outbox.finished(id))
        else {
            return;
        };
        if let Err(reason) = result {
            sh.emit(NetEvent::RaftSendFailed {
                peer,
                batches,
                reason,
            });
        }
        self.pump(sh, admission, peer);
    }

    /// Decodes a frame of a ready peer and hands its batches to the application. A frame that
    /// does not decode is refused and skipped: the stream stays in step.
    pub(crate) fn deliver(&self, sh: &mut Shared, peer: PeerId, frame: &[u8]) {
        match decode::<RaftFrame>(frame) {
            Ok(RaftFrame::V1 { batches }) => {
                for batch in batches {
                    sh.emit(NetEvent::Raft { peer, batch });
                }
            }
            Err(reason) => sh.reject(peer, RAFT_STREAM_PROTOCOL_NAME, reason),
        }
    }

    /// Drops what is queued for `peer` (down, foreign or unreachable) and reports it.
    pub(crate) fn drop_queued(&mut self, sh: &mut Shared, peer: PeerId, reason: impl ToString) {
        let dropped = self.peers.get_mut(&peer).map_or(0, |p| p.outbox.clear());
        if dropped > 0 {
            sh.emit(NetEvent::RaftSendFailed {
                peer,
                batches: dropped,
                reason: reason.to_string(),
            });
        }
    }

    /// Forgets the peers that are not connected and have nothing queued or in flight.
    pub(crate) fn retain(&mut self, admission: &Admission) {
        self.peers
            .retain(|peer, p| admission.connected(peer) || !p.outbox.is_idle());
    }
}
