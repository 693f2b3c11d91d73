//! What the state machine costs a replica per put: the apply (old record read, new record,
//! history event, session record, applied state) and its share of the state layer's flushes
//! into sled, without the Raft log.
//!
//! `cargo bench -p swarmkv-store --bench state_apply` runs `state_apply/put_c64`: each
//! iteration applies one put with a session (a client's retriable write, as the node proposes
//! them) to one of 64 partitions, round robin, from one of 64 clients, on a key space of
//! 10,000 keys of 256-byte values; every 256 puts the state layer is flushed to sled and synced
//! (a node at ~2,500 puts/s flushes every 100 ms, that is every ~250 puts). The time reported
//! is the process's CPU time (user + system, all threads: sled's IO threads too), not wall
//! time, since CPU per put is what bounds a busy node; throughput is in puts. Comparing two
//! builds, alternate their runs: this machine's noise is 30-40 %.
//!
//! Files live under the target directory (`CARGO_TARGET_TMPDIR`), on the disk the build runs
//! on.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use swarmkv_store::{ApplyEntry, ApplyOp, KvOp, Session, SledStore, Store, StoreConfig};

const GROUPS: u64 = 64;
const CLIENTS: u64 = 64;
const KEYS: u64 = 10_000;
const VALUE_BYTES: usize = 256;
const PUTS_PER_FLUSH: u64 = 256;

struct Replica {
    store: SledStore,
    /// Puts applied so far (picks the group, client and key of the next).
    puts: u64,
    /// Per group: its next index.
    next: Vec<u64>,
    /// Per client: its next sequence number.
    seq: Vec<u64>,
}

impl Replica {
    fn open(dir: &std::path::Path) -> Replica {
        Replica {
            store: Store::open(dir, StoreConfig::default()).expect("opening the store"),
            puts: 0,
            next: vec![1; GROUPS as usize],
            seq: vec![1; CLIENTS as usize],
        }
    }

    /// One put, and a flush every `PUTS_PER_FLUSH`.
    fn put(&mut self) {
        let n = self.puts;
        self.puts += 1;
        let g = (n % GROUPS) as usize;
        let c = ((n / 3) % CLIENTS) as usize;
        // A spread over the key space that revisits keys, as a uniform workload does.
        let key = format!("k{:015}", n.wrapping_mul(7919) % KEYS);
        let op = KvOp::Put {
            key: key.into_bytes(),
            value: vec![b'v'; VALUE_BYTES],
            lease: 0,
            prev_kv: false,
        };
        let seq = self.seq[c];
        self.seq[c] += 1;
        let session = Session {
            client: 1000 + c as u64,
            seq,
            first_incomplete: seq,
        };
        let entry = ApplyEntry {
            index: self.next[g],
            term: 1,
            op: ApplyOp::KvOnce(&op, session),
        };
        self.next[g] += 1;
        self.store
            .apply(g as u64 + 1, &[entry])
            .expect("applying a put");
        if self.puts % PUTS_PER_FLUSH == 0 {
            self.store.flush_state().expect("flushing the state layer");
        }
    }
}

/// User + system CPU time of the whole process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given and keeps no pointer to it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn state_apply(c: &mut Criterion) {
    let dir = tempfile::Builder::new()
        .prefix("state_apply")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("creating a directory under the target directory");
    let mut replica = Replica::open(dir.path());
    // Untimed: every key exists, as after a benchmark's preload.
    for _ in 0..KEYS {
        replica.put();
    }
    let mut group = c.benchmark_group("state_apply");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(1));
    group.bench_function("put_c64", |b| {
        b.iter_custom(|iters| {
            let t = cpu_time();
            for _ in 0..iters {
                replica.put();
            }
            cpu_time().saturating_sub(t)
        })
    });
    group.finish();
    drop(replica);
    drop(dir);
}

criterion_group!(benches, state_apply);
criterion_main!(benches);
