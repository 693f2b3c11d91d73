//! swarmkv: a zero-config, peer-to-peer, partitioned and Raft-replicated key-value store.
//!
//! # Layout
//! - [`core`]: the sans-IO multi-Raft engine (no tokio, libp2p or sled): replicas, routing,
//!   placement, proposals, reads, replies.
//! - [`client`]: the Rust client (in-process or remote), with routing and retries.
//! - [`metrics`]: the node's Prometheus metrics.
//! - [`driver`]: the async node loop around the core (the only place that awaits).
//! - [`wire`]: the client protocol payload.
//! - [`backup`]: the backup file, taking a backup through a client, and restoring one as a
//!   new cluster.
//! - [`http`]: the HTTP/JSON gateway (axum) over a [`Client`]: KV, scan, CAS, status, health.
//! - `swarmkv_store` (crate `store/`): everything durable. `swarmkv_net` (crate `net/`): the
//!   libp2p swarm.

pub mod backup;
pub mod client;
pub mod core;
pub mod driver;
pub mod http;
pub mod metrics;
pub mod wire;

pub use client::{
    CampaignError, CasResult, Client, KeepAlive, Leadership, LeadershipLoss, LeaseLost, LockGuard,
    LossReason, Observer, TxnResponse,
};
pub use driver::{
    ControlConfig, DecommissionError, Node, NodeConfig, NodeError, NodeHandle, NodeLimits,
    NodeStatus,
};

/// The software version, announced to peers and printed by `swarmkv --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
