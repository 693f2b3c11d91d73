//! The checks behind swarmkv's fuzz targets, one module per target, so that the targets in
//! `fuzz_targets/` are one line each and the seed corpus generator (`examples/seeds.rs`) and
//! the checks share their types.
//!
//! Every decoder that reads bytes from a peer, a client or the disk is here, and every check
//! asserts more than "no panic": a value that decodes must encode back to something that
//! decodes to the same value, and the structure-aware targets check the answers they get.
//!
//! # Layout
//! - [`raft_batch`]: the frame codec, raft frames and the Raft messages inside them.
//! - [`kv_wire`]: kv request and response frames, client calls and answers, entry commands.
//! - [`heartbeat`]: gossiped membership heartbeats, their app payload, hellos and acks.
//! - [`snapshot_chunk`]: snapshot frames, chunks and descriptors, and a snapshot transfer
//!   with lost, repeated, reordered and damaged chunks.
//! - [`http_bodies`]: the gateway's JSON bodies, query strings, key paths and lease ids.
//! - [`stored_records`]: a real node's store with damaged, missing or extra records, opened
//!   and served.
//! - [`core_requests`]: random request sequences (with restarts) against one node's core,
//!   checked against a model.
//! - [`single_node`]: the one-node harness the last two use.

pub mod core_requests;
pub mod heartbeat;
pub mod http_bodies;
pub mod kv_wire;
pub mod raft_batch;
pub mod single_node;
pub mod snapshot_chunk;
pub mod stored_records;
