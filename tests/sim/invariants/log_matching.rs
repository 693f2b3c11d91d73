//! Log matching: two logs holding an entry with the same index and term hold the same entry
//! (and, checked index by index, the same entries before it).

use std::collections::HashMap;

use swarmkv::core::{GroupId, NodeId};

use super::Violation;

/// The digest and first holder of every (group, index, term) seen in any replica's log.
#[derive(Default)]
pub struct LogMatching {
    entries: HashMap<(GroupId, u64, u64), (u64, NodeId)>,
}

impl LogMatching {
    /// Records that `node`'s log of `group` holds an entry with this digest at (index, term).
    pub fn observe(
        &mut self,
        group: GroupId,
        index: u64,
        term: u64,
        digest: u64,
        node: NodeId,
    ) -> Result<(), Violation> {
        let (first, holder) = *self
            .entries
            .entry((group, index, term))
            .or_insert((digest, node));
        if first != digest {
            return Err(Violation::new(
                "log matching",
                format!(
                    "group {group} index {index} term {term}: {holder:x} and {node:x} hold \
                     different entries"
                ),
            ));
        }
        Ok(())
    }

    /// Number of distinct (group, index, term) entries seen.
    pub fn entries_seen(&self) -> usize {
        self.entries.len()
    }
}
