//! The partition state machine's data model: operations, records, results and limits.
//!
//! It follows etcd's model: every key carries the revision that created it, the revision that
//! last modified it and a version (number of writes since creation), so compare-and-swap and
//! watches have something exact to compare. A revision is the Raft index of the entry that
//! wrote it, so it is the same on every replica of the partition.

use serde::{Deserialize, Serialize};

use crate::sessions::SessionRecord;
use crate::txn::{Txn, TxnOpResult};

/// Size limits on user data. They decide whether a committed operation succeeds, so every
/// replica of a cluster must use the same values (they are cluster settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest key in bytes.
    pub max_key: usize,
    /// Largest value in bytes.
    pub max_value: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_key: 4 * 1024,
            max_value: 1024 * 1024,
        }
    }
}

/// A stored key's value and metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvRecord {
    /// The value bytes (may be empty).
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since its last deletion).
    pub create_rev: u64,
    /// Revision of the last write to the key.
    pub mod_rev: u64,
    /// Number of writes since creation: 1 after the create.
    pub version: u64,
    /// Lease the key is attached to; 0 when none.
    pub lease: u64,
}

/// What a compare-and-swap checks before writing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compare {
    /// The key exists and was last modified at this revision.
    ModRevision(u64),
    /// The key exists and holds exactly this value.
    Value(Vec<u8>),
    /// The key does not exist.
    Absent,
}

/// What a successful compare-and-swap does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CasAction {
    /// Write this value.
    Put(Vec<u8>),
    /// Delete the key.
    Delete,
}

/// One state-machine operation on a partition: the payload of a committed Raft entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    /// Unconditional write.
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        /// Attach the key to a lease (0: none).
        lease: u64,
        /// Return the record that was replaced.
        prev_kv: bool,
    },
    /// Delete one key.
    Delete { key: Vec<u8>, prev_kv: bool },
    /// Write or delete `key` only if `compare` holds.
    Cas {
        key: Vec<u8>,
        compare: Compare,
        action: CasAction,
    },
    /// Delete every key in `[start, end)`; `end = None` means to the end of the keyspace.
    DeleteRange {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
    /// Delete every key attached to `lease` and remember the lease as revoked here, so a later
    /// put naming it fails with [`KvError::LeaseNotFound`]. Idempotent: the coordinator sends
    /// it to every partition after the meta group revoked the lease, again after a crash.
    DeleteLease { lease: u64 },
    /// Compares, then one of two lists of operations, atomically (see [`crate::txn`]).
    Txn(Txn),
}

/// Identifies a write so that a retry of it is recognised and not applied twice.
///
/// A client numbers its writes `seq = 1, 2, ...` and resends a write that may or may not have
/// happened with the same number; the partition remembers each result until the client says
/// (through `first_incomplete`, the lowest sequence number it still waits for) that it no
/// longer needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Random id of the client instance.
    pub client: u64,
    /// This write's number.
    pub seq: u64,
    /// Every write of this client numbered below this has been answered.
    pub first_incomplete: u64,
}

/// Why an operation was refused; a refusal is deterministic, so every replica gives the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    /// Keys must not be empty.
    #[error("the key is empty")]
    EmptyKey,
    /// A key over [`Limits::max_key`].
    #[error("key of {len} bytes exceeds the limit of {max}")]
    KeyTooLarge { len: usize, max: usize },
    /// A value over [`Limits::max_value`].
    #[error("value of {len} bytes exceeds the limit of {max}")]
    ValueTooLarge { len: usize, max: usize },
    /// A retry of a write whose answer the client already acknowledged receiving: a delayed
    /// duplicate, not applied again.
    #[error("duplicate of an already answered write (client {client:x}, seq {seq})")]
    StaleRetry { client: u64, seq: u64 },
    /// A put named a lease this partition already deleted the keys of (revoked or expired).
    #[error("lease {lease:x} not found (revoked or expired)")]
    LeaseNotFound { lease: u64 },
    /// A transaction with more compares and operations than [`crate::txn::MAX_TXN_OPS`].
    #[error("a transaction of {ops} compares and operations exceeds the limit of {max}")]
    TooManyOps { ops: usize, max: usize },
    /// A transaction branch writes one key twice (two puts or deletes, or one inside a range
    /// it also deletes): each key changes at most once per revision, as in etcd.
    #[error("a transaction writes the key {:?} more than once", String::from_utf8_lossy(.key))]
    DuplicateTxnKey { key: Vec<u8> },
    /// A transaction whose keys and values add up to more than [`Limits::max_value`]: it is
    /// one Raft entry, which must stay as small as the largest single put.
    #[error("a transaction of {bytes} bytes of keys and values exceeds the limit of {max}")]
    TxnTooLarge { bytes: usize, max: usize },
}

/// The outcome of an applied operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOutcome {
    /// A put: the revision it wrote, and the replaced record if asked for.
    Put {
        revision: u64,
        prev: Option<KvRecord>,
    },
    /// A delete: whether the key existed, and its record if asked for.
    Delete {
        revision: u64,
        deleted: bool,
        prev: Option<KvRecord>,
    },
    /// A compare-and-swap: whether it wrote, and the record as it was before the operation
    /// (what a failed caller needs to retry).
    Cas {
        revision: u64,
        succeeded: bool,
        current: Option<KvRecord>,
    },
    /// A range delete: how many keys it removed.
    DeleteRange { revision: u64, deleted: u64 },
    /// A lease's keys were deleted: how many.
    DeleteLease { revision: u64, deleted: u64 },
    /// A transaction: whether its compares held, and what each operation of the branch that
    /// ran did.
    Txn {
        revision: u64,
        succeeded: bool,
        results: Vec<TxnOpResult>,
    },
}

/// Result of one operation.
pub type KvResult = Result<KvOutcome, KvError>;

pub(crate) fn check_key(key: &[u8], limits: &Limits) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if key.len() > limits.max_key {
        return Err(KvError::KeyTooLarge {
            len: key.len(),
            max: limits.max_key,
        });
    }
    Ok(())
}

pub(crate) fn check_value(value: &[u8], limits: &Limits) -> Result<(), KvError> {
    if value.len() > limits.max_value {
        return Err(KvError::ValueTooLarge {
            len: value.len(),
            max: limits.max_value,
        });
    }
    Ok(())
}

impl KvOp {
    /// Checks the operation against the limits. The node calls it before proposing (to answer
    /// at once); the state machine calls it again on apply, so a bad entry that got into the
    /// log anyway fails the same way on every replica instead of diverging them.
    pub fn validate(&self, limits: &Limits) -> Result<(), KvError> {
        match self {
            KvOp::Put { key, value, .. } => {
                check_key(key, limits)?;
                check_value(value, limits)
            }
            KvOp::Delete { key, .. } => check_key(key, limits),
            KvOp::Cas {
                key,
                compare,
                action,
            } => {
                check_key(key, limits)?;
                if let Compare::Value(v) = compare {
                    check_value(v, limits)?;
                }
                if let CasAction::Put(v) = action {
                    check_value(v, limits)?;
                }
                Ok(())
            }
            KvOp::DeleteRange { start, end } => {
                // An empty start means "from the beginning" here, so only the size is checked.
                for k in std::iter::once(start).chain(end.iter()) {
                    if k.len() > limits.max_key {
                        return Err(KvError::KeyTooLarge {
                            len: k.len(),
                            max: limits.max_key,
                        });
                    }
                }
                Ok(())
            }
            KvOp::DeleteLease { .. } => Ok(()),
            KvOp::Txn(txn) => txn.validate(limits),
        }
    }

    /// The single key the operation touches, if it touches one.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            KvOp::Put { key, .. } | KvOp::Delete { key, .. } | KvOp::Cas { key, .. } => Some(key),
            KvOp::DeleteRange { .. } | KvOp::DeleteLease { .. } | KvOp::Txn(_) => None,
        }
    }
}

/// Reads of the current state that [`execute`] needs, with the writes of earlier operations of
/// the same apply batch already visible.
pub(crate) trait KvView {
    fn get(&mut self, key: &[u8]) -> crate::Result<Option<KvRecord>>;
    fn keys_in(&mut self, start: &[u8], end: Option<&[u8]>) -> crate::Result<Vec<Vec<u8>>>;
    fn set(&mut self, key: Vec<u8>, record: Option<KvRecord>);
    /// What the partition remembers of `client` (see [`crate::sessions`]).
    fn session(&mut self, client: u64) -> crate::Result<Option<SessionRecord>>;
    /// Replaces `client`'s record; a new client in a full bucket makes the partition forget
    /// another.
    fn set_session(&mut self, client: u64, record: SessionRecord) -> crate::Result<()>;
    /// True when this partition deleted `lease`'s keys already (a [`KvOp::DeleteLease`]).
    fn lease_revoked(&mut self, lease: u64) -> crate::Result<bool>;
    /// Records that this partition deleted `lease`'s keys.
    fn mark_lease_revoked(&mut self, lease: u64);
}

/// Executes `op` at most once for its session: a retry gets the remembered result.
pub(crate) fn execute_once(
    view: &mut dyn KvView,
    op: &KvOp,
    session: Session,
    revision: u64,
    limits: &Limits,
) -> crate::Result<KvResult> {
    let mut record = view.session(session.client)?.unwrap_or_default();
    if let Some(remembered) = record.result(session.seq) {
        return Ok(remembered.clone());
    }
    if session.seq < record.watermark {
        return Ok(Err(KvError::StaleRetry {
            client: session.client,
            seq: session.seq,
        }));
    }
    let result = execute(view, op, revision, limits)?;
    if session.first_incomplete > record.watermark {
        // Forget the results the client no longer waits for.
        let below = record
            .results
            .partition_point(|(s, _)| *s < session.first_incomplete);
        record.results.drain(..below);
        record.watermark = session.first_incomplete;
    }
    // Remembered unless the client already said it no longer waits for it.
    if session.seq >= record.watermark {
        let at = record.results.partition_point(|(s, _)| *s < session.seq);
        record.results.insert(at, (session.seq, result.clone()));
    }
    record.last_index = revision;
    view.set_session(session.client, record)?;
    Ok(result)
}

/// Executes one operation at `revision` against `view`. Storage errors abort the apply; a
/// [`KvError`] is the operation's own (deterministic) result.
pub(crate) fn execute(
    view: &mut dyn KvView,
    op: &KvOp,
    revision: u64,
    limits: &Limits,
) -> crate::Result<KvResult> {
    if let Err(e) = op.validate(limits) {
        return Ok(Err(e));
    }
    let outcome = match op {
        KvOp::Put {
            key,
            value,
            lease,
            prev_kv,
        } => {
            if *lease != 0 && view.lease_revoked(*lease)? {
                return Ok(Err(KvError::LeaseNotFound { lease: *lease }));
            }
            let prev = view.get(key)?;
            put(view, key, value.clone(), *lease, prev.as_ref(), revision);
            KvOutcome::Put {
                revision,
                prev: prev.filter(|_| *prev_kv),
            }
        }
        KvOp::Delete { key, prev_kv } => {
            let prev = view.get(key)?;
            let deleted = prev.is_some();
            if deleted {
                view.set(key.clone(), None);
            }
            KvOutcome::Delete {
                revision,
                deleted,
                prev: prev.filter(|_| *prev_kv),
            }
        }
        KvOp::Cas {
            key,
            compare,
            action,
        } => {
            let current = view.get(key)?;
            let holds = match (compare, &current) {
                (Compare::Absent, None) => true,
                (Compare::ModRevision(r), Some(rec)) => rec.mod_rev == *r,
                (Compare::Value(v), Some(rec)) => rec.value == *v,
                _ => false,
            };
            if holds {
                match action {
                    CasAction::Put(v) => {
                        let lease = current.as_ref().map_or(0, |r| r.lease);
                        put(view, key, v.clone(), lease, current.as_ref(), revision)
                    }
                    CasAction::Delete => {
                        if current.is_some() {
                            view.set(key.clone(), None)
                        }
                    }
                }
            }
            KvOutcome::Cas {
                revision,
                succeeded: holds,
                current,
            }
        }
        KvOp::DeleteRange { start, end } => {
            let keys = view.keys_in(start, end.as_deref())?;
            let deleted = keys.len() as u64;
            for k in keys {
                view.set(k, None);
            }
            KvOutcome::DeleteRange { revision, deleted }
        }
        KvOp::DeleteLease { lease } => {
            // A scan of the partition: leases are few and revocations rare, so no index.
            let mut deleted = 0;
            if *lease != 0 {
                for k in view.keys_in(&[], None)? {
                    if view.get(&k)?.is_some_and(|r| r.lease == *lease) {
                        view.set(k, None);
                        deleted += 1;
                    }
                }
                view.mark_lease_revoked(*lease);
            }
            KvOutcome::DeleteLease { revision, deleted }
        }
        KvOp::Txn(txn) => match crate::txn::execute(view, txn, revision)? {
            Ok((succeeded, results)) => KvOutcome::Txn {
                revision,
                succeeded,
                results,
            },
            Err(e) => return Ok(Err(e)),
        },
    };
    Ok(Ok(outcome))
}

pub(crate) fn put(
    view: &mut dyn KvView,
    key: &[u8],
    value: Vec<u8>,
    lease: u64,
    prev: Option<&KvRecord>,
    revision: u64,
) {
    let record = match prev {
        Some(p) => KvRecord {
            value,
            create_rev: p.create_rev,
            mod_rev: revision,
            version: p.version + 1,
            lease,
        },
        None => KvRecord {
            value,
            create_rev: revision,
            mod_rev: revision,
            version: 1,
            lease,
        },
    };
    view.set(key.to_vec(), Some(record));
}

/// Encodes a record for the Kv tree.
pub(crate) fn encode_record(r: &KvRecord) -> Vec<u8> {
    // postcard cannot fail to serialize a plain struct into a Vec.
    postcard::to_stdvec(r).unwrap_or_default()
}

/// Decodes a record of the Kv tree.
pub(crate) fn decode_record(group: u64, key: &[u8], bytes: &[u8]) -> crate::Result<KvRecord> {
    postcard::from_bytes(bytes).map_err(|e| {
        crate::StoreError::corrupt(
            "kv",
            format!("group {group} key \"{}\"", crate::keys::display_key(key)),
            e,
        )
    })
}
