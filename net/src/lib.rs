//! The network layer of swarmkv: libp2p peers that find each other on a LAN, prove they
//! belong to the same cluster, gossip membership heartbeats and exchange opaque Raft, client
//! and snapshot frames. It knows nothing of Raft or storage.
//!
//! Shape (after the rust-libp2p file-sharing example): [`new`] returns a [`NetHandle`] (cheap
//! `Clone`, commands with a oneshot for the answer), a [`NetEvents`] stream and an
//! [`EventLoop`] that the caller spawns; that one task owns the swarm, so nothing is locked.
//!
//! ```no_run
//! # async fn run(dir: &std::path::Path) -> Result<(), swarmkv_net::NetError> {
//! let keypair = swarmkv_net::load_or_create_identity(dir)?;
//! let (handle, mut events, event_loop) = swarmkv_net::new(swarmkv_net::NetConfig::new(keypair))?;
//! tokio::spawn(event_loop.run());
//! while let Some(event) = events.recv().await {
//!     if let swarmkv_net::NetEvent::PeerUp { peer } = event {
//!         handle.send_raft(peer, vec![(0, b"hello".to_vec())]).await?;
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `config.rs`: [`NetConfig`], every knob with LAN defaults.
//! - `identity.rs`: the persistent ed25519 keypair that gives a node its PeerId.
//! - `psk.rs`: pre-shared key files for private networks (pnet).
//! - `protocol.rs`: versioned postcard wire types and protocol names.
//! - `codec.rs`: length-prefixed frames with a size bound.
//! - `behaviour.rs`: the composed libp2p behaviour and the transport (TCP, pnet, noise, yamux).
//! - `gate.rs`: which PeerIds may connect (a closed registry), logged once per peer.
//! - `rate.rs`: per-peer token buckets (gossip message rate).
//! - `membership.rs`: the failure detector (Up / Suspect / Down), sans-IO.
//! - `dialer.rs`: who to redial and when (exponential backoff), sans-IO.
//! - `outbox.rs`: the per-peer ordered Raft send queue (one frame in flight, coalescing).
//! - `stream.rs`: opening, accepting and reading the long-lived streams.
//! - `raft_stream.rs`: Raft frames on one long-lived stream per peer (writer and reader tasks).
//! - `kv_stream.rs`: client requests on one long-lived stream per peer, answers by id.
//! - `stats.rs`: [`NetStats`], counts of the frames the long-lived streams write and of the
//!   writes that carry them.
//! - `handle.rs`: [`NetHandle`], the commands it sends.
//! - `event.rs`: [`NetEvent`], [`NetEvents`], [`KvResponder`].
//! - `event_loop.rs`: [`EventLoop`], the task that owns the swarm and dispatches to the
//!   handlers below, one per protocol.
//! - `shared.rs`: what the handlers share (the swarm, the failure detector, the dialer, the
//!   events for the application).
//! - `admission.rs`: the hello exchange and the gate; what waits for a peer's proof.
//! - `gossip.rs`: the membership heartbeats.
//! - `raft.rs`: Raft batches out (queues, links) and in.
//! - `kv.rs`: client requests out (pending by id) and in.
//! - `snapshot.rs`: snapshot chunks (request-response).
//! - `housekeeping.rs`: dials, redials, discovery, dead connections, the failure detector.
//! - `error.rs`: [`NetError`].
//! - `fuzzing.rs`: the frame decoders and encoders, for the fuzz targets (hidden).

mod admission;
mod behaviour;
mod codec;
mod config;
mod dialer;
mod error;
mod event;
mod event_loop;
#[doc(hidden)]
pub mod fuzzing;
mod gate;
mod gossip;
mod handle;
mod housekeeping;
mod identity;
mod kv;
mod kv_stream;
mod membership;
mod outbox;
mod protocol;
mod psk;
mod raft;
mod raft_stream;
mod rate;
mod shared;
mod snapshot;
mod stats;
mod stream;

pub use config::{NetConfig, DEFAULT_CLUSTER_NAME};
pub use error::NetError;
pub use event::{KvResponder, NetEvent, NetEvents};
pub use event_loop::EventLoop;
pub use gate::NotAllowed;
pub use handle::{NetHandle, RawProtocol};
pub use identity::{load_or_create_identity, IDENTITY_FILE};
pub use libp2p::identity::Keypair;
pub use libp2p::pnet::PreSharedKey;
pub use libp2p::{Multiaddr, PeerId};
pub use membership::Liveness;
pub use protocol::{
    heartbeat_topic, PeerInfo, RaftBatch, SnapshotChunk, HELLO_PROTOCOL, KV_STREAM_PROTOCOL,
    RAFT_STREAM_PROTOCOL, SNAPSHOT_PROTOCOL,
};
pub use psk::{generate_psk_file, load_psk};
pub use stats::{NetStats, StreamStats};

use std::sync::Arc;

use tokio::sync::mpsc;

/// Builds a node's network: the handle, the event stream and the event loop to spawn.
///
/// Must be called inside a tokio runtime (listeners and mDNS sockets are created here, so
/// that a bad listen address fails now rather than in the background). Nothing happens on the
/// network until the returned [`EventLoop`] runs.
pub fn new(config: NetConfig) -> Result<(NetHandle, NetEvents, EventLoop), NetError> {
    config.validate()?;
    let mut swarm = behaviour::build_swarm(&config)?;
    for addr in &config.listen_addrs {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Listen {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
    }
    let (command_tx, command_rx) = mpsc::channel(config.command_buffer);
    let (event_tx, event_rx) = mpsc::channel(config.event_buffer);
    let counters = Arc::new(stats::Counters::default());
    let handle = NetHandle {
        local_peer_id: config.peer_id(),
        max_raft_frame: config.max_raft_frame,
        max_kv_frame: config.max_kv_frame,
        max_snapshot_frame: config.max_snapshot_frame,
        commands: command_tx.clone(),
        counters: Arc::clone(&counters),
    };
    let weak = command_tx.downgrade();
    drop(command_tx);
    let event_loop =
        event_loop::EventLoop::new(swarm, command_rx, weak, event_tx, config, counters);
    Ok((handle, NetEvents { rx: event_rx }, event_loop))
}
