//! `GET /v1/status`: the serving node's report on itself and its replicas, plus a summary of
//! replica health.
//!
//! It is the local node's view (as `swarmkv status`): the groups listed are the replicas this
//! node holds. Node ids and the cluster id are 16-hex-digit strings, as the CLI prints them.
//! A gateway on a node also reports the cluster name and, under `cluster`, every node and
//! every partition as the node sees them ([`ClusterJson`], what the status page draws).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use crate::core::{partition_of_group, META_GROUP};
use crate::wire::StatusReport;

use super::cluster::ClusterJson;
use super::error::{node_hex, ApiError};
use super::state::Gateway;

/// Fewer voters than this and a group is reported as under-replicated: with three, a group
/// survives the loss of any one replica.
pub const HEALTHY_VOTERS: usize = 3;

/// The JSON of `/v1/status`.
#[derive(Debug, Serialize)]
pub struct StatusJson {
    /// The cluster's name (`--cluster`); null from a gateway on a remote client.
    pub cluster_name: Option<String>,
    pub node: String,
    pub peer: String,
    pub cluster_id: Option<String>,
    /// `unformed` (not part of a cluster yet), `ready` (every local group knows a leader),
    /// `degraded`, or `storage_failed` (the node refuses everything until its storage works
    /// again; `storage_error` says why).
    pub state: &'static str,
    /// Why the node's storage failed, while it does.
    pub storage_error: Option<String>,
    pub partitions: Option<u32>,
    /// The meta group's leader as this node knows it (the coordinator).
    pub meta_leader: Option<String>,
    /// Whether this node is that leader.
    pub is_meta_leader: bool,
    pub peers: Vec<String>,
    /// Peers of other clusters that tried to connect.
    pub foreign: Vec<ForeignJson>,
    pub groups: Vec<GroupJson>,
    pub summary: SummaryJson,
    /// Every node and partition as this node sees them; null from a gateway on a remote
    /// client.
    pub cluster: Option<ClusterJson>,
}

#[derive(Debug, Serialize)]
pub struct ForeignJson {
    pub peer: String,
    pub cluster_name: String,
    pub cluster_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct GroupJson {
    pub group: u64,
    /// The partition the group serves; absent for the meta group (0).
    pub partition: Option<u32>,
    pub role: String,
    pub leader: Option<String>,
    pub voters: Vec<String>,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
}

#[derive(Debug, Serialize)]
pub struct SummaryJson {
    /// Replicas on this node.
    pub groups: usize,
    /// Those whose leader is known.
    pub with_leader: usize,
    /// Those with fewer than three voters.
    pub under_replicated: usize,
}

impl StatusJson {
    pub fn new(r: &StatusReport) -> StatusJson {
        let with_leader = r.groups.iter().filter(|g| g.leader.is_some()).count();
        let under_replicated = r
            .groups
            .iter()
            .filter(|g| g.voters.len() < HEALTHY_VOTERS)
            .count();
        let state = match r.cluster_id {
            _ if r.storage_error.is_some() => "storage_failed",
            None => "unformed",
            Some(_) if with_leader == r.groups.len() => "ready",
            Some(_) => "degraded",
        };
        let meta_leader = if r.meta_leader {
            Some(r.node)
        } else {
            r.groups
                .iter()
                .find(|g| g.group == META_GROUP)
                .and_then(|g| g.leader)
        };
        StatusJson {
            cluster_name: None,
            node: node_hex(r.node),
            peer: r.peer.clone(),
            cluster_id: r.cluster_id.map(node_hex),
            state,
            storage_error: r.storage_error.clone(),
            partitions: r.partitions,
            meta_leader: meta_leader.map(node_hex),
            is_meta_leader: r.meta_leader,
            peers: r.peers.iter().copied().map(node_hex).collect(),
            foreign: r
                .foreign
                .iter()
                .map(|(peer, name, id)| ForeignJson {
                    peer: peer.clone(),
                    cluster_name: name.clone(),
                    cluster_id: id.map(node_hex),
                })
                .collect(),
            groups: r
                .groups
                .iter()
                .map(|g| GroupJson {
                    group: g.group,
                    partition: partition_of_group(g.group),
                    role: g.role.clone(),
                    leader: g.leader.map(node_hex),
                    voters: g.voters.iter().copied().map(node_hex).collect(),
                    term: g.term,
                    commit: g.commit,
                    applied: g.applied,
                })
                .collect(),
            summary: SummaryJson {
                groups: r.groups.len(),
                with_leader,
                under_replicated,
            },
            cluster: None,
        }
    }
}

/// `GET /v1/status`.
pub async fn status(State(gw): State<Arc<Gateway>>) -> Result<Json<StatusJson>, ApiError> {
    let report = gw.report().await?;
    let mut json = StatusJson::new(&report);
    if let Some(node) = gw.node() {
        json.cluster_name = Some(node.cluster_name().to_string());
        // A node that stopped between the two questions has no view: the report stands.
        if let Ok(view) = node.cluster_view().await {
            json.cluster = Some(ClusterJson::new(&view, report.partitions));
        }
    }
    Ok(Json(json))
}
