//! `swarmkv bench put|get-linearizable|get-serializable`: the closed-loop benchmark of
//! `../shared/bench/WORKLOAD.md`, against a swarmkv cluster over libp2p (`--peer`, repeatable)
//! or over its HTTP gateways (`--endpoint`, repeatable), or, built with the `etcd` feature,
//! against etcd (`--etcd`, repeatable), so both systems run the identical workload from one
//! binary. `bench/compare.sh` runs the whole comparison.
//!
//! # Layout
//! - [`workload`]: the operations, the reference PRNG, keys, values and the
//!   split of the operations among the clients.
//! - `etcd` (feature `etcd`): the etcd driver.
//! - [`conn`]: one client's connection to swarmkv (libp2p or HTTP) or etcd.
//! - [`runner`]: connect, preload, warm-up, barrier and the timed phase.
//! - [`stats`]: percentiles and the report (text lines or JSON).
//! - [`progress`]: the progress bar on a terminal's stderr.

use anyhow::anyhow;
use clap::Args;
use swarmkv_net::Multiaddr;

use super::{say, say_json, CliError};
use swarmkv::client::Endpoint;

mod conn;
#[cfg(feature = "etcd")]
mod etcd;
mod progress;
mod runner;
mod stats;
mod workload;

use conn::Targets;
use runner::{Plan, Preload};
use stats::Shape;
use workload::Op;

/// Keys per etcd preload transaction (etcd accepts at most 128 operations per transaction).
const ETCD_PRELOAD_BATCH: usize = 100;

/// Concurrent preload loaders against etcd, as the workload says.
const ETCD_PRELOAD_LOADERS: usize = 16;

/// Concurrent preload loaders against swarmkv, which writes one key per request: more
/// requests in flight fill its per-partition batches.
const SWARMKV_PRELOAD_LOADERS: usize = 64;

/// Measure throughput and latency under the workload of WORKLOAD.md
///
/// C closed-loop clients (client i on its own connection to endpoint i mod n), keys
/// `k%015d` drawn uniformly from the key space, fresh 256-byte alphanumeric values. The key
/// space is preloaded first (untimed; --no-preload skips it), each client does one untimed
/// warm-up request, then the clients start together; the timed phase ends with the last
/// answer, or stops issuing requests after --max-seconds (a `NOTE: stopped early` line). The
/// last line is `RESULT op=<op> clients=<C> ops/s=<X> p50_ms=<Y> p99_ms=<Z>`. Exits 1 if any
/// request failed.
#[derive(Args, Debug)]
pub struct Bench {
    /// The operation.
    #[arg(value_enum)]
    pub op: Op,
    /// Concurrent closed-loop clients.
    #[arg(long, short = 'c', default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub clients: u32,
    /// Operations in the timed phase, over all clients.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    pub ops: u64,
    /// Size of the key space: keys k000000000000000 up to K-1.
    #[arg(long, default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..=999_999_999_999_999))]
    pub keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// The timed phase issues no new request after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    pub max_seconds: f64,
    /// Seed of the reference PRNG (client i uses seed * 1000003 + i).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Do not write the key space before the timed phase (it is already there).
    #[arg(long)]
    pub no_preload: bool,
    /// Concurrent preload loaders [default: 16 for etcd (transactions of 100 puts), 64 for
    /// swarmkv (one put per request)].
    #[arg(long)]
    pub preload_loaders: Option<usize>,
    /// Clients of one endpoint share one connection (one libp2p client, one HTTP keep-alive
    /// pool, one gRPC channel) instead of one each. Deviates from the workload ("its own
    /// connection"); says so in the output.
    #[arg(long)]
    pub share_connections: bool,
    /// Print the report as JSON instead of text lines.
    #[arg(long)]
    pub json: bool,
    /// With --peer: every client sends every request to its own node, which serves it
    /// through Raft or passes it on (the report says `routing=one-node`), instead of sending
    /// each write and linearizable read to its partition's leader (`routing=leader`).
    #[arg(long)]
    pub one_node: bool,

    #[command(flatten)]
    pub targets: TargetArgs,
}

/// Which system, and its endpoints (each flag repeatable; client i uses endpoint i mod n).
#[derive(Args, Debug)]
#[command(next_help_heading = "Targets")]
#[group(multiple = false)]
pub struct TargetArgs {
    /// A swarmkv node's libp2p address (repeatable): the binary protocol, each client with
    /// its own throwaway identity and connection.
    #[arg(long, value_name = "MULTIADDR")]
    pub peer: Vec<Multiaddr>,
    /// A swarmkv node's HTTP gateway (repeatable) [default: http://127.0.0.1:7380].
    #[arg(long, value_name = "http://HOST:PORT")]
    pub endpoint: Vec<Endpoint>,
    /// An etcd member's client URL (repeatable), e.g. http://127.0.0.1:2379 (needs a build
    /// with `--features etcd`).
    #[arg(long, value_name = "URL")]
    pub etcd: Vec<String>,
    /// With --peer: the cluster name.
    #[arg(long, env = "SWARMKV_CLUSTER", default_value = swarmkv_net::DEFAULT_CLUSTER_NAME)]
    pub cluster: String,
    /// With --peer: the pre-shared key file of a private cluster.
    #[arg(long, env = "SWARMKV_PSK_FILE", value_name = "FILE")]
    pub psk_file: Option<std::path::PathBuf>,
}

impl TargetArgs {
    fn targets(&self, one_node: bool) -> Result<Targets, CliError> {
        if !self.etcd.is_empty() {
            return etcd_targets(&self.etcd);
        }
        if !self.peer.is_empty() {
            let psk = self
                .psk_file
                .as_deref()
                .map(swarmkv_net::load_psk)
                .transpose()
                .map_err(|e| CliError::Usage(e.to_string()))?;
            return Ok(Targets::Peer {
                addrs: self.peer.clone(),
                cluster: self.cluster.clone(),
                psk,
                routing: if one_node {
                    swarmkv::client::Routing::OneNode
                } else {
                    swarmkv::client::Routing::Leader
                },
            });
        }
        if !self.endpoint.is_empty() {
            return Ok(Targets::Http(self.endpoint.clone()));
        }
        let local = swarmkv::client::DEFAULT_ENDPOINT
            .parse()
            .map_err(|e: swarmkv::client::EndpointError| CliError::Other(anyhow!(e)))?;
        Ok(Targets::Http(vec![local]))
    }
}

#[cfg(feature = "etcd")]
fn etcd_targets(urls: &[String]) -> Result<Targets, CliError> {
    Ok(Targets::Etcd(urls.to_vec()))
}

#[cfg(not(feature = "etcd"))]
fn etcd_targets(_: &[String]) -> Result<Targets, CliError> {
    Err(CliError::Usage(
        "--etcd needs a swarmkv built with the etcd driver: cargo build --release --features etcd"
            .into(),
    ))
}

impl Bench {
    pub async fn run(self) -> Result<(), CliError> {
        if !(self.max_seconds > 0.0 && self.max_seconds.is_finite()) {
            return Err(CliError::Usage("--max-seconds must be positive".into()));
        }
        let targets = self.targets.targets(self.one_node)?;
        let clients = self.clients as usize;
        let plan = Plan {
            op: self.op,
            ops: self.ops,
            keys: self.keys,
            value_size: self.value_size,
            max_seconds: self.max_seconds,
            seed: self.seed,
        };
        // Connection failures mean the cluster is not there: unavailable (exit 3).
        let conns = runner::connect_all(&targets, clients, self.share_connections)
            .await
            .map_err(|e| CliError::Unavailable(format!("{e:#}")))?;
        if !self.no_preload {
            #[cfg(feature = "etcd")]
            let etcd = matches!(targets, Targets::Etcd(_));
            #[cfg(not(feature = "etcd"))]
            let etcd = false;
            let how = Preload {
                loaders: self.preload_loaders.unwrap_or(if etcd {
                    ETCD_PRELOAD_LOADERS
                } else {
                    SWARMKV_PRELOAD_LOADERS
                }),
                batch: if etcd { ETCD_PRELOAD_BATCH } else { 1 },
            };
            let done = runner::preload(&conns, &plan, how)
                .await
                .map_err(conn::exit_error)?;
            if !self.json {
                say(format!(
                    "preloaded keys={} value_size={} in {:.2}s ({:.0} keys/s, {} loaders, \
                     {} requests retried)",
                    plan.keys,
                    plan.value_size,
                    done.took.as_secs_f64(),
                    plan.keys as f64 / done.took.as_secs_f64().max(1e-9),
                    how.loaders,
                    done.retries
                ))?;
            }
        }
        let shape = Shape {
            clients,
            connections: if self.share_connections {
                clients.min(targets.len())
            } else {
                clients
            },
            endpoints: targets.len(),
            value_size: plan.value_size,
            keys: plan.keys,
            requested_ops: plan.ops,
            max_seconds: plan.max_seconds,
            routing: targets.routing(),
        };
        let report = runner::timed(conns, &plan, shape, targets.system())
            .await
            .map_err(conn::exit_error)?;
        if self.json {
            say_json(&report)?;
        } else {
            for line in report.lines() {
                say(line)?;
            }
        }
        if report.errors > 0 {
            return Err(CliError::Other(anyhow!(
                "{} of the requests failed",
                report.errors
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;
    use super::*;

    #[test]
    fn the_bench_takes_one_kind_of_target_repeated() -> anyhow::Result<()> {
        let cli = parse(
            &[
                "bench",
                "put",
                "-c",
                "64",
                "-n",
                "50000",
                "--peer",
                "/ip4/127.0.0.1/tcp/1",
                "--peer",
                "/ip4/127.0.0.1/tcp/2",
            ],
            &[],
        )?;
        let Command::Bench(b) = cli.command else {
            anyhow::bail!("not the bench verb: {:?}", cli.command);
        };
        assert_eq!(
            (b.op, b.clients, b.ops, b.keys),
            (Op::Put, 64, 50_000, 100_000)
        );
        assert_eq!(b.targets.peer.len(), 2);
        assert!(
            matches!(b.targets.targets(false), Ok(Targets::Peer { addrs, .. }) if addrs.len() == 2)
        );

        // Leader routing by default; --one-node sends everything through the dialed node.
        assert_eq!(b.targets.targets(false)?.routing(), Some("leader"));
        let cli = parse(
            &[
                "bench",
                "put",
                "--one-node",
                "--peer",
                "/ip4/127.0.0.1/tcp/1",
            ],
            &[],
        )?;
        let Command::Bench(b) = cli.command else {
            anyhow::bail!("not the bench verb");
        };
        assert!(b.one_node);
        assert_eq!(b.targets.targets(b.one_node)?.routing(), Some("one-node"));

        // No target: the local gateway, like every client verb.
        let cli = parse(&["bench", "get-serializable"], &[])?;
        let Command::Bench(b) = cli.command else {
            anyhow::bail!("not the bench verb");
        };
        assert!(matches!(b.targets.targets(false), Ok(Targets::Http(e)) if e.len() == 1));

        // Two kinds of target at once are a usage error, and so are zero clients.
        for args in [
            &[
                "bench",
                "put",
                "--peer",
                "/ip4/127.0.0.1/tcp/1",
                "--endpoint",
                "http://127.0.0.1:7380",
            ][..],
            &["bench", "put", "--clients", "0"],
            &["bench", "scan"],
        ] {
            let err = parse(args, &[]);
            assert!(matches!(&err, Err(e) if e.exit_code() == 2), "{args:?}");
        }
        Ok(())
    }

    #[cfg(not(feature = "etcd"))]
    #[test]
    fn etcd_targets_need_the_etcd_feature() -> anyhow::Result<()> {
        use anyhow::Context as _;
        let cli = parse(&["bench", "put", "--etcd", "http://127.0.0.1:2379"], &[])?;
        let Command::Bench(b) = cli.command else {
            anyhow::bail!("not the bench verb");
        };
        let err = b
            .targets
            .targets(false)
            .err()
            .context("accepted without the feature")?;
        assert_eq!(err.exit_code(), 2, "{err}");
        Ok(())
    }
}
