//! `swarmkv start`: runs a node until Ctrl-C or SIGTERM.
//!
//! With no flags at all the node keeps its state in the user's data directory, listens on
//! every interface on the fixed default port, finds its peers by mDNS and forms or joins a
//! cluster on its own (DESIGN.md §3). Flags exist for what a LAN cannot provide: `--join`
//! where multicast is absent, `--expect N` to start N nodes together as voters, a PSK for a
//! private cluster.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use swarmkv::core::META_GROUP;
use swarmkv::{Node, NodeConfig, NodeHandle};
use swarmkv_net::Multiaddr;
use tokio::signal::unix::{signal, SignalKind};

use super::{load_psk, node_hex, say, CliError, DEFAULT_PORT};

/// How long a graceful shutdown may take before the process stops anyway.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(15);

/// How long the HTTP requests in flight at a stop may take to finish: the gateway's own
/// deadline for one request, plus a margin for writing the answer.
const HTTP_DRAIN_LIMIT: Duration =
    Duration::from_secs(swarmkv::http::REQUEST_DEADLINE.as_secs() + 2);

/// Run a node until Ctrl-C or SIGTERM
///
/// It forms or joins a cluster with the peers it finds on the LAN by mDNS (or is given with
/// --join); with no flags at all, every node of a LAN ends up in one cluster.
#[derive(Args, Debug)]
pub struct Start {
    /// Where the node keeps its identity and data [default: $XDG_DATA_HOME/swarmkv or
    /// ~/.local/share/swarmkv]. Restarting with the same directory brings both back.
    #[arg(long, env = "SWARMKV_DATA")]
    pub data: Option<PathBuf>,
    /// Cluster name: nodes of another name are refused.
    #[arg(long, env = "SWARMKV_CLUSTER", default_value = swarmkv_net::DEFAULT_CLUSTER_NAME)]
    pub cluster: String,
    /// Address to listen on (repeatable) [default: /ip4/0.0.0.0/tcp/7379, or a free port if
    /// 7379 is taken].
    #[arg(long, env = "SWARMKV_LISTEN", value_delimiter = ',')]
    pub listen: Vec<Multiaddr>,
    /// Address of a node to dial at start, where mDNS cannot find it (repeatable).
    #[arg(long, env = "SWARMKV_JOIN", value_delimiter = ',')]
    pub join: Vec<Multiaddr>,
    /// Wait for this many nodes (this one included) and start them all as voters.
    #[arg(long, env = "SWARMKV_EXPECT", value_parser = clap::value_parser!(u32).range(1..))]
    pub expect: Option<u32>,
    /// Do not use mDNS (LAN multicast discovery); use --join instead.
    #[arg(long, env = "SWARMKV_NO_MDNS")]
    pub no_mdns: bool,
    /// Pre-shared key file: only nodes and clients with the same key can connect.
    #[arg(long, env = "SWARMKV_PSK_FILE")]
    pub psk_file: Option<PathBuf>,
    /// Partitions of a cluster this node forms (fixed once formed).
    #[arg(long, env = "SWARMKV_PARTITIONS", default_value_t = swarmkv::core::DEFAULT_PARTITIONS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: u32,
    /// Replicas per partition of a cluster this node forms.
    #[arg(long, env = "SWARMKV_REPLICAS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub replicas: u32,
    /// Seconds of silence after which a node is declared dead and its replicas replaced.
    #[arg(long, env = "SWARMKV_DEAD_AFTER", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub dead_after: u64,
    /// Address of the HTTP/JSON gateway (see docs/http-api.md), or `off` [default:
    /// 127.0.0.1:7380, or a free loopback port if 7380 is taken]. Loopback by default: the
    /// API has no authentication. An address given here is used as given or refused.
    #[arg(long, env = "SWARMKV_HTTP", value_parser = parse_http)]
    pub http: Option<HttpListen>,
    /// Bearer token every HTTP request must carry (`Authorization: Bearer TOKEN`), except
    /// `GET /healthz`. Required to serve HTTP on a non-loopback address (or --http-insecure).
    /// Prefer the environment variable: a flag shows in `ps`.
    #[arg(long, env = "SWARMKV_HTTP_TOKEN", hide_env_values = true)]
    pub http_token: Option<String>,
    /// Serve HTTP on a non-loopback address without a token: everyone who can reach the
    /// address can read and write every key. Only for a network you trust entirely.
    #[arg(long, env = "SWARMKV_HTTP_INSECURE")]
    pub http_insecure: bool,
    /// Whether nodes that are not in the cluster's registry may connect (and join). With
    /// `false`, once this node is in a cluster only registered nodes can connect to it;
    /// libp2p light clients (`--peer`) are refused too. Set it on every node.
    #[arg(long, env = "SWARMKV_ALLOW_NEW_NODES", default_value_t = true,
          action = clap::ArgAction::Set, value_name = "BOOL")]
    pub allow_new_nodes: bool,
    /// Client requests this node holds at once (waiting for Raft or forwarded); beyond it
    /// requests are refused as busy (HTTP 429 with Retry-After).
    #[arg(long, env = "SWARMKV_MAX_IN_FLIGHT", default_value_t = swarmkv::NodeLimits::default().max_in_flight as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// MiB of keys and values of the requests held at once; beyond it requests are refused
    /// as busy.
    #[arg(long, env = "SWARMKV_MAX_IN_FLIGHT_MIB", default_value_t = (swarmkv::NodeLimits::default().max_in_flight_bytes >> 20) as u64,
          value_parser = clap::value_parser!(u64).range(1..4096))]
    pub max_in_flight_mib: u64,
    /// libp2p connections at most (nodes, light clients and strangers together).
    #[arg(long, env = "SWARMKV_MAX_CONNECTIONS", default_value_t = swarmkv::NodeLimits::default().max_connections,
          value_parser = clap::value_parser!(u32).range(8..))]
    pub max_connections: u32,
    /// Async worker threads of the node (default: half the CPUs, at least one). A node's
    /// work is one Raft loop and one network loop; each hand-off of a task between workers
    /// wakes a thread, and on a shared or small machine those wake-ups cost more than the
    /// parallelism gives back (three nodes on 2 CPUs: one worker each served about twice
    /// the linearizable reads of two). Raise it on a dedicated many-core machine.
    #[arg(long, env = "SWARMKV_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
}

impl Start {
    /// Worker threads for this node's runtime: `--threads`, else half the CPUs (at least one).
    pub fn worker_threads(&self) -> usize {
        match self.threads {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism()
                .map(|n| (n.get() / 2).max(1))
                .unwrap_or(1),
        }
    }
}

/// Where the HTTP gateway listens: `None` when turned off with `--http off`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpListen(pub Option<SocketAddr>);

fn parse_http(text: &str) -> Result<HttpListen, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(HttpListen(None));
    }
    text.parse::<SocketAddr>()
        .map(|a| HttpListen(Some(a)))
        .map_err(|e| format!("expected IP:PORT or off ({e})"))
}

impl Start {
    pub async fn run(self) -> Result<ExitCode> {
        let config = self.config()?;
        let token = self
            .http_token
            .as_deref()
            .map(swarmkv::http::auth::BearerToken::new)
            .transpose()?;
        // Checked before anything starts: a node that would expose its keys to the LAN by
        // mistake must not come up at all.
        if let Some(HttpListen(Some(addr))) = &self.http {
            swarmkv::http::auth::check_exposure(*addr, token.as_ref(), self.http_insecure)?;
        }
        let data_dir = config.data_dir.clone();
        let node = match Node::start(config).await {
            Ok(node) => node,
            Err(e) if e.is_damage() => return Err(damaged(&data_dir, &e).into()),
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot start the node in {}", data_dir.display())))
            }
        };
        let handle = node.handle();
        let _ = say(format!("swarmkv {}", swarmkv::VERSION));
        let _ = say(format!("peer id   {}", handle.peer_id()));
        let _ = say(format!("node id   {}", node_hex(handle.node_id())));
        let _ = say(format!("data dir  {}", data_dir.display()));
        let _ = say(format!("threads   {}", self.worker_threads()));
        for addr in listen_addrs(&handle).await {
            let _ = say(format!("listening {addr}"));
        }
        // Bound now, so a taken port stops the start with a clear error; served at once
        // (health and status; keys once the node is part of a cluster) until the stop
        // signal below.
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let gateway = match http_listener(self.http.as_ref()).await? {
            Some(listener) => {
                if let Ok(local) = listener.local_addr() {
                    let _ = say(format!("http      http://{local}"));
                }
                let stop = async {
                    let _ = http_stopped.await;
                };
                Some(tokio::spawn(swarmkv::http::serve_node_with_token(
                    listener,
                    handle.clone(),
                    token,
                    stop,
                )))
            }
            None => None,
        };

        let mut term = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
        let outcome = tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot watch for Ctrl-C"),
            _ = term.recv() => Ok(()),
            r = watch(handle) => r,
        };
        log::info!("stopping (a second Ctrl-C or SIGTERM stops at once)");
        // The gateway stops accepting first, and requests in flight finish while the node is
        // still up: each gets its answer (at worst a 503/504 at the gateway's own deadline)
        // instead of a closed connection.
        let _ = stop_http.send(());
        if let Some(gateway) = gateway {
            tokio::select! {
                _ = gateway => {}
                _ = tokio::signal::ctrl_c() => log::warn!("not waiting for HTTP requests in flight"),
                _ = term.recv() => log::warn!("not waiting for HTTP requests in flight"),
                _ = tokio::time::sleep(HTTP_DRAIN_LIMIT) => {
                    log::warn!("HTTP requests still in flight after {} s; stopping anyway", HTTP_DRAIN_LIMIT.as_secs());
                }
            }
        }
        // Graceful: the node hands its leaderships to other replicas first, so clients see no
        // election timeout. Bounded all the same: an impatient operator, or a shutdown that
        // cannot finish, ends in the abrupt stop, which is safe too (every acknowledged write
        // is already durable on a quorum).
        tokio::select! {
            _ = node.shutdown() => {}
            _ = tokio::signal::ctrl_c() => log::warn!("stopping now"),
            _ = term.recv() => log::warn!("stopping now"),
            _ = tokio::time::sleep(SHUTDOWN_LIMIT) => {
                log::warn!("shutdown took longer than {} s; stopping now", SHUTDOWN_LIMIT.as_secs());
            }
        }
        outcome.map(|()| ExitCode::SUCCESS)
    }

    /// The node's configuration from the flags: product defaults for everything not given.
    fn config(&self) -> Result<NodeConfig> {
        let data = match &self.data {
            Some(d) => d.clone(),
            None => default_data_dir()?,
        };
        let mut config = NodeConfig::new(data);
        config.cluster_name = self.cluster.clone();
        config.listen = if self.listen.is_empty() {
            default_listen()?
        } else {
            // An address the user named explicitly is honoured or refused, never swapped.
            for addr in &self.listen {
                if let Some(sock) = fixed_tcp_port(addr) {
                    if let Err(e) = TcpListener::bind(sock) {
                        bail!("cannot listen on {addr}: {e}");
                    }
                }
            }
            self.listen.clone()
        };
        config.join = self.join.clone();
        config.mdns = !self.no_mdns;
        config.psk = load_psk(self.psk_file.as_deref())?;
        config.control.auto_form = true;
        config.control.expect = self.expect.map(|n| n as usize);
        config.control.partitions = self.partitions;
        config.control.replication = self.replicas as usize;
        config.control.dead_after = Duration::from_secs(self.dead_after);
        config.limits.allow_new_nodes = self.allow_new_nodes;
        config.limits.max_in_flight = self.max_in_flight as usize;
        config.limits.max_in_flight_bytes = (self.max_in_flight_mib as usize) << 20;
        config.limits.max_connections = self.max_connections;
        Ok(config)
    }
}

/// The refusal to run on damaged data: where, what, and what to do (exit status 4).
fn damaged(data_dir: &std::path::Path, e: &swarmkv::NodeError) -> CliError {
    CliError::Damaged(format!(
        "the node's data in {} is damaged, so it refuses to start (it could serve stale data \
         or vote against what it acknowledged): {e}. To rebuild it: `swarmkv repair \
         --from-peers --data {} --endpoint http://LIVE-NODE:7380` (or --peer MULTIADDR), \
         which keeps the damaged files aside; see `swarmkv repair --help`",
        data_dir.display(),
        data_dir.display()
    ))
}

/// The gateway's listener: none with `--http off`; the address given, or an error; by
/// default the fixed loopback port, or (a second node on this machine) a free one, as for
/// the peer-to-peer port.
async fn http_listener(flag: Option<&HttpListen>) -> Result<Option<tokio::net::TcpListener>> {
    match flag {
        Some(HttpListen(None)) => Ok(None),
        Some(HttpListen(Some(addr))) => Ok(Some(swarmkv::http::bind(*addr).await?)),
        None => {
            let fixed: SocketAddr = swarmkv::http::DEFAULT_ADDR.parse()?;
            match swarmkv::http::bind(fixed).await {
                Ok(l) => Ok(Some(l)),
                Err(swarmkv::http::HttpError::Bind { source, .. })
                    if source.kind() == std::io::ErrorKind::AddrInUse =>
                {
                    log::warn!("HTTP port {} is not available ({source}); serving HTTP on a free port instead", fixed.port());
                    let any = SocketAddr::new(fixed.ip(), 0);
                    Ok(Some(swarmkv::http::bind(any).await?))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// `$XDG_DATA_HOME/swarmkv`, else `$HOME/.local/share/swarmkv` (the XDG default).
pub(super) fn default_data_dir() -> Result<PathBuf> {
    let non_empty = |var| std::env::var_os(var).filter(|v| !v.is_empty());
    if let Some(xdg) = non_empty("XDG_DATA_HOME") {
        return Ok(PathBuf::from(xdg).join("swarmkv"));
    }
    let home = non_empty("HOME")
        .ok_or_else(|| anyhow!("neither XDG_DATA_HOME nor HOME is set: pass --data DIR"))?;
    Ok(PathBuf::from(home).join(".local/share/swarmkv"))
}

/// Every interface on the fixed default port, so that peers' remembered addresses stay
/// valid across restarts; if another process holds that port (a second node on the same
/// machine, say), any free port, with a warning.
fn default_listen() -> Result<Vec<Multiaddr>> {
    let fixed: Multiaddr = format!("/ip4/0.0.0.0/tcp/{DEFAULT_PORT}").parse()?;
    // The probe matters: libp2p binds its listeners with SO_REUSEPORT, so a second node
    // would share the port with the first (and the kernel would split connections between
    // them) instead of failing. A plain bind without SO_REUSEPORT does fail.
    match TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))) {
        Ok(probe) => {
            drop(probe);
            Ok(vec![fixed])
        }
        Err(e) => {
            log::warn!("port {DEFAULT_PORT} is not available ({e}); listening on a free port instead, which changes at every restart");
            Ok(vec!["/ip4/0.0.0.0/tcp/0".parse()?])
        }
    }
}

/// The socket address of `/ip4|ip6/ADDR/tcp/PORT` with a non-zero port: the addresses whose
/// port can be taken by someone else.
fn fixed_tcp_port(addr: &Multiaddr) -> Option<SocketAddr> {
    let text = addr.to_string();
    let parts: Vec<&str> = text.split('/').collect();
    match parts.as_slice() {
        ["", "ip4" | "ip6", ip, "tcp", port] => {
            let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
            Some(SocketAddr::new(ip.parse().ok()?, port))
        }
        _ => None,
    }
}

/// The concrete addresses the node listens on. The listeners report them asynchronously
/// (interfaces are enumerated for 0.0.0.0), so wait a moment for the first ones.
async fn listen_addrs(handle: &NodeHandle) -> Vec<Multiaddr> {
    for _ in 0..20 {
        match handle.net().listen_addrs().await {
            Ok(addrs) if !addrs.is_empty() => return addrs,
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => {
                log::warn!("cannot list the listen addresses: {e}");
                break;
            }
        }
    }
    Vec::new()
}

/// Prints one line when the node is part of a cluster, then keeps checking that the node
/// loop is alive: it returns only if the node stopped on its own.
async fn watch(handle: NodeHandle) -> Result<()> {
    let me = handle.node_id();
    let mut first = true;
    loop {
        let report = handle
            .report()
            .await
            .context("the node stopped unexpectedly")?;
        if let Some(id) = report.cluster_id {
            // A node that forms a cluster is a voter of the meta group from the start; a node
            // that joins becomes one only after it has caught up as a learner.
            let how = if first {
                "resumed"
            } else if report
                .groups
                .iter()
                .any(|g| g.group == META_GROUP && g.voters.contains(&me))
            {
                "formed"
            } else {
                "joined"
            };
            let _ = say(format!("cluster {} {how}", node_hex(id)));
            break;
        }
        first = false;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        handle
            .report()
            .await
            .context("the node stopped unexpectedly")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fixed_tcp_ports_are_probed() -> Result<()> {
        let fixed: Multiaddr = "/ip4/127.0.0.1/tcp/7379".parse()?;
        assert_eq!(fixed_tcp_port(&fixed), Some(([127, 0, 0, 1], 7379).into()));
        let any: Multiaddr = "/ip4/0.0.0.0/tcp/0".parse()?;
        assert_eq!(fixed_tcp_port(&any), None);
        let dns: Multiaddr = "/dns4/example.com/tcp/7379".parse()?;
        assert_eq!(fixed_tcp_port(&dns), None);
        Ok(())
    }

    #[test]
    fn http_is_an_address_or_off() {
        assert_eq!(
            parse_http("127.0.0.1:7380"),
            Ok(HttpListen(Some(([127, 0, 0, 1], 7380).into())))
        );
        assert_eq!(parse_http("off"), Ok(HttpListen(None)));
        assert!(parse_http("localhost").is_err());
    }
}
