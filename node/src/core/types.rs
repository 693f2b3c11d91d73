//! What clients ask of a partition and what they get back; also the wire payload of
//! `/swarmkv/kv-stream/1` (postcard-encoded), so every variant is serde.

use serde::{Deserialize, Serialize};
use swarmkv_store::{KvError, KvOp, KvOutcome, KvRecord, Session};

/// A node's Raft id, derived from its PeerId.
pub type NodeId = u64;
/// A Raft group: group 0 is reserved for the meta group, partition `p` is group `p + 1`.
pub type GroupId = u64;
/// Identifies a request inside one node while it is in flight.
pub type RequestId = u64;

/// The group that serves partition `p`.
pub fn group_of_partition(p: u32) -> GroupId {
    u64::from(p) + 1
}

/// The partition a data group serves (`None` for the meta group).
pub fn partition_of_group(g: GroupId) -> Option<u32> {
    g.checked_sub(1).and_then(|p| u32::try_from(p).ok())
}

/// Read consistency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read started (ReadIndex at the leader).
    #[default]
    Linearizable,
    /// The local state of whichever replica serves it; may be stale, never torn.
    Serializable,
}

/// One request to one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Target partition.
    pub partition: u32,
    pub body: RequestBody,
}

/// What a request does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestBody {
    /// Read one key.
    Get {
        key: Vec<u8>,
        consistency: Consistency,
    },
    /// Put, delete, compare-and-swap or delete-range, through Raft. With a session, sending
    /// the same write again after an ambiguous failure cannot apply it twice.
    Write { op: KvOp, session: Option<Session> },
    /// Ordered scan of `[start, end)` within the partition.
    Scan {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
        consistency: Consistency,
    },
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The record, if the key exists.
    Get(Option<KvRecord>),
    /// What the write did.
    Write(KvOutcome),
    /// Records in key order; `more` when the limit cut the scan. `revision` is the
    /// partition's applied index when the replica read them: the records are the range's
    /// state at exactly that revision, so a watch from it (`Position { after: revision }`)
    /// delivers every later change and none the records already show.
    Scan {
        records: Vec<(Vec<u8>, KvRecord)>,
        more: bool,
        revision: u64,
    },
    /// A lease request's answer: the lease as the meta leader sees it.
    Lease(super::lease::LeaseInfo),
    /// An election request's answer: the candidate it concerns (campaign, proclaim), the
    /// leader (leader, observe), or none (resign; no leader). (Last, so the encoding of the
    /// other responses is unchanged.)
    Election(Option<super::election::Candidate>),
}

/// Why a request failed. Every variant says whether the operation may have happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ClientError {
    /// This node does not lead the partition; `leader` is the one it believes does. Nothing
    /// was done: safe to retry there.
    #[error("not the leader of the partition (leader hint: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// The partition cannot serve right now (no leader known, no replica here, election in
    /// progress). Nothing was done: safe to retry.
    #[error("partition unavailable: {reason}")]
    Unavailable { reason: String },
    /// The proposal was replaced in the log by another leader's entry: it will never apply.
    /// Safe to retry.
    #[error("the write was dropped by a leader change; it did not happen")]
    ProposalDropped,
    /// No answer within the deadline. A write may or may not have happened (ambiguous).
    #[error("timed out; a write may or may not have been applied")]
    Timeout,
    /// The leader that took the write lost its leadership before the write was confirmed; it
    /// may or may not apply (ambiguous). Resending it with the same session is safe.
    #[error("leadership changed before the write was confirmed; it may or may not apply")]
    LeaderChanged,
    /// The operation was refused by the state machine (limits); it applied as a no-op.
    #[error("rejected: {0}")]
    Rejected(KvError),
    /// The request was malformed (e.g. unknown partition). Nothing was done.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The serving node's storage failed while the request was in flight; that node refuses
    /// everything until its storage works again. A write may or may not apply (the other
    /// replicas may have committed it): resending it with the same session is safe.
    #[error("storage failure: {0}; a write may or may not have been applied")]
    Storage(String),
    /// The node is shutting down or its connection to the serving node was lost. A write may
    /// or may not have happened (ambiguous).
    #[error("connection lost: {0}")]
    Disconnected(String),
    /// The lease was never granted, was revoked, or expired. Nothing was done.
    #[error("lease {0:x} not found (never granted, revoked or expired)")]
    LeaseNotFound(u64),
    /// The node holds as many requests as its admission budget allows (see
    /// `driver::admission`): this one was refused before anything was done. Come back after
    /// about `retry_after_ms`; retrying at once only adds load. (Last variant: the wire
    /// encoding of the earlier ones must not change.)
    #[error("the node is busy (too many requests in flight); retry after {retry_after_ms} ms")]
    Busy { retry_after_ms: u64 },
    /// The election candidate does not lead (it resigned, lost its lease, or waits behind
    /// another candidate). Nothing was done.
    #[error("candidate {token:x} does not lead election {name:?}")]
    NotLeading { name: String, token: u64 },
}

impl ClientError {
    /// True when the failure guarantees the operation did not take effect, so a retry cannot
    /// apply it twice.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::NotLeader { .. }
                | ClientError::Unavailable { .. }
                | ClientError::ProposalDropped
        )
    }

    /// True when a write may or may not have happened: resend it with the same session.
    pub fn is_ambiguous(&self) -> bool {
        matches!(
            self,
            ClientError::Timeout
                | ClientError::LeaderChanged
                | ClientError::Disconnected(_)
                | ClientError::Storage(_)
        )
    }
}

/// What a request ends with.
pub type Reply = Result<Response, ClientError>;
