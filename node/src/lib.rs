//! swarmkv: a zero-config, peer-to-peer, partitioned and Raft-replicated key-value store.
//!
//! # Layout
//! - `swarmkv_store` (crate `store/`): everything durable.
//! - `swarmkv_net` (crate `net/`): the libp2p swarm.
//! - this crate: the node (multi-Raft engine, placement, client API, CLI); it grows with the
//!   issues that follow the foundation.

/// The software version, announced to peers and printed by `swarmkv --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
