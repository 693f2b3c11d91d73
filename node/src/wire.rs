//! The client protocol's payload (`/swarmkv/kv/1`): what a light client or a forwarding node
//! sends, and what comes back. postcard-encoded, versioned by the outer enum.

use serde::{Deserialize, Serialize};

use crate::core::{ClientError, NodeId, Reply, Request};

/// A call on `/swarmkv/kv/1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCall {
    V1(Call),
}

/// What a caller asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    /// A request for one partition. `forwarded` marks a request one node passed to another:
    /// it is not forwarded again (a loop cannot form).
    Request { req: Request, forwarded: bool },
    /// The cluster's shape, which a client needs to route keys.
    Info,
}

/// An answer on `/swarmkv/kv/1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvAnswer {
    V1(Answer),
}

/// What comes back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Reply(Reply),
    Info(ClusterInfo),
    /// The call could not be decoded.
    Malformed(String),
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
        postcard::from_bytes(bytes)
            .map_err(|e| ClientError::Disconnected(format!("undecodable kv answer: {e}")))
    }
}
