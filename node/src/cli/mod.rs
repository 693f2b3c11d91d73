//! The commands of the `swarmkv` binary, one file each.
//!
//! # Layout
//! - [`start`]: run a node (zero-config formation, until Ctrl-C or SIGTERM).
//! - [`status`]: a node's report on itself and its groups, readable or as JSON.
//! - [`put`], [`get`], [`delete`], [`scan`]: the key-value verbs.
//! - [`decommission`]: drain a node out of the cluster.
//!
//! Every verb but `start` is a light client: it dials one node (`--peer`, default the local
//! node on the default port) with a throwaway identity, and that node forwards requests to
//! partition leaders. Settings can also come from `SWARMKV_*` environment variables, so a
//! shell or a service unit can set them once.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use swarmkv::Client;
use swarmkv_net::{Multiaddr, PreSharedKey};

mod decommission;
mod delete;
mod get;
mod put;
mod scan;
mod start;
mod status;

/// The port a node listens on unless told otherwise. Fixed, so that the addresses peers
/// remember (and `--peer` defaults) stay valid across restarts.
pub const DEFAULT_PORT: u16 = 7379;

/// Where a client verb looks for a node: this machine's, on the default port.
const DEFAULT_PEER: &str = "/ip4/127.0.0.1/tcp/7379";

/// How long a client verb may take in all, connection included: a node that is down or
/// unreachable must give an error, not a hung shell.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// swarmkv: a zero-config, peer-to-peer, Raft-replicated key-value store.
#[derive(Parser, Debug)]
#[command(name = "swarmkv", version = swarmkv::VERSION, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Subcommand, Debug)]
pub enum Command {
    Start(start::Start),
    Status(status::Status),
    Put(put::Put),
    Get(get::Get),
    Delete(delete::Delete),
    Scan(scan::Scan),
    Decommission(decommission::Decommission),
}

impl Command {
    /// Whether this command runs a node (which logs more than a client verb).
    pub fn is_node(&self) -> bool {
        matches!(self, Command::Start(_))
    }

    /// Runs the command; the exit code says whether it did what was asked.
    pub async fn run(self) -> Result<ExitCode> {
        match self {
            Command::Start(c) => c.run().await,
            Command::Status(c) => with_timeout(c.run()).await,
            Command::Put(c) => with_timeout(c.run()).await,
            Command::Get(c) => with_timeout(c.run()).await,
            Command::Delete(c) => with_timeout(c.run()).await,
            Command::Scan(c) => with_timeout(c.run()).await,
            Command::Decommission(c) => with_timeout(c.run()).await,
        }
    }
}

async fn with_timeout(
    verb: impl std::future::Future<Output = Result<ExitCode>>,
) -> Result<ExitCode> {
    tokio::time::timeout(CLIENT_TIMEOUT, verb)
        .await
        .with_context(|| format!("no answer within {} s", CLIENT_TIMEOUT.as_secs()))?
}

/// How a client verb reaches the cluster.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Address of any node of the cluster.
    #[arg(long, env = "SWARMKV_PEER", default_value = DEFAULT_PEER)]
    pub peer: Multiaddr,
    /// Cluster name: a node of another name refuses the connection.
    #[arg(long, env = "SWARMKV_CLUSTER", default_value = swarmkv_net::DEFAULT_CLUSTER_NAME)]
    pub cluster: String,
    /// Pre-shared key file of a private cluster (the one its nodes were started with).
    #[arg(long, env = "SWARMKV_PSK_FILE")]
    pub psk_file: Option<PathBuf>,
}

impl ConnectArgs {
    /// A client of a node that is part of a cluster (waits until it is).
    pub async fn client(&self) -> Result<Client> {
        let psk = load_psk(self.psk_file.as_deref())?;
        Client::connect(self.peer.clone(), &self.cluster, psk)
            .await
            .with_context(|| format!("cannot reach a cluster node at {}", self.peer))
    }

    /// A client of a node whatever its state (for `status` and administration).
    pub async fn admin(&self) -> Result<Client> {
        let psk = load_psk(self.psk_file.as_deref())?;
        Client::connect_admin(self.peer.clone(), &self.cluster, psk)
            .await
            .with_context(|| format!("cannot reach a node at {}", self.peer))
    }
}

/// Reads the PSK file if one is named; a missing or malformed file is an error the user sees.
pub fn load_psk(path: Option<&std::path::Path>) -> Result<Option<PreSharedKey>> {
    // The network error names the file and the cause already (its source repeats the cause,
    // so it is flattened to its message rather than chained).
    path.map(|p| swarmkv_net::load_psk(p).map_err(|e| anyhow::anyhow!("{e}")))
        .transpose()
}

/// Writes one line to stdout. A closed stdout (`swarmkv scan "" | head -1`) ends the output
/// quietly, where `println!` would panic.
pub fn say(line: impl std::fmt::Display) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write to stdout"),
    }
}

/// A value for a terminal: the text if it is UTF-8, else `0x` and its bytes in hex.
pub fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => format!("0x{}", hex(bytes)),
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A node id as the CLI prints it (and `decommission` reads it): 16 hex digits.
pub fn node_hex(id: u64) -> String {
    format!("{id:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_as_text_when_utf8_else_as_hex() {
        assert_eq!(show(b"hello"), "hello");
        assert_eq!(show(&[0xff, 0x00, 0x10]), "0xff0010");
    }

    #[test]
    fn client_verbs_default_to_the_local_node_on_the_fixed_port() -> Result<()> {
        let cli = Cli::try_parse_from(["swarmkv", "get", "k"])?;
        let Command::Get(get) = cli.command else {
            anyhow::bail!("parsed as {:?}", cli.command);
        };
        assert_eq!(get.connect.peer.to_string(), "/ip4/127.0.0.1/tcp/7379");
        assert_eq!(get.connect.cluster, "swarmkv");
        Ok(())
    }

    #[test]
    fn an_unparsable_multiaddr_is_a_usage_error() {
        let err = Cli::try_parse_from(["swarmkv", "status", "--peer", "127.0.0.1:7379"]);
        assert!(err.is_err(), "a host:port is not a multiaddr");
    }
}
