//! The snapshot handler: snapshot chunks on `/swarmkv/snapshot/1` (request-response), pending
//! by request id until the peer acknowledges them.
//!
//! One chunk per request gives the sender natural flow control: the next chunk goes once the
//! peer's application has the previous one. An inbound chunk is acknowledged when it is
//! queued for the application (held first if its peer has not said hello yet); an oversized
//! one is answered with a refusal without its body being read.

use std::collections::HashMap;

use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ResponseChannel};
use libp2p::PeerId;

use crate::admission::Held;
use crate::codec::Frame;
use crate::handle::Reply;
use crate::protocol::{decode, encode, Ack, SnapshotFrame, SNAPSHOT_PROTOCOL_NAME};
use crate::shared::Shared;
use crate::{NetError, NetEvent};

/// What an outbound request waits for.
enum Pending {
    /// A chunk from [`crate::NetHandle::send_snapshot_chunk`]: its ack.
    Chunk(PeerId, Reply<()>),
    /// Raw bytes (tests only): the response as it is.
    Raw(Reply<Vec<u8>>),
}

#[derive(Default)]
pub(crate) struct Snapshots {
    pending: HashMap<OutboundRequestId, Pending>,
}

impl Snapshots {
    /// Sends an encoded chunk to a ready peer.
    pub(crate) fn send(&mut self, sh: &mut Shared, peer: PeerId, frame: Vec<u8>, reply: Reply<()>) {
        let snapshot = &mut sh.swarm.behaviour_mut().snapshot;
        let id = snapshot.send_request(&peer, Frame::Data(frame));
        self.pending.insert(id, Pending::Chunk(peer, reply));
    }

    /// Sends `bytes` as one request, whatever they are (tests only).
    pub(crate) fn send_raw(
        &mut self,
        sh: &mut Shared,
        peer: PeerId,
        bytes: Vec<u8>,
        reply: Reply<Vec<u8>>,
    ) {
        let snapshot = &mut sh.swarm.behaviour_mut().snapshot;
        let id = snapshot.send_request(&peer, Frame::Data(bytes));
        self.pending.insert(id, Pending::Raw(reply));
    }

    /// Handles the protocol's events; returns an inbound chunk for admission (`admission.rs`)
    /// to hold or pass on.
    pub(crate) fn on_event(
        &mut self,
        sh: &mut Shared,
        event: request_response::Event<Frame, Vec<u8>>,
    ) -> Option<(PeerId, Held)> {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => match request.into_bytes() {
                    Ok(frame) => return Some((peer, Held::Snapshot(frame, channel))),
                    Err(oversized) => {
                        let reason = oversized.to_string();
                        sh.reject(peer, SNAPSHOT_PROTOCOL_NAME, reason.clone());
                        respond(sh, channel, Err(reason));
                    }
                },
                request_response::Message::Response {
                    request_id,
                    response,
                } => match self.pending.remove(&request_id) {
                    Some(Pending::Chunk(peer, reply)) => {
                        let result = match decode::<Ack>(&response) {
                            Ok(Ack::V1(Ok(()))) => Ok(()),
                            Ok(Ack::V1(Err(reason))) | Err(reason) => {
                                Err(NetError::Rejected { peer, reason })
                            }
                        };
                        let _ = reply.send(result);
                    }
                    Some(Pending::Raw(reply)) => {
                        let _ = reply.send(Ok(response));
                    }
                    None => {}
                },
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let err = outbound_error(peer, &error);
                match self.pending.remove(&request_id) {
                    Some(Pending::Chunk(_, reply)) => {
                        let _ = reply.send(Err(err));
                    }
                    Some(Pending::Raw(reply)) => {
                        let _ = reply.send(Err(err));
                    }
                    None => {}
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                // Timeouts, closed connections and failed response writes: nothing the
                // application can act on (unreadable requests never get here; see
                // `codec::Frame`).
                log::debug!("inbound {SNAPSHOT_PROTOCOL_NAME} request from {peer} failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
        None
    }

    /// Decodes a ready peer's chunk, hands it to the application and acknowledges it (or
    /// answers why not).
    pub(crate) fn deliver(
        &self,
        sh: &mut Shared,
        peer: PeerId,
        frame: &[u8],
        channel: ResponseChannel<Vec<u8>>,
    ) {
        let result = match decode::<SnapshotFrame>(frame) {
            Ok(SnapshotFrame::V1(chunk)) => {
                sh.emit(NetEvent::SnapshotChunk { peer, chunk });
                Ok(())
            }
            Err(reason) => {
                sh.reject(peer, SNAPSHOT_PROTOCOL_NAME, reason.clone());
                Err(reason)
            }
        };
        respond(sh, channel, result);
    }
}

fn respond(sh: &mut Shared, channel: ResponseChannel<Vec<u8>>, result: Result<(), String>) {
    // Encoding a small enum into a Vec cannot fail; an empty answer would be refused anyway.
    let ack = encode(&Ack::V1(result)).unwrap_or_default();
    let _ = sh
        .swarm
        .behaviour_mut()
        .snapshot
        .send_response(channel, ack);
}

/// Whether an outbound failure means the request never left (safe to retry) or may have been
/// processed by the peer.
fn outbound_error(peer: PeerId, error: &OutboundFailure) -> NetError {
    match error {
        OutboundFailure::DialFailure | OutboundFailure::UnsupportedProtocols => {
            NetError::Unreachable {
                peer,
                reason: error.to_string(),
            }
        }
        _ => NetError::RequestFailed {
            peer,
            reason: error.to_string(),
        },
    }
}
