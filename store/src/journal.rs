//! The journal that makes a multi-key write atomic on sled without a sled batch.
//!
//! sled makes a batch or a transaction atomic by marking it in its log, and each mark writes
//! the log's current buffer out twice, synchronously (`pwrite` and `sync_file_range` with
//! `WAIT_AFTER`: 0.4-0.6 ms each on this machine's disk, whatever the batch's size), on top of a
//! transaction's own bookkeeping. A node writes one such batch per turn, so those waits sat in
//! every write's path: a follower's acknowledgement waited for three of them per append.
//!
//! A single-key insert is atomic in sled on its own and costs no such wait. So
//! [`crate::SledBackend`] writes a batch as one record in a journal tree (one insert: the
//! whole batch, [`encode`]d), then its writes one by one as plain inserts and removes. sled
//! recovers a prefix of its log after a crash (it stops at the first damaged or missing
//! record), so a crash leaves a batch's record with any prefix of its writes, or neither. At
//! open every record still there is replayed in order ([`decode`]) and removed: a torn batch
//! is completed, a complete one rewritten with the same values. A record is removed after a
//! sync covered its writes; records are removed in the order they were written, so the ones a
//! crash leaves are always the newest, and replaying them in order over older state is exact.

use crate::backend::{BackendBatch, TreeId};
use crate::error::{Result, StoreError};

/// A write's tag in a record: removal.
const REMOVE: u8 = 0;
/// A write's tag in a record: insertion, followed by the value.
const INSERT: u8 = 1;

/// The key of journal record `seq`: big-endian, so records iterate in the order written.
pub(crate) fn record_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// `batch` as one journal record: for each write, its tree, key and value (or removal).
pub(crate) fn encode(batch: &BackendBatch) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.bytes() + batch.len() * 10);
    for (tree, key, value) in &batch.writes {
        out.push(*tree as u8);
        put_bytes(&mut out, key);
        match value {
            Some(v) => {
                out.push(INSERT);
                put_bytes(&mut out, v);
            }
            None => out.push(REMOVE),
        }
    }
    out
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Keys and values are bounded far below 4 GiB by the store's limits and chunking.
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The batch a journal record holds. A record that does not parse is damage: it was written
/// whole by one insert, which sled either recovers whole or not at all.
pub(crate) fn decode(seq: u64, mut record: &[u8]) -> Result<BackendBatch> {
    let corrupt = |detail: &str| {
        StoreError::corrupt(
            "journal",
            format!("record {seq}"),
            format!("a batch record {detail}"),
        )
    };
    let mut batch = BackendBatch::default();
    while let Some((&tag, rest)) = record.split_first() {
        let tree = TreeId::ALL
            .iter()
            .copied()
            .find(|t| *t as u8 == tag)
            .ok_or_else(|| corrupt("names an unknown tree"))?;
        let (key, rest) = take_bytes(rest).ok_or_else(|| corrupt("has a truncated key"))?;
        let (&kind, rest) = rest
            .split_first()
            .ok_or_else(|| corrupt("ends before a write's kind"))?;
        record = match kind {
            INSERT => {
                let (value, rest) =
                    take_bytes(rest).ok_or_else(|| corrupt("has a truncated value"))?;
                batch.put(tree, key.to_vec(), value.to_vec());
                rest
            }
            REMOVE => {
                batch.delete(tree, key.to_vec());
                rest
            }
            _ => return Err(corrupt("has an unknown write kind")),
        };
    }
    Ok(batch)
}

fn take_bytes(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = input.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BackendBatch {
        let mut b = BackendBatch::default();
        b.put(TreeId::Raft, b"entry".to_vec(), b"payload".to_vec());
        b.delete(TreeId::Raft, b"old".to_vec());
        b.put(TreeId::Kv, Vec::new(), Vec::new());
        b.put(TreeId::SnapIn, vec![0xff; 3], vec![7; 300]);
        b
    }

    #[test]
    fn a_record_decodes_to_the_batch_it_encodes() {
        let b = sample();
        let back = decode(1, &encode(&b)).expect("decode");
        assert_eq!(back.writes, b.writes);
        assert!(decode(2, &[]).expect("empty").is_empty());
    }

    #[test]
    fn every_truncation_or_bad_tag_is_an_error_not_a_panic() {
        let rec = encode(&sample());
        for cut in 1..rec.len() {
            // A cut that lands on a write's boundary is a shorter valid batch; any other must
            // be refused.
            if let Ok(b) = decode(3, &rec[..cut]) {
                assert!(b.len() < sample().len(), "cut at {cut}");
            }
        }
        let mut bad_tree = rec.clone();
        bad_tree[0] = 99;
        assert!(decode(4, &bad_tree).is_err());
        let mut bad_kind = rec;
        let kind_at = 1 + 4 + b"entry".len();
        bad_kind[kind_at] = 9;
        assert!(decode(5, &bad_kind).is_err());
    }
}
