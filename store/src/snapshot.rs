//! Partition snapshots as bounded chunks.
//!
//! A snapshot is a frozen copy of one partition's records at its applied index. The sender
//! freezes it into the `snap_out` tree in chunks of bounded size (so a large partition never
//! needs one huge message); the receiver stages chunks in `snap_in` as they arrive and, once
//! all are there, installs them in one atomic write together with the Raft-side snapshot state.
//! Staged chunks that a crash left behind are found and discarded when the store opens: the
//! sender's Raft will send the snapshot again.
//!
//! The Raft `Snapshot` message itself carries only a [`SnapshotDescriptor`] in its `data`; the
//! records travel as [`SnapshotChunk`]s on the snapshot protocol.

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};

/// Version of the descriptor and chunk encodings.
pub const SNAPSHOT_FORMAT: u8 = 1;

/// What a Raft snapshot message says about the chunks that make up its data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDescriptor {
    /// Encoding version ([`SNAPSHOT_FORMAT`]).
    pub format: u8,
    /// The partition (Raft group).
    pub group: u64,
    /// Applied index the snapshot was taken at.
    pub index: u64,
    /// Term of the entry at `index`.
    pub term: u64,
    /// Number of chunks (at least 1).
    pub chunks: u32,
    /// Number of records across all chunks.
    pub records: u64,
    /// Total size of the chunks' record bytes.
    pub bytes: u64,
    /// CRC-32 over every chunk's CRC, in sequence order.
    pub crc: u32,
}

impl SnapshotDescriptor {
    /// Encodes for a Raft snapshot's `data`.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes a Raft snapshot's `data`; the data comes from a peer, so it is checked.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotDescriptor> {
        if bytes.len() > 1024 {
            return Err(StoreError::TooLarge {
                what: "snapshot descriptor",
                len: bytes.len(),
                max: 1024,
            });
        }
        let d: SnapshotDescriptor = postcard::from_bytes(bytes).map_err(|e| {
            StoreError::corrupt(
                "(snapshot message)",
                "descriptor",
                format!("undecodable: {e}"),
            )
        })?;
        if d.format != SNAPSHOT_FORMAT || d.chunks == 0 {
            return Err(StoreError::SnapshotInvalid {
                group: d.group,
                index: d.index,
                detail: format!("format {} with {} chunks", d.format, d.chunks),
            });
        }
        Ok(d)
    }
}

/// One bounded piece of a partition snapshot, as moved between peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// Encoding version ([`SNAPSHOT_FORMAT`]).
    pub format: u8,
    /// The partition.
    pub group: u64,
    /// Applied index of the snapshot this chunk belongs to.
    pub index: u64,
    /// Position of the chunk, from 0.
    pub seq: u32,
    /// Number of chunks in the snapshot.
    pub total: u32,
    /// (user key, encoded record) pairs in key order.
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
    /// CRC-32 of the records.
    pub crc: u32,
}

pub(crate) fn records_crc(records: &[(Vec<u8>, Vec<u8>)]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for (k, v) in records {
        h.update(&(k.len() as u64).to_be_bytes());
        h.update(k);
        h.update(&(v.len() as u64).to_be_bytes());
        h.update(v);
    }
    h.finalize()
}

pub(crate) fn chunks_crc(chunk_crcs: impl IntoIterator<Item = u32>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for c in chunk_crcs {
        h.update(&c.to_be_bytes());
    }
    h.finalize()
}

impl SnapshotChunk {
    /// Encodes for the wire or the snapshot trees.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes and verifies a chunk of at most `max_len` bytes (it comes from a peer or the
    /// disk, so its size, format, sequence number and checksum are all checked).
    pub fn decode(bytes: &[u8], max_len: usize) -> Result<SnapshotChunk> {
        if bytes.len() > max_len {
            return Err(StoreError::TooLarge {
                what: "snapshot chunk",
                len: bytes.len(),
                max: max_len,
            });
        }
        let c: SnapshotChunk = postcard::from_bytes(bytes).map_err(|e| {
            StoreError::corrupt("(snapshot chunk)", "chunk", format!("undecodable: {e}"))
        })?;
        let invalid = |detail: String| StoreError::SnapshotInvalid {
            group: c.group,
            index: c.index,
            detail,
        };
        if c.format != SNAPSHOT_FORMAT {
            return Err(invalid(format!("chunk format {}", c.format)));
        }
        if c.seq >= c.total {
            return Err(invalid(format!("chunk {} of {}", c.seq, c.total)));
        }
        if records_crc(&c.records) != c.crc {
            return Err(invalid(format!("chunk {} fails its checksum", c.seq)));
        }
        Ok(c)
    }
}

/// Progress of receiving a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkProgress {
    /// More chunks are needed: `have` of `total` are staged.
    Partial { have: u32, total: u32 },
    /// Every chunk is staged; the snapshot can be installed.
    Complete,
}

/// A partial snapshot found (and discarded) when the store opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscardedSnapshot {
    pub group: u64,
    pub index: u64,
    pub chunks_staged: u32,
}
