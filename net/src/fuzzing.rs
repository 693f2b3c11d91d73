//! The decoders this crate runs on a peer's bytes, callable from the fuzz targets in `fuzz/`.
//!
//! The wire types stay private to the crate (nothing outside should build or match them), so
//! the fuzz targets reach them through these functions: each `decode_*` runs exactly the
//! decoder a handler runs on a received frame, and the matching `encode_*` is the encoder it
//! sends with, so a target can check `decode(encode(x)) == x` as well as "no
//! panic on any input". The seed corpus generator uses the encoders to write real frames.
//! Hidden from the docs: this is not part of the API a node is written against.

use std::io;

use libp2p::identity::Keypair;

use crate::codec::{
    read_frame as codec_read_frame, write_frame, write_parts, FrameCodec, OversizedFrame,
};
use crate::protocol::{
    decode, encode, Ack, HeartbeatFrame, Hello, HelloFrame, KvStreamAnswer, KvStreamRequest,
    RaftFrame, SnapshotFrame,
};
use crate::{NetError, PeerInfo, RaftBatch, SnapshotChunk, SNAPSHOT_PROTOCOL};

/// A Raft frame (one frame on a `/swarmkv/raft-stream/1` stream): batches of
/// `(group, raft message bytes)`.
pub fn encode_raft_frame(batches: Vec<RaftBatch>) -> Result<Vec<u8>, String> {
    encode(&RaftFrame::V1 { batches }).map_err(|e| e.to_string())
}

/// Decodes a Raft frame as the Raft handler does.
pub fn decode_raft_frame(bytes: &[u8]) -> Result<Vec<RaftBatch>, String> {
    decode::<RaftFrame>(bytes).map(|RaftFrame::V1 { batches }| batches)
}

/// The answer to a snapshot chunk.
pub fn encode_ack(ack: Result<(), String>) -> Result<Vec<u8>, String> {
    encode(&Ack::V1(ack)).map_err(|e| e.to_string())
}

/// Decodes an ack as the snapshot handler does (the outer error: undecodable).
pub fn decode_ack(bytes: &[u8]) -> Result<Result<(), String>, String> {
    decode::<Ack>(bytes).map(|Ack::V1(ack)| ack)
}

/// A request on a `/swarmkv/kv-stream/1` stream: its id and opaque payload.
pub fn encode_kv_stream_request(id: u64, payload: Vec<u8>) -> Result<Vec<u8>, String> {
    crate::kv_stream::encode_request(id, payload).map_err(|e| e.to_string())
}

/// Decodes a request on a `/swarmkv/kv-stream/1` stream as the stream's server does.
pub fn decode_kv_stream_request(bytes: &[u8]) -> Result<(u64, Vec<u8>), String> {
    decode::<KvStreamRequest>(bytes).map(|KvStreamRequest::V1 { id, payload }| (id, payload))
}

/// An answer on a `/swarmkv/kv-stream/1` stream: the payload, or the transport's refusal.
pub fn encode_kv_stream_answer(
    id: u64,
    result: Result<Vec<u8>, String>,
) -> Result<Vec<u8>, String> {
    crate::kv_stream::encode_answer(id, result).map_err(|e| e.to_string())
}

/// Decodes an answer on a `/swarmkv/kv-stream/1` stream as the requester does: its request
/// id and result.
pub fn decode_kv_stream_answer(bytes: &[u8]) -> Result<(u64, Result<Vec<u8>, String>), String> {
    decode::<KvStreamAnswer>(bytes).map(|KvStreamAnswer::V1 { id, result }| (id, result))
}

/// A `/swarmkv/snapshot/1` request.
pub fn encode_snapshot_frame(chunk: SnapshotChunk) -> Result<Vec<u8>, String> {
    encode(&SnapshotFrame::V1(chunk)).map_err(|e| e.to_string())
}

/// Decodes a `/swarmkv/snapshot/1` request as the snapshot handler does.
pub fn decode_snapshot_frame(bytes: &[u8]) -> Result<SnapshotChunk, String> {
    decode::<SnapshotFrame>(bytes).map(|SnapshotFrame::V1(chunk)| chunk)
}

/// The credentials of a hello: (cluster name, cluster id, software version).
pub type HelloParts = (String, Option<u64>, String);

/// A `/swarmkv/hello/1` request or response.
pub fn encode_hello(
    (cluster_name, cluster_id, software_version): HelloParts,
) -> Result<Vec<u8>, String> {
    encode(&HelloFrame::V1(Hello {
        cluster_name,
        cluster_id,
        software_version,
    }))
    .map_err(|e| e.to_string())
}

/// Decodes a hello as the hello handler does.
pub fn decode_hello(bytes: &[u8]) -> Result<HelloParts, String> {
    decode::<HelloFrame>(bytes)
        .map(|HelloFrame::V1(h)| (h.cluster_name, h.cluster_id, h.software_version))
}

/// A membership heartbeat as published on the gossip topic.
pub fn encode_heartbeat(info: &PeerInfo) -> Result<Vec<u8>, String> {
    encode(&HeartbeatFrame::from_info(info)).map_err(|e| e.to_string())
}

/// Decodes a gossiped heartbeat into what the membership handler reports (bad addresses
/// dropped, a bad PeerId refused).
pub fn decode_heartbeat(bytes: &[u8]) -> Result<PeerInfo, String> {
    decode::<HeartbeatFrame>(bytes).and_then(HeartbeatFrame::into_info)
}

/// Reads one frame from `bytes` as the Raft and kv stream readers do: its bytes, or the
/// `(size, limit)` of an oversized frame whose body was not read.
pub fn read_stream_frame(
    bytes: &[u8],
    limit: usize,
) -> io::Result<Result<Vec<u8>, (usize, usize)>> {
    let read = futures::executor::block_on(codec_read_frame(
        &mut futures::io::Cursor::new(bytes),
        limit,
    ));
    match read {
        Ok(frame) => Ok(Ok(frame)),
        Err(e) => match e.get_ref().and_then(|r| r.downcast_ref::<OversizedFrame>()) {
            Some(o) => Ok(Err((o.size, o.limit))),
            None => Err(e),
        },
    }
}

/// Reads one inbound request as the request-response codec (snapshots, hello) does: its
/// bytes, or the `(size, limit)` of an oversized frame whose body was not read.
pub fn read_request(bytes: &[u8], limit: usize) -> io::Result<Result<Vec<u8>, (usize, usize)>> {
    use libp2p::request_response::Codec as _;
    futures::executor::block_on(async {
        let mut codec = FrameCodec::new(limit, limit);
        let frame = codec
            .read_request(&SNAPSHOT_PROTOCOL, &mut futures::io::Cursor::new(bytes))
            .await?;
        Ok(frame.into_bytes().map_err(|o| (o.size, o.limit)))
    })
}

/// Writes `frame` as the codec does (length prefix, then the bytes).
pub fn frame_bytes(frame: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    futures::executor::block_on(write_frame(&mut futures::io::Cursor::new(&mut out), frame))?;
    Ok(out)
}

/// Writes one frame given as parts, as the Raft link does (gathered small parts).
pub fn frame_parts_bytes(parts: &[Vec<u8>]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    futures::executor::block_on(write_parts(&mut futures::io::Cursor::new(&mut out), parts))?;
    Ok(out)
}

/// Decodes a node key file's bytes as [`crate::load_or_create_identity`] does.
pub fn decode_identity(bytes: &[u8]) -> Result<Keypair, NetError> {
    crate::identity::decode(std::path::Path::new(crate::IDENTITY_FILE), bytes)
}
