//! No acknowledged write is lost: every write a client was told succeeded is the committed
//! entry at the revision it was told, and at the end (after the heal) its key shows that
//! write or a later one.

use std::collections::BTreeMap;

use swarmkv::core::GroupId;
use swarmkv_store::{CasAction, KvOp, KvRecord, TxnOp};

use super::committed_entries::CommittedEntries;
use super::Violation;

/// A write a client saw succeed and change its key.
#[derive(Clone, Debug)]
pub struct AckedWrite {
    pub group: GroupId,
    pub key: Vec<u8>,
    pub revision: u64,
    pub op: KvOp,
}

/// Whether `op` may delete `key` (a transaction: if either branch deletes it).
fn deletes(op: &KvOp, key: &[u8]) -> bool {
    match op {
        KvOp::Delete { key: k, .. } => k == key,
        KvOp::Cas {
            key: k,
            action: CasAction::Delete,
            ..
        } => k == key,
        KvOp::Txn(txn) => txn.success.iter().chain(&txn.failure).any(|o| match o {
            TxnOp::Delete { key: k } => k == key,
            TxnOp::DeleteRange { start, end } => {
                key >= start.as_slice() && end.as_ref().is_none_or(|e| key < e.as_slice())
            }
            _ => false,
        }),
        _ => false,
    }
}

/// Checks every acknowledged write against the committed entries seen and the final records
/// (read linearizably after the heal) of every key.
pub fn check(
    acked: &[AckedWrite],
    committed: &CommittedEntries,
    finals: &BTreeMap<Vec<u8>, Option<KvRecord>>,
) -> Result<(), Violation> {
    const P: &str = "no acknowledged write lost";
    for w in acked {
        match committed.entries.get(&(w.group, w.revision)) {
            Some(c) if c.op.as_ref() == Some(&w.op) => {}
            Some(c) => {
                return Err(Violation::new(
                    P,
                    format!(
                        "{:?} was acknowledged at revision {} of group {}, but the entry \
                         committed there is {:?}",
                        w.op, w.revision, w.group, c.op
                    ),
                ))
            }
            None => {
                return Err(Violation::new(
                    P,
                    format!(
                        "{:?} was acknowledged at revision {} of group {}, which no replica \
                         ever reported committed",
                        w.op, w.revision, w.group
                    ),
                ))
            }
        }
        let Some(fin) = finals.get(&w.key) else {
            return Err(Violation::new(
                P,
                format!("no final read of key {:?}", String::from_utf8_lossy(&w.key)),
            ));
        };
        let later_delete = || {
            committed.entries.iter().any(|((g, i), c)| {
                *g == w.group
                    && *i >= w.revision
                    && c.op.as_ref().is_some_and(|op| deletes(op, &w.key))
            })
        };
        let visible = match fin {
            Some(r) => r.mod_rev >= w.revision,
            None => later_delete(),
        };
        if !visible {
            return Err(Violation::new(
                P,
                format!(
                    "{:?} acknowledged at revision {} of group {}, but the key ends as {:?}",
                    w.op, w.revision, w.group, fin
                ),
            ));
        }
    }
    Ok(())
}
