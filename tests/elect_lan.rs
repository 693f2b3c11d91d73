//! `swarmkv elect NAME VALUE -- COMMAND` on a LAN of network namespaces: three nodes started
//! with nothing but `--data` (they find each other by mDNS), one candidate per node talking to
//! its own node's gateway, each running a command while it leads. The leader's node is then
//! cut off the LAN: the leader's `elect` must stop its command and exit (status 124) before
//! any other candidate prints a token, and another candidate must then be elected.
//!
//! Needs root and `ip` (network namespaces); skips visibly otherwise (tests/common/needs.rs).
//! mDNS runs only inside the namespaces this test creates. A drop guard kills every process
//! it started (by pid) and deletes the namespaces.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

#[path = "common/needs.rs"]
mod needs;
#[path = "common/netns.rs"]
mod netns;

use anyhow::{bail, ensure, Context, Result};
use needs::{skip_unless, Need};

const BIN: &str = env!("CARGO_BIN_EXE_swarmkv");
const NODES: usize = 3;
/// The candidates' lease TTL (the product's minimum is four election timeouts, 4 s).
const TTL: &str = "5s";
/// How long the nodes may take to form a cluster that serves keys.
const FORMATION: Duration = Duration::from_secs(60);
/// How long after the cut another candidate must be elected.
const FAILOVER: Duration = Duration::from_secs(40);

/// A process of the test, with the file its output goes to; killed by pid when dropped.
struct Proc {
    child: Child,
    out: PathBuf,
}

/// The namespaces, the nodes and the candidates of one run.
struct Lan {
    /// Dropped after the processes (see `Drop`).
    net: netns::Lan,
    nodes: Vec<Proc>,
    candidates: Vec<Proc>,
    dir: tempfile::TempDir,
}

impl Lan {
    fn build() -> Result<Lan> {
        Ok(Lan {
            net: netns::Lan::build("skve", NODES)?,
            nodes: Vec::new(),
            candidates: Vec::new(),
            dir: tempfile::tempdir()?,
        })
    }

    fn spawn(&self, i: usize, args: &[String], out: PathBuf, err: PathBuf) -> Result<Proc> {
        let child = self
            .net
            .command(i, BIN)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(File::create(&out)?)
            .stderr(File::create(err)?)
            .spawn()
            .context("spawning swarmkv")?;
        Ok(Proc { child, out })
    }

    /// `swarmkv start --data DIR` in node i's namespace, and nothing else.
    fn start_node(&mut self, i: usize) -> Result<()> {
        let data = self.dir.path().join(format!("node{i}"));
        let log = self.dir.path().join(format!("node{i}.log"));
        let args = vec!["start".into(), "--data".into(), data.display().to_string()];
        let node = self.spawn(i, &args, log.clone(), log)?;
        self.nodes.push(node);
        Ok(())
    }

    /// Whether `swarmkv put` through node i's own gateway succeeds.
    fn serves(&self, i: usize) -> Result<bool> {
        let out = self
            .net
            .command(i, BIN)
            .args(["put", "probe", "1", "--retry-for", "0"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()?;
        Ok(out.status.success())
    }

    /// Candidate i: `swarmkv elect svc cI --ttl 5s -- sh -c 'echo $$ > PIDFILE; exec sleep
    /// 600'` through node i's gateway; the command's pid is in `pidfile(i)`.
    fn start_candidate(&mut self, i: usize) -> Result<()> {
        let pidfile = self.pidfile(i);
        let script = format!("echo $$ > {}; exec sleep 600", pidfile.display());
        let args: Vec<String> = [
            "elect",
            "svc",
            &format!("c{i}"),
            "--ttl",
            TTL,
            "--",
            "sh",
            "-c",
            &script,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = self.dir.path().join(format!("elect{i}.out"));
        let err = self.dir.path().join(format!("elect{i}.err"));
        let candidate = self.spawn(i, &args, out, err)?;
        self.candidates.push(candidate);
        Ok(())
    }

    fn pidfile(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("command{i}.pid"))
    }

    /// The candidates (1-based) that printed a token.
    fn elected(&self) -> Vec<usize> {
        self.candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| std::fs::read_to_string(&c.out).is_ok_and(|t| !t.trim().is_empty()))
            .map(|(i, _)| i + 1)
            .collect()
    }

    /// Whether candidate i's command still runs (its pid exists and is not a zombie).
    fn command_runs(&self, i: usize) -> bool {
        let Ok(pid) = std::fs::read_to_string(self.pidfile(i)) else {
            return false;
        };
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()));
        // The third field of /proc/PID/stat is the state; Z is a zombie.
        stat.is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                != Some("Z")
        })
    }

    fn dump(&self) {
        let mut files: Vec<_> = std::fs::read_dir(self.dir.path())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for f in files.iter().filter(|f| f.is_file()) {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("----- {} (last 20 lines) -----", f.display());
            for l in &lines[lines.len().saturating_sub(20)..] {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for p in self.candidates.iter_mut().chain(self.nodes.iter_mut()) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        // The commands outlive a killed `elect`: end them by the pids they wrote.
        for i in 1..=NODES {
            if let Ok(pid) = std::fs::read_to_string(self.pidfile(i)) {
                if let Ok(pid) = pid.trim().parse::<libc::pid_t>() {
                    if self.command_runs(i) {
                        // SAFETY: kill(2) of a command this test started and saw running.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
    }
}

fn wait_until(
    what: &str,
    patience: Duration,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < patience {
        if done()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("{what}: not within {patience:?}")
}

#[test]
fn a_leader_cut_off_the_lan_stops_its_command_before_another_is_elected() -> Result<()> {
    if skip_unless(&[Need::Root, Need::Ip], "network namespaces")? {
        return Ok(());
    }
    let mut lan = Lan::build()?;
    let run = run(&mut lan);
    if run.is_err() {
        lan.dump();
    }
    run
}

fn run(lan: &mut Lan) -> Result<()> {
    for i in 1..=NODES {
        lan.start_node(i)?;
    }
    for i in 1..=NODES {
        wait_until(&format!("node{i} serving keys"), FORMATION, || {
            lan.serves(i)
        })?;
    }
    lan.start_candidate(1)?;
    wait_until("a first leader", FAILOVER, || Ok(!lan.elected().is_empty()))?;
    for i in 2..=NODES {
        lan.start_candidate(i)?;
    }
    // The others are in line behind the leader, and its command runs.
    std::thread::sleep(Duration::from_secs(2));
    let leaders = lan.elected();
    ensure!(leaders == vec![1], "leaders before the cut: {leaders:?}");
    ensure!(lan.command_runs(1), "the leader's command does not run");

    lan.net.set_link(1, false)?;
    let cut = Instant::now();
    let mut gone: Option<(Duration, Option<i32>)> = None;
    loop {
        let elapsed = cut.elapsed();
        ensure!(
            elapsed < FAILOVER,
            "no other candidate elected within {FAILOVER:?}"
        );
        if gone.is_none() {
            if let Some(status) = lan.candidates[0].child.try_wait()? {
                if !lan.command_runs(1) {
                    gone = Some((elapsed, status.code()));
                }
            }
        }
        let others: Vec<usize> = lan.elected().into_iter().filter(|&c| c != 1).collect();
        if !others.is_empty() {
            let Some((gone_after, code)) = gone else {
                bail!(
                    "candidate {others:?} printed a token {elapsed:?} after the cut while the \
                     cut-off leader's elect or command still ran"
                );
            };
            println!(
                "cut-off leader's elect and command gone {gone_after:?} after the cut (exit \
                 {code:?}); candidate {others:?} elected {elapsed:?} after the cut"
            );
            ensure!(
                code == Some(124),
                "the cut-off elect exited {code:?}, not 124"
            );
            ensure!(others.len() == 1, "two new leaders: {others:?}");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
