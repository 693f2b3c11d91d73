//! How a run goes (WORKLOAD.md items 2, 6, 7 and 8): every client connects to endpoint
//! `i mod n`; the key space is preloaded (untimed) over those connections; every client does
//! one untimed warm-up request; all meet at a barrier; then the timed phase, closed loop (one
//! request outstanding per client, the next sent as soon as the previous answer arrives),
//! until every client has done its share or the time bound stops new requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::sync::Barrier;

use super::conn::{Conn, Targets};
use super::progress::Phase;
use super::stats::{Report, Shape};
use super::workload::{key_of, ops_of_client, txn_pair, Op, SplitMix64};

/// How many connections are being set up at once: 256 libp2p handshakes (or gRPC channels)
/// at the same moment would only queue on 2 cores.
const CONNECTING_AT_ONCE: usize = 16;

/// After a failed request a client waits this long before the next, so that a cluster
/// without a leader for a moment does not turn the run into a hot error loop.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// A preload request that fails is sent again (the same keys and values: an idempotent
/// overwrite) up to this many times in all before the preload gives up; it is untimed setup,
/// and one slow answer must not void the run.
const PRELOAD_ATTEMPTS: u32 = 5;

/// The preload values come from generators of this seed (xor the run's), so that they differ
/// from every value the timed puts write.
const PRELOAD_SEED_XOR: u64 = 0x10AD;

/// What one timed run does.
#[derive(Clone, Debug)]
pub struct Plan {
    pub op: Op,
    pub ops: u64,
    pub keys: u64,
    pub value_size: usize,
    pub max_seconds: f64,
    pub seed: u64,
}

/// How the key space is preloaded.
#[derive(Clone, Copy, Debug)]
pub struct Preload {
    /// Concurrent loaders (sharing the clients' connections round-robin).
    pub loaders: usize,
    /// Keys per request: one transaction for etcd; swarmkv writes them one by one.
    pub batch: usize,
}

/// Connects client `i` to endpoint `i mod n`, for every client, in order. With `shared`, one
/// connection per endpoint is made and its clients share it (a deviation from the workload,
/// which gives every client its own).
pub async fn connect_all(targets: &Targets, clients: usize, shared: bool) -> Result<Vec<Conn>> {
    if shared {
        let per_endpoint =
            Box::pin(connect_all(targets, clients.min(targets.len()), false)).await?;
        return Ok((0..clients)
            .map(|i| per_endpoint[i % per_endpoint.len()].share())
            .collect());
    }
    let phase = Phase::start("connect", clients as u64);
    let counter = phase.counter();
    futures::stream::iter(0..clients)
        .map(|i| {
            let counter = counter.clone();
            async move {
                let conn = targets.connect(i).await.with_context(|| {
                    format!("client {i} cannot connect to {}", targets.describe(i))
                })?;
                counter.fetch_add(1, Ordering::Relaxed);
                Ok::<_, anyhow::Error>(conn)
            }
        })
        .buffered(CONNECTING_AT_ONCE)
        .try_collect()
        .await
}

/// How the preload went.
pub struct Preloaded {
    pub took: Duration,
    /// Requests sent again after a failure.
    pub retries: u64,
}

/// Writes every key of `[0, keys)` with a fresh value (once, unless a request must be sent
/// again after a failure).
pub async fn preload(conns: &[Conn], plan: &Plan, how: Preload) -> Result<Preloaded> {
    let started = Instant::now();
    let retries = Arc::new(AtomicU64::new(0));
    let phase = Phase::start("preload", plan.keys);
    let next = Arc::new(AtomicU64::new(0));
    let mut loaders = Vec::with_capacity(how.loaders);
    for j in 0..how.loaders.max(1) {
        let mut conn = conns[j % conns.len()].share();
        let (next, done, retries) = (next.clone(), phase.counter(), retries.clone());
        let (keys, value_size, batch) = (plan.keys, plan.value_size, how.batch.max(1) as u64);
        let mut rng = SplitMix64::for_client(plan.seed ^ PRELOAD_SEED_XOR, j);
        loaders.push(tokio::spawn(async move {
            loop {
                let lo = next.fetch_add(batch, Ordering::Relaxed);
                if lo >= keys {
                    return Ok::<_, anyhow::Error>(());
                }
                let hi = (lo + batch).min(keys);
                let items: Vec<_> = (lo..hi)
                    .map(|i| {
                        let mut value = vec![0u8; value_size];
                        rng.fill_value(&mut value);
                        (key_of(i), value)
                    })
                    .collect();
                let mut attempt = 1;
                while let Err(e) = conn.put_batch(items.clone()).await {
                    if attempt == PRELOAD_ATTEMPTS {
                        return Err(
                            e.context(format!("preloading keys [{lo}, {hi}), {attempt} attempts"))
                        );
                    }
                    attempt += 1;
                    retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(ERROR_PAUSE * 10).await;
                }
                done.fetch_add(hi - lo, Ordering::Relaxed);
            }
        }));
    }
    for loader in loaders {
        loader
            .await
            .map_err(|e| anyhow!("a preload task died: {e}"))??;
    }
    Ok(Preloaded {
        took: started.elapsed(),
        retries: retries.load(Ordering::Relaxed),
    })
}

/// What one client of the timed phase saw.
struct ClientOutcome {
    latencies_ns: Vec<u64>,
    errors: u64,
    misses: u64,
    first_error: Option<String>,
    end: Instant,
}

/// The timed phase: every client on its own connection, then the pooled report.
pub async fn timed(conns: Vec<Conn>, plan: &Plan, shape: Shape, system: &str) -> Result<Report> {
    let plan = Arc::new(plan.clone());
    let barrier = Arc::new(Barrier::new(conns.len()));
    let start: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let phase = Phase::start(plan.op.name(), plan.ops);
    let clients = conns.len();
    let mut tasks = Vec::with_capacity(clients);
    for (id, conn) in conns.into_iter().enumerate() {
        let my_ops = ops_of_client(plan.ops, clients, id);
        tasks.push(tokio::spawn(run_client(
            conn,
            id,
            my_ops,
            plan.clone(),
            barrier.clone(),
            start.clone(),
            phase.counter(),
        )));
    }
    let mut latencies = Vec::with_capacity(plan.ops as usize);
    let (mut errors, mut misses) = (0, 0);
    let mut first_error = None;
    let mut setup_error = None;
    let mut end: Option<Instant> = None;
    for task in tasks {
        match task
            .await
            .map_err(|e| anyhow!("a bench client died: {e}"))?
        {
            Ok(o) => {
                latencies.extend_from_slice(&o.latencies_ns);
                errors += o.errors;
                misses += o.misses;
                end = Some(end.map_or(o.end, |e| e.max(o.end)));
                if first_error.is_none() {
                    first_error = o.first_error;
                }
            }
            Err(e) => {
                setup_error.get_or_insert(e);
            }
        }
    }
    drop(phase);
    if let Some(e) = setup_error {
        return Err(e);
    }
    let elapsed = match (start.get(), end) {
        (Some(&t0), Some(end)) => end.duration_since(t0),
        _ => Duration::ZERO,
    };
    Ok(Report::new(
        plan.op.name(),
        system,
        shape,
        latencies,
        errors,
        misses,
        elapsed,
        first_error,
    ))
}

/// One closed-loop client: warm-up, barrier, then its share of the operations.
async fn run_client(
    mut conn: Conn,
    id: usize,
    my_ops: u64,
    plan: Arc<Plan>,
    barrier: Arc<Barrier>,
    start: Arc<OnceLock<Instant>>,
    done: Arc<AtomicU64>,
) -> Result<ClientOutcome> {
    // Untimed warm-up: a read without side effects, so the connection (and for swarmkv the
    // node's route to the partition) is in use before the clock starts.
    let warm_up = conn.get(&key_of(0), true).await;
    // Every client reaches the barrier, even after a failure, so none waits forever.
    barrier.wait().await;
    warm_up.with_context(|| format!("client {id}: warm-up request failed"))?;
    let t0 = *start.get_or_init(Instant::now);
    let bound = Duration::from_secs_f64(plan.max_seconds);
    let mut rng = SplitMix64::for_client(plan.seed, id);
    let mut value = vec![0u8; plan.value_size];
    let mut out = ClientOutcome {
        latencies_ns: Vec::with_capacity(my_ops as usize),
        errors: 0,
        misses: 0,
        first_error: None,
        end: t0,
    };
    for _ in 0..my_ops {
        if t0.elapsed() >= bound {
            break;
        }
        let key = key_of(rng.key_index(plan.keys));
        let result = match plan.op {
            Op::Put => {
                // The value is made before the clock starts for this request.
                rng.fill_value(&mut value);
                let sent = Instant::now();
                conn.put(&key, &value)
                    .await
                    .map(|()| (sent.elapsed(), true))
            }
            Op::Txn => {
                rng.fill_value(&mut value);
                let (a, b) = txn_pair(&key);
                let sent = Instant::now();
                conn.txn_pair(&a, &b, &value)
                    .await
                    .map(|()| (sent.elapsed(), true))
            }
            Op::GetLinearizable | Op::GetSerializable => {
                let serializable = plan.op == Op::GetSerializable;
                let sent = Instant::now();
                conn.get(&key, serializable)
                    .await
                    .map(|hit| (sent.elapsed(), hit))
            }
        };
        match result {
            Ok((latency, hit)) => {
                out.latencies_ns
                    .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
                out.misses += u64::from(!hit);
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                out.errors += 1;
                if out.first_error.is_none() {
                    out.first_error = Some(format!("{e:#}"));
                }
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    out.end = Instant::now();
    Ok(out)
}
