//! What a backup and a restore need from the core: a linearizable barrier on one local
//! replica (so a snapshot frozen right after it holds every write acknowledged before it),
//! and the restored state a new cluster's groups start from.
//!
//! A backup freezes each group on a replica that answered a barrier: the barrier is a
//! ReadIndex read of an empty range, served once this replica has applied everything the
//! group committed before the read was asked, whether it leads or follows. The freeze that
//! follows (`Store::create_snapshot`) takes the replica's applied state at that moment or
//! later, so it includes every write acknowledged before the barrier started.
//!
//! A restore hands the core one staged snapshot per group (`Core::set_restore_seed`). The
//! node then forms a cluster of its own, alone (`control` forms at once and joins nobody),
//! and [`Core::bootstrap`] starts each group from its staged snapshot instead of an empty
//! one. Only a cluster of this one node may start that way: initial voters must start from
//! identical states, and only this node holds the backup. The other nodes join it and get
//! their replicas as any new node does, by Raft snapshots.

use std::collections::BTreeMap;

use swarmkv_store::{Backend, SnapshotDescriptor};

use super::{quiesce, ClientError, Consistency, Core, GroupId, RequestBody, RequestId};

impl<B: Backend> Core<B> {
    /// A linearizable barrier on this node's replica of `group` (the meta group included),
    /// answered through [`Core::poll_reply`] as an empty scan once the replica has applied
    /// everything committed before the call, or with `NotLeader`/`Unavailable` when this
    /// replica cannot ask (the caller then tries another replica).
    pub fn handle_barrier(&mut self, id: RequestId, group: GroupId) {
        let me = self.id;
        let Some(r) = self.replicas.get_mut(&group) else {
            let hint = self
                .targets
                .get(&group)
                .and_then(|t| t.replicas.iter().find(|n| **n != me).copied());
            let err = match hint {
                Some(_) => ClientError::NotLeader { leader: hint },
                None => ClientError::Unavailable {
                    reason: format!("no replica of group {group} is known"),
                },
            };
            self.replies.push_back((id, Err(err)));
            return;
        };
        quiesce::wake(&mut self.quiesce, group, r, false);
        let body = RequestBody::Scan {
            start: Vec::new(),
            end: Some(Vec::new()),
            limit: 0,
            consistency: Consistency::Linearizable,
        };
        if r.follows(me).is_some() {
            self.handle_follower_request(id, group, body);
        } else {
            self.queue_read(group, id, body);
        }
    }

    /// Sets the staged snapshots (by group) a restored node's groups start from when it forms
    /// its cluster. Every chunk of each must be staged in the store already.
    pub fn set_restore_seed(&mut self, seed: BTreeMap<GroupId, SnapshotDescriptor>) {
        self.restore_seed = Some(seed);
    }

    /// Whether this node waits to form a cluster from a restored backup.
    pub fn restoring(&self) -> bool {
        self.restore_seed.is_some() && self.settings.is_none()
    }
}
