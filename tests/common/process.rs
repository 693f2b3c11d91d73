//! Real `swarmkv` processes on 127.0.0.1 for the binary tests: a node is `swarmkv start
//! --no-mdns` with its own data directory, a loopback libp2p port and a loopback HTTP port,
//! joined to the first node with `--join`; a cluster of them is formed with `--expect N`.
//!
//! What a node prints on startup (its PeerId, node id, `listening ADDR`, `http      http://ADDR`)
//! is read from its log file, exactly as an operator would read the terminal. After the first
//! start a node's ports are fixed, so a restart (same data directory, same flags, same ports)
//! brings back the node its peers remember.
//!
//! Every child is started with none of the caller's `SWARMKV_*` settings, is killed by its pid
//! when the harness is dropped, and keeps its stdout and stderr in one log file per start in its
//! directory; a test that does not reach [`ProcCluster::finish`] prints the end of every log.
//!
//! HTTP goes through the tests' minimal client in `common/http.rs`.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The binary under test, built by cargo for the integration tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_swarmkv");

/// How long a node may take to print its addresses after it is spawned.
const BANNER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one HTTP exchange may take. The gateway bounds every request by its own 10 s
/// deadline; the rest is slack for a loaded machine.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one CLI invocation may take before it is killed (the verbs bound themselves by
/// 30 s).
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// A `swarmkv` command that sees none of the caller's `SWARMKV_*` settings nor `RUST_LOG`, so
/// that what a test passes is all the process gets (and a node logs at its product default:
/// what it does at `info`, dependencies at `warn`).
pub fn swarmkv() -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SWARMKV_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd.stdin(Stdio::null());
    cmd
}

/// What a finished CLI invocation returned.
#[derive(Debug)]
pub struct CliOutput {
    /// The exit code; `None` if a signal ended the process.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// The stdout, after checking the exit code.
    pub fn expect(&self, code: i32) -> Result<&str> {
        if self.code != Some(code) {
            bail!(
                "expected exit code {code}, got {:?}; stdout: {:?}; stderr: {:?}",
                self.code,
                self.stdout,
                self.stderr
            );
        }
        Ok(&self.stdout)
    }
}

/// Runs `swarmkv ARGS` to completion (killed after [`CLI_TIMEOUT`]) and collects its output.
pub fn cli<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<CliOutput> {
    let dir = tempfile::tempdir()?;
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    // Files rather than pipes: a verb that prints a lot cannot block on a full pipe while
    // this waits for it to exit.
    let mut child = swarmkv()
        .args(args)
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .spawn()
        .context("spawning swarmkv")?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > CLI_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("swarmkv did not exit within {CLI_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(CliOutput {
        code: status.code(),
        stdout: std::fs::read_to_string(&out_path)?,
        stderr: std::fs::read_to_string(&err_path)?,
    })
}

/// One `swarmkv start` node: its directory (data and logs), its running process if any, and
/// what it printed about itself.
pub struct NodeProc {
    /// Holds `data/` and one `start-N.log` per start.
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// Flags beyond data, listen and http: `--expect`, `--partitions`, `--join`.
    extra: Vec<String>,
    starts: usize,
    pub peer_id: String,
    pub node_id: String,
    /// The libp2p address it listens on, without the `/p2p/` suffix.
    pub listen: String,
    pub http: SocketAddr,
}

impl NodeProc {
    /// A node not started yet, keeping its data in `dir/data`, started with `extra` flags.
    fn unstarted(dir: tempfile::TempDir, extra: Vec<String>) -> NodeProc {
        NodeProc {
            dir,
            child: None,
            extra,
            starts: 0,
            peer_id: String::new(),
            node_id: String::new(),
            listen: String::new(),
            http: ([127, 0, 0, 1], 0).into(),
        }
    }

    fn log(&self, start: usize) -> PathBuf {
        self.dir.path().join(format!("start-{start}.log"))
    }

    /// The log of the current (or last) start.
    pub fn current_log(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.log(self.starts))?)
    }

    /// Its address with its identity, as `--join` and `--peer` take it.
    pub fn multiaddr(&self) -> String {
        format!("{}/p2p/{}", self.listen, self.peer_id)
    }

    /// `http://HOST:PORT`, as `--endpoint` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.http)
    }

    /// The pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A node on the data directory `dir` holds (`dir/data`), outside any [`ProcCluster`],
    /// started with `flags` beyond `--no-mdns`, its data directory and loopback ports.
    pub fn start_in(dir: tempfile::TempDir, flags: &[&str]) -> Result<NodeProc> {
        let mut node = NodeProc::unstarted(dir, flags.iter().map(|f| f.to_string()).collect());
        node.spawn()?;
        Ok(node)
    }

    /// A node outside any [`ProcCluster`] (a stranger, say), started with `flags` beyond
    /// `--no-mdns`, its data directory and loopback ports; killed when dropped.
    pub fn start_alone(flags: &[&str]) -> Result<NodeProc> {
        let mut node = NodeProc {
            dir: tempfile::tempdir()?,
            child: None,
            extra: flags.iter().map(|f| f.to_string()).collect(),
            starts: 0,
            peer_id: String::new(),
            node_id: String::new(),
            listen: String::new(),
            http: ([127, 0, 0, 1], 0).into(),
        };
        node.spawn()?;
        Ok(node)
    }

    /// Spawns the node: the first time on any free loopback ports, later on the same ones;
    /// waits until it has printed its addresses.
    fn spawn(&mut self) -> Result<()> {
        self.starts += 1;
        let log = File::create(self.log(self.starts))?;
        let (listen, http) = if self.starts == 1 {
            (
                "/ip4/127.0.0.1/tcp/0".to_string(),
                "127.0.0.1:0".to_string(),
            )
        } else {
            (self.listen.clone(), self.http.to_string())
        };
        let mut cmd = swarmkv();
        // For a closer look at a failure: SWARMKV_TEST_NODE_LOG=debug (a RUST_LOG filter).
        if let Some(filter) = std::env::var_os("SWARMKV_TEST_NODE_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        let child = cmd
            .arg("start")
            .arg("--no-mdns")
            .arg("--data")
            .arg(self.dir.path().join("data"))
            .args(["--listen", &listen, "--http", &http])
            .args(&self.extra)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning swarmkv start")?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            let text = self.current_log()?;
            if let Some(banner) = Banner::parse(&text) {
                if self.starts > 1 && (banner.listen != self.listen || banner.http != self.http) {
                    bail!(
                        "restarted on other addresses: {} {} (was {} {})",
                        banner.listen,
                        banner.http,
                        self.listen,
                        self.http
                    );
                }
                self.peer_id = banner.peer_id;
                self.node_id = banner.node_id;
                self.listen = banner.listen;
                self.http = banner.http;
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!("swarmkv start exited ({status}) before printing its addresses");
                }
            }
            if started.elapsed() > BANNER_TIMEOUT {
                bail!("swarmkv start printed no addresses within {BANNER_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash or a power cut.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Sends SIGTERM (by pid) and waits up to `limit` for the process to exit; returns how it
    /// exited and how long that took.
    pub fn terminate(&mut self, limit: Duration) -> Result<(ExitStatus, Duration)> {
        let child = self.child.as_mut().context("the node is not running")?;
        let pid = child.id();
        let sent = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {pid} failed");
        }
        while sent.elapsed() < limit {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok((status, sent.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the node (pid {pid}) did not exit within {limit:?} of SIGTERM")
    }

    /// The last `n` lines of every log of this node.
    fn tails(&self, n: usize) -> String {
        let mut out = String::new();
        for start in 1..=self.starts {
            let text = std::fs::read_to_string(self.log(start)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "----- node {} start {start}: last {n} lines of {} -----\n",
                self.node_id,
                self.log(start).display()
            ));
            for l in &lines[lines.len().saturating_sub(n)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// What `swarmkv start` prints about itself before anything else.
struct Banner {
    peer_id: String,
    node_id: String,
    listen: String,
    http: SocketAddr,
}

impl Banner {
    fn parse(text: &str) -> Option<Banner> {
        let field = |prefix: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map(|v| v.trim().to_string())
        };
        let http = field("http ")?;
        Some(Banner {
            peer_id: field("peer id ")?,
            node_id: field("node id ")?,
            listen: text
                .lines()
                .filter_map(|l| l.strip_prefix("listening "))
                .map(str::trim)
                .find(|a| a.starts_with("/ip4/127.0.0.1/tcp/"))?
                .to_string(),
            http: http.strip_prefix("http://")?.parse().ok()?,
        })
    }
}

/// Nodes of one cluster, each a real `swarmkv start` process; dropping it kills them all.
pub struct ProcCluster {
    pub nodes: Vec<NodeProc>,
    finished: bool,
}

impl ProcCluster {
    /// Starts `n` nodes that form one cluster of `partitions` partitions: the first with
    /// `--expect n`, the others with `--expect n --join <first>`. Returns once every node is
    /// ready (every local replica knows its leader) and hears from all the others.
    pub fn start(n: usize, partitions: u32) -> Result<ProcCluster> {
        ProcCluster::start_with(n, partitions, &[])
    }

    /// [`ProcCluster::start`], every node also given `flags` (a PSK file, limits, ...).
    pub fn start_with(n: usize, partitions: u32, flags: &[&str]) -> Result<ProcCluster> {
        let mut cluster = ProcCluster {
            nodes: Vec::new(),
            finished: false,
        };
        let started = Instant::now();
        for i in 0..n {
            let mut extra = vec![
                "--expect".to_string(),
                n.to_string(),
                "--partitions".to_string(),
                partitions.to_string(),
            ];
            if i > 0 {
                extra.push("--join".to_string());
                extra.push(cluster.nodes[0].multiaddr());
            }
            extra.extend(flags.iter().map(|f| f.to_string()));
            cluster.nodes.push(NodeProc {
                dir: tempfile::tempdir()?,
                child: None,
                extra,
                starts: 0,
                peer_id: String::new(),
                node_id: String::new(),
                listen: String::new(),
                http: ([127, 0, 0, 1], 0).into(),
            });
            cluster.nodes[i].spawn()?;
        }
        for i in 0..n {
            cluster.wait_ready(i, Duration::from_secs(60))?;
        }
        for (i, node) in cluster.nodes.iter().enumerate() {
            println!(
                "node {i}: {} at {} and http://{} (pid {})",
                node.node_id,
                node.listen,
                node.http,
                node.pid().unwrap_or_default()
            );
        }
        println!(
            "{n} processes formed a cluster of {partitions} partitions in {:?}",
            started.elapsed()
        );
        Ok(cluster)
    }

    /// Starts node 0 on the data directory `first` already holds (`first/data`) with no
    /// `--expect`, so it forms a cluster alone as a restored node does, then `n - 1` new nodes
    /// joining it; returns once every node is ready and hears from all the others.
    pub fn start_from(first: tempfile::TempDir, n: usize) -> Result<ProcCluster> {
        let mut cluster = ProcCluster {
            nodes: vec![NodeProc::unstarted(first, Vec::new())],
            finished: false,
        };
        cluster.nodes[0].spawn()?;
        for i in 1..n {
            let join = vec!["--join".to_string(), cluster.nodes[0].multiaddr()];
            cluster
                .nodes
                .push(NodeProc::unstarted(tempfile::tempdir()?, join));
            cluster.nodes[i].spawn()?;
        }
        for i in 0..n {
            cluster.wait_ready(i, Duration::from_secs(60))?;
        }
        Ok(cluster)
    }

    /// Restarts node `i` on its data directory and ports (the flags of its first start; a
    /// node that is not the first joins through the first).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if self.nodes[i].child.is_some() {
            bail!("node {i} is still running");
        }
        self.nodes[i].spawn()
    }

    /// Waits until node `i` answers `/readyz` 200 and its `/v1/status` is `ready`, with every
    /// other node among its peers and every node of the cluster live and reachable.
    pub fn wait_ready(&self, i: usize, timeout: Duration) -> Result<()> {
        let node = &self.nodes[i];
        let others = self.nodes.len() - 1;
        let mut last = String::from("no answer yet");
        wait_until(&format!("node {i} to be ready"), timeout, || {
            let ready = http(node.http, "GET", "/readyz", b"")?;
            if ready.status != 200 {
                last = format!("readyz {}", ready.status);
                return Ok(false);
            }
            let s = http(node.http, "GET", "/v1/status", b"")?.expect(200)?;
            let peers = s["peers"].as_array().map_or(0, Vec::len);
            let live = s["cluster"]["nodes"].as_array().map_or(0, |nodes| {
                nodes
                    .iter()
                    .filter(|n| n["state"] == "live" && n["reachable"] == true)
                    .count()
            });
            last = format!(
                "state {} with {peers} peers, {live} live reachable nodes",
                s["state"]
            );
            Ok(s["state"] == "ready" && peers == others && live == others + 1)
        })
        .with_context(|| format!("last seen: {last}"))
    }

    /// The running node that leads the most groups by its own `/v1/status`, and how many.
    pub fn busiest_leader(&self) -> Result<(usize, usize)> {
        let mut best = (0, 0);
        for (i, node) in self.nodes.iter().enumerate() {
            if node.child.is_none() {
                continue;
            }
            let s = http(node.http, "GET", "/v1/status", b"")?.expect(200)?;
            let led = s["groups"]
                .as_array()
                .map_or(0, |g| g.iter().filter(|g| g["leader"] == s["node"]).count());
            if led > best.1 {
                best = (i, led);
            }
        }
        Ok(best)
    }

    /// Marks the test as passed: the logs are not printed when the cluster is dropped.
    pub fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
        }
        if !self.finished {
            for node in &self.nodes {
                eprint!("{}", node.tails(60));
            }
        }
        // To read whole logs after a run: SWARMKV_TEST_KEEP_DIRS=1 cargo test --test binary.
        if std::env::var_os("SWARMKV_TEST_KEEP_DIRS").is_some() {
            for node in &mut self.nodes {
                node.dir.disable_cleanup(true);
                eprintln!(
                    "kept node {} in {}",
                    node.node_id,
                    node.dir.path().display()
                );
            }
        }
    }
}

/// Polls `check` every 100 ms until it says yes; an error from `check` counts as a no (a node
/// may be restarting), the last one is reported on timeout.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let until = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() > until {
            match last_error {
                Some(e) => bail!("timed out waiting for {what}; last error: {e:#}"),
                None => bail!("timed out waiting for {what}"),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs the calling test alone among the tests of its binary that take this guard: three
/// processes with real timers each, and on a 2-core machine two such clusters at once would
/// measure the machine. A test that failed (poisoning the lock) does not stop the next one.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// The HTTP client, re-exported for the binary tests.
#[allow(unused_imports)]
pub use super::http::{enc, http, Reply};
