//! The client protocol's payload (`/swarmkv/kv-stream/1`): what a light client or a forwarding node
//! sends, and what comes back. postcard-encoded, versioned by the outer enum.

use serde::{Deserialize, Serialize};

use crate::core::{
    ClientError, ClusterLayout, ClusterSettings, GroupId, NodeId, NodeRecord, Reply, Request,
};

/// How many times a request may be passed from node to node toward its partition's leader
/// (a node without a replica points at a replica, which points at the leader).
pub const MAX_HOPS: u8 = 2;

/// A call on `/swarmkv/kv-stream/1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCall {
    V1(Call),
}

/// What a caller asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    /// A request for one partition. `hops` counts the nodes that already passed it on: a
    /// request is forwarded at most [`MAX_HOPS`] times, so a loop cannot form.
    Request { req: Request, hops: u8 },
    /// The cluster's shape, which a client needs to route keys.
    Info,
    /// A new node asks to join the cluster (answered by, or forwarded to, the meta leader).
    Join { record: NodeRecord },
    /// The node forming a cluster with `--expect N` tells the other initial members.
    Bootstrap {
        layout: ClusterLayout,
        cluster_id: u64,
    },
    /// Drain a node: move every replica off it, then mark it decommissioned.
    Decommission { node: NodeId },
    /// The answering node's view of itself and its groups.
    Status,
    /// A lease request for the meta leader; `hops` as for [`Call::Request`]. (Last, so the
    /// encoding of the other calls is unchanged.)
    Lease {
        req: crate::core::LeaseRequest,
        hops: u8,
    },
    /// An election request for the meta leader; `hops` as for [`Call::Request`]. (Last, so
    /// the encoding of the other calls is unchanged.)
    Election {
        req: crate::core::ElectionRequest,
        hops: u8,
    },
    /// A watch long-poll on one partition, answered by a replica of it (this node's, or one it
    /// passes the call to; `hops` as for [`Call::Request`]). See `driver/watch.rs`. (Last, so
    /// the encoding of the other calls is unchanged.)
    Watch { req: WatchRequest, hops: u8 },
    /// The answering node's view of the whole cluster (every node, every group's voters), for
    /// administration over libp2p (`swarmkv repair --peer`). (Last, so the encoding of the
    /// other calls is unchanged.)
    ClusterView,
    /// Freeze one group (a partition, or the meta group) for a backup, on a replica that
    /// answered a linearizable barrier first: this node's, or one it passes the call to
    /// (`hops` as for [`Call::Request`]). See `driver/backup.rs`. (After the older calls,
    /// so their encoding is unchanged.)
    BackupFreeze { group: GroupId, hops: u8 },
    /// One chunk of a copy frozen by [`Call::BackupFreeze`] on `node` (the answering node,
    /// or one it passes the call to).
    BackupChunk {
        node: NodeId,
        group: GroupId,
        index: u64,
        seq: u32,
    },
    /// A request sent to the node the caller's routing table names as the partition's leader.
    /// A leader serves it as [`Call::Request`]; any other node does nothing and answers
    /// `NotLeader` with the leader it knows (or `Unavailable`), never forwarding it, so the
    /// caller fixes its table and sends the request there. A node that predates this call
    /// answers [`Answer::Malformed`] (nothing done): the caller falls back to
    /// [`Call::Request`]. (Last, so the encoding of the other calls is unchanged.)
    AtLeader { req: Request },
}

/// An answer on `/swarmkv/kv-stream/1`. Version 2 added the revision a scan read at
/// ([`crate::core::Response::Scan`]); a version-1 answer (from an older node) is refused when
/// decoded, rather than read as if it had a revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvAnswer {
    V1(RetiredAnswer),
    V2(Answer),
}

/// The place of the version-1 answers in [`KvAnswer`]: no value has this type, and decoding one
/// fails with an error that names the version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetiredAnswer {}

impl Serialize for RetiredAnswer {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        match *self {}
    }
}

impl<'de> Deserialize<'de> for RetiredAnswer {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<RetiredAnswer, D::Error> {
        Err(serde::de::Error::custom(RETIRED_ANSWER))
    }
}

/// What comes back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Reply(Reply),
    Info(ClusterInfo),
    /// Registered: the settings of the cluster joined.
    Joined(ClusterSettings),
    /// Done.
    Ok,
    Status(StatusReport),
    /// The call could not be decoded.
    Malformed(String),
    /// A decommission named a node the cluster does not know (last, so the encoding of the
    /// other answers is unchanged).
    UnknownNode(NodeId),
    /// The answer to a [`Call::Watch`] (last, so the encoding of the other answers is
    /// unchanged).
    Watch(WatchReply),
    /// The answer to a [`Call::ClusterView`] (last, so the encoding of the other answers is
    /// unchanged).
    ClusterView(crate::driver::ClusterView),
    /// The answer to a [`Call::BackupFreeze`] or a [`Call::BackupChunk`] (last, so the
    /// encoding of the other answers is unchanged).
    Backup(BackupReply),
}

/// What a backup call gets back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackupReply {
    /// The group is frozen on `node` at the descriptor's index: its chunks are to be read
    /// from that node.
    Frozen {
        node: NodeId,
        descriptor: swarmkv_store::SnapshotDescriptor,
    },
    /// One encoded `SnapshotChunk`.
    Chunk(Vec<u8>),
    /// Nothing could be done now (no replica reachable, the group has no leader, the frozen
    /// copy was replaced by a newer one); the caller may try again.
    Unavailable(String),
}

/// What a client needs to know about the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The answering node.
    pub node: NodeId,
    /// Number of partitions; `None` before the node is part of a cluster.
    pub partitions: Option<u32>,
}

impl KvCall {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<KvCall, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("undecodable kv call: {e}"))
    }
}

impl KvAnswer {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<KvAnswer, ClientError> {
        postcard::from_bytes(bytes).map_err(|e| {
            // postcard keeps only a generic message for a custom error: name it here. Variant
            // 0 (V1) is the single byte 0.
            if bytes.first() == Some(&0) {
                ClientError::Disconnected(RETIRED_ANSWER.into())
            } else {
                ClientError::Disconnected(format!("undecodable kv answer: {e}"))
            }
        })
    }
}

/// Why a version-1 answer is refused.
const RETIRED_ANSWER: &str =
    "a version-1 kv answer (from an older swarmkv node): upgrade that node";

pub use crate::core::control::Announce;

/// A node's report on itself (`swarmkv status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub node: NodeId,
    /// PeerId, as text.
    pub peer: String,
    pub cluster_id: Option<u64>,
    pub partitions: Option<u32>,
    pub meta_leader: bool,
    pub groups: Vec<GroupReport>,
    /// Peers this node currently hears from (fresh announcements), by node id.
    pub peers: Vec<NodeId>,
    /// Peers of other clusters that tried to connect: (PeerId text, cluster name, cluster id).
    pub foreign: Vec<(String, String, Option<u64>)>,
    /// Set while the node's storage fails: it refuses every request until the storage works
    /// again (it retries by itself).
    pub storage_error: Option<String>,
}

/// One local replica in a [`StatusReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReport {
    pub group: GroupId,
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub voters: Vec<NodeId>,
    pub commit: u64,
    pub applied: u64,
}

/// One long-poll of a watch: the events of one partition after a revision, for a key range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRequest {
    pub partition: u32,
    /// Events with a revision above this one. `None`: start now (the replica answers at once
    /// with no events and its applied revision, the position to watch from).
    pub after: Option<u64>,
    /// Keys in `[start, end)` (`end = None`: to the end of the keyspace).
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
    /// How long the replica may wait for a matching event before it answers with none (the
    /// node caps it).
    pub wait_ms: u32,
}

/// What a watch long-poll gets back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchReply {
    /// Every matching event with a revision in `(after, through]`, in revision order (possibly
    /// none). A replica behind the caller answers a `through` at or below `after`: it says
    /// nothing new, and the caller keeps its position.
    Events {
        events: Vec<swarmkv_store::Event>,
        through: u64,
    },
    /// The replica no longer has the events right after `after`: its history starts after
    /// `compacted`.
    Compacted { compacted: u64 },
    /// No replica of the partition could answer now (not part of a cluster, none reachable,
    /// storage failing); another node may.
    Unavailable(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Response;

    #[test]
    fn a_version_1_answer_is_refused_and_a_scan_keeps_its_revision() {
        // What an older node sends for `Answer::Ok`: variant 0 (V1), then the answer.
        let old = postcard::to_stdvec(&(0u8, 3u8)).unwrap_or_default();
        let err = KvAnswer::decode(&old).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("version-1")),
            "{err:?}"
        );
        let scan = KvAnswer::V2(Answer::Reply(Ok(Response::Scan {
            records: Vec::new(),
            more: false,
            revision: 41,
        })));
        assert_eq!(KvAnswer::decode(&scan.encode()), Ok(scan));
    }
}
