//! LAN chaos: five real `swarmkv` processes, each in a network namespace of its own on one
//! bridge, started with nothing but a data directory (zero-config: mDNS inside the
//! namespaces), serve concurrent clients through their HTTP gateways while a seeded nemesis
//! kills nodes with SIGKILL and restarts them, pauses them with SIGSTOP / SIGCONT, and cuts
//! their links. Afterwards the faults heal, every key is read once more, and the recorded
//! history must be linearizable (per key: the store's partitions order a key's operations,
//! nothing orders two keys), which also means that no acknowledged write was lost.
//!
//! Needs root (network namespaces); prints "skipped: needs root" otherwise. mDNS runs only
//! inside the namespaces the test creates. A drop guard kills the processes (by pid) and
//! deletes the namespaces on every exit path.
//!
//! `SWARMKV_CHAOS_SEED=S` replays a run's fault schedule and operation mix (the timing of
//! real processes is not replayable, so a replay is a close repetition, not an identical
//! one); `SWARMKV_CHAOS_SECS=N` runs the fault phase for N seconds (default 30) for a soak.

#[path = "sim/linearizability.rs"]
#[allow(dead_code)]
mod linearizability;
#[path = "common/needs.rs"]
mod needs;
#[path = "common/netns.rs"]
mod netns;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use needs::{skip_unless, Need};
use netns::Lan;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_swarmkv");
const NODES: usize = 5;
/// Few partitions and keys: every key sees many concurrent operations, which is what makes a
/// history hard to explain if the store is wrong.
const PARTITIONS: u32 = 8;
const KEYS: usize = 5;
const CLIENTS: usize = 4;
const HTTP_PORT: u16 = 7380;
/// The gateways listen on the bridge, which a node refuses to do without authentication;
/// every request below carries this token.
const HTTP_TOKEN: &str = "lan-chaos-test-token-0123456789abcdef";
/// At most this many nodes are faulty at once: a minority of the five.
const MAX_FAULTY: usize = 2;
/// How long the cluster may take to form and replicate, and to recover after the faults.
const SETTLE: Duration = Duration::from_secs(120);
/// A request's whole budget: the gateway answers within its 10 s deadline; a paused node
/// answers after it resumes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The nodes' processes; dropping it kills them (by pid) before the namespaces go.
struct Nodes {
    lan: Lan,
    dir: tempfile::TempDir,
    procs: Vec<Option<Child>>,
    paused: Vec<bool>,
    cut: Vec<bool>,
}

impl Nodes {
    fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}.log"))
    }

    /// Starts (or restarts, on its data directory) node i with nothing but its data
    /// directory, a small partition count and its gateway on the bridge.
    fn start(&mut self, i: usize) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(i))?;
        let child = self
            .lan
            .command(i, BIN)
            .arg("start")
            .arg("--data")
            .arg(self.dir.path().join(format!("node{i}")))
            .args(["--partitions", &PARTITIONS.to_string()])
            .args(["--http", &format!("0.0.0.0:{HTTP_PORT}")])
            .args(["--http-token", HTTP_TOKEN])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning swarmkv start")?;
        self.procs[i - 1] = Some(child);
        Ok(())
    }

    fn pid(&self, i: usize) -> Result<libc::pid_t> {
        let child = self.procs[i - 1]
            .as_ref()
            .ok_or_else(|| anyhow!("node{i} is not running"))?;
        libc::pid_t::try_from(child.id()).context("pid out of range")
    }

    fn signal(&self, i: usize, sig: libc::c_int) -> Result<()> {
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        if unsafe { libc::kill(self.pid(i)?, sig) } != 0 {
            bail!("kill node{i}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn kill9(&mut self, i: usize) -> Result<()> {
        if let Some(mut child) = self.procs[i - 1].take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    fn set_paused(&mut self, i: usize, paused: bool) -> Result<()> {
        self.signal(i, if paused { libc::SIGSTOP } else { libc::SIGCONT })?;
        self.paused[i - 1] = paused;
        Ok(())
    }

    fn set_cut(&mut self, i: usize, cut: bool) -> Result<()> {
        self.lan.set_link(i, !cut)?;
        self.cut[i - 1] = cut;
        Ok(())
    }

    fn is_faulty(&self, i: usize) -> bool {
        self.procs[i - 1].is_none() || self.paused[i - 1] || self.cut[i - 1]
    }

    /// Undoes every fault: restarts the killed, resumes the paused, reconnects the cut.
    fn heal(&mut self) -> Result<()> {
        for i in 1..=NODES {
            if self.paused[i - 1] {
                self.set_paused(i, false)?;
            }
            if self.cut[i - 1] {
                self.set_cut(i, false)?;
            }
            if self.procs[i - 1].is_none() {
                self.start(i)?;
            }
        }
        Ok(())
    }

    fn dump_logs(&self) {
        for i in 1..=NODES {
            let text = std::fs::read_to_string(self.log(i)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("----- node{i} (last 30 lines) -----");
            for l in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for i in 1..=NODES {
            if let Some(child) = self.procs[i - 1].as_mut() {
                // A stopped process still dies of SIGKILL; SIGCONT first anyway so nothing
                // is left stopped if the kill fails.
                if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                    // SAFETY: kill(2) on our own unreaped child.
                    unsafe { libc::kill(pid, libc::SIGCONT) };
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// How an HTTP exchange failed: before anything was sent (the request cannot have had an
/// effect), or after (it may have).
#[derive(Debug)]
enum HttpFailure {
    NotSent(String),
    Unknown(String),
}

/// One HTTP/1.1 request with `Connection: close`; the whole exchange within `timeout`.
fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, Value), HttpFailure> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| HttpFailure::NotSent(format!("connect {addr}: {e}")))?;
    let unknown = |e: std::io::Error| HttpFailure::Unknown(format!("{method} {target}: {e}"));
    stream.set_read_timeout(Some(timeout)).map_err(unknown)?;
    stream.set_write_timeout(Some(timeout)).map_err(unknown)?;
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {HTTP_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).map_err(unknown)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(unknown)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| HttpFailure::Unknown(format!("{method} {target}: truncated answer")))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpFailure::Unknown(format!("{method} {target}: bad status line")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    let json = serde_json::from_str(&body).unwrap_or(Value::Null);
    Ok((status, json))
}

fn dechunk(mut data: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = data.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        data = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn gateway(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 77, 0, i as u8], HTTP_PORT))
}

fn key_name(k: usize) -> String {
    format!("chaos/k{k}")
}

/// Per-node status from the hub; `None` for a node that does not answer.
fn statuses() -> Vec<Option<Value>> {
    (1..=NODES)
        .map(
            |i| match http(gateway(i), "GET", "/v1/status", b"", Duration::from_secs(3)) {
                Ok((200, v)) => Some(v),
                _ => None,
            },
        )
        .collect()
}

/// Whether all five nodes answer, are ready in one cluster, and every partition has a leader
/// with three voters by its leader's word.
fn settled() -> Result<bool, String> {
    let all = statuses();
    let answering: Vec<&Value> = all.iter().flatten().collect();
    if answering.len() < NODES {
        return Err(format!("{} of {NODES} nodes answer", answering.len()));
    }
    let ids: std::collections::BTreeSet<String> = answering
        .iter()
        .map(|s| s["cluster_id"].to_string())
        .collect();
    if ids.len() != 1 {
        return Err(format!("cluster ids {ids:?}"));
    }
    if let Some(s) = answering.iter().find(|s| s["state"] != "ready") {
        return Err(format!("node {} is {}", s["node"], s["state"]));
    }
    let mut led: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
    for s in &answering {
        for g in s["groups"].as_array().into_iter().flatten() {
            if g["role"] == "Leader" && g["partition"].is_u64() {
                let term = g["term"].as_u64().unwrap_or(0);
                let voters = g["voters"].as_array().map_or(0, Vec::len);
                let e = led
                    .entry(g["partition"].as_u64().unwrap_or(u64::MAX))
                    .or_insert((term, voters));
                if term >= e.0 {
                    *e = (term, voters);
                }
            }
        }
    }
    let full = (0..u64::from(PARTITIONS))
        .filter(|p| led.get(p).is_some_and(|&(_, v)| v == 3))
        .count();
    if full < PARTITIONS as usize {
        return Err(format!(
            "{full} of {PARTITIONS} partitions led with 3 voters"
        ));
    }
    Ok(true)
}

fn wait_settled(since: Instant, what: &str) -> Result<Duration> {
    let mut last = String::new();
    while since.elapsed() < SETTLE {
        match settled() {
            Ok(true) => return Ok(since.elapsed()),
            Ok(false) => {}
            Err(why) => last = why,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("{what}: not settled within {SETTLE:?}; last: {last}")
}

use linearizability::{Expect, Input, Output, Verdict};

/// What a client did: one key's operation as the checker sees it, or `None` when it failed in
/// a way that guarantees it had no effect (such operations are left out of the history).
struct Op {
    key: usize,
    op: Option<linearizability::Operation>,
    /// Why it failed or is unknown, for the run's summary.
    trouble: Option<String>,
}

/// Values are unique per write: client c's n-th operation writes `c * 2^32 + n`, sent as
/// its decimal text, so a read names the write it sees.
fn value_of(client: usize, seq: u64) -> u64 {
    ((client as u64) << 32) | seq
}

fn parse_value(json: &Value) -> Result<Option<u64>, String> {
    match &json["value"] {
        Value::Null => Ok(None),
        Value::String(s) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("a value nobody wrote: {s:?}")),
        other => Err(format!("a value nobody wrote: {other}")),
    }
}

/// Runs one client until `stop`, recording every operation. Its thread lives in the hub's
/// namespace, from where the nodes' gateways are reachable.
fn client(
    hub: String,
    id: usize,
    seed: u64,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Op>>>,
) -> Result<usize> {
    netns::enter(&hub)?;
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut seq = 0u64;
    let mut done = 0;
    while !stop.load(Ordering::Relaxed) {
        let node = rng.gen_range(1..=NODES);
        let key = rng.gen_range(0..KEYS);
        seq += 1;
        let value = value_of(id, seq);
        let roll = rng.gen_range(0..100);
        let input = if roll < 40 {
            Input::Get
        } else if roll < 70 {
            Input::Put(value)
        } else if roll < 85 {
            let expect = if rng.gen_bool(0.3) {
                Expect::Absent
            } else {
                // A value some client wrote lately: a fair chance to hold.
                let c = rng.gen_range(0..CLIENTS);
                Expect::Value(value_of(c, seq.saturating_sub(rng.gen_range(1..8)).max(1)))
            };
            Input::Cas {
                expect,
                then: Some(value),
            }
        } else {
            Input::Delete
        };
        let op = perform(id, node, key, input, epoch).map_err(|e| anyhow!("client {id}: {e}"))?;
        history
            .lock()
            .map_err(|_| anyhow!("history lock poisoned"))?
            .push(op);
        done += 1;
    }
    Ok(done)
}

/// The outcome of one HTTP exchange for the checker.
enum Outcome {
    /// Answered: the operation took effect (or, for a read, saw) as the output says.
    Done(Output),
    /// Certainly had no effect (never sent, refused before proposing, or a read without an
    /// answer), and why.
    Failed(String),
    /// May or may not have taken effect, and why.
    Unknown(String),
}

/// Sends one operation to node `node`'s gateway and classifies the answer. An answer the
/// API does not document is an error of the test run.
fn perform(client: usize, node: usize, key: usize, input: Input, epoch: Instant) -> Result<Op> {
    let path = format!("/v1/kv/{}", key_name(key));
    let (method, target, body) = match input {
        Input::Get => ("GET", path.clone(), Vec::new()),
        Input::Put(v) => ("PUT", path.clone(), v.to_string().into_bytes()),
        Input::Delete => ("DELETE", path.clone(), Vec::new()),
        Input::Cas { expect, then } => {
            let new = then.map(|v| v.to_string()).unwrap_or_default();
            let body = match expect {
                Expect::Value(v) => {
                    serde_json::json!({"expect_value": v.to_string(), "value": new})
                }
                Expect::Absent => serde_json::json!({"expect_absent": true, "value": new}),
            };
            ("POST", format!("{path}/cas"), body.to_string().into_bytes())
        }
        Input::Txn { .. } => return Err(anyhow!("this workload has no pair transactions")),
    };
    let call = epoch.elapsed().as_nanos() as u64;
    let answer = http(gateway(node), method, &target, &body, REQUEST_TIMEOUT);
    let ret = epoch.elapsed().as_nanos() as u64;
    let outcome = match answer {
        Err(HttpFailure::NotSent(why)) => Outcome::Failed(why),
        // A read that got no answer had no effect either way.
        Err(HttpFailure::Unknown(why)) if input == Input::Get => Outcome::Failed(why),
        Err(HttpFailure::Unknown(why)) => Outcome::Unknown(why),
        Ok((status, json)) => classify(input, status, &json)
            .map_err(|e| anyhow!("{method} {target} -> {status} {json}: {e}"))?,
    };
    let (op, trouble) = match outcome {
        Outcome::Failed(why) => (None, Some(why)),
        Outcome::Unknown(why) => (
            Some(linearizability::Operation {
                client: client as u64,
                call,
                ret: None,
                input,
            }),
            Some(why),
        ),
        Outcome::Done(output) => (
            Some(linearizability::Operation {
                client: client as u64,
                call,
                ret: Some((ret, output)),
                input,
            }),
            None,
        ),
    };
    Ok(Op { key, op, trouble })
}

/// What an HTTP answer says about an operation (docs/http-api.md, "Errors": which errors mean the
/// write did not happen and which leave it open).
fn classify(input: Input, status: u16, json: &Value) -> Result<Outcome, String> {
    let code = json["error"]["code"].as_str().unwrap_or("");
    Ok(match (input, status) {
        (Input::Get, 200) => Outcome::Done(Output::Get(parse_value(json)?)),
        (Input::Get, 404) if code == "not_found" => Outcome::Done(Output::Get(None)),
        (Input::Put(_), 200) => Outcome::Done(Output::Put),
        (Input::Delete, 200) => Outcome::Done(Output::Delete {
            deleted: json["deleted"]
                .as_bool()
                .ok_or("a delete answer without `deleted`")?,
        }),
        (Input::Cas { expect, .. }, 200) => Outcome::Done(Output::Cas {
            succeeded: true,
            before: match expect {
                Expect::Absent => None,
                Expect::Value(v) => Some(v),
            },
        }),
        (Input::Cas { .. }, 409) if code == "cas_conflict" => Outcome::Done(Output::Cas {
            succeeded: false,
            before: parse_value(&json["current"])?,
        }),
        (Input::Get, 503 | 504) => Outcome::Failed(format!("{status} {code}")),
        // Refusals that guarantee nothing happened.
        (_, 503) if matches!(code, "unavailable" | "not_leader" | "not_ready") => {
            Outcome::Failed(format!("{status} {code}"))
        }
        // leader_changed, disconnected, timeout, stale_retry: maybe.
        (_, 503 | 504) => Outcome::Unknown(format!("{status} {code}")),
        (_, 409) if code == "stale_retry" => Outcome::Unknown(format!("{status} {code}")),
        _ => return Err("an answer the API does not document for this request".into()),
    })
}

#[test]
fn lan_chaos_history_is_linearizable_and_keeps_every_acknowledged_write() -> Result<()> {
    if skip_unless(&[Need::Root, Need::Ip], "network namespaces")? {
        return Ok(());
    }
    let seed: u64 = match std::env::var("SWARMKV_CHAOS_SEED") {
        Ok(s) => s.parse().context("SWARMKV_CHAOS_SEED")?,
        Err(_) => rand::random(),
    };
    let secs: u64 = match std::env::var("SWARMKV_CHAOS_SECS") {
        Ok(s) => s.parse().context("SWARMKV_CHAOS_SECS")?,
        Err(_) => 30,
    };
    println!(
        "lan chaos: seed {seed}, {secs} s of faults \
         (replay: SWARMKV_CHAOS_SEED={seed} cargo test --test lan_chaos -- --nocapture)"
    );
    let lan = Lan::build("skvc", NODES)?;
    let mut nodes = Nodes {
        lan,
        dir: tempfile::tempdir()?,
        procs: (0..NODES).map(|_| None).collect(),
        paused: vec![false; NODES],
        cut: vec![false; NODES],
    };
    let result = run(&mut nodes, seed, secs);
    if result.is_err() {
        nodes.dump_logs();
        eprintln!("lan chaos failed with seed {seed}: SWARMKV_CHAOS_SEED={seed} cargo test --test lan_chaos -- --nocapture");
    }
    result
}

fn run(nodes: &mut Nodes, seed: u64, secs: u64) -> Result<()> {
    let hub = nodes.lan.hub();
    // This thread also speaks to the gateways (status polls): it enters the hub too. Child
    // processes are started with `ip netns exec` into their own namespaces regardless.
    netns::enter(&hub)?;
    let start = Instant::now();
    for i in 1..=NODES {
        nodes.start(i)?;
    }
    let formed = wait_settled(start, "formation")?;
    println!("formed and replicated in {formed:.1?}");

    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (hub, stop, history) = (hub.clone(), stop.clone(), history.clone());
            std::thread::spawn(move || client(hub, id, seed, epoch, stop, history))
        })
        .collect();

    // The nemesis: one seeded schedule of faults, each undone after a few seconds, never
    // more than a minority faulty at once.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut undo: Vec<(Instant, usize, &'static str)> = Vec::new();
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let faults_until = Instant::now() + Duration::from_secs(secs);
    let mut next_fault = Instant::now() + Duration::from_millis(rng.gen_range(1000..3000));
    while Instant::now() < faults_until {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = undo.drain(..).partition(|(at, _, _)| *at <= now);
        undo = later;
        for (_, i, fault) in due {
            match fault {
                "kill" => nodes.start(i)?,
                "pause" => nodes.set_paused(i, false)?,
                _ => nodes.set_cut(i, false)?,
            }
        }
        if now >= next_fault {
            let faulty = (1..=NODES).filter(|&i| nodes.is_faulty(i)).count();
            let healthy: Vec<usize> = (1..=NODES).filter(|&i| !nodes.is_faulty(i)).collect();
            if faulty < MAX_FAULTY && !healthy.is_empty() {
                let i = healthy[rng.gen_range(0..healthy.len())];
                let fault = ["kill", "pause", "cut"][rng.gen_range(0..3)];
                match fault {
                    "kill" => nodes.kill9(i)?,
                    "pause" => nodes.set_paused(i, true)?,
                    _ => nodes.set_cut(i, true)?,
                }
                println!("{:>6.1?}  {fault} node{i}", epoch.elapsed());
                *counts.entry(fault).or_default() += 1;
                let lasts = Duration::from_millis(rng.gen_range(1500..6000));
                undo.push((now + lasts, i, fault));
            }
            next_fault = now + Duration::from_millis(rng.gen_range(1000..4000));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    nodes.heal()?;
    println!("{:>6.1?}  healed", epoch.elapsed());
    stop.store(true, Ordering::Relaxed);
    let mut ops_per_client = Vec::new();
    for c in clients {
        ops_per_client.push(
            c.join()
                .map_err(|_| anyhow!("a client thread panicked"))??,
        );
    }
    let healed = Instant::now();
    let recovered = wait_settled(healed, "recovery")?;
    println!("recovered in {recovered:.1?}");

    // Every key read once more after the heal: these reads must see every acknowledged write
    // that was not overwritten, or the history is not linearizable.
    let mut final_reads = 0;
    for k in 0..KEYS {
        let node = 1 + k % NODES;
        let until = Instant::now() + SETTLE;
        loop {
            let op = perform(CLIENTS, node, k, Input::Get, epoch)?;
            if op.op.is_some() {
                history
                    .lock()
                    .map_err(|_| anyhow!("history lock poisoned"))?
                    .push(op);
                final_reads += 1;
                break;
            }
            if Instant::now() > until {
                bail!("no final read of {} within {SETTLE:?}", key_name(k));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    let history = std::mem::take(
        &mut *history
            .lock()
            .map_err(|_| anyhow!("history lock poisoned"))?,
    );
    let failed = history.iter().filter(|o| o.op.is_none()).count();
    let mut troubles: BTreeMap<String, usize> = BTreeMap::new();
    for why in history.iter().filter_map(|o| o.trouble.as_ref()) {
        // "connect 10.77.0.3:7380: Connection refused" -> counted without the address.
        let kind = why.rsplit(": ").next().unwrap_or(why).to_string();
        *troubles.entry(kind).or_default() += 1;
    }
    let mut per_key: BTreeMap<usize, Vec<linearizability::Operation>> = BTreeMap::new();
    for o in history.iter() {
        if let Some(op) = &o.op {
            per_key.entry(o.key).or_default().push(op.clone());
        }
    }
    let ops = || per_key.values().flatten();
    let acked = ops()
        .filter(|o| o.input != Input::Get && o.ret.is_some())
        .count();
    let unknown = ops().filter(|o| o.ret.is_none()).count();
    println!(
        "faults {counts:?}; operations {} ({ops_per_client:?} per client, {final_reads} final \
         reads): {acked} acknowledged writes, {unknown} unknown outcomes, {failed} failed \
         ({troubles:?})",
        history.len()
    );
    if acked == 0 {
        bail!("no write was acknowledged: the test exercised nothing");
    }
    let checked = Instant::now();
    for (key, ops) in &per_key {
        match linearizability::check(ops, None, 50_000_000) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { longest } => {
                for (i, op) in ops.iter().enumerate() {
                    let mark = if longest.contains(&i) { " " } else { "!" };
                    eprintln!("{mark} {op:?}");
                }
                bail!(
                    "the history of {} is not linearizable ({} operations; those marked !                      could not be placed)",
                    key_name(*key),
                    ops.len()
                );
            }
            Verdict::Unknown { steps } => bail!(
                "the checker gave up on {} after {steps} steps ({} operations)",
                key_name(*key),
                ops.len()
            ),
        }
    }
    println!(
        "history linearizable (checked in {:.1?})",
        checked.elapsed()
    );
    Ok(())
}
