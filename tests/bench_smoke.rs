//! A short smoke of `swarmkv bench` against three real `swarmkv start` processes on
//! 127.0.0.1: the built binary preloads a small key space and runs the workload over libp2p
//! (`--peer`, three endpoints, four clients), then reads it back over the HTTP gateways
//! (`--endpoint`, `--json`). It checks that the output is what `bench/compare.sh` and the
//! baseline's `summarize.sh` read (a `RESULT` line last, `errors=0`), never how fast it was:
//! speed is measured by `bench/compare.sh`, not asserted in tests.

mod common;

use anyhow::{bail, Context, Result};
use common::process::{cli, ProcCluster};

/// Partitions of the smoke cluster: a few, so it forms fast; the bench does not care.
const PARTITIONS: u32 = 8;

/// The fields of a `key=value ...` line after its first word (`RESULT`, `total_ops=..`).
fn fields(line: &str) -> std::collections::HashMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect()
}

/// Runs `swarmkv bench OP` (4 clients, 100 operations on the 1,000 preloaded keys) with
/// `--json` against `targets` (each after `flag`), and returns its report.
fn bench_json(op: &str, flag: &str, targets: &[String]) -> Result<serde_json::Value> {
    let mut args: Vec<String> = [
        "bench",
        op,
        "--clients",
        "4",
        "--ops",
        "100",
        "--keys",
        "1000",
        "--no-preload",
        "--json",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    for t in targets {
        args.push(flag.into());
        args.push(t.clone());
    }
    let out = cli(&args)?;
    println!("bench {op} --json:\n{}{}", out.stdout, out.stderr);
    Ok(serde_json::from_str(out.expect(0)?)?)
}

#[test]
fn bench_put_over_libp2p_then_gets_over_http_then_txns_report_results() -> Result<()> {
    let cluster = ProcCluster::start(3, PARTITIONS)?;
    let mut args: Vec<String> = [
        "bench",
        "put",
        "--clients",
        "4",
        "--ops",
        "200",
        "--keys",
        "1000",
        "--max-seconds",
        "20",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    for node in &cluster.nodes {
        args.push("--peer".into());
        args.push(node.multiaddr());
    }
    let started = std::time::Instant::now();
    let out = cli(&args)?;
    println!(
        "bench put ({:?}):\n{}{}",
        started.elapsed(),
        out.stdout,
        out.stderr
    );
    let stdout = out.expect(0)?;
    let last = stdout.lines().last().context("no output")?;
    if !last.starts_with("RESULT ") {
        bail!("the last line is not the RESULT line: {last:?}");
    }
    let result = fields(last);
    assert_eq!(result.get("op"), Some(&"put"), "{last}");
    assert_eq!(result.get("clients"), Some(&"4"), "{last}");
    let ops_per_sec: f64 = result.get("ops/s").context("ops/s")?.parse()?;
    assert!(ops_per_sec > 0.0, "{last}");
    let p99: f64 = result.get("p99_ms").context("p99_ms")?.parse()?;
    assert!(p99 > 0.0, "{last}");
    let totals = stdout
        .lines()
        .find(|l| l.starts_with("total_ops="))
        .context("no total_ops line")?;
    let totals = fields(totals);
    assert_eq!(totals.get("errors"), Some(&"0"), "{stdout}");
    assert_eq!(totals.get("total_ops"), Some(&"200"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("preloaded keys=1000 ")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("latency_ms mean=")),
        "{stdout}"
    );

    // The key space is there now: linearizable reads over the three gateways find every key.
    let endpoints: Vec<String> = cluster.nodes.iter().map(|n| n.endpoint()).collect();
    let report = bench_json("get-linearizable", "--endpoint", &endpoints)?;
    assert_eq!(report["system"], "swarmkv-http", "{report}");
    assert_eq!(report["op"], "get-linearizable", "{report}");
    assert_eq!(report["endpoints"], 3, "{report}");
    assert_eq!(report["total_ops"], 100, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["misses"], 0, "{report}");
    assert!(
        report["ops_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
        "{report}"
    );

    // Transactions on two keys of one hash tag, over libp2p: every one succeeds.
    let peers: Vec<String> = cluster.nodes.iter().map(|n| n.multiaddr()).collect();
    let report = bench_json("txn", "--peer", &peers)?;
    assert_eq!(report["op"], "txn", "{report}");
    assert_eq!(report["total_ops"], 100, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    cluster.finish();
    Ok(())
}

#[test]
fn bench_without_a_reachable_cluster_is_unavailable() -> Result<()> {
    // Nothing listens on port 9 of 127.0.0.1: connecting fails, the exit status is 3.
    let out = cli(&[
        "bench",
        "put",
        "--endpoint",
        "http://127.0.0.1:9",
        "--ops",
        "1",
        "--keys",
        "1",
    ])?;
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.stderr.contains("error:"), "{out:?}");
    Ok(())
}
