//! Typed errors of the network layer.

use std::path::PathBuf;

use libp2p::PeerId;

/// Everything the network layer can fail at, phrased so the caller knows what to do next.
///
/// Errors about files name the file; errors about peers name the peer. Nothing here is ever
/// produced by a panic: a misbehaving peer shows up as an error value or an event.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The identity key file could not be read or written (permissions, full disk, ...).
    #[error("cannot access identity key file {path}: {source}")]
    IdentityIo {
        /// The key file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The identity key file exists but does not hold an ed25519 keypair.
    #[error(
        "identity key file {path} is corrupt ({reason}); restore it from a backup, or rebuild \
         the node from its peers with `swarmkv repair --from-peers --node-id ID` (do not just \
         move the file away: the store beside it holds Raft state of the old identity)"
    )]
    IdentityCorrupt {
        /// The key file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// The pre-shared key file could not be read or written.
    #[error("cannot access pre-shared key file {path}: {source}")]
    PskIo {
        /// The key file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// `swarmkv keygen` would replace an existing key file (pass `--force` to do so).
    #[error(
        "pre-shared key file {path} already exists; refusing to replace it (every node of the \
         cluster uses it; pass --force to overwrite)"
    )]
    PskExists {
        /// The key file.
        path: PathBuf,
    },
    /// The pre-shared key file is not in the `/key/swarm/psk/1.0.0/` format.
    #[error("pre-shared key file {path} is not a /key/swarm/psk/1.0.0/ base16 key: {reason}")]
    PskInvalid {
        /// The key file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A configuration value is out of range; the message names the field.
    #[error("invalid network configuration: {0}")]
    Config(String),
    /// The libp2p transport or a behaviour could not be built.
    #[error("cannot build the libp2p swarm: {0}")]
    Setup(String),
    /// The swarm could not listen on an address (in use, not local, unsupported).
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A dial failed (nobody listening, wrong PeerId, handshake refused, wrong PSK, ...).
    #[error("cannot dial {target}: {reason}")]
    Dial {
        /// The address or peer that was dialed.
        target: String,
        /// Why.
        reason: String,
    },
    /// The event loop has stopped (dropped or shut down); the handle is now useless.
    #[error("the network event loop has stopped")]
    Shutdown,
    /// A message is larger than the frame limit for its protocol; split it (snapshots) or raise
    /// the limit on every node.
    #[error("{protocol} frame of {size} bytes exceeds the {limit}-byte limit")]
    FrameTooLarge {
        /// The protocol name.
        protocol: &'static str,
        /// Size of the frame (or an upper bound of it).
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The peer is neither connected nor reachable through a known address.
    #[error("peer {0} is not connected and no address is known for it")]
    NotConnected(PeerId),
    /// The peer belongs to another cluster (name or id); nothing is exchanged with it.
    #[error("peer {0} belongs to another cluster")]
    ForeignPeer(PeerId),
    /// The request never left this node (the peer could not be reached or does not speak the
    /// protocol): the peer certainly did not process it, so it is safe to retry elsewhere.
    #[error("request to {peer} not sent: {reason}")]
    Unreachable {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The request was sent but did not complete (timeout, connection closed, stream reset).
    /// Whether the peer processed it is unknown.
    #[error("request to {peer} failed: {reason}")]
    RequestFailed {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The peer received the frame and refused it (undecodable, not verified yet, ...).
    #[error("peer {peer} rejected the frame: {reason}")]
    Rejected {
        /// The peer.
        peer: PeerId,
        /// The peer's reason.
        reason: String,
    },
    /// The per-peer Raft send queue is full: the peer is slower than we produce. Raft retries.
    #[error("raft send queue for {peer} is full ({limit} bytes queued)")]
    QueueFull {
        /// The peer.
        peer: PeerId,
        /// The configured limit.
        limit: usize,
    },
    /// A value could not be encoded (should not happen for well-formed values).
    #[error("cannot encode frame: {0}")]
    Encode(#[from] postcard::Error),
}
