//! The composed libp2p behaviour and the swarm (transport) construction.

use std::time::Duration;

use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, Transport};
use libp2p::core::upgrade::Version;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{identify, mdns, noise, ping, pnet, tcp, yamux, PeerId, Swarm};

use crate::codec::FrameCodec;
use crate::gate::Gate;
use crate::protocol::{heartbeat_topic, HELLO_PROTOCOL, IDENTIFY_VERSION, SNAPSHOT_PROTOCOL};
use crate::{NetConfig, NetError};

/// Hello frames are tiny; anything bigger is not a hello.
pub(crate) const MAX_HELLO_FRAME: usize = 4096;
/// Snapshot acks are tiny, but carry a refusal reason.
pub(crate) const MAX_ACK_FRAME: usize = 4096;

/// All protocols a swarmkv node speaks, driven by one swarm.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Connection counts (total, per peer, pending handshakes): a flood of connections is
    /// refused instead of growing memory and file descriptors.
    pub limits: connection_limits::Behaviour,
    /// Which PeerIds may connect at all (see `gate.rs`).
    pub gate: Gate,
    /// Long-lived streams: the Raft traffic and the client requests between peers (see
    /// `raft_stream.rs` and `kv_stream.rs`).
    pub streams: libp2p_stream::Behaviour,
    pub snapshot: request_response::Behaviour<FrameCodec>,
    pub hello: request_response::Behaviour<FrameCodec>,
    pub gossipsub: gossipsub::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
}

/// Concurrent streams per connection for snapshot chunks: a node sends them one after
/// another, so a few are plenty, and each may be a large frame a peer could make us read.
const SNAPSHOT_STREAMS: usize = 8;
/// Hello is one exchange per connection.
const HELLO_STREAMS: usize = 4;

fn rr(
    protocol: libp2p::StreamProtocol,
    codec: FrameCodec,
    streams: usize,
    config: &NetConfig,
) -> request_response::Behaviour<FrameCodec> {
    request_response::Behaviour::with_codec(
        codec,
        [(protocol, ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(config.request_timeout)
            .with_max_concurrent_streams(streams),
    )
}

impl Behaviour {
    fn new(config: &NetConfig) -> Result<Self, NetError> {
        let keypair = &config.keypair;
        let peer_id = keypair.public().to_peer_id();
        let gossip_config = gossipsub::ConfigBuilder::default()
            // Tuned for 2 to 7 nodes: the defaults (mesh 6, low 5, high 12, outbound 2) expect
            // a larger network and would keep trying to graft peers that do not exist.
            .mesh_n(3)
            .mesh_n_low(1)
            .mesh_n_high(6)
            .mesh_outbound_min(1)
            .gossip_lazy(3)
            .flood_publish(true)
            .heartbeat_interval(config.heartbeat_interval.min(Duration::from_secs(1)))
            .max_transmit_size(config.max_heartbeat_size)
            .validation_mode(ValidationMode::Strict)
            // The membership handler accepts a heartbeat (and so lets gossipsub forward it)
            // only from members of our cluster.
            .validate_messages()
            .build()
            .map_err(|e| NetError::Setup(format!("gossipsub config: {e}")))?;
        let mut gossipsub =
            gossipsub::Behaviour::new(MessageAuthenticity::Signed(keypair.clone()), gossip_config)
                .map_err(|e| NetError::Setup(format!("gossipsub: {e}")))?;
        // A light client stays out of the membership gossip: gossipsub sends nothing to a
        // peer that is not subscribed, and the nodes never mesh with it.
        if !config.light_client {
            gossipsub
                .subscribe(&IdentTopic::new(heartbeat_topic(&config.cluster_name)))
                .map_err(|e| NetError::Setup(format!("gossipsub subscribe: {e}")))?;
        }
        let mdns = if config.enable_mdns {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                    .map_err(|e| NetError::Setup(format!("mdns: {e}")))?,
            )
        } else {
            None
        };
        let limits = ConnectionLimits::default()
            .with_max_established(Some(config.max_connections))
            .with_max_established_per_peer(Some(config.max_connections_per_peer))
            .with_max_pending_incoming(Some(config.max_pending_incoming));
        Ok(Self {
            limits: connection_limits::Behaviour::new(limits),
            gate: Gate::default(),
            streams: libp2p_stream::Behaviour::new(),
            snapshot: rr(
                SNAPSHOT_PROTOCOL,
                FrameCodec::new(config.max_snapshot_frame, MAX_ACK_FRAME),
                SNAPSHOT_STREAMS,
                config,
            ),
            hello: rr(
                HELLO_PROTOCOL,
                FrameCodec::new(MAX_HELLO_FRAME, MAX_HELLO_FRAME),
                HELLO_STREAMS,
                config,
            ),
            gossipsub,
            mdns: Toggle::from(mdns),
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_VERSION.to_string(), keypair.public())
                    .with_agent_version(format!("swarmkv/{}", config.software_version)),
            ),
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(config.ping_interval)
                    .with_timeout(config.ping_timeout),
            ),
        })
    }
}

/// TCP, then pnet if a key is configured, then noise and yamux.
fn transport(config: &NetConfig) -> Result<Boxed<(PeerId, StreamMuxerBox)>, NetError> {
    let noise =
        noise::Config::new(&config.keypair).map_err(|e| NetError::Setup(format!("noise: {e}")))?;
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let mut yamux_config = yamux::Config::default();
    yamux_config.set_max_num_streams(512);
    Ok(match config.psk {
        Some(psk) => tcp
            .and_then(move |socket, _| pnet::PnetConfig::new(psk).handshake(socket))
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux_config)
            .timeout(config.handshake_timeout)
            .boxed(),
        None => tcp
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux_config)
            .timeout(config.handshake_timeout)
            .boxed(),
    })
}

/// Builds the swarm: the transport, every behaviour, and a long idle timeout (cluster
/// connections must survive quiet periods; strangers are closed by the hello timeout).
pub(crate) fn build_swarm(config: &NetConfig) -> Result<Swarm<Behaviour>, NetError> {
    let transport = transport(config)?;
    let behaviour = Behaviour::new(config)?;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_other_transport(|_| transport)
        .map_err(|e| NetError::Setup(format!("transport: {e:?}")))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| NetError::Setup(format!("behaviour: {e:?}")))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(config.idle_connection_timeout)
                // Every request-response exchange is a new stream offering exactly one protocol:
                // with the lazy negotiation the request travels with the protocol proposal
                // instead of a round trip later (one round trip less per hello and chunk).
                .with_substream_upgrade_protocol_override(Version::V1Lazy)
        })
        .build();
    Ok(swarm)
}
