//! Transactions within a partition, in etcd's shape: compares on keys, then one of two lists of
//! operations, chosen by whether every compare held, applied atomically as one Raft entry.
//!
//! A transaction is one [`KvOp::Txn`](crate::KvOp::Txn) entry, so it applies all at once on
//! every replica at one revision (the entry's index), and its writes reach watchers as events
//! of that one revision. It reads and writes only the partition it is applied to: the keys a
//! transaction touches must share a partition (the node refuses one that spans several).
//!
//! The compares follow etcd: a missing key has version, create and mod revision and lease 0,
//! and no value, so a value compare on a missing key never holds. The operations run in order
//! and each sees the writes of those before it. A put naming a lease this partition already
//! deleted the keys of fails the whole transaction before anything is written.

use serde::{Deserialize, Serialize};

use crate::kv::{check_key, check_value, put, KvError, KvRecord, KvView, Limits};

/// The most compares plus operations of both branches one transaction may carry (etcd's
/// default `--max-txn-ops`): one entry must stay small enough to replicate and apply quickly.
pub const MAX_TXN_OPS: usize = 128;

/// A transaction: if every compare holds, `success` runs, else `failure`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compares: Vec<TxnCompare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// One condition on one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnCompare {
    pub key: Vec<u8>,
    pub target: CompareTarget,
    pub op: CompareOp,
}

/// What of the key is compared, and with what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The value, byte-wise (a missing key has none: never holds).
    Value(Vec<u8>),
    /// Writes since creation (0: missing).
    Version(u64),
    /// The revision that created the key (0: missing).
    CreateRevision(u64),
    /// The revision of the last write (0: missing).
    ModRevision(u64),
    /// The key's lease (0: none, or missing).
    Lease(u64),
}

/// How the key's side compares with the given side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// One operation of a branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// Write `value`, attached to `lease` (0: none).
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: u64,
    },
    /// Delete one key.
    Delete { key: Vec<u8> },
    /// Read one key, as the earlier operations of the branch left it.
    Get { key: Vec<u8> },
    /// Delete the keys of `[start, end)` that live in this partition (`end = None`: to the end).
    DeleteRange {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
}

/// What one operation did, in the order of the branch that ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResult {
    Put,
    /// Whether the key existed.
    Delete {
        deleted: bool,
    },
    Get(Option<KvRecord>),
    /// How many keys were deleted.
    DeleteRange {
        deleted: u64,
    },
}

impl CompareOp {
    fn holds<T: Ord + ?Sized>(self, ours: &T, given: &T) -> bool {
        match self {
            CompareOp::Equal => ours == given,
            CompareOp::NotEqual => ours != given,
            CompareOp::Less => ours < given,
            CompareOp::Greater => ours > given,
        }
    }
}

impl TxnCompare {
    /// Whether the compare holds for the key's current record.
    pub fn holds(&self, record: Option<&KvRecord>) -> bool {
        let field = |f: fn(&KvRecord) -> u64| record.map_or(0, f);
        match &self.target {
            CompareTarget::Value(v) => {
                record.is_some_and(|r| self.op.holds(r.value.as_slice(), v.as_slice()))
            }
            CompareTarget::Version(n) => self.op.holds(&field(|r| r.version), n),
            CompareTarget::CreateRevision(n) => self.op.holds(&field(|r| r.create_rev), n),
            CompareTarget::ModRevision(n) => self.op.holds(&field(|r| r.mod_rev), n),
            CompareTarget::Lease(n) => self.op.holds(&field(|r| r.lease), n),
        }
    }
}

impl TxnOp {
    /// The one key the operation reads or writes; `None` for a range, which covers what of it
    /// lives in the partition the transaction runs in.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } | TxnOp::Get { key } => Some(key),
            TxnOp::DeleteRange { .. } => None,
        }
    }
}

impl Txn {
    /// Every single key the transaction names: the compares' keys, then the operations' (not
    /// ranges). They must share one partition, which the transaction runs in.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.compares.iter().map(|c| c.key.as_slice()).chain(
            self.success
                .iter()
                .chain(&self.failure)
                .filter_map(TxnOp::key),
        )
    }

    /// The bytes of keys and values it carries (what admission control weighs).
    pub fn payload_bytes(&self) -> usize {
        let compares: usize = self
            .compares
            .iter()
            .map(|c| match &c.target {
                CompareTarget::Value(v) => c.key.len() + v.len(),
                _ => c.key.len(),
            })
            .sum();
        let ops: usize = self
            .success
            .iter()
            .chain(&self.failure)
            .map(|op| match op {
                TxnOp::Put { key, value, .. } => key.len() + value.len(),
                TxnOp::Delete { key } | TxnOp::Get { key } => key.len(),
                TxnOp::DeleteRange { start, end } => start.len() + end.as_ref().map_or(0, Vec::len),
            })
            .sum();
        compares + ops
    }

    /// Checks sizes and the number of operations (see [`crate::KvOp::validate`]).
    pub fn validate(&self, limits: &Limits) -> Result<(), KvError> {
        let ops = self.compares.len() + self.success.len() + self.failure.len();
        if ops > MAX_TXN_OPS {
            return Err(KvError::TooManyOps {
                ops,
                max: MAX_TXN_OPS,
            });
        }
        let bytes = self.payload_bytes();
        if bytes > limits.max_value {
            return Err(KvError::TxnTooLarge {
                bytes,
                max: limits.max_value,
            });
        }
        for c in &self.compares {
            check_key(&c.key, limits)?;
            if let CompareTarget::Value(v) = &c.target {
                check_value(v, limits)?;
            }
        }
        for op in self.success.iter().chain(&self.failure) {
            match op {
                TxnOp::Put { key, value, .. } => {
                    check_key(key, limits)?;
                    check_value(value, limits)?;
                }
                TxnOp::Delete { key } | TxnOp::Get { key } => check_key(key, limits)?,
                TxnOp::DeleteRange { start, end } => {
                    for k in std::iter::once(start).chain(end.iter()) {
                        if k.len() > limits.max_key {
                            return Err(KvError::KeyTooLarge {
                                len: k.len(),
                                max: limits.max_key,
                            });
                        }
                    }
                }
            }
        }
        check_writes_once(&self.success)?;
        check_writes_once(&self.failure)
    }
}

/// Refuses a branch that writes a key twice: two puts or deletes of one key, or a put or
/// delete of a key inside a range the branch also deletes. Each key then has at most one
/// event at the transaction's revision, and the outcome does not depend on operation order.
fn check_writes_once(branch: &[TxnOp]) -> Result<(), KvError> {
    let mut written = std::collections::BTreeSet::new();
    let mut ranges = Vec::new();
    for op in branch {
        match op {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } => {
                if !written.insert(key.as_slice()) {
                    return Err(KvError::DuplicateTxnKey { key: key.clone() });
                }
            }
            TxnOp::DeleteRange { start, end } => ranges.push((start.as_slice(), end.as_deref())),
            TxnOp::Get { .. } => {}
        }
    }
    for key in written {
        if ranges
            .iter()
            .any(|(start, end)| key >= *start && end.is_none_or(|e| key < e))
        {
            return Err(KvError::DuplicateTxnKey { key: key.to_vec() });
        }
    }
    Ok(())
}

/// Applies a validated transaction at `revision`: whether its compares held, and what each
/// operation of the branch that ran did. Storage errors abort the apply; a [`KvError`] is the
/// transaction's own result, with nothing written.
pub(crate) fn execute(
    view: &mut dyn KvView,
    txn: &Txn,
    revision: u64,
) -> crate::Result<Result<(bool, Vec<TxnOpResult>), KvError>> {
    let mut succeeded = true;
    for c in &txn.compares {
        if !c.holds(view.get(&c.key)?.as_ref()) {
            succeeded = false;
            break;
        }
    }
    let branch = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    for op in branch {
        if let TxnOp::Put { lease, .. } = op {
            if *lease != 0 && view.lease_revoked(*lease)? {
                return Ok(Err(KvError::LeaseNotFound { lease: *lease }));
            }
        }
    }
    let mut results = Vec::with_capacity(branch.len());
    for op in branch {
        let result = match op {
            TxnOp::Put { key, value, lease } => {
                let prev = view.get(key)?;
                put(view, key, value.clone(), *lease, prev.as_ref(), revision);
                TxnOpResult::Put
            }
            TxnOp::Delete { key } => {
                let deleted = view.get(key)?.is_some();
                if deleted {
                    view.set(key.clone(), None);
                }
                TxnOpResult::Delete { deleted }
            }
            TxnOp::Get { key } => TxnOpResult::Get(view.get(key)?),
            TxnOp::DeleteRange { start, end } => {
                let keys = view.keys_in(start, end.as_deref())?;
                let deleted = keys.len() as u64;
                for k in keys {
                    view.set(k, None);
                }
                TxnOpResult::DeleteRange { deleted }
            }
        };
        results.push(result);
    }
    Ok(Ok((succeeded, results)))
}
