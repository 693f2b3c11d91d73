//! Committed entries never change: once any replica reports an entry as committed, every
//! replica that later holds a committed entry at that index holds the same one. Also keeps
//! the decoded key-value operation of every committed entry for the acknowledged-writes check.

use std::collections::HashMap;

use swarmkv::core::{Command, GroupId, NodeId};
use swarmkv_store::raft::eraftpb::{Entry, EntryType};
use swarmkv_store::KvOp;

use super::Violation;

/// One committed entry as first seen.
pub struct Committed {
    pub term: u64,
    pub digest: u64,
    pub first_seen_on: NodeId,
    /// The key-value operation it carries, if any.
    pub op: Option<KvOp>,
}

/// Every committed entry seen, by (group, index).
#[derive(Default)]
pub struct CommittedEntries {
    pub entries: HashMap<(GroupId, u64), Committed>,
}

impl CommittedEntries {
    /// Records that `node` holds `entry` of `group` as committed.
    pub fn observe(
        &mut self,
        group: GroupId,
        entry: &Entry,
        digest: u64,
        node: NodeId,
    ) -> Result<(), Violation> {
        match self.entries.get(&(group, entry.index)) {
            Some(c) if c.term != entry.term || c.digest != digest => Err(Violation::new(
                "committed entries never change",
                format!(
                    "group {group} index {}: committed as term {} on {:x}, but {node:x} holds \
                     term {} as committed",
                    entry.index, c.term, c.first_seen_on, entry.term
                ),
            )),
            Some(_) => Ok(()),
            None => {
                let op = match entry.get_entry_type() {
                    EntryType::EntryNormal if !entry.data.is_empty() => {
                        match Command::decode(&entry.data) {
                            Ok(Command::Kv { op, .. }) => Some(op),
                            Err(_) => None,
                        }
                    }
                    _ => None,
                };
                self.entries.insert(
                    (group, entry.index),
                    Committed {
                        term: entry.term,
                        digest,
                        first_seen_on: node,
                        op,
                    },
                );
                Ok(())
            }
        }
    }
}
