//! A leader is a voter of its group's configuration (as it has applied it). raft-rs lets a
//! node elected on a configuration it had not yet seen replaced go on leading after applying
//! its own removal; the core must make it step down within the turn.

use swarmkv::core::{GroupId, NodeId};
use swarmkv_store::raft::eraftpb::ConfState;

use super::Violation;

/// Checks `node`, which reports `role` for `group` with applied configuration `cs`.
pub fn check(group: GroupId, role: &str, cs: &ConfState, node: NodeId) -> Result<(), Violation> {
    let voter = cs.voters.contains(&node) || cs.voters_outgoing.contains(&node);
    // An empty configuration is a replica that has not applied its first snapshot yet.
    let known = !cs.voters.is_empty() || !cs.voters_outgoing.is_empty();
    if role == "Leader" && known && !voter {
        return Err(Violation::new(
            "a leader is a voter",
            format!(
                "{node:x} leads group {group} outside its configuration (voters {:x?}, \
                 outgoing {:x?}, learners {:x?})",
                cs.voters, cs.voters_outgoing, cs.learners
            ),
        ));
    }
    Ok(())
}
