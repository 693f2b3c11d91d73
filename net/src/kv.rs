//! The kv handler: client requests to peers on their kv links, pending by request id until
//! answered, failed or timed out, and delivery of the peers' requests to the application.
//!
//! The links' tasks (`kv_stream.rs`) report answers and broken streams through the command
//! channel; the answers to requests we serve go straight from the [`KvResponder`] to the
//! stream's writer task.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use libp2p::PeerId;
use tokio::sync::mpsc;

use crate::admission::Admission;
use crate::handle::Reply;
use crate::kv_stream::{self, KvLink};
use crate::shared::Shared;
use crate::{KvResponder, NetError, NetEvent};

/// A request sent on a kv link and not answered yet.
struct Pending {
    peer: PeerId,
    /// The link it went on: if that link breaks, the request fails.
    generation: u64,
    deadline: Instant,
    reply: Reply<Vec<u8>>,
}

#[derive(Default)]
pub(crate) struct Kv {
    /// Our kv link to each peer, opened on the first request.
    links: HashMap<PeerId, KvLink>,
    /// Requests sent on kv links, by id.
    pending: HashMap<u64, Pending>,
    next_id: u64,
    next_generation: u64,
}

impl Kv {
    /// Sends a request on the link to a ready `peer`, opening one if there is none.
    pub(crate) fn send(
        &mut self,
        sh: &mut Shared,
        peer: PeerId,
        payload: Vec<u8>,
        reply: Reply<Vec<u8>>,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        let mut frame = match kv_stream::encode_request(id, payload) {
            Ok(frame) => Some(frame),
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        // A link whose tasks ended (its report may still be on the way) takes nothing: the
        // second attempt goes to a new one.
        for _ in 0..2 {
            let link = self.links.entry(peer).or_insert_with(|| {
                self.next_generation += 1;
                kv_stream::spawn_link(
                    sh.streams.clone(),
                    peer,
                    self.next_generation,
                    sh.commands.clone(),
                    sh.config.max_kv_frame,
                    sh.config.request_timeout,
                    Arc::clone(&sh.counters.kv),
                )
            });
            let Some(f) = frame.take() else { break };
            match link.tx.send(f) {
                Ok(()) => {
                    let pending = Pending {
                        peer,
                        generation: link.generation,
                        deadline: Instant::now() + sh.config.request_timeout,
                        reply,
                    };
                    self.pending.insert(id, pending);
                    return;
                }
                Err(mpsc::error::SendError(f)) => {
                    frame = Some(f);
                    self.links.remove(&peer);
                }
            }
        }
        let _ = reply.send(Err(NetError::Unreachable {
            peer,
            reason: "kv link could not be started".to_string(),
        }));
    }

    /// The answer to request `id`, or the peer's refusal of it.
    pub(crate) fn answer(&mut self, peer: PeerId, id: u64, result: Result<Vec<u8>, String>) {
        if let Some(p) = self.pending.remove(&id) {
            let _ = p
                .reply
                .send(result.map_err(|reason| NetError::Rejected { peer, reason }));
        }
    }

    /// A kv link ended: forget it and fail what waits on it.
    pub(crate) fn link_broken(
        &mut self,
        peer: PeerId,
        generation: u64,
        reason: String,
        opened: bool,
    ) {
        if self.links.get(&peer).map(|l| l.generation) == Some(generation) {
            self.links.remove(&peer);
        }
        let failed: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.peer == peer && p.generation == generation)
            .map(|(id, _)| *id)
            .collect();
        for id in failed {
            if let Some(p) = self.pending.remove(&id) {
                let reason = reason.clone();
                // Never written if the stream never opened: safe to retry elsewhere.
                let err = if opened {
                    NetError::RequestFailed { peer, reason }
                } else {
                    NetError::Unreachable { peer, reason }
                };
                let _ = p.reply.send(Err(err));
            }
        }
    }

    /// Hands a ready peer's request to the application.
    pub(crate) fn deliver(
        &self,
        sh: &mut Shared,
        peer: PeerId,
        id: u64,
        payload: Vec<u8>,
        answers: mpsc::UnboundedSender<Vec<u8>>,
    ) {
        sh.emit(NetEvent::KvRequest {
            peer,
            payload,
            responder: KvResponder { id, answers },
        });
    }

    /// Fails the requests past their deadline and drops the links of disconnected peers.
    pub(crate) fn tick(&mut self, sh: &Shared, admission: &Admission, now: Instant) {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                let _ = p.reply.send(Err(NetError::RequestFailed {
                    peer: p.peer,
                    reason: format!("no answer within {:?}", sh.config.request_timeout),
                }));
            }
        }
        self.links.retain(|peer, _| admission.connected(peer));
    }
}
