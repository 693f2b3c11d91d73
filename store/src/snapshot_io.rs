//! Producing, serving, receiving and installing partition snapshots.

use std::ops::Bound;

use raft::eraftpb::{ConfState, Snapshot};

use crate::backend::{Backend, BackendBatch, Scan, TreeId};
use crate::error::{Result, StoreError};
use crate::group::{self, ApplyState};
use crate::keys;
use crate::snapshot::{
    chunks_crc, records_crc, ChunkProgress, DiscardedSnapshot, SnapshotChunk, SnapshotDescriptor,
    SNAPSHOT_FORMAT,
};
use crate::store::Store;

/// The end of a group's Kv records: `[group][0xff]`, past every family tag.
fn partition_end(group: u64) -> Vec<u8> {
    keys::group_tag(group, u8::MAX)
}

/// Keys of `tree` that start with `prefix`.
fn keys_with_prefix<B: Backend>(backend: &B, tree: TreeId, prefix: &[u8]) -> Result<Vec<Vec<u8>>> {
    let end = keys::prefix_end(prefix);
    let mut out = Vec::new();
    backend.scan(
        tree,
        Bound::Included(prefix),
        end.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
        false,
        &mut |k, _| {
            out.push(k.to_vec());
            Ok(Scan::Continue)
        },
    )?;
    Ok(out)
}

/// Clears `snap_in` and `snap_out` when a store opens, reporting the staged snapshots it drops.
pub(crate) fn discard_staged<B: Backend>(backend: &B) -> Result<Vec<DiscardedSnapshot>> {
    let mut found: Vec<DiscardedSnapshot> = Vec::new();
    let mut batch = BackendBatch::default();
    for tree in [TreeId::SnapIn, TreeId::SnapOut] {
        for k in keys_with_prefix(backend, tree, &[])? {
            if tree == TreeId::SnapIn && k.get(8) == Some(&keys::TAG_SNAP_CHUNK) {
                if let (Some(group), Some(index)) = (keys::group_of(&k), keys::u64_at(&k, 9)) {
                    match found.last_mut() {
                        Some(d) if d.group == group && d.index == index => d.chunks_staged += 1,
                        _ => found.push(DiscardedSnapshot {
                            group,
                            index,
                            chunks_staged: 1,
                        }),
                    }
                }
            }
            batch.delete(tree, k);
        }
    }
    if !batch.is_empty() {
        backend.write(&batch)?;
        backend.sync()?;
    }
    Ok(found)
}

impl<B: Backend> Store<B> {
    /// Freezes `group`'s partition at its applied index into bounded chunks (or returns the
    /// frozen copy already taken at that index). Applies to the group wait meanwhile, so the
    /// copy is consistent. Returns the descriptor and the configuration at that index.
    pub fn create_snapshot(&self, group: u64) -> Result<(SnapshotDescriptor, ConfState)> {
        let shared = self.shared_group(group)?;
        let st = group::write(&shared);
        let apply = st.meta.apply.clone();
        let backend = &self.inner.backend;
        let header_key = keys::group_tag_index(group, keys::TAG_SNAP_HEADER, apply.index);
        if let Some(h) = backend.get(TreeId::SnapOut, &header_key)? {
            if let Ok(d) = SnapshotDescriptor::decode(&h) {
                return Ok((d, apply.conf_state));
            }
        }
        // The copy reads the sessions from the layer: bring the changed ones there.
        self.settle_sessions(group, false)?;
        // Drop older frozen copies of this group.
        let mut clear = BackendBatch::default();
        for k in keys_with_prefix(backend, TreeId::SnapOut, &group.to_be_bytes())? {
            clear.delete(TreeId::SnapOut, k);
        }
        backend.write(&clear)?;

        // Two passes over the partition under the group lock (applies wait, so both see the
        // same data): the first counts chunks, the second writes them one by one, so memory
        // stays at one chunk whatever the partition's size.
        let target = self.inner.config.snapshot_chunk_bytes.max(1);
        // Everything of the partition but its apply state: data and sessions.
        let lo = keys::group_tag(group, keys::TAG_DATA);
        let hi = partition_end(group);
        let mut total = 0u32;
        let mut filled = 0usize;
        backend.scan(
            TreeId::Kv,
            Bound::Included(&lo),
            Bound::Excluded(&hi),
            false,
            &mut |k, v| {
                filled += k.len() - 8 + v.len();
                if filled >= target {
                    total += 1;
                    filled = 0;
                }
                Ok(Scan::Continue)
            },
        )?;
        if filled > 0 || total == 0 {
            total += 1;
        }
        let mut crcs = Vec::with_capacity(total as usize);
        let (mut records, mut bytes) = (0u64, 0u64);
        let mut cursor: Option<Vec<u8>> = None;
        for seq in 0..total {
            let mut chunk: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            let mut size = 0usize;
            let start = match &cursor {
                Some(c) => Bound::Excluded(c.as_slice()),
                None => Bound::Included(lo.as_slice()),
            };
            backend.scan(
                TreeId::Kv,
                start,
                Bound::Excluded(&hi),
                false,
                &mut |k, v| {
                    size += k.len() - 8 + v.len();
                    chunk.push((k[8..].to_vec(), v.to_vec()));
                    Ok(if size >= target {
                        Scan::Stop
                    } else {
                        Scan::Continue
                    })
                },
            )?;
            if let Some((k, _)) = chunk.last() {
                let mut c = group.to_be_bytes().to_vec();
                c.extend_from_slice(k);
                cursor = Some(c);
            }
            records += chunk.len() as u64;
            bytes += size as u64;
            let crc = records_crc(&chunk);
            crcs.push(crc);
            let c = SnapshotChunk {
                format: SNAPSHOT_FORMAT,
                group,
                index: apply.index,
                seq,
                total,
                records: chunk,
                crc,
            };
            let mut b = BackendBatch::default();
            b.put(
                TreeId::SnapOut,
                keys::chunk_key(group, apply.index, seq),
                c.encode(),
            );
            backend.write(&b)?;
        }
        let desc = SnapshotDescriptor {
            format: SNAPSHOT_FORMAT,
            group,
            index: apply.index,
            term: apply.term,
            chunks: total,
            records,
            bytes,
            crc: chunks_crc(crcs),
        };
        let mut b = BackendBatch::default();
        b.put(TreeId::SnapOut, header_key, desc.encode());
        backend.write(&b)?;
        drop(st);
        Ok((desc, apply.conf_state))
    }

    /// The encoded chunk `seq` of the frozen snapshot of `group` at `index`, ready to send.
    pub fn snapshot_chunk(&self, group: u64, index: u64, seq: u32) -> Result<Vec<u8>> {
        self.inner
            .backend
            .get(TreeId::SnapOut, &keys::chunk_key(group, index, seq))?
            .ok_or(StoreError::SnapshotNotFound { group, index, seq })
    }

    /// Stages a chunk received from a peer. Chunks of an older snapshot of the same group are
    /// dropped; a chunk for a state the partition has already passed is refused.
    pub fn receive_chunk(&self, bytes: &[u8]) -> Result<ChunkProgress> {
        let c = SnapshotChunk::decode(bytes, self.inner.config.max_chunk_message)?;
        let applied = self.apply_state(c.group)?.index;
        if c.index <= applied {
            return Err(StoreError::SnapshotOutOfDate {
                group: c.group,
                index: c.index,
                first: applied + 1,
            });
        }
        let backend = &self.inner.backend;
        let mut b = BackendBatch::default();
        let group_prefix = keys::group_tag(c.group, keys::TAG_SNAP_CHUNK);
        let this_prefix = keys::group_tag_index(c.group, keys::TAG_SNAP_CHUNK, c.index);
        for k in keys_with_prefix(backend, TreeId::SnapIn, &group_prefix)? {
            if !k.starts_with(&this_prefix) {
                b.delete(TreeId::SnapIn, k);
            }
        }
        b.put(
            TreeId::SnapIn,
            keys::chunk_key(c.group, c.index, c.seq),
            bytes.to_vec(),
        );
        backend.write(&b)?;
        let have = keys_with_prefix(backend, TreeId::SnapIn, &this_prefix)?.len() as u32;
        Ok(if have >= c.total {
            ChunkProgress::Complete
        } else {
            ChunkProgress::Partial {
                have,
                total: c.total,
            }
        })
    }

    /// Stages one chunk of a snapshot that comes from this node itself rather than a peer: a
    /// partition's records read from a backup, installed as the starting state of a replica
    /// of a new cluster. Chunks are staged one at a time (memory stays at one chunk); the
    /// caller keeps a [`StagedSnapshot`] and turns it into the descriptor of a
    /// `LogBatch::apply_snapshot` once every chunk is staged. Like [`Store::receive_chunk`],
    /// what it stages is discarded if the store closes before the install.
    pub fn stage_local_chunk(
        &self,
        staged: &mut StagedSnapshot,
        records: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<()> {
        if staged.crcs.len() as u32 >= staged.total {
            return Err(StoreError::SnapshotInvalid {
                group: staged.group,
                index: staged.index,
                detail: format!("more than the {} chunks announced", staged.total),
            });
        }
        let seq = staged.crcs.len() as u32;
        let crc = records_crc(&records);
        staged.records += records.len() as u64;
        staged.bytes += records
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum::<u64>();
        let c = SnapshotChunk {
            format: SNAPSHOT_FORMAT,
            group: staged.group,
            index: staged.index,
            seq,
            total: staged.total,
            records,
            crc,
        };
        let mut b = BackendBatch::default();
        b.put(
            TreeId::SnapIn,
            keys::chunk_key(staged.group, staged.index, seq),
            c.encode(),
        );
        self.inner.backend.write(&b)?;
        staged.crcs.push(crc);
        Ok(())
    }

    /// True when every chunk of the snapshot `descriptor_bytes` describes is staged (a Raft
    /// snapshot message must not be stepped before: installing it would fail).
    pub fn snapshot_ready(&self, group: u64, descriptor_bytes: &[u8]) -> Result<bool> {
        if descriptor_bytes.is_empty() {
            return Ok(true);
        }
        let d = SnapshotDescriptor::decode(descriptor_bytes)?;
        let prefix = keys::group_tag_index(group, keys::TAG_SNAP_CHUNK, d.index);
        let have = keys_with_prefix(&self.inner.backend, TreeId::SnapIn, &prefix)?.len() as u32;
        Ok(d.group == group && have >= d.chunks)
    }

    /// Adds to `bb` the writes that replace `group`'s partition with the snapshot's data
    /// (staged chunks, all checked), and returns the resulting apply state.
    pub(crate) fn prepare_install(
        &self,
        group: u64,
        snap: &Snapshot,
        bb: &mut BackendBatch,
    ) -> Result<ApplyState> {
        let sm = snap.get_metadata();
        let backend = &self.inner.backend;
        let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if !snap.data.is_empty() {
            let d = SnapshotDescriptor::decode(&snap.data)?;
            let invalid = |detail: String| StoreError::SnapshotInvalid {
                group,
                index: sm.index,
                detail,
            };
            if d.group != group || d.index != sm.index || d.term != sm.term {
                return Err(invalid(format!(
                    "descriptor names group {} index {} term {}",
                    d.group, d.index, d.term
                )));
            }
            let mut crcs = Vec::with_capacity(d.chunks as usize);
            for seq in 0..d.chunks {
                let key = keys::chunk_key(group, d.index, seq);
                let Some(raw) = backend.get(TreeId::SnapIn, &key)? else {
                    let prefix = keys::group_tag_index(group, keys::TAG_SNAP_CHUNK, d.index);
                    let have = keys_with_prefix(backend, TreeId::SnapIn, &prefix)?.len() as u32;
                    return Err(StoreError::SnapshotIncomplete {
                        group,
                        index: d.index,
                        have,
                        want: d.chunks,
                    });
                };
                let c = SnapshotChunk::decode(&raw, self.inner.config.max_chunk_message)?;
                if c.total != d.chunks || c.seq != seq || c.index != d.index || c.group != group {
                    return Err(invalid(format!(
                        "chunk {seq} does not match the descriptor"
                    )));
                }
                crcs.push(c.crc);
                records.extend(c.records);
                bb.delete(TreeId::SnapIn, key);
            }
            if chunks_crc(crcs) != d.crc || records.len() as u64 != d.records {
                return Err(invalid(
                    "assembled chunks fail the descriptor's checksum".into(),
                ));
            }
        }
        // Replace the partition: remove what is there, write the snapshot's records.
        let lo = keys::group_tag(group, keys::TAG_DATA);
        let hi = partition_end(group);
        for k in crate::backend::keys_in(backend, TreeId::Kv, &lo, &hi)? {
            bb.delete(TreeId::Kv, k);
        }
        // The history before the snapshot is gone. A snapshot without data is a new group's
        // starting point (nothing happened before it), so its history is complete from 0.
        let compacted = if snap.data.is_empty() { 0 } else { sm.index };
        crate::history::reset(backend, group, compacted, bb)?;
        for (suffix, v) in records {
            match suffix.split_first() {
                Some((&keys::TAG_DATA, user_key)) => {
                    crate::kv::decode_record(group, user_key, &v)?;
                }
                Some((&keys::TAG_SESSION, rest)) => {
                    crate::sessions::decode_stored(group, rest, &v)?;
                }
                Some((&keys::TAG_REVOKED_LEASE, _)) => {}
                _ => {
                    return Err(StoreError::SnapshotInvalid {
                        group,
                        index: sm.index,
                        detail: "a record outside the partition's families".into(),
                    })
                }
            }
            let mut key = group.to_be_bytes().to_vec();
            key.extend_from_slice(&suffix);
            bb.put(TreeId::Kv, key, v);
        }
        let apply = ApplyState {
            index: sm.index,
            term: sm.term,
            conf_state: sm.get_conf_state().clone(),
        };
        bb.put(
            TreeId::Kv,
            keys::group_tag(group, keys::TAG_APPLY_STATE),
            apply.encode()?,
        );
        Ok(apply)
    }
}

/// A snapshot being staged chunk by chunk by [`Store::stage_local_chunk`].
#[derive(Clone, Debug)]
pub struct StagedSnapshot {
    group: u64,
    index: u64,
    term: u64,
    total: u32,
    crcs: Vec<u32>,
    records: u64,
    bytes: u64,
}

impl StagedSnapshot {
    /// A snapshot of `group` at `index` (of `term`) made of `total` chunks (at least 1).
    pub fn new(group: u64, index: u64, term: u64, total: u32) -> StagedSnapshot {
        StagedSnapshot {
            group,
            index,
            term,
            total: total.max(1),
            crcs: Vec::new(),
            records: 0,
            bytes: 0,
        }
    }

    /// The descriptor of the staged snapshot, once every chunk is staged.
    pub fn finish(self) -> Result<SnapshotDescriptor> {
        if self.crcs.len() as u32 != self.total {
            return Err(StoreError::SnapshotIncomplete {
                group: self.group,
                index: self.index,
                have: self.crcs.len() as u32,
                want: self.total,
            });
        }
        Ok(SnapshotDescriptor {
            format: SNAPSHOT_FORMAT,
            group: self.group,
            index: self.index,
            term: self.term,
            chunks: self.total,
            records: self.records,
            bytes: self.bytes,
            crc: chunks_crc(self.crcs),
        })
    }
}
