//! Log append throughput with one fsync per batch, and the raw fsync latency of the same disk.
//!
//! `cargo bench -p swarmkv-store` runs, in one process:
//! - `log_append/{e}x{g}`: each iteration builds one [`LogBatch`] giving each of `g` groups `e`
//!   new 256-byte entries and a hard state, and commits it ([`Store::commit`]: one atomic write
//!   and one real fdatasync). Throughput is in entries (`e * g` per iteration), for
//!   `e` in {1, 16, 256} and `g` in {1, 64}.
//! - `fsync/*`: `File::sync_data` (fdatasync) after appending 4 KiB or 256 bytes to a file, and
//!   after overwriting 4 KiB in place (no size change, so no metadata to write), in the same
//!   directory as the store: the floor under any commit.
//!
//! Files live under the target directory (`CARGO_TARGET_TMPDIR`), on the disk the build runs
//! on; a tmpfs `/tmp` would make fsync free and the figures meaningless.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use swarmkv_store::raft::eraftpb::{Entry, HardState};
use swarmkv_store::raft::Storage;
use swarmkv_store::{ApplyEntry, ApplyOp, LogBatch, SledStore, Store, StoreConfig};

const ENTRY_BYTES: usize = 256;
const ENTRIES_PER_GROUP: [u64; 3] = [1, 16, 256];
const GROUPS_PER_BATCH: [u64; 2] = [1, 64];
/// Compact (outside the timed part) once a group's log holds this many entries, so the size
/// of the log does not drift with the number of iterations criterion picks.
const MAX_LOG_LEN: u64 = 4096;
/// Start the fsync files over once they reach this size.
const MAX_FILE_LEN: u64 = 64 << 20;
const TERM: u64 = 1;

fn bench_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("log_append")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("creating a directory under the target directory")
}

/// One case's store and where its groups' logs stand (all groups advance together).
struct Log {
    store: SledStore,
    groups: Vec<u64>,
    template: Entry,
    /// Index of the next entry of every group.
    next: u64,
    /// First index still in every group's log.
    first: u64,
}

impl Log {
    fn open(dir: &Path, groups: u64) -> Log {
        let store = Store::open(dir, StoreConfig::default()).expect("opening the store");
        Log {
            store,
            groups: (1..=groups).collect(),
            template: Entry {
                term: TERM,
                data: vec![0xA5; ENTRY_BYTES].into(),
                ..Default::default()
            },
            next: 1,
            first: 1,
        }
    }

    /// The timed part: build one batch of `per_group` entries and a hard state for every
    /// group, and commit it.
    fn append(&mut self, per_group: u64) {
        let last = self.next + per_group - 1;
        let mut batch = LogBatch::new();
        for &g in &self.groups {
            let entries = (self.next..=last)
                .map(|index| {
                    // Shares the data buffer: a node hands the store entries it already holds.
                    let mut e = self.template.clone();
                    e.index = index;
                    e
                })
                .collect();
            batch.append(g, entries);
            batch.set_hard_state(
                g,
                HardState {
                    term: TERM,
                    vote: 1,
                    commit: last,
                    ..Default::default()
                },
            );
        }
        let stats = self.store.commit(&batch).expect("committing a batch");
        debug_assert_eq!(stats.syncs, 1);
        self.next = last + 1;
    }

    /// Applies and compacts every group's whole log (not timed).
    fn compact_all(&mut self) {
        let last = self.next - 1;
        let mut batch = LogBatch::new();
        for &g in &self.groups {
            let applied = self.store.apply_state(g).expect("apply state").index;
            let todo: Vec<ApplyEntry<'_>> = (applied + 1..=last)
                .map(|index| ApplyEntry {
                    index,
                    term: TERM,
                    op: ApplyOp::Noop,
                })
                .collect();
            self.store.apply(g, &todo).expect("applying");
            batch.compact(g, last + 1);
        }
        self.store.commit(&batch).expect("compacting");
        self.first = last + 1;
        let g0 = self.store.group(self.groups[0]).expect("group");
        debug_assert_eq!(g0.first_index().ok(), Some(self.first));
    }
}

fn log_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_append");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for groups in GROUPS_PER_BATCH {
        for per_group in ENTRIES_PER_GROUP {
            let dir = bench_dir();
            let mut log = Log::open(dir.path(), groups);
            group.throughput(Throughput::Elements(per_group * groups));
            group.bench_function(
                BenchmarkId::new(format!("{groups}_groups"), format!("{per_group}_entries")),
                |b| {
                    b.iter_custom(|iters| {
                        let mut timed = Duration::ZERO;
                        for _ in 0..iters {
                            if log.next - log.first + per_group > MAX_LOG_LEN {
                                log.compact_all();
                            }
                            let t = Instant::now();
                            log.append(per_group);
                            timed += t.elapsed();
                        }
                        timed
                    })
                },
            );
            // The store goes before its directory.
            drop(log);
            drop(dir);
        }
    }
    group.finish();
}

/// Appends (or overwrites in place) `len` bytes, then fdatasyncs.
fn raw_sync(file: &mut File, len: usize, in_place: bool, buf: &[u8]) {
    if in_place {
        file.seek(SeekFrom::Start(0)).expect("seek");
    } else if file.stream_position().expect("position") >= MAX_FILE_LEN {
        file.set_len(0).expect("truncate");
        file.seek(SeekFrom::Start(0)).expect("seek");
    }
    file.write_all(&buf[..len]).expect("write");
    file.sync_data().expect("sync_data");
}

fn fsync(c: &mut Criterion) {
    let dir = bench_dir();
    let mut group = c.benchmark_group("fsync");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let buf = vec![0x5A; 4096];
    for (name, len, in_place) in [
        ("append_4KiB_sync_data", 4096, false),
        ("append_256B_sync_data", 256, false),
        ("overwrite_4KiB_sync_data", 4096, true),
    ] {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.path().join(name))
            .expect("creating the fsync file");
        // The overwrite case starts from a block that is already allocated and synced.
        file.write_all(&buf).expect("write");
        file.sync_all().expect("sync_all");
        group.bench_function(name, |b| {
            b.iter(|| raw_sync(&mut file, len, in_place, &buf))
        });
    }
    group.finish();
}

criterion_group!(benches, fsync, log_append);
criterion_main!(benches);
