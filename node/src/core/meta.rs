//! The meta group's state: the cluster's registry of nodes, the target replica set of every
//! group, and the settings fixed at formation.
//!
//! The meta group is Raft group 0, and its state machine is the ordinary partition state
//! machine: each record is a key-value pair under a reserved prefix, written by a `KvOp` that
//! goes through group 0's log. So the registry is replicated, snapshotted and recovered by the
//! same code as user data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use swarmkv_store::KvOp;

use super::types::{GroupId, NodeId};

/// Raft group 0.
pub const META_GROUP: GroupId = 0;
/// At most this many voters in the meta group.
pub const META_VOTERS: usize = 5;

const SETTINGS_KEY: &[u8] = b"meta/settings";
const NODE_PREFIX: &[u8] = b"meta/node/";
const TARGET_PREFIX: &[u8] = b"meta/target/";

/// Settings fixed when the cluster forms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    /// Random id: two clusters that formed apart never merge.
    pub cluster_id: u64,
    /// Number of hash partitions.
    pub partitions: u32,
    /// Replicas per partition (capped by live nodes).
    pub replication: usize,
}

/// What the cluster knows about a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Heartbeats arrive.
    Live,
    /// Silent for longer than the grace period: its replicas are moved away.
    Dead,
    /// An operator asked to drain it: its replicas are moved away.
    Decommissioning,
    /// Drained.
    Decommissioned,
}

/// A registry entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    /// libp2p PeerId bytes.
    pub peer: Vec<u8>,
    /// Listen addresses, as multiaddr strings.
    pub addrs: Vec<String>,
    pub state: NodeState,
}

/// The replica set a group should converge to, with a version that grows with every change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Target {
    pub replicas: Vec<NodeId>,
    pub version: u64,
}

/// The whole meta state.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MetaState {
    pub settings: Option<ClusterSettings>,
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub targets: BTreeMap<GroupId, Target>,
}

fn put(key: Vec<u8>, value: Vec<u8>) -> KvOp {
    KvOp::Put {
        key,
        value,
        lease: 0,
        prev_kv: false,
    }
}

fn hex_key(prefix: &[u8], id: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(format!("{id:016x}").as_bytes());
    k
}

impl MetaState {
    /// Rebuilds the state from group 0's records (a scan of its keyspace). Records that do not
    /// decode are skipped with a warning: one bad record must not stop the control plane.
    pub fn from_records<'a>(records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> MetaState {
        let mut m = MetaState::default();
        for (k, v) in records {
            if k == SETTINGS_KEY {
                match postcard::from_bytes(v) {
                    Ok(s) => m.settings = Some(s),
                    Err(e) => log::warn!("bad cluster settings record: {e}"),
                }
            } else if let Some(rest) = k.strip_prefix(NODE_PREFIX) {
                match postcard::from_bytes::<NodeRecord>(v) {
                    Ok(n) => {
                        m.nodes.insert(n.id, n);
                    }
                    Err(e) => log::warn!("bad node record {}: {e}", rest.escape_ascii()),
                }
            } else if let Some(rest) = k.strip_prefix(TARGET_PREFIX) {
                let id = std::str::from_utf8(rest)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s, 16).ok());
                match (id, postcard::from_bytes::<Target>(v)) {
                    (Some(g), Ok(t)) => {
                        m.targets.insert(g, t);
                    }
                    _ => log::warn!("bad target record {}", rest.escape_ascii()),
                }
            }
        }
        m
    }

    /// The key prefix of every meta record (for scans of group 0).
    pub fn prefix() -> &'static [u8] {
        b"meta/"
    }

    /// Whether `key` is one of this cluster's own records (settings, registry, targets), as
    /// opposed to the leases, elections and locks users keep in the meta group: a restored
    /// backup leaves these out, since the new cluster writes its own.
    pub fn is_cluster_record(key: &[u8]) -> bool {
        key == SETTINGS_KEY || key.starts_with(NODE_PREFIX) || key.starts_with(TARGET_PREFIX)
    }

    /// The write that records the settings.
    pub fn put_settings(s: &ClusterSettings) -> KvOp {
        put(
            SETTINGS_KEY.to_vec(),
            postcard::to_stdvec(s).unwrap_or_default(),
        )
    }

    /// The write that records a node.
    pub fn put_node(n: &NodeRecord) -> KvOp {
        put(
            hex_key(NODE_PREFIX, n.id),
            postcard::to_stdvec(n).unwrap_or_default(),
        )
    }

    /// The write that records a group's target.
    pub fn put_target(group: GroupId, t: &Target) -> KvOp {
        put(
            hex_key(TARGET_PREFIX, group),
            postcard::to_stdvec(t).unwrap_or_default(),
        )
    }

    /// Nodes that may hold replicas.
    pub fn live_nodes(&self) -> Vec<NodeId> {
        self.nodes_in(NodeState::Live)
    }

    /// Nodes judged dead (silent, not leaving): placement keeps their replicas while nobody
    /// can take their place.
    pub fn dead_nodes(&self) -> Vec<NodeId> {
        self.nodes_in(NodeState::Dead)
    }

    fn nodes_in(&self, state: NodeState) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.state == state)
            .map(|n| n.id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_kv_ops() {
        let s = ClusterSettings {
            cluster_id: 9,
            partitions: 4,
            replication: 3,
        };
        let n = NodeRecord {
            id: 0xabc,
            peer: vec![1, 2],
            addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
            state: NodeState::Live,
        };
        let t = Target {
            replicas: vec![1, 2, 3],
            version: 4,
        };
        let ops = [
            MetaState::put_settings(&s),
            MetaState::put_node(&n),
            MetaState::put_target(7, &t),
        ];
        let records: Vec<(Vec<u8>, Vec<u8>)> = ops
            .iter()
            .map(|op| match op {
                KvOp::Put { key, value, .. } => (key.clone(), value.clone()),
                _ => unreachable!("puts only"),
            })
            .collect();
        let m = MetaState::from_records(records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        assert_eq!(m.settings, Some(s));
        assert_eq!(m.nodes.get(&0xabc), Some(&n));
        assert_eq!(m.targets.get(&7), Some(&t));
        assert!(records
            .iter()
            .all(|(k, _)| k.starts_with(MetaState::prefix())));
    }
}
