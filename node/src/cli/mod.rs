//! The commands of the `swarmkv` binary, one file each.
//!
//! # Layout
//! - [`start`]: run a node (zero-config formation, until Ctrl-C or SIGTERM).
//! - [`status`]: a node's report on itself and its groups, as a table or as JSON.
//! - [`put`], [`get`], [`del`], [`cas`], [`scan`]: the key-value verbs; [`txn`]: a
//!   transaction in etcdctl's text form.
//! - [`decommission`]: drain a node out of the cluster.
//! - [`backup`], [`restore`]: save a backup of the whole cluster to a file; prepare a data
//!   directory to start a new cluster from one.
//! - [`repair`]: rebuild a node whose stored data is damaged from its peers (as a new node).
//! - [`watch`]: print the changes of a prefix or key as they happen (resumable).
//! - [`lease`]: grant, keep alive, revoke and inspect leases (keys attach with `put --lease`).
//! - [`elect`], [`leader`], [`observe`]: campaign for an election and hold the leadership
//!   until Ctrl-C, show its leader, follow its leaders; [`lock`]: a lock, which is the
//!   election `lock:NAME`.
//! - [`keygen`]: create the pre-shared key file of a private cluster.
//! - [`bench`]: the benchmark of WORKLOAD.md, against swarmkv or (feature `etcd`) etcd.
//! - [`transport`]: how a client verb reaches the cluster, chosen by its flags: a
//!   [`swarmkv::Client`] of a node's HTTP gateway (the default) or of a node's libp2p port
//!   (`--peer`).
//! - [`error`]: why a verb failed, and the exit status (0, 1, 2 or 3) that tells a script.
//!
//! Every verb but `start` is a client: by default it sends HTTP requests to the local node's
//! gateway (`http://127.0.0.1:7380`; `--endpoint` for another), or with `--peer` it dials a
//! node over libp2p with a throwaway identity. Either way the node forwards to partition
//! leaders. Settings can also come from `SWARMKV_*` environment variables, so a shell or a
//! service unit can set them once.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use swarmkv_net::PreSharedKey;

mod backup;
mod bench;
mod cas;
mod decommission;
mod del;
mod elect;
mod error;
mod get;
mod keygen;
mod leader;
mod lease;
mod lock;
mod observe;
mod put;
mod repair;
mod restore;
mod scan;
mod start;
mod status;
mod transport;
mod txn;
mod watch;

pub use error::CliError;

/// The port a node listens on unless told otherwise. Fixed, so that the addresses peers
/// remember stay valid across restarts.
pub const DEFAULT_PORT: u16 = 7379;

/// The exit statuses, shown under `swarmkv --help`.
const EXIT_STATUS_HELP: &str =
    "Exit status of the client verbs: 0 done; 1 not found, compare failed, \
refused by the server or other failure; 2 usage; 3 unavailable (no node reachable, 503/504, \
no leader, timeout). `start` exits 4 when the node's stored data is damaged (rebuild it with \
`swarmkv repair --from-peers`); `restore` exits 4 when the backup file is damaged, truncated or \
of another format (nothing is written).";

/// How long a client verb may take in all, connection included: a node that is down or
/// unreachable must give an error, not a hung shell.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// swarmkv: a zero-config, peer-to-peer, Raft-replicated key-value store.
#[derive(Parser, Debug)]
#[command(name = "swarmkv", version = swarmkv::VERSION, about, after_help = EXIT_STATUS_HELP)]
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
    #[command(visible_alias = "delete")]
    Del(del::Del),
    Cas(cas::Cas),
    Txn(txn::TxnCmd),
    Scan(scan::Scan),
    Decommission(decommission::Decommission),
    Lease(lease::Lease),
    Elect(elect::Elect),
    Lock(lock::Lock),
    Leader(leader::Leader),
    Observe(observe::Observe),
    Bench(bench::Bench),
    Keygen(keygen::Keygen),
    Watch(watch::WatchCmd),
    Repair(repair::Repair),
    Backup(backup::Backup),
    Restore(restore::Restore),
}

impl Command {
    /// Whether this command runs a node (which logs more than a client verb).
    pub fn is_node(&self) -> bool {
        matches!(self, Command::Start(_))
    }

    /// The async runtime's worker threads: a node's own setting; `None` (one per CPU) for
    /// the client verbs, whose load (the bench's many connections) is theirs alone.
    pub fn worker_threads(&self) -> Option<usize> {
        match self {
            Command::Start(c) => Some(c.worker_threads()),
            _ => None,
        }
    }

    /// Runs the command; `Ok` with the exit code of `start`, or `Ok(SUCCESS)` for a client
    /// verb that did what was asked.
    pub async fn run(self) -> Result<ExitCode, CliError> {
        let verb = match self {
            Command::Start(c) => return c.run().await.map_err(CliError::from_anyhow),
            Command::Status(c) => with_timeout(c.run()).await,
            Command::Put(c) => with_timeout(c.run()).await,
            Command::Get(c) => with_timeout(c.run()).await,
            Command::Del(c) => with_timeout(c.run()).await,
            Command::Cas(c) => with_timeout(c.run()).await,
            Command::Txn(c) => with_timeout(c.run()).await,
            Command::Scan(c) => with_timeout(c.run()).await,
            Command::Decommission(c) => with_timeout(c.run()).await,
            // `keep-alive` runs until Ctrl-C; the other lease verbs bound themselves.
            Command::Lease(c) => c.run().await,
            // `elect` runs until Ctrl-C, the leadership is lost or its command ends; its
            // exit status may be the command's.
            Command::Elect(c) => return c.run().await,
            Command::Lock(c) => return c.run().await,
            // `observe` runs until Ctrl-C.
            Command::Leader(c) => with_timeout(c.run()).await,
            Command::Observe(c) => c.run().await,
            // Bounded by its own --max-seconds (plus connecting and the preload).
            Command::Bench(c) => c.run().await,
            Command::Keygen(c) => c.run(),
            // Runs until Ctrl-C or --count.
            Command::Watch(c) => c.run().await,
            // Bounded by its own --wait (plus connecting).
            Command::Repair(c) => c.run().await,
            // As long as the cluster's size takes (each group bounds its own waits).
            Command::Backup(c) => c.run().await,
            Command::Restore(c) => c.run(),
        };
        verb.map(|()| ExitCode::SUCCESS)
    }
}

async fn with_timeout(
    verb: impl std::future::Future<Output = Result<(), CliError>>,
) -> Result<(), CliError> {
    tokio::time::timeout(CLIENT_TIMEOUT, verb)
        .await
        .map_err(|_| {
            CliError::Unavailable(format!("no answer within {} s", CLIENT_TIMEOUT.as_secs()))
        })?
}

/// Reads the PSK file if one is named; a missing or malformed file is an error the user sees.
pub fn load_psk(path: Option<&std::path::Path>) -> Result<Option<PreSharedKey>> {
    // The network error names the file and the cause already (its source repeats the cause,
    // so it is flattened to its message rather than chained).
    path.map(|p| swarmkv_net::load_psk(p).map_err(|e| anyhow::anyhow!("{e}")))
        .transpose()
}

/// Writes one line to stdout. A closed stdout (`swarmkv scan | head -1`) ends the output
/// quietly, where `println!` would panic.
pub fn say(line: impl std::fmt::Display) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write to stdout"),
    }
}

/// Writes a value as pretty JSON on stdout, for `--json`.
pub fn say_json(value: &impl serde::Serialize) -> Result<()> {
    say(serde_json::to_string_pretty(value)?)
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
    use clap::error::ErrorKind;
    use std::sync::Mutex;

    /// Parsing reads `SWARMKV_*` variables, and one test sets some: every parse in this
    /// module holds this lock so that none sees another's variables.
    static ENV: Mutex<()> = Mutex::new(());

    const TRANSPORT_VARS: [&str; 4] = [
        "SWARMKV_ENDPOINT",
        "SWARMKV_PEER",
        "SWARMKV_CLUSTER",
        "SWARMKV_PSK_FILE",
    ];

    /// Parses `args` with exactly the variables `env` set among the transport ones.
    pub(super) fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Cli, clap::Error> {
        let _guard = ENV.lock().unwrap_or_else(|p| p.into_inner());
        let saved: Vec<_> = TRANSPORT_VARS
            .iter()
            .map(|v| (*v, std::env::var_os(v)))
            .collect();
        for v in TRANSPORT_VARS {
            std::env::remove_var(v);
        }
        for (k, v) in env {
            std::env::set_var(k, v);
        }
        let parsed = Cli::try_parse_from(std::iter::once("swarmkv").chain(args.iter().copied()));
        for (k, v) in saved {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
        parsed
    }

    fn transport_of(cli: &Cli) -> Option<&transport::TransportArgs> {
        match &cli.command {
            Command::Status(c) => Some(&c.transport),
            Command::Put(c) => Some(&c.transport),
            Command::Get(c) => Some(&c.transport),
            Command::Del(c) => Some(&c.transport),
            Command::Cas(c) => Some(&c.transport),
            Command::Txn(c) => Some(&c.transport),
            Command::Scan(c) => Some(&c.transport),
            Command::Decommission(c) => Some(&c.transport),
            Command::Lease(c) => Some(c.transport()),
            Command::Watch(c) => Some(&c.transport),
            Command::Elect(c) => Some(&c.transport),
            Command::Lock(c) => Some(&c.transport),
            Command::Leader(c) => Some(&c.transport),
            Command::Observe(c) => Some(&c.transport),
            Command::Repair(c) => Some(&c.transport),
            Command::Backup(c) => Some(&c.transport),
            Command::Start(_) | Command::Restore(_) | Command::Bench(_) | Command::Keygen(_) => {
                None
            }
        }
    }

    #[test]
    fn values_print_as_text_when_utf8_else_as_hex() {
        assert_eq!(show(b"hello"), "hello");
        assert_eq!(show(&[0xff, 0x00, 0x10]), "0xff0010");
    }

    #[test]
    fn every_client_verb_defaults_to_the_local_gateway() -> Result<()> {
        for args in [
            &["get", "k"][..],
            &["put", "k", "v"],
            &["del", "k"],
            &["cas", "k", "v", "--expect-absent"],
            &["scan"],
            &["status"],
            &["decommission", "ab"],
            &["lease", "grant", "10"],
            &["lease", "keep-alive", "ab"],
            &["lease", "revoke", "ab"],
            &["lease", "ttl", "ab"],
            &["put", "k", "v", "--lease", "ab"],
            &["watch", "p/", "--from", "3"],
            &["elect", "svc", "me"],
            &["elect", "svc", "me", "--ttl", "500ms"],
            &["leader", "svc"],
            &["observe", "svc", "--json"],
            &["backup", "cluster.backup"],
        ] {
            let cli = parse(args, &[])?;
            let t = transport_of(&cli).context("a client verb")?;
            assert_eq!(shown(&t.endpoint), "http://127.0.0.1:7380", "{args:?}");
            assert!(t.peer.is_empty(), "{args:?}");
            assert_eq!(t.cluster, "swarmkv");
        }
        Ok(())
    }

    /// A list of addresses as one comma-separated string.
    fn shown<T: ToString>(list: &[T]) -> String {
        list.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn endpoints_and_peers_take_comma_lists_and_repeats() -> Result<()> {
        let a = "http://127.0.0.1:7380";
        let b = "http://127.0.0.1:7480";
        let both = format!("{a},{b}");
        for args in [
            vec!["get", "k", "--endpoint", &both],
            vec!["get", "k", "--endpoint", a, "--endpoint", b],
        ] {
            let cli = parse(&args, &[])?;
            let t = transport_of(&cli).context("a client verb")?;
            assert_eq!(shown(&t.endpoint), both, "{args:?}");
        }
        let cli = parse(&["get", "k"], &[("SWARMKV_ENDPOINT", both.as_str())])?;
        let t = transport_of(&cli).context("a client verb")?;
        assert_eq!(shown(&t.endpoint), both);
        let peers = "/ip4/127.0.0.1/tcp/7379,/ip4/127.0.0.1/tcp/7479";
        let cli = parse(&["status", "--peer", peers], &[])?;
        let t = transport_of(&cli).context("a client verb")?;
        assert_eq!(shown(&t.peer), peers);
        Ok(())
    }

    #[test]
    fn peer_and_endpoint_conflict_as_a_usage_error() -> Result<()> {
        let err = parse(
            &[
                "get",
                "k",
                "--peer",
                "/ip4/127.0.0.1/tcp/7379",
                "--endpoint",
                "http://127.0.0.1:7380",
            ],
            &[],
        )
        .err()
        .context("both transports were accepted")?;
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        assert_eq!(err.exit_code(), 2);
        // --peer alone replaces the default endpoint.
        let cli = parse(&["get", "k", "--peer", "/ip4/127.0.0.1/tcp/7379"], &[])?;
        let t = transport_of(&cli).context("a client verb")?;
        assert_eq!(
            t.peer.first().map(ToString::to_string).as_deref(),
            Some("/ip4/127.0.0.1/tcp/7379")
        );
        Ok(())
    }

    #[test]
    fn transports_come_from_the_environment_too() -> Result<()> {
        let cli = parse(
            &["get", "k"],
            &[("SWARMKV_ENDPOINT", "http://10.0.0.5:7380")],
        )?;
        let t = transport_of(&cli).context("a client verb")?;
        assert_eq!(shown(&t.endpoint), "http://10.0.0.5:7380");

        let cli = parse(
            &["status"],
            &[
                ("SWARMKV_PEER", "/ip4/127.0.0.1/tcp/7001"),
                ("SWARMKV_CLUSTER", "prod"),
            ],
        )?;
        let t = transport_of(&cli).context("a client verb")?;
        assert_eq!(
            t.peer.first().map(ToString::to_string).as_deref(),
            Some("/ip4/127.0.0.1/tcp/7001")
        );
        assert_eq!(t.cluster, "prod");

        // A flag beats its own variable.
        let cli = parse(
            &["get", "k", "--endpoint", "http://127.0.0.1:9"],
            &[("SWARMKV_ENDPOINT", "http://10.0.0.5:7380")],
        )?;
        let t = transport_of(&cli).context("a client verb")?;
        assert_eq!(shown(&t.endpoint), "http://127.0.0.1:9");

        // Both transports set, from anywhere, is ambiguous.
        let both = parse(
            &["get", "k", "--peer", "/ip4/127.0.0.1/tcp/7001"],
            &[("SWARMKV_ENDPOINT", "http://10.0.0.5:7380")],
        );
        assert!(both.is_err(), "an endpoint from the environment and --peer");
        Ok(())
    }

    #[test]
    fn bad_transport_values_are_usage_errors() {
        for args in [
            &["status", "--peer", "127.0.0.1:7379"][..],
            &["status", "--endpoint", "https://127.0.0.1:7380"],
            &["status", "--endpoint", "http://127.0.0.1"],
        ] {
            let err = parse(args, &[]);
            assert!(
                matches!(&err, Err(e) if e.exit_code() == 2),
                "{args:?}: {err:?}"
            );
        }
    }

    #[test]
    fn delete_is_an_alias_of_del() -> Result<()> {
        let cli = parse(&["delete", "k"], &[])?;
        assert!(matches!(cli.command, Command::Del(_)), "{:?}", cli.command);
        Ok(())
    }

    #[test]
    fn cas_takes_exactly_one_expectation() -> Result<()> {
        for args in [
            &["cas", "k", "v", "--expect-mod-rev", "7"][..],
            &["cas", "k", "v", "--expect-value", "old"],
            &["cas", "k", "v", "--expect-absent"],
        ] {
            let cli = parse(args, &[])?;
            assert!(matches!(cli.command, Command::Cas(_)), "{args:?}");
        }
        for args in [
            &["cas", "k", "v"][..],
            &["cas", "k", "v", "--expect-absent", "--expect-mod-rev", "7"],
            &["cas", "k", "v", "--expect-value", "a", "--expect-absent"],
            &["cas", "k", "--expect-absent"],
            &["cas", "k", "v", "--expect-mod-rev", "x"],
        ] {
            let err = parse(args, &[]);
            assert!(
                matches!(&err, Err(e) if e.exit_code() == 2),
                "{args:?}: {err:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn scan_takes_a_prefix_or_a_range_not_both() -> Result<()> {
        parse(
            &["scan", "--prefix", "user/", "--limit", "10", "--json"],
            &[],
        )?;
        parse(&["scan", "--start", "a", "--end", "m"], &[])?;
        let err = parse(&["scan", "--prefix", "a", "--start", "b"], &[]);
        assert!(matches!(&err, Err(e) if e.exit_code() == 2), "{err:?}");
        Ok(())
    }
}
