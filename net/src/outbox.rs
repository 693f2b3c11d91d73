//! Per-peer ordered Raft send queue.
//!
//! Each peer's frames go out on one stream (`raft_stream.rs`), written by a task of its own,
//! so each peer has exactly one raft frame in flight: while it is written, new batches queue
//! up, and when the link reports it written everything queued (up to the frame limit) leaves
//! as the next frame. The coalescing keeps the number of writes per turn small under load,
//! and the bound on what may queue turns a peer that stops reading into `QueueFull` failures
//! rather than memory.
//!
//! Batches are encoded when queued (while the previous frame is being written) and a frame is
//! written as its parts, so one frame is followed by the next without a large copy.

use std::collections::VecDeque;

use crate::protocol::RAFT_FRAME_OVERHEAD;

/// The queue of one peer: postcard-encoded `RaftBatch`es.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: VecDeque<Vec<u8>>,
    queued_bytes: usize,
    in_flight: Option<(u64, usize)>,
}

/// Appends `n` as a postcard (LEB128) varint.
fn push_varint(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The bytes that precede `n` encoded batches in a `RaftFrame::V1`: the variant index (0)
/// and the sequence length, as postcard writes them.
pub(crate) fn raft_frame_header(n: usize) -> Vec<u8> {
    let mut header = Vec::with_capacity(RAFT_FRAME_OVERHEAD);
    push_varint(&mut header, 0);
    push_varint(&mut header, n as u64);
    header
}

impl Outbox {
    /// Queues an encoded batch unless that would exceed `limit` bytes; returns false if it was
    /// refused. An empty queue always takes one batch, so a batch up to the frame limit can
    /// always be sent.
    pub(crate) fn push(&mut self, encoded: Vec<u8>, limit: usize) -> bool {
        if self.queued_bytes + encoded.len() > limit && !self.queue.is_empty() {
            return false;
        }
        self.queued_bytes += encoded.len();
        self.queue.push_back(encoded);
        true
    }

    /// Whether a frame is waiting for its ack.
    pub(crate) fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Takes the next frame if no frame is in flight: its parts (header first, then at least
    /// one batch, at most `max_frame` bytes in total) and its number of batches.
    pub(crate) fn next_frame(&mut self, max_frame: usize) -> Option<(Vec<Vec<u8>>, usize)> {
        if self.in_flight.is_some() || self.queue.is_empty() {
            return None;
        }
        let mut total = RAFT_FRAME_OVERHEAD;
        let mut parts = vec![Vec::new()];
        while let Some(size) = self.queue.front().map(Vec::len) {
            if parts.len() > 1 && total + size > max_frame {
                break;
            }
            total += size;
            self.queued_bytes -= size;
            if let Some(batch) = self.queue.pop_front() {
                parts.push(batch);
            }
        }
        let n = parts.len() - 1;
        parts[0] = raft_frame_header(n);
        Some((parts, n))
    }

    /// Records the frame just taken as handed to the peer's link under `id`.
    pub(crate) fn sent(&mut self, id: u64, batches: usize) {
        self.in_flight = Some((id, batches));
    }

    /// Frame `id` was written (or failed); returns how many batches it carried if it was this
    /// queue's frame in flight.
    pub(crate) fn finished(&mut self, id: u64) -> Option<usize> {
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
    use crate::protocol::{decode, encode, RaftBatch, RaftFrame};

    fn encoded(i: u8) -> anyhow::Result<Vec<u8>> {
        let batch: RaftBatch = vec![(u64::from(i), vec![i; 100])];
        Ok(encode(&batch)?)
    }

    #[test]
    fn frames_coalesce_queued_batches_in_order_and_decode_as_one_frame() -> anyhow::Result<()> {
        let mut o = Outbox::default();
        for i in 0..10u8 {
            assert!(o.push(encoded(i)?, 1 << 20));
        }
        // 103 bytes per batch; 250-byte frames hold 2 batches after the overhead.
        let (parts, n) = o.next_frame(250).unwrap_or_default();
        assert_eq!(n, 2);
        let frame: Vec<u8> = parts.concat();
        match decode::<RaftFrame>(&frame) {
            Ok(RaftFrame::V1 { batches }) => {
                assert_eq!(
                    batches,
                    vec![vec![(0, vec![0; 100])], vec![(1, vec![1; 100])]]
                );
            }
            Err(e) => anyhow::bail!(e),
        }
        let (_, rest) = o.next_frame(1 << 20).unwrap_or_default();
        assert_eq!(rest, 8);
        assert!(o.next_frame(1 << 20).is_none());
        Ok(())
    }

    #[test]
    fn the_header_matches_postcard_for_large_counts() -> anyhow::Result<()> {
        let batches: Vec<RaftBatch> = vec![Vec::new(); 300];
        let whole = encode(&RaftFrame::V1 { batches })?;
        let mut assembled = raft_frame_header(300);
        assembled.extend(std::iter::repeat_n(0u8, 300));
        assert_eq!(whole, assembled);
        Ok(())
    }

    #[test]
    fn queue_limit_refuses_new_batches_but_always_takes_one() {
        let mut o = Outbox::default();
        assert!(o.push(vec![0; 1000], 10));
        assert!(!o.push(vec![0; 1], 10));
        assert_eq!(o.clear(), 1);
        assert!(o.is_idle());
    }
}
