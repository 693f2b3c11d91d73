//! Election safety: at most one leader per term in every group.

use std::collections::HashMap;

use swarmkv::core::{GroupId, NodeId};

use super::Violation;

/// The leader seen for each (group, term).
#[derive(Default)]
pub struct ElectionSafety {
    leaders: HashMap<(GroupId, u64), NodeId>,
}

impl ElectionSafety {
    /// Records that `node` reports `role` in `term` of `group`.
    pub fn observe(
        &mut self,
        group: GroupId,
        term: u64,
        role: &str,
        node: NodeId,
    ) -> Result<(), Violation> {
        if role != "Leader" {
            return Ok(());
        }
        let first = *self.leaders.entry((group, term)).or_insert(node);
        if first != node {
            return Err(Violation::new(
                "election safety",
                format!("group {group} term {term}: both {first:x} and {node:x} are leaders"),
            ));
        }
        Ok(())
    }

    /// Number of (group, term) pairs that had a leader.
    pub fn terms_led(&self) -> usize {
        self.leaders.len()
    }
}
