//! Wire types of the swarmkv protocols: versioned postcard envelopes.
//!
//! Every frame is an enum whose variant is the format version (`V1`, later `V2`, ...), so a
//! future node can still read what an older one sends and reject, with an error, what it does
//! not understand. The contents are opaque to this crate: Raft messages and client payloads
//! are bytes that the node layer encodes.

use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The name of [`RAFT_STREAM_PROTOCOL`] (frame refusals name their protocol).
pub(crate) const RAFT_STREAM_PROTOCOL_NAME: &str = "/swarmkv/raft-stream/1";
/// Raft traffic: one long-lived stream per peer carrying [`RaftFrame`]s, each with batches of
/// `(group id, raft message bytes)` (see `raft_stream.rs`).
pub const RAFT_STREAM_PROTOCOL: StreamProtocol = StreamProtocol::new(RAFT_STREAM_PROTOCOL_NAME);
/// The name of [`KV_STREAM_PROTOCOL`].
pub(crate) const KV_STREAM_PROTOCOL_NAME: &str = "/swarmkv/kv-stream/1";
/// Client requests and their answers, as opaque payloads tagged with an id, on one
/// long-lived stream per peer (see `kv_stream.rs`).
pub const KV_STREAM_PROTOCOL: StreamProtocol = StreamProtocol::new(KV_STREAM_PROTOCOL_NAME);
/// The name of [`SNAPSHOT_PROTOCOL`].
pub(crate) const SNAPSHOT_PROTOCOL_NAME: &str = "/swarmkv/snapshot/1";
/// Snapshot chunks, for snapshots larger than one Raft frame (request-response).
pub const SNAPSHOT_PROTOCOL: StreamProtocol = StreamProtocol::new(SNAPSHOT_PROTOCOL_NAME);
/// The name of [`HELLO_PROTOCOL`].
pub(crate) const HELLO_PROTOCOL_NAME: &str = "/swarmkv/hello/1";
/// The hello exchange that proves both ends belong to the same cluster (request-response).
pub const HELLO_PROTOCOL: StreamProtocol = StreamProtocol::new(HELLO_PROTOCOL_NAME);
/// Identify protocol version string.
pub(crate) const IDENTIFY_VERSION: &str = "/swarmkv/id/1";

/// The gossipsub topic carrying the membership heartbeats of a cluster.
///
/// Named after the cluster so that clusters of different names never even share a topic.
pub fn heartbeat_topic(cluster_name: &str) -> String {
    format!("/swarmkv/{cluster_name}/membership/1")
}

/// The Raft messages for one peer produced by one turn of the node loop: `(group id, bytes)`.
pub type RaftBatch = Vec<(u64, Vec<u8>)>;

/// A piece of a snapshot too large for one frame. The receiver reassembles by
/// `(group, snapshot_id)` in `seq` order; `last` marks the final chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The Raft group the snapshot belongs to.
    pub group: u64,
    /// Identifies one snapshot transfer (for example its Raft index).
    pub snapshot_id: u64,
    /// Position of this chunk, from 0.
    pub seq: u64,
    /// True for the final chunk.
    pub last: bool,
    /// The chunk's bytes.
    pub data: Vec<u8>,
}

/// What a peer says about itself in its membership heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer (authenticated: gossipsub messages are signed by their source).
    pub peer: PeerId,
    /// Where it listens.
    pub listen_addrs: Vec<Multiaddr>,
    /// Its cluster name.
    pub cluster_name: String,
    /// Its cluster id, if its cluster has formed.
    pub cluster_id: Option<u64>,
    /// Its software version.
    pub software_version: String,
    /// Increases with every heartbeat of this run of the peer.
    pub seq: u64,
    /// Opaque data the node layer publishes (load, partitions led, ...).
    pub app: Vec<u8>,
}

/// One frame on a Raft stream.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RaftFrame {
    V1 { batches: Vec<RaftBatch> },
}

/// Answer to a snapshot chunk.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Ack {
    V1(Result<(), String>),
}

/// A request on a kv stream: the requester's id for it and the opaque payload.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum KvStreamRequest {
    V1 { id: u64, payload: Vec<u8> },
}

/// An answer on a kv stream: the application's payload, or the transport's refusal.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum KvStreamAnswer {
    V1 {
        id: u64,
        result: Result<Vec<u8>, String>,
    },
}

/// `/swarmkv/snapshot/1` request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum SnapshotFrame {
    V1(SnapshotChunk),
}

/// Cluster credentials shown by both ends of a connection before anything else is delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub cluster_name: String,
    pub cluster_id: Option<u64>,
    pub software_version: String,
}

/// `/swarmkv/hello/1` request and response.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum HelloFrame {
    V1(Hello),
}

/// The membership heartbeat published on [`heartbeat_topic`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum HeartbeatFrame {
    V1 {
        peer_id: Vec<u8>,
        listen_addrs: Vec<Vec<u8>>,
        cluster_name: String,
        cluster_id: Option<u64>,
        software_version: String,
        seq: u64,
        app: Vec<u8>,
    },
}

impl HeartbeatFrame {
    pub(crate) fn from_info(info: &PeerInfo) -> Self {
        HeartbeatFrame::V1 {
            peer_id: info.peer.to_bytes(),
            listen_addrs: info.listen_addrs.iter().map(|a| a.to_vec()).collect(),
            cluster_name: info.cluster_name.clone(),
            cluster_id: info.cluster_id,
            software_version: info.software_version.clone(),
            seq: info.seq,
            app: info.app.clone(),
        }
    }

    /// Converts to [`PeerInfo`]; addresses that do not parse are dropped, a bad PeerId is an
    /// error.
    pub(crate) fn into_info(self) -> Result<PeerInfo, String> {
        let HeartbeatFrame::V1 {
            peer_id,
            listen_addrs,
            cluster_name,
            cluster_id,
            software_version,
            seq,
            app,
        } = self;
        let peer = PeerId::from_bytes(&peer_id).map_err(|e| format!("bad peer id: {e}"))?;
        Ok(PeerInfo {
            peer,
            listen_addrs: listen_addrs
                .into_iter()
                .filter_map(|a| Multiaddr::try_from(a).ok())
                .collect(),
            cluster_name,
            cluster_id,
            software_version,
            seq,
            app,
        })
    }
}

/// Whether two cluster credentials may talk: same name, and ids equal unless one is unset.
pub(crate) fn same_cluster(
    name: &str,
    id: Option<u64>,
    other_name: &str,
    other_id: Option<u64>,
) -> bool {
    name == other_name
        && match (id, other_id) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
}

/// Encodes a frame.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(value)
}

/// Decodes a frame, rejecting trailing bytes (a frame is exactly one value).
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} trailing bytes after the frame", rest.len())),
        Err(e) => Err(format!("undecodable frame: {e}")),
    }
}

/// An upper bound of the encoded size of a raft batch, computed without encoding it.
pub(crate) fn raft_batch_size_bound(batch: &RaftBatch) -> usize {
    // Per message: group varint (<= 10) + length varint (<= 10) + bytes; per batch: length.
    10 + batch.iter().map(|(_, m)| 20 + m.len()).sum::<usize>()
}

/// Bytes of envelope around the batches of one raft frame (variant tag + vector length).
pub(crate) const RAFT_FRAME_OVERHEAD: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_frame_round_trips_and_fits_its_size_bound() -> anyhow::Result<()> {
        let batch: RaftBatch = vec![(0, vec![1, 2, 3]), (u64::MAX, vec![7; 300])];
        let bound = raft_batch_size_bound(&batch) + RAFT_FRAME_OVERHEAD;
        let bytes = encode(&RaftFrame::V1 {
            batches: vec![batch.clone()],
        })?;
        assert!(bytes.len() <= bound, "{} > {bound}", bytes.len());
        match decode::<RaftFrame>(&bytes) {
            Ok(RaftFrame::V1 { batches }) => assert_eq!(batches, vec![batch]),
            Err(e) => anyhow::bail!(e),
        }
        Ok(())
    }

    #[test]
    fn garbage_and_trailing_bytes_are_rejected() -> anyhow::Result<()> {
        assert!(decode::<RaftFrame>(&[0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode::<RaftFrame>(&[]).is_err());
        let mut bytes = encode(&RaftFrame::V1 { batches: vec![] })?;
        bytes.push(0);
        assert!(decode::<RaftFrame>(&bytes).is_err());
        // A length prefix claiming more elements than bytes present must fail, not allocate.
        assert!(decode::<RaftFrame>(&[0, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        Ok(())
    }

    #[test]
    fn unset_cluster_id_is_compatible_but_different_ids_are_not() {
        assert!(same_cluster("a", None, "a", Some(1)));
        assert!(same_cluster("a", Some(1), "a", Some(1)));
        assert!(!same_cluster("a", Some(1), "a", Some(2)));
        assert!(!same_cluster("a", None, "b", None));
    }
}
