//! swarmkv: a zero-config, peer-to-peer, partitioned and Raft-replicated key-value store.
//!
//! # Layout
//! - [`core`]: the sans-IO multi-Raft engine (no tokio, libp2p or sled): replicas, routing,
//!   placement, proposals, reads, replies.
//! - `swarmkv_store` (crate `store/`): everything durable. `swarmkv_net` (crate `net/`): the
//!   libp2p swarm.

pub mod core;

/// The software version, announced to peers and printed by `swarmkv --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
