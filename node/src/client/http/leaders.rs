//! The HTTP transport's table of partition leaders, kept when the client is given the gateways
//! of several nodes: each write and linearizable read of one key goes to the gateway of the
//! node that leads the key's partition, which serves it without a follower's detour through
//! Raft. The table comes from every gateway's `GET /v1/status` (its node id, the cluster's
//! partition count, its replicas' leaders), read when the first key is sent and again at most
//! every [`REFRESH_EVERY`].
//!
//! The table is a hint: every gateway serves every key (a follower through Raft, a node
//! without a replica by passing it on), so a stale table costs a hop, never a wrong answer, and
//! a gateway that cannot be reached sends the request on to the next one as before.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::core::routing::partition_of;
use crate::core::{partition_of_group, NodeId};
use crate::wire::StatusReport;

/// The table is read again from the gateways at most this often.
const REFRESH_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Table {
    /// The cluster's partition count (0 until a gateway has said).
    partitions: u32,
    /// The index of each node's gateway among the transport's endpoints.
    gateway_of: BTreeMap<NodeId, usize>,
    leaders: BTreeMap<u32, NodeId>,
    refreshed: Option<Instant>,
}

/// See the module documentation.
#[derive(Default)]
pub(super) struct Leaders {
    table: Mutex<Table>,
    /// Held while the table is read again, so concurrent calls read it once.
    pub(super) refreshing: tokio::sync::Mutex<()>,
}

impl Leaders {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the table is due to be read again (and marks it read now, so that one call
    /// does it).
    pub(super) fn claim_refresh(&self, now: Instant) -> bool {
        let mut t = self.lock();
        let due = t
            .refreshed
            .is_none_or(|r| now.duration_since(r) >= REFRESH_EVERY);
        if due {
            t.refreshed = Some(now);
        }
        due
    }

    /// Takes what gateway `index` reported about its node.
    pub(super) fn take(&self, index: usize, report: &StatusReport) {
        let mut t = self.lock();
        if let Some(p) = report.partitions {
            t.partitions = p;
        }
        t.gateway_of.insert(report.node, index);
        for g in &report.groups {
            if let (Some(p), Some(l)) = (partition_of_group(g.group), g.leader) {
                t.leaders.insert(p, l);
            }
        }
    }

    /// Gateway `index` could not serve a request: no key is sent there first until the table
    /// is read again.
    pub(super) fn forget_gateway(&self, index: usize) {
        self.lock().gateway_of.retain(|_, i| *i != index);
    }

    /// The index of the gateway of the node that leads `key`'s partition, if the table knows.
    pub(super) fn gateway_for(&self, key: &[u8]) -> Option<usize> {
        let t = self.lock();
        if t.partitions == 0 {
            return None;
        }
        let leader = t.leaders.get(&partition_of(key, t.partitions))?;
        t.gateway_of.get(leader).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::group_of_partition;
    use crate::wire::GroupReport;

    fn report(node: NodeId, leaders: &[(u32, NodeId)]) -> StatusReport {
        StatusReport {
            node,
            peer: String::new(),
            cluster_id: Some(1),
            partitions: Some(4),
            meta_leader: false,
            groups: leaders
                .iter()
                .map(|(p, l)| GroupReport {
                    group: group_of_partition(*p),
                    role: String::new(),
                    term: 1,
                    leader: Some(*l),
                    voters: vec![],
                    commit: 0,
                    applied: 0,
                })
                .collect(),
            peers: vec![],
            foreign: vec![],
            storage_error: None,
        }
    }

    #[test]
    fn a_key_goes_to_the_gateway_of_its_partitions_leader() {
        let leaders = Leaders::default();
        assert_eq!(leaders.gateway_for(b"k"), None, "nothing known yet");
        let all: Vec<(u32, NodeId)> = (0..4).map(|p| (p, 10 + u64::from(p % 2))).collect();
        leaders.take(0, &report(10, &all));
        leaders.take(1, &report(11, &all));
        for i in 0..50 {
            let key = format!("key-{i}");
            let p = partition_of(key.as_bytes(), 4);
            assert_eq!(leaders.gateway_for(key.as_bytes()), Some((p % 2) as usize));
        }
        // A leader whose gateway the client was not given: the request goes the usual way.
        leaders.take(1, &report(11, &[(0, 99), (1, 99), (2, 99), (3, 99)]));
        assert_eq!(leaders.gateway_for(b"k"), None);
    }

    #[test]
    fn the_table_is_read_again_only_when_due() {
        let leaders = Leaders::default();
        let t0 = Instant::now();
        assert!(leaders.claim_refresh(t0));
        assert!(!leaders.claim_refresh(t0 + Duration::from_secs(1)));
        assert!(leaders.claim_refresh(t0 + REFRESH_EVERY));
    }
}
