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
//! The HTTP client here is a blocking copy of the minimal HTTP/1.1 client of
//! `tests/http_gateway.rs` (one request per connection, `Connection: close`, `Expect:
//! 100-continue` for large bodies): it shows exactly which bytes cross the wire and adds no
//! HTTP client stack to the build.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

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

/// An HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "status {} with a body that is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value (names are lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The JSON body, after checking the status.
    pub fn expect(self, status: u16) -> Result<Value> {
        let json = self.json()?;
        if self.status != status {
            bail!("expected status {status}, got {}: {json}", self.status);
        }
        Ok(json)
    }

    /// The error code, after checking the status and the error shape.
    pub fn error(self, status: u16) -> Result<String> {
        let json = self.expect(status)?;
        let code = json["error"]["code"].as_str().context("no error.code")?;
        if json["error"]["message"].as_str().is_none_or(str::is_empty) {
            bail!("no error.message in {json}");
        }
        Ok(code.to_string())
    }
}

/// One HTTP/1.1 request on a fresh connection. Bodies over 64 KiB are announced with
/// `Expect: 100-continue` and sent only if the server asks for them, so a server that refuses
/// a too-large body from its headers answers cleanly instead of resetting a half-sent upload.
pub fn http(addr: SocketAddr, method: &str, target: &str, body: &[u8]) -> Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let expect = body.len() > 64 * 1024;
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if expect {
        head.push_str("Expect: 100-continue\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if !expect {
        stream.write_all(body)?;
    }
    let mut buf = Vec::new();
    loop {
        let ((status, headers), rest) = read_head(&mut stream, &mut buf)?;
        if status == 100 {
            buf = rest;
            stream.write_all(body)?;
            continue;
        }
        let mut body = rest;
        stream.read_to_end(&mut body)?;
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
        let body = if chunked { dechunk(&body)? } else { body };
        return Ok(Reply {
            status,
            headers,
            body,
        });
    }
}

/// A response head: the status and the headers, names lower-cased.
type Head = (u16, Vec<(String, String)>);

/// Reads a response head; returns it and the bytes after it.
fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(Head, Vec<u8>)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec())?;
            let rest = buf[end + 4..].to_vec();
            let mut lines = head.split("\r\n");
            let status_line = lines.next().context("empty response")?;
            let status = status_line
                .split(' ')
                .nth(1)
                .context("no status")?
                .parse()?;
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            return Ok(((status, headers), rest));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end])?.trim(), 16)?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).context("short chunk")?);
        data = data.get(size + 2..).context("short chunk")?;
    }
}

/// Percent-encodes every byte but ASCII letters and digits.
pub fn enc(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (*b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
