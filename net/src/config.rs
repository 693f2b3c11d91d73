//! Network configuration with defaults that work on a LAN with no flags.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;
use libp2p::Multiaddr;

use crate::NetError;

/// Default cluster name: nodes started with no flags all join the same cluster.
pub const DEFAULT_CLUSTER_NAME: &str = "swarmkv";

/// Everything [`crate::new`] needs to build a node's swarm.
///
/// Built with [`NetConfig::new`] from the node's identity; every other field has a default
/// suitable for a LAN cluster of 2 to 7 nodes and may be changed before calling `new`.
#[derive(Clone)]
pub struct NetConfig {
    /// The node's identity (see [`crate::load_or_create_identity`]).
    pub keypair: Keypair,
    /// Cluster name: peers announcing another name are disconnected.
    pub cluster_name: String,
    /// Cluster id, once the cluster has formed. `None` is compatible with any id, so an
    /// unformed node can find and join a formed cluster; two different ids are foreign.
    /// Change it at run time with [`crate::NetHandle::set_cluster_id`].
    pub cluster_id: Option<u64>,
    /// Addresses to listen on. The product default is every IPv4 interface on a random port;
    /// tests use `/ip4/127.0.0.1/tcp/0`.
    pub listen_addrs: Vec<Multiaddr>,
    /// Addresses dialed at start (and redialed with backoff until reached), for networks where
    /// multicast does not work.
    pub join_addrs: Vec<Multiaddr>,
    /// Discover peers by mDNS on the LAN. mDNS never sees loopback-only listeners.
    pub enable_mdns: bool,
    /// Optional pre-shared key (pnet): without it a stranger cannot finish a handshake.
    pub psk: Option<PreSharedKey>,
    /// Software version published in the heartbeat and the hello exchange.
    pub software_version: String,
    /// How often the membership heartbeat is published.
    pub heartbeat_interval: Duration,
    /// Silence after which an Up peer is reported as suspect.
    pub suspect_timeout: Duration,
    /// Silence after which a peer is reported down.
    pub down_timeout: Duration,
    /// Ping interval on every connection; a failed ping closes the connection so that the
    /// reconnect logic takes over.
    pub ping_interval: Duration,
    /// How long a ping may take before it counts as failed.
    pub ping_timeout: Duration,
    /// Largest Raft frame accepted or sent on a `/swarmkv/raft-stream/1` stream (default 16 MiB).
    pub max_raft_frame: usize,
    /// Largest client request or answer accepted or sent on a `/swarmkv/kv-stream/1` stream
    /// (default 1 MiB).
    pub max_kv_frame: usize,
    /// Largest `/swarmkv/snapshot/1` frame accepted or sent (default 4 MiB plus overhead).
    pub max_snapshot_frame: usize,
    /// Largest membership heartbeat (gossipsub message) accepted (default 64 KiB).
    pub max_heartbeat_size: usize,
    /// Raft bytes that may wait for one peer before new batches are dropped (Raft resends).
    pub raft_queue_limit: usize,
    /// How long a request may take: a Raft frame's write, a kv request's answer (and its
    /// stream's opening), a snapshot chunk's ack, a request parked for a peer's hello.
    pub request_timeout: Duration,
    /// First delay before redialing a lost cluster peer; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Largest delay between redials.
    pub reconnect_max: Duration,
    /// Time allowed for a new connection's transport handshake (pnet, noise, yamux). A peer
    /// with the wrong pre-shared key produces garbage that may never complete a handshake, so
    /// this bound is what makes its dial fail.
    pub handshake_timeout: Duration,
    /// A connection whose peer has not proven it belongs to our cluster within this time is
    /// closed (strangers do not get to hold connections open).
    pub hello_timeout: Duration,
    /// Idle timeout of connections. Cluster connections must stay open even when no request is
    /// in flight (request-response and ping do not keep them alive), so it is long.
    pub idle_connection_timeout: Duration,
    /// Capacity of the event channel. The event loop waits when it is full, which slows peers
    /// down instead of growing memory: the application must keep draining events.
    pub event_buffer: usize,
    /// Capacity of the command channel between handles and the event loop.
    pub command_buffer: usize,
    /// Established connections at most, all peers together (nodes, light clients, peers
    /// still proving their cluster). Beyond it new connections are refused.
    pub max_connections: u32,
    /// Established connections at most per PeerId (a node needs one; two may briefly exist
    /// when both sides dial at once).
    pub max_connections_per_peer: u32,
    /// Incoming connections at most still in their handshake (pnet, noise, yamux): a flood of
    /// half-open connections is refused before it costs a handshake each.
    pub max_pending_incoming: u32,
    /// Gossip (membership heartbeat) messages accepted per second from one relaying peer,
    /// with bursts of twice that; the excess is dropped before it is decoded. A node relays
    /// about one heartbeat per second per cluster member.
    pub gossip_rate_per_peer: u32,
    /// Bytes of requests held, all not-yet-verified peers together, while they prove their
    /// cluster (each peer is also held to 16 MiB): strangers with many identities cannot make
    /// a node buffer more than this.
    pub max_held_bytes: usize,
    /// A light client (see [`NetConfig::light_client`]): it neither joins the membership
    /// gossip nor publishes heartbeats, so the nodes do not count it as a member and a
    /// hundred clients cost them no gossip.
    pub light_client: bool,
}

impl NetConfig {
    /// A configuration with the product defaults for the given identity.
    pub fn new(keypair: Keypair) -> Self {
        Self {
            keypair,
            cluster_name: DEFAULT_CLUSTER_NAME.to_string(),
            cluster_id: None,
            listen_addrs: vec![Multiaddr::from(std::net::Ipv4Addr::UNSPECIFIED)
                .with(libp2p::multiaddr::Protocol::Tcp(0))],
            join_addrs: Vec::new(),
            enable_mdns: true,
            psk: None,
            software_version: env!("CARGO_PKG_VERSION").to_string(),
            heartbeat_interval: Duration::from_secs(1),
            suspect_timeout: Duration::from_secs(3),
            down_timeout: Duration::from_secs(8),
            ping_interval: Duration::from_secs(2),
            ping_timeout: Duration::from_secs(5),
            max_raft_frame: 16 << 20,
            max_kv_frame: 1 << 20,
            max_snapshot_frame: (4 << 20) + 4096,
            max_heartbeat_size: 64 << 10,
            raft_queue_limit: 64 << 20,
            request_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
            idle_connection_timeout: Duration::from_secs(24 * 3600),
            event_buffer: 4096,
            command_buffer: 1024,
            max_connections: 512,
            max_connections_per_peer: 4,
            max_pending_incoming: 64,
            gossip_rate_per_peer: 100,
            max_held_bytes: 64 << 20,
            light_client: false,
        }
    }

    /// A configuration for in-process tests: loopback only, no mDNS, short timers.
    ///
    /// mDNS must never run in tests (it would multicast on the machine's real interfaces).
    pub fn loopback(keypair: Keypair) -> Self {
        let mut config = Self::new(keypair);
        config.listen_addrs = vec![Multiaddr::from(std::net::Ipv4Addr::LOCALHOST)
            .with(libp2p::multiaddr::Protocol::Tcp(0))];
        config.enable_mdns = false;
        config.heartbeat_interval = Duration::from_millis(200);
        config.suspect_timeout = Duration::from_millis(800);
        config.down_timeout = Duration::from_millis(1500);
        config.ping_interval = Duration::from_millis(500);
        config.ping_timeout = Duration::from_secs(2);
        config.reconnect_min = Duration::from_millis(100);
        config.reconnect_max = Duration::from_secs(2);
        config.handshake_timeout = Duration::from_secs(3);
        config
    }

    /// A light client's network: it dials nodes (loopback or not) and listens on nothing, does
    /// not subscribe to the membership gossip and publishes no heartbeats; it only proves its
    /// cluster with the hello exchange and sends requests. Without this, each client was a
    /// gossip member heartbeating 5 times a second, which the nodes verified, relayed and
    /// recorded: 64 bench clients starved a 3-node cluster on 2 cores.
    pub fn light_client(keypair: Keypair) -> Self {
        let mut config = Self::loopback(keypair);
        config.listen_addrs = Vec::new();
        config.light_client = true;
        // Its liveness is the node's business only through the connection: a ping every few
        // seconds keeps a dead TCP connection from lingering.
        config.ping_interval = Duration::from_secs(2);
        config.ping_timeout = Duration::from_secs(5);
        config
    }

    /// The PeerId this configuration gives the node.
    pub fn peer_id(&self) -> libp2p::PeerId {
        self.keypair.public().to_peer_id()
    }

    /// Checks the values that would otherwise fail deep inside the swarm.
    pub fn validate(&self) -> Result<(), NetError> {
        let bad = |m: &str| Err(NetError::Config(m.to_string()));
        if self.cluster_name.is_empty() || self.cluster_name.len() > 64 {
            return bad("cluster_name must be 1 to 64 bytes");
        }
        if self.heartbeat_interval.is_zero() {
            return bad("heartbeat_interval must be positive");
        }
        if self.suspect_timeout <= self.heartbeat_interval {
            return bad("suspect_timeout must exceed heartbeat_interval");
        }
        if self.down_timeout < self.suspect_timeout {
            return bad("down_timeout must be at least suspect_timeout");
        }
        if self.ping_interval.is_zero() || self.ping_timeout.is_zero() {
            return bad("ping_interval and ping_timeout must be positive");
        }
        let limit = u32::MAX as usize;
        for (name, v) in [
            ("max_raft_frame", self.max_raft_frame),
            ("max_kv_frame", self.max_kv_frame),
            ("max_snapshot_frame", self.max_snapshot_frame),
        ] {
            if v < 64 || v > limit {
                return Err(NetError::Config(format!(
                    "{name} must be between 64 bytes and 4 GiB"
                )));
            }
        }
        if self.max_heartbeat_size < 1024 {
            return bad("max_heartbeat_size must be at least 1 KiB");
        }
        if self.reconnect_min.is_zero() || self.reconnect_max < self.reconnect_min {
            return bad("reconnect_min must be positive and at most reconnect_max");
        }
        if self.max_connections == 0
            || self.max_connections_per_peer == 0
            || self.max_pending_incoming == 0
            || self.gossip_rate_per_peer == 0
        {
            return bad("connection limits and gossip_rate_per_peer must be positive");
        }
        if self.event_buffer == 0 || self.command_buffer == 0 {
            return bad("event_buffer and command_buffer must be positive");
        }
        if self.request_timeout.is_zero()
            || self.hello_timeout.is_zero()
            || self.handshake_timeout.is_zero()
        {
            return bad("request_timeout, hello_timeout and handshake_timeout must be positive");
        }
        Ok(())
    }
}

impl std::fmt::Debug for NetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keypair and the PSK are secrets: show only what identifies them.
        f.debug_struct("NetConfig")
            .field("peer_id", &self.peer_id())
            .field("cluster_name", &self.cluster_name)
            .field("cluster_id", &self.cluster_id)
            .field("listen_addrs", &self.listen_addrs)
            .field("join_addrs", &self.join_addrs)
            .field("enable_mdns", &self.enable_mdns)
            .field(
                "psk",
                &self.psk.as_ref().map(|k| k.fingerprint().to_string()),
            )
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("suspect_timeout", &self.suspect_timeout)
            .field("down_timeout", &self.down_timeout)
            .field("max_raft_frame", &self.max_raft_frame)
            .field("max_kv_frame", &self.max_kv_frame)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_and_loopback_defaults_are_valid_and_tests_never_use_mdns() -> anyhow::Result<()> {
        let product = NetConfig::new(Keypair::generate_ed25519());
        product.validate()?;
        assert!(product.enable_mdns);
        let loopback = NetConfig::loopback(Keypair::generate_ed25519());
        loopback.validate()?;
        assert!(!loopback.enable_mdns);
        assert!(loopback
            .listen_addrs
            .iter()
            .all(|a| a.to_string().starts_with("/ip4/127.0.0.1/")));
        Ok(())
    }

    #[test]
    fn a_light_client_listens_on_nothing_and_never_uses_mdns() -> anyhow::Result<()> {
        let client = NetConfig::light_client(Keypair::generate_ed25519());
        client.validate()?;
        assert!(client.light_client);
        assert!(client.listen_addrs.is_empty());
        assert!(!client.enable_mdns);
        assert!(!NetConfig::loopback(Keypair::generate_ed25519()).light_client);
        Ok(())
    }

    #[test]
    fn inconsistent_timers_are_refused() {
        let mut config = NetConfig::loopback(Keypair::generate_ed25519());
        config.down_timeout = config.suspect_timeout / 2;
        assert!(matches!(config.validate(), Err(NetError::Config(_))));
        let mut config = NetConfig::loopback(Keypair::generate_ed25519());
        config.max_raft_frame = 10;
        assert!(matches!(config.validate(), Err(NetError::Config(_))));
    }

    #[test]
    fn debug_output_hides_the_keys() {
        let mut config = NetConfig::new(Keypair::generate_ed25519());
        config.psk = Some(PreSharedKey::new([7; 32]));
        let shown = format!("{config:?}");
        assert!(shown.contains("peer_id"));
        assert!(!shown.contains("0707070707"), "{shown}");
    }
}
