//! Leftover collection: a local replica the target does not want, of a group whose leader
//! announces a configuration without this node (in an announcement heard after the replica's
//! latest configuration change), is dropped, once it is older than the grace period. (`Core::drop_replica` itself refuses to drop a replica its own joint configuration
//! names an outgoing voter.)

use std::collections::BTreeMap;

use swarmkv_store::Backend;

use super::gossip::Gossip;
use crate::core::{Core, CoreError, GroupId};

/// When the leftover check first saw each local replica.
#[derive(Default)]
pub(super) struct Leftovers {
    first_seen: BTreeMap<GroupId, u64>,
}

impl Leftovers {
    /// Drops this node's leftover replicas; returns the groups dropped.
    pub fn collect<B: Backend>(
        &mut self,
        core: &mut Core<B>,
        gossip: &Gossip,
        grace_ms: u64,
        now: u64,
    ) -> Result<Vec<GroupId>, CoreError> {
        let me = core.id();
        let groups = core.groups();
        // `groups` is sorted (the replicas are a BTreeMap).
        self.first_seen
            .retain(|g, _| groups.binary_search(g).is_ok());
        let mut leftovers = Vec::new();
        for g in groups {
            let first_seen = *self.first_seen.entry(g).or_insert(now);
            if core.is_leader(g) || now.saturating_sub(first_seen) < grace_ms {
                continue;
            }
            let wanted = core
                .targets()
                .get(&g)
                .is_none_or(|t| t.replicas.contains(&me));
            if wanted {
                continue;
            }
            // Only an announcement heard after this replica's latest configuration change:
            // one from before may be of a configuration that did not include this node yet.
            let since = core.conf_applied_ms(g).unwrap_or(0);
            let removed = gossip.fresh_heard(now).any(|(a, at)| {
                at > since
                    && a.led
                        .iter()
                        .any(|(lg, voters)| *lg == g && !voters.contains(&me))
            });
            if removed {
                leftovers.push(g);
            }
        }
        for g in &leftovers {
            core.drop_replica(*g)?;
        }
        Ok(leftovers)
    }
}
