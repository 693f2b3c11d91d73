//! Per-peer ordered Raft send queue.
//!
//! request-response opens one stream per request, and streams are not ordered with respect to
//! each other. Raft does not need ordering for safety but the node layer is simpler and faster
//! when a peer's messages arrive in the order they were sent, so each peer has exactly one raft
//! frame in flight: while it travels, new batches queue up, and when its ack arrives everything
//! queued (up to the frame limit) leaves as the next frame. This keeps order, and the
//! coalescing makes the throughput independent of the round trip once batches are small.

use std::collections::VecDeque;

use libp2p::request_response::OutboundRequestId;

use crate::protocol::{raft_batch_size_bound, RaftBatch, RAFT_FRAME_OVERHEAD};

/// The queue of one peer.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: VecDeque<(RaftBatch, usize)>,
    queued_bytes: usize,
    in_flight: Option<(OutboundRequestId, usize)>,
}

impl Outbox {
    /// Queues a batch unless that would exceed `limit` bytes; returns false if it was refused.
    pub(crate) fn push(&mut self, batch: RaftBatch, limit: usize) -> bool {
        let size = raft_batch_size_bound(&batch);
        if self.queued_bytes + size > limit && !self.queue.is_empty() {
            return false;
        }
        self.queued_bytes += size;
        self.queue.push_back((batch, size));
        true
    }

    /// Whether a frame is waiting for its ack.
    pub(crate) fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Takes the next frame's batches (at least one, at most `max_frame` bytes in total) if no
    /// frame is in flight.
    pub(crate) fn next_frame(&mut self, max_frame: usize) -> Option<Vec<RaftBatch>> {
        if self.in_flight.is_some() || self.queue.is_empty() {
            return None;
        }
        let mut total = RAFT_FRAME_OVERHEAD;
        let mut batches = Vec::new();
        while let Some((_, size)) = self.queue.front() {
            if !batches.is_empty() && total + size > max_frame {
                break;
            }
            total += size;
            self.queued_bytes -= size;
            if let Some((batch, _)) = self.queue.pop_front() {
                batches.push(batch);
            }
        }
        Some(batches)
    }

    /// Records the request carrying the frame just taken.
    pub(crate) fn sent(&mut self, id: OutboundRequestId, batches: usize) {
        self.in_flight = Some((id, batches));
    }

    /// The ack (or failure) of request `id` arrived; returns how many batches it carried if it
    /// was this queue's frame in flight.
    pub(crate) fn finished(&mut self, id: OutboundRequestId) -> Option<usize> {
        match self.in_flight {
            Some((current, n)) if current == id => {
                self.in_flight = None;
                Some(n)
            }
            _ => None,
        }
    }

    /// Drops everything queued (the peer is gone or foreign); returns how many batches.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.queue.len();
        self.queue.clear();
        self.queued_bytes = 0;
        n
    }

    /// Whether nothing is queued or in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.in_flight.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_coalesce_queued_batches_in_order_within_the_limit() {
        let mut o = Outbox::default();
        for i in 0..10u8 {
            assert!(o.push(vec![(1, vec![i; 100])], 1 << 20));
        }
        // 130 bytes per batch bound; 400-byte frames hold 2 batches after the overhead.
        let first = o.next_frame(400).unwrap_or_default();
        assert_eq!(first.len(), 2);
        assert_eq!(first[0][0].1[0], 0);
        assert_eq!(first[1][0].1[0], 1);
        let rest = o.next_frame(1 << 20).unwrap_or_default();
        assert_eq!(rest.len(), 8);
        assert_eq!(rest[7][0].1[0], 9);
        assert!(o.next_frame(1 << 20).is_none());
    }

    #[test]
    fn queue_limit_refuses_new_batches_but_always_takes_one() {
        let mut o = Outbox::default();
        assert!(o.push(vec![(1, vec![0; 1000])], 10));
        assert!(!o.push(vec![(1, vec![0; 1])], 10));
        assert_eq!(o.clear(), 1);
        assert!(o.is_idle());
    }
}
