//! Transactions in the Rust client: etcd-shaped compares, then one of two operation lists,
//! applied atomically in one partition.
//!
//! Every single key a transaction names (its compares, puts, deletes and gets) must live in
//! one partition; keys that share a hash tag (`{user:42}/name`, `{user:42}/email`) do. A
//! transaction over several partitions is refused before anything is sent, with the
//! partitions it would span: swarmkv does not promise atomicity across partitions. A range
//! delete inside a transaction covers the keys of the range that live in that partition.

use std::collections::BTreeMap;

use swarmkv_store::{KvOp, KvOutcome, Txn, TxnOpResult};

use super::Client;
use crate::core::routing::partition_of;
use crate::core::ClientError;

/// What a transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether every compare held (the `success` list ran) or not (the `failure` list ran).
    pub succeeded: bool,
    /// The revision the transaction was applied at (its writes carry it).
    pub revision: u64,
    /// What each operation of the list that ran did, in order.
    pub results: Vec<TxnOpResult>,
}

impl Client {
    /// Runs `txn` atomically in the partition of its keys. A retry after an ambiguous failure
    /// cannot apply it twice (the write carries the client's session).
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, ClientError> {
        let partition = txn_partition(&txn, self.partitions)?;
        match self.write_to(partition, KvOp::Txn(txn)).await? {
            KvOutcome::Txn {
                revision,
                succeeded,
                results,
            } => Ok(TxnResponse {
                succeeded,
                revision,
                results,
            }),
            other => Err(ClientError::Disconnected(format!("unexpected {other:?}"))),
        }
    }
}

/// The one partition every single key of `txn` lives in, or a refusal naming the partitions
/// (and a key of each) when they differ, or when the transaction names no key to route by.
pub fn txn_partition(txn: &Txn, partitions: u32) -> Result<u32, ClientError> {
    let mut spans: BTreeMap<u32, &[u8]> = BTreeMap::new();
    for key in txn.keys() {
        spans.entry(partition_of(key, partitions)).or_insert(key);
    }
    let mut iter = spans.iter();
    match (iter.next(), iter.next()) {
        (Some((p, _)), None) => Ok(*p),
        (None, _) => Err(ClientError::BadRequest(
            "a transaction must name at least one key (in a compare, put, delete or get): \
             its keys decide its partition"
                .into(),
        )),
        (Some(_), Some(_)) => {
            let shown: Vec<String> = spans
                .iter()
                .map(|(p, k)| format!("{:?} in partition {p}", String::from_utf8_lossy(k)))
                .collect();
            Err(ClientError::BadRequest(format!(
                "a transaction's keys must share one partition, these span {}: {}; \
                 give them a common hash tag, e.g. {{user:42}}/name and {{user:42}}/email",
                spans.len(),
                shown.join(", ")
            )))
        }
    }
}
