//! The README's three-node try, run as a user pastes it: the block under "Three nodes on one
//! machine" goes to a shell in one piece, starting three nodes in the background and at once
//! running `put greeting hello && get greeting && status`. The first verb meets a node that
//! is not listening yet or not part of a cluster yet, waits for it (`--retry-for`, 10 s by
//! default) and the block prints `hello`. The wait's line on stderr is printed only to a
//! terminal; `tests/http_client.rs` checks that the client announces a wait once. The same
//! nodes then serve a verb given a list of addresses whose first one is down.
//!
//! The block is run as written but for the binary (the one cargo built for the tests), the
//! data directories (a temporary directory) and the ports (free loopback ports instead of
//! 7379/7380, 7479/7480, 7579/7580, so the test can run beside anything else); the CLI is told
//! the first gateway's port through `SWARMKV_ENDPOINT`, as the block's default 7380 would be.
//! Everything binds 127.0.0.1 with `--no-mdns`.

mod common;

use std::fs::File;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::process::{cli, BIN};

/// How long the pasted block may take (three nodes forming, then three verbs).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// The first ```sh block after the heading `## Three nodes on one machine`.
fn readme_block() -> Result<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))?;
    let section = readme
        .split("## Three nodes on one machine")
        .nth(1)
        .context("README has no \"Three nodes on one machine\" section")?;
    let start = section.find("```sh\n").context("no sh block")? + "```sh\n".len();
    let len = section[start..].find("```").context("unterminated block")?;
    Ok(section[start..start + len].to_string())
}

/// `n` loopback ports that were free a moment ago.
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Kills the background nodes of the block (by the pids the shell printed) when dropped.
struct Nodes(Vec<i32>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for pid in &self.0 {
            // SAFETY: kill(2) of a node this test's shell started.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn the_readme_three_node_try_pasted_as_one_block_prints_hello() -> Result<()> {
    let block = readme_block()?;
    ensure!(
        block.contains("$B put greeting hello"),
        "the block changed: {block}"
    );
    let dir = tempfile::tempdir()?;
    let ports = free_ports(6)?;
    let mut script = block.replace(
        "cargo build --release && B=target/release/swarmkv",
        &format!("B={BIN}"),
    );
    ensure!(
        script.contains(&format!("B={BIN}")),
        "no build line: {block}"
    );
    script = script.replace("/tmp/kv", &format!("{}/kv", dir.path().display()));
    for (default, port) in ["7379", "7380", "7479", "7480", "7579", "7580"]
        .iter()
        .zip(&ports)
    {
        script = script.replace(&format!(":{default}"), &format!(":{port}"));
        script = script.replace(&format!("/{default}"), &format!("/{port}"));
    }
    // After the block, whatever it printed: the pids of the nodes it left running.
    script.push_str("\necho \"nodes: $(jobs -p | tr '\\n' ' ')\"\n");
    println!("{script}");

    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut shell = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("SWARMKV_ENDPOINT", format!("http://127.0.0.1:{}", ports[1]))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .spawn()?;
    let started = Instant::now();
    // The nodes keep the output files open: wait for the shell itself, not for the files.
    let status = loop {
        if let Some(status) = shell.try_wait()? {
            break status;
        }
        if started.elapsed() > BLOCK_TIMEOUT {
            let _ = shell.kill();
            bail!("the block did not finish within {BLOCK_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path)?;
    let stderr = std::fs::read_to_string(&err_path)?;
    let nodes = Nodes(
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("nodes: "))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
    );
    ensure!(nodes.0.len() == 3, "the nodes' pids: {stdout}");
    ensure!(status.success(), "the block failed: {stdout}\n{stderr}");
    ensure!(
        stdout.lines().any(|l| l == "hello"),
        "no hello: {stdout}\n{stderr}"
    );
    println!(
        "the block printed hello {:?} after it started",
        started.elapsed()
    );

    // The wait is a flag: 0 sends once, and a refused connection then fails at once (exit 3).
    let dead = free_ports(1)?[0];
    let dead = format!("http://127.0.0.1:{dead}");
    let once = cli(&["put", "k", "v", "--endpoint", &dead, "--retry-for", "0"])?;
    once.expect(3)?;
    ensure!(
        !once.stderr.contains("waiting"),
        "no wait was asked: {}",
        once.stderr
    );
    // Waiting, and failing after it: stderr that is not a terminal still gets the one
    // `error:` line a script expects (the waiting line is for a person at a terminal).
    let waited = cli(&["put", "k", "v", "--endpoint", &dead, "--wait-ready", "1s"])?;
    waited.expect(3)?;
    ensure!(
        waited.stderr.lines().count() == 1 && waited.stderr.starts_with("error: "),
        "{}",
        waited.stderr
    );

    // Failover: with the first address of a list down, the next one serves (repeated flag
    // or comma list, HTTP or libp2p), without waiting.
    let live = format!("http://127.0.0.1:{}", ports[3]);
    let listed = format!("{dead},{live}");
    let got = cli(&["get", "greeting", "--endpoint", &listed, "--retry-for", "0"])?;
    ensure!(got.expect(0)?.trim() == "hello", "{got:?}");
    let put = cli(&[
        "put",
        "other",
        "v",
        "--endpoint",
        &dead,
        "--endpoint",
        &live,
        "--retry-for",
        "0",
    ])?;
    put.expect(0)?;
    let dead_peer = format!("/ip4/127.0.0.1/tcp/{}", free_ports(1)?[0]);
    let peers = format!("{dead_peer},/ip4/127.0.0.1/tcp/{}", ports[2]);
    let got = cli(&["get", "other", "--peer", &peers, "--retry-for", "0"])?;
    ensure!(got.expect(0)?.trim() == "v", "{got:?}");
    drop(nodes);
    Ok(())
}
