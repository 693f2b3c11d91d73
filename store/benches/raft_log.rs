//! The raft log's write path against the floor under it: how close one `RaftLog::write` with
//! a sync comes to a bare `pwrite` + `fdatasync` of the same bytes.
//!
//! `cargo bench -p swarmkv-store --bench raft_log` runs:
//! - `raft_log/raw_pwrite_fdatasync/300B`: 300 bytes written at the end of the data of a
//!   preallocated file, then `fdatasync`: what any durable append costs on this disk.
//! - `raft_log/write_sync/1x1`: `RaftLog::write` of a batch of one ~300-byte entry, synced.
//! - `raft_log/write_sync/16x4`: one batch of 4 such entries for each of 16 groups, synced.
//!
//! Throughput is in entries. Files live under the target directory (`CARGO_TARGET_TMPDIR`),
//! on the disk the build runs on: a tmpfs `/tmp` would make fsync free.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use swarmkv_store::raft::eraftpb::Entry;
use swarmkv_store::{DirFs, RaftLog, RaftLogBatch, RaftLogConfig};

const ENTRY_BYTES: usize = 300;
const SEGMENT_BYTES: u64 = 64 << 20;
/// Compact and purge (outside the timed part) once a group holds this many entries, so that
/// the disk use does not grow with the number of iterations criterion picks.
const MAX_LOG_LEN: u64 = 8192;

fn bench_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("raft_log")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("creating a directory under the target directory")
}

fn raw(c: &mut Criterion) {
    let dir = bench_dir();
    let path = dir.path().join("raw.log");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("creating the raw file");
    // SAFETY: `file` is open for the duration of the call.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, SEGMENT_BYTES as libc::off_t) };
    assert_eq!(rc, 0, "posix_fallocate");
    file.sync_all().expect("sync");
    let record = vec![0xA5u8; ENTRY_BYTES];
    let mut offset = 0u64;
    let mut g = c.benchmark_group("raft_log");
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw_pwrite_fdatasync/300B", |b| {
        b.iter(|| {
            if offset + ENTRY_BYTES as u64 > SEGMENT_BYTES {
                offset = 0;
            }
            file.write_all_at(&record, offset).expect("pwrite");
            file.sync_data().expect("fdatasync");
            offset += ENTRY_BYTES as u64;
        })
    });
    g.finish();
}

/// Every group of the log advances together: `next` is the index of their next entry.
struct Log {
    log: RaftLog,
    groups: u64,
    per_group: u64,
    next: u64,
    template: Entry,
}

impl Log {
    fn open(dir: &std::path::Path, groups: u64, per_group: u64) -> Log {
        let fs = DirFs::open(dir).expect("opening the directory");
        let config = RaftLogConfig {
            segment_bytes: SEGMENT_BYTES,
        };
        Log {
            log: RaftLog::open(Box::new(fs), config).expect("opening the log"),
            groups,
            per_group,
            next: 1,
            template: Entry {
                term: 1,
                data: vec![0xA5; ENTRY_BYTES].into(),
                ..Default::default()
            },
        }
    }

    /// One timed write: builds the batch and writes it with a sync.
    fn append(&mut self) -> Duration {
        let started = Instant::now();
        let mut batch = RaftLogBatch::default();
        let entries: Vec<Entry> = (self.next..self.next + self.per_group)
            .map(|index| {
                let mut e = self.template.clone();
                e.index = index;
                e
            })
            .collect();
        for group in 1..=self.groups {
            batch.append(group, &entries);
        }
        self.log.write(&batch, true).expect("writing the log");
        let elapsed = started.elapsed();
        self.next += self.per_group;
        if self.next > MAX_LOG_LEN {
            let mut batch = RaftLogBatch::default();
            for group in 1..=self.groups {
                batch.compact(group, self.next - 1, 1);
            }
            self.log.write(&batch, true).expect("compacting");
            self.log.purge().expect("purging");
        }
        elapsed
    }
}

fn raft_log(c: &mut Criterion) {
    let mut g = c.benchmark_group("raft_log");
    g.sampling_mode(SamplingMode::Flat);
    for (groups, per_group) in [(1, 1), (16, 4)] {
        let dir = bench_dir();
        let mut log = Log::open(dir.path(), groups, per_group);
        g.throughput(Throughput::Elements(groups * per_group));
        g.bench_function(format!("write_sync/{groups}x{per_group}"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| log.append()).sum())
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = raw, raft_log
}
criterion_main!(benches);
