//! kill -9 crash tests of the sled store.
//!
//! A child process appends batches to several groups at once (every batch gives each group its
//! next entries and a hard state whose commit is the last of them, all in one
//! [`Store::commit`]) and prints each batch's last index once `commit` has returned. The parent
//! kills it with SIGKILL at seeded random moments, reopens the store, and checks that every
//! printed index survived, that no log has a hole or a wrong entry, that the groups agree (a
//! multi-group batch is never torn) and that each hard state matches its log. The child also
//! applies and compacts now and then, so crashes land in compactions too.
//!
//! The child is this test binary run again with only [`crash_child_process`] selected and the
//! `SWARMKV_CRASH_CHILD` environment variable naming the data directory; in a normal test run
//! that function returns at once.
//!
//! Every random choice (workload, entry sizes, kill delays) derives from one seed, printed at
//! the start of each test and taken from `SWARMKV_CRASH_SEED` when set; the OS still schedules
//! the child as it likes, so a replay repeats the schedule of kills, not the exact instants.
//! `SWARMKV_CRASH_KILLS` raises the number of kills.
#![cfg(unix)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use swarmkv_store::raft::eraftpb::{Entry, HardState};
use swarmkv_store::raft::{GetEntriesContext, Storage};
use swarmkv_store::{ApplyEntry, ApplyOp, LogBatch, Store, StoreConfig};

/// Set in the child's environment: the data directory it works in.
const CHILD_DIR_ENV: &str = "SWARMKV_CRASH_CHILD";
/// Set in the child's environment: the name of its [`Workload`].
const CHILD_WORKLOAD_ENV: &str = "SWARMKV_CRASH_WORKLOAD";
/// Set in the child's environment: the seed its entries derive from.
const CHILD_SEED_ENV: &str = "SWARMKV_CRASH_CHILD_SEED";
/// Replays a run.
const SEED_ENV: &str = "SWARMKV_CRASH_SEED";
/// Raises the number of kills of the main crash test.
const KILLS_ENV: &str = "SWARMKV_CRASH_KILLS";
/// What the child prints, followed by an index, once a commit has returned.
const COMMITTED: &str = "committed ";
/// The child stops on its own after this long, in case nobody kills it.
const CHILD_LIFETIME: Duration = Duration::from_secs(120);
/// How long the parent waits for the child's first commit before giving up.
const FIRST_COMMIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The shape of what the child writes. Entry contents derive from (seed, group, index) alone,
/// so the parent can check every entry, and a restarted child writes what a killed one would
/// have written.
#[derive(Clone, Copy, Debug)]
struct Workload {
    name: &'static str,
    /// Groups written by every batch. Ids at the edges of the key space on purpose: keys are
    /// `[group BE][tag][index BE]`, so 255/256 and `u64::MAX` test the byte order and the ends.
    groups: &'static [u64],
    /// Entry data length: `min_bytes + (hash % span_bytes)`.
    min_bytes: usize,
    span_bytes: usize,
    /// Entries per group per batch: 1 to this many.
    max_entries_per_batch: u64,
    /// Every this many batches, the batch also compacts each group...
    compact_every: u64,
    /// ...keeping at least this many entries before the batch's first new index.
    keep: u64,
}

/// Eight groups of small entries: the common case.
const SMALL: Workload = Workload {
    name: "small",
    groups: &[0, 1, 2, 255, 256, 1 << 32, u64::MAX - 1, u64::MAX],
    min_bytes: 100,
    span_bytes: 400,
    max_entries_per_batch: 4,
    compact_every: 32,
    keep: 40,
};

const BLOB: Workload = Workload {
    name: "blob",
    groups: &[7, 8],
    min_bytes: 160 * 1024,
    span_bytes: 160 * 1024,
    max_entries_per_batch: 1,
    compact_every: 8,
    keep: 6,
};

impl Workload {
    fn by_name(name: &str) -> anyhow::Result<Workload> {
        [SMALL, BLOB]
            .into_iter()
            .find(|w| w.name == name)
            .with_context(|| format!("unknown crash workload {name:?}"))
    }
}

/// SplitMix64's finalizer: a cheap, well-mixed deterministic hash.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The term of entry `index`: it grows with the index, so an entry read at the wrong place or
/// a stale hard state shows.
fn term_of(index: u64) -> u64 {
    1 + index / 50
}

fn vote_of(group: u64) -> u64 {
    1 + group % 3
}

fn entry_data(w: &Workload, seed: u64, group: u64, index: u64) -> Vec<u8> {
    let mut state = mix(seed ^ mix(group ^ mix(index)));
    let len = w.min_bytes + (state % w.span_bytes as u64) as usize;
    let mut out = Vec::with_capacity(len + 8);
    // Readable in a hex dump of a bad entry.
    out.extend_from_slice(&group.to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    while out.len() < len {
        state = mix(state);
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn entry(w: &Workload, seed: u64, group: u64, index: u64) -> Entry {
    Entry {
        index,
        term: term_of(index),
        data: entry_data(w, seed, group, index).into(),
        ..Default::default()
    }
}

/// What each group's hard state must be once its log ends at `last`.
fn hard_state_at(group: u64, last: u64) -> HardState {
    if last == 0 {
        return HardState::default();
    }
    HardState {
        term: term_of(last),
        vote: vote_of(group),
        commit: last,
        ..Default::default()
    }
}

fn entries_in_batch(w: &Workload, seed: u64, first: u64) -> u64 {
    1 + mix(seed ^ first.rotate_left(17) ^ 0x5EED) % w.max_entries_per_batch
}

/// The child half of the crash tests, not a test on its own: returns at once unless
/// `SWARMKV_CRASH_CHILD` is set, which only the parent tests below do when they re-execute
/// this binary.
#[test]
fn crash_child_process() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    if let Err(e) = run_child(Path::new(&dir)) {
        // The parent reads stderr when the child ends on its own.
        panic!("crash child failed: {e:#}");
    }
}

fn run_child(dir: &Path) -> anyhow::Result<()> {
    let w = Workload::by_name(&std::env::var(CHILD_WORKLOAD_ENV)?)?;
    let seed: u64 = std::env::var(CHILD_SEED_ENV)?.parse()?;
    let store = Store::open(dir, StoreConfig::default()).context("child: opening the store")?;

    // Resume where the previous child's last durable batch left every group.
    let mut last = None;
    for &g in w.groups {
        let l = store.group(g)?.last_index()?;
        if last.is_some_and(|prev| prev != l) {
            bail!("child: groups end at different indexes ({last:?} and {l}) on reopen");
        }
        last = Some(l);
    }
    let mut next = last.unwrap_or(0) + 1;

    let started = Instant::now();
    let mut out = std::io::stdout().lock();
    let mut batches = 0u64;
    while started.elapsed() < CHILD_LIFETIME {
        let n = entries_in_batch(&w, seed, next);
        let end = next + n - 1;
        let mut batch = LogBatch::new();
        batches += 1;
        if batches % w.compact_every == 0 {
            let ci = next.saturating_sub(w.keep);
            for &g in w.groups {
                compact_in(&store, &mut batch, g, ci)?;
            }
        }
        for &g in w.groups {
            batch.append(g, (next..=end).map(|i| entry(&w, seed, g, i)).collect());
            batch.set_hard_state(g, hard_state_at(g, end));
        }
        store
            .commit(&batch)
            .with_context(|| format!("child: committing {next}..={end}"))?;
        // An error here means the parent is gone (a closed pipe): stop.
        writeln!(out, "{COMMITTED}{end}")?;
        out.flush()?;
        next = end + 1;
    }
    Ok(())
}

/// Applies `group` up to `ci - 1` (no-op entries: only the applied index moves, in an unsynced
/// write of its own, as a node's apply loop does) and adds the compaction to `batch`.
fn compact_in<B: swarmkv_store::Backend>(
    store: &Store<B>,
    batch: &mut LogBatch,
    group: u64,
    ci: u64,
) -> anyhow::Result<()> {
    let gs = store.group(group)?;
    if ci <= gs.first_index()? {
        return Ok(());
    }
    let applied = store.apply_state(group)?.index;
    let todo: Vec<ApplyEntry<'_>> = (applied + 1..ci)
        .map(|index| ApplyEntry {
            index,
            term: term_of(index),
            op: ApplyOp::Noop,
        })
        .collect();
    store.apply(group, &todo)?;
    batch.compact(group, ci);
    Ok(())
}

/// Reopens the store in `dir` and checks it against what the child acknowledged; returns the
/// common last index of the groups.
fn verify(dir: &Path, w: &Workload, seed: u64, printed: u64) -> anyhow::Result<u64> {
    let store = Store::open(dir, StoreConfig::default()).context("reopening the store")?;
    let mut common_last = None;
    for &g in w.groups {
        let gs = store
            .group(g)
            .with_context(|| format!("loading group {g}"))?;
        let first = gs.first_index()?;
        let last = gs.last_index()?;
        ensure!(
            last >= printed,
            "group {g}: log ends at {last} but the child acknowledged {printed}: a commit that \
             returned was lost"
        );
        if let Some(l) = common_last {
            ensure!(
                l == last,
                "group {g} ends at {last}, an earlier group at {l}: a multi-group batch was torn"
            );
        }
        common_last = Some(last);

        if first > 1 {
            ensure!(
                gs.term(first - 1)? == term_of(first - 1),
                "group {g}: wrong term for the truncation point {}",
                first - 1
            );
        }
        let ents = gs
            .entries(first, last + 1, None, GetEntriesContext::empty(false))
            .with_context(|| format!("group {g}: reading entries {first}..={last}"))?;
        ensure!(
            ents.len() as u64 == last + 1 - first,
            "group {g}: {} entries read for {first}..={last}",
            ents.len()
        );
        for (e, index) in ents.iter().zip(first..) {
            ensure!(
                e.index == index,
                "group {g}: entry {} found at {index}",
                e.index
            );
            ensure!(
                e.term == term_of(index),
                "group {g}: entry {index} has term {}",
                e.term
            );
            ensure!(
                e.data[..] == entry_data(w, seed, g, index)[..],
                "group {g}: entry {index} has wrong data ({} bytes)",
                e.data.len()
            );
        }

        let hs = gs.initial_state()?.hard_state;
        ensure!(
            hs == hard_state_at(g, last),
            "group {g}: hard state {hs:?} does not match the log ending at {last}"
        );
        let applied = gs.apply_state();
        ensure!(
            applied.index + 1 >= first && applied.index <= last,
            "group {g}: applied index {} outside the log {first}..={last}",
            applied.index
        );
        if applied.index > 0 {
            ensure!(
                applied.term == term_of(applied.index),
                "group {g}: applied term {} for index {}",
                applied.term,
                applied.index
            );
        }
    }
    Ok(common_last.unwrap_or(0))
}

fn seed() -> u64 {
    match std::env::var(SEED_ENV) {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|e| panic!("{SEED_ENV}={s:?} is not a u64: {e}")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

fn print_seed(test: &str, seed: u64) {
    println!(
        "crash test seed: {seed} (replay: {SEED_ENV}={seed} cargo test -p swarmkv-store \
         --test crash {test})"
    );
}

/// A spawned child, killed (SIGKILL) if the parent bails out or panics first.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Only our own child; both fail harmlessly if it was already reaped.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How one round chooses its moment to kill.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// This long after the child's first acknowledged commit (the round makes progress).
    AfterFirstCommit(Duration),
    /// This long after spawning, whatever the child is doing (opening, recovering...).
    AfterSpawn(Duration),
}

/// Runs one child until it is killed; returns the highest index it acknowledged.
fn run_round(dir: &Path, w: &Workload, seed: u64, kill_at: KillAt) -> anyhow::Result<Option<u64>> {
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .args([
            "--exact",
            "crash_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_WORKLOAD_ENV, w.name)
        .env(CHILD_SEED_ENV, seed.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning the crash child")?;
    let mut child = ChildGuard(child);
    let stdout = child.0.stdout.take().context("child stdout")?;
    let mut stderr = child.0.stderr.take().context("child stderr")?;

    let (tx, rx) = mpsc::channel::<u64>();
    let reader = thread::spawn(move || -> anyhow::Result<()> {
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if let Some(n) = line.strip_prefix(COMMITTED) {
                let n = n
                    .trim()
                    .parse()
                    .with_context(|| format!("child printed {line:?}"))?;
                // The receiver only goes away when the parent bails out.
                let _ = tx.send(n);
            }
        }
        Ok(())
    });
    let stderr_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let mut printed = Vec::new();
    let delay = match kill_at {
        KillAt::AfterSpawn(d) => d,
        KillAt::AfterFirstCommit(d) => {
            match rx.recv_timeout(FIRST_COMMIT_TIMEOUT) {
                Ok(n) => printed.push(n),
                // Disconnected: the child closed its stdout, i.e. ended on its own; below
                // reports how.
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("the child committed nothing in {FIRST_COMMIT_TIMEOUT:?}")
                }
            }
            d
        }
    };
    thread::sleep(delay);
    // On Unix, Child::kill is SIGKILL.
    child.0.kill().context("killing the child")?;
    let status = child.0.wait()?;
    let stderr = stderr_reader.join().unwrap_or_default();
    if status.signal() != Some(libc::SIGKILL) {
        bail!("the crash child ended on its own ({status}); its stderr:\n{stderr}");
    }
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("the stdout reader panicked"))??;
    printed.extend(rx.try_iter());
    ensure!(
        printed.windows(2).all(|p| p[0] < p[1]),
        "the child acknowledged indexes out of order: {printed:?}"
    );
    Ok(printed.last().copied())
}

/// Runs `kills` rounds of spawn, kill and verify on one data directory, which it returns.
fn crash_rounds(
    test: &str,
    w: &Workload,
    kills: usize,
    max_delay_ms: u64,
) -> anyhow::Result<tempfile::TempDir> {
    let seed = seed();
    print_seed(test, seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir()?;
    // The store in a directory of its own, so that its durable mark stays inside `tmp`.
    let dir = tmp.path().join("store");
    let mut acknowledged = 0u64;
    let mut last = 0u64;
    let started = Instant::now();
    for round in 0..kills {
        // One round in five kills at a moment that may fall before the first commit, even
        // while the store is being opened or recovered.
        let kill_at = if rng.gen_ratio(1, 5) {
            KillAt::AfterSpawn(Duration::from_millis(rng.gen_range(0..=max_delay_ms)))
        } else {
            KillAt::AfterFirstCommit(Duration::from_millis(rng.gen_range(20..=max_delay_ms)))
        };
        let printed = run_round(&dir, w, seed, kill_at)
            .with_context(|| format!("seed {seed}, round {round} ({kill_at:?})"))?;
        if let Some(p) = printed {
            ensure!(
                p > last,
                "seed {seed}, round {round}: the child acknowledged {p}, not after the {last} \
                 found on reopen"
            );
            acknowledged = p;
        }
        last = verify(&dir, w, seed, acknowledged)
            .with_context(|| format!("seed {seed}, round {round} ({kill_at:?})"))?;
        println!("round {round}: {kill_at:?}, acknowledged {printed:?}, log ends at {last}");
    }
    println!(
        "{kills} kills in {:.1?}; every group's log ends at {last}",
        started.elapsed()
    );
    Ok(tmp)
}

/// The acceptance test: at least 20 SIGKILLs at random moments of a child appending batches to
/// eight groups (with compactions); after each, every acknowledged index is present, logs have
/// no hole and hold exactly what was written, groups agree and hard states match.
#[test]
fn sigkill_never_loses_acknowledged_batches() -> anyhow::Result<()> {
    let kills = match std::env::var(KILLS_ENV) {
        Ok(s) => s.parse::<usize>().context(KILLS_ENV)?.max(20),
        Err(_) => 20,
    };
    crash_rounds(
        "sigkill_never_loses_acknowledged_batches",
        &SMALL,
        kills,
        300,
    )?;
    Ok(())
}

/// The same with entries of 160 to 320 KiB: kills land while large records of the Raft log are
/// being written, synced and compacted away.
#[test]
fn sigkill_during_large_appends_never_loses_acknowledged_batches() -> anyhow::Result<()> {
    let dir = crash_rounds(
        "sigkill_during_large_appends_never_loses_acknowledged_batches",
        &BLOB,
        8,
        150,
    )?;
    // Guards the premise: the entries went to the Raft log's segment files.
    let segments = std::fs::read_dir(dir.path().join("store").join("wal"))
        .context("the store wrote no raft log directory")?
        .count();
    ensure!(segments > 0, "the raft log has no segment file");
    Ok(())
}
