//! Locks on a 3-node in-process cluster on 127.0.0.1: holders taking turns through different
//! nodes never hold at the same instant and their fencing tokens strictly increase, also
//! across the kill of the node a holder talks through; a lock is not the election of the same
//! name; `POST /v1/lock/{name}/acquire|release` and `GET /v1/lock/{name}` over HTTP.
//!
//! How long each holder keeps the lock comes from a seed that is printed;
//! `SWARMKV_TEST_SEED=N` replays it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::gateway::Gateway;
use common::http::request;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use swarmkv::core::{ClientError, CoreConfig};
use swarmkv::{CampaignError, Client};
use tokio::sync::watch;

const P: u32 = 4;
const TTL: Duration = Duration::from_secs(4);

fn fast_core() -> CoreConfig {
    CoreConfig {
        tick_ms: 50,
        ..CoreConfig::default()
    }
}

/// One holding of the lock: (holder, node, token, from, until).
type Hold = (usize, usize, u64, Instant, Instant);

/// A holder: takes the lock through `client` (on node `node`), keeps it for a random while,
/// releases it, and again, until `stop`. A lease that is lost is replaced.
async fn holder(
    me: usize,
    node: usize,
    client: Arc<Client>,
    holds: Arc<Mutex<Vec<Hold>>>,
    stop: watch::Receiver<bool>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (me as u64 + 1).wrapping_mul(0x9e37_79b9));
    while !*stop.borrow() {
        let Ok(lease) = client.grant_kept_alive(TTL).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !*stop.borrow() {
            let mut guard = match client
                .lock("jobs", format!("h{me}").as_bytes(), &lease)
                .await
            {
                Ok(g) => g,
                Err(CampaignError::LeaseLost(_)) => break,
                Err(_) => continue,
            };
            let from = Instant::now();
            let hold_for = Duration::from_millis(rng.gen_range(100..600));
            let until = tokio::select! {
                loss = guard.lost() => Some(loss.at),
                _ = tokio::time::sleep(hold_for) => None,
            };
            let until = match until {
                Some(at) => at,
                None => {
                    let _ = guard.unlock().await;
                    guard.lost().await.at
                }
            };
            holds
                .lock()
                .unwrap()
                .push((me, node, guard.token(), from, until));
            if lease.lost_now().is_some() {
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_never_overlap_and_tokens_increase_across_a_node_kill() -> Result<()> {
    let _serial = serial().await;
    let seed = test_seed();
    let mut cluster = TestCluster::start(3, P, fast_core()).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(Arc::new(cluster.client(i).await));
    }
    // An election named like the lock is another thing: it has its own leader at once.
    let other = clients[0].grant_kept_alive(TTL).await?;
    let elected = clients[0].campaign("jobs", b"elected", &other).await?;
    let holds = Arc::new(Mutex::new(Vec::new()));
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    for me in 0..4 {
        let node = me % 3;
        tasks.push(tokio::spawn(holder(
            me,
            node,
            Arc::clone(&clients[node]),
            Arc::clone(&holds),
            stop.clone(),
            seed,
        )));
    }
    let count = || holds.lock().unwrap().len();
    let until = Instant::now() + Duration::from_secs(60);
    while count() < 5 {
        ensure!(Instant::now() < until, "fewer than 5 holdings in 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The election named like the lock kept its own leader while the holders took turns (it
    // is checked before the kill: a kill of the meta leader may cost it its lease).
    ensure!(
        elected.is_leader(),
        "the election of the same name was disturbed"
    );
    let leader = clients[0]
        .leader("jobs")
        .await?
        .context("the election's leader")?;
    ensure!(leader.token == elected.token(), "{leader:?}");
    // Kill node 2, which holder 2 talks through, then let the others go on.
    cluster.kill(2).await;
    let t_kill = Instant::now();
    let more = count() + 5;
    let until = Instant::now() + TTL + Duration::from_secs(30);
    while count() < more {
        ensure!(
            Instant::now() < until,
            "the lock was not handed on after the kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    for (i, t) in tasks.into_iter().enumerate() {
        if i % 3 == 2 {
            t.abort(); // its node is gone; its client retries until its deadline
            continue;
        }
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .context("a holder did not stop")??;
    }
    let mut holds = holds.lock().unwrap().clone();
    holds.sort_by_key(|h| h.3);
    println!(
        "{} holdings, {} after the kill",
        holds.len(),
        holds.iter().filter(|h| h.3 > t_kill).count()
    );
    for w in holds.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        ensure!(
            a.4 <= b.3,
            "holders {} and {} overlapped (tokens {:x} and {:x})",
            a.0,
            b.0,
            a.2,
            b.2
        );
        ensure!(b.2 > a.2, "token {:x} follows {:x}", b.2, a.2);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_over_http_acquire_in_line_release_and_show_the_holder() -> Result<()> {
    let _serial = serial().await;
    let cluster = TestCluster::start(3, P, fast_core()).await;
    let gw = Gateway::for_client(cluster.client(1).await).await?;
    let addr = gw.addr;
    let grant = || async move {
        let l = request(addr, "POST", "/v1/lease", br#"{"ttl": 30}"#)
            .await?
            .expect(200)?;
        anyhow::Ok(l["id"].as_str().context("lease id")?.to_string())
    };
    let (la, lb) = (grant().await?, grant().await?);
    let free = request(addr, "GET", "/v1/lock/db", b"")
        .await?
        .expect(200)?;
    ensure!(free["leader"].is_null(), "{free}");
    let a = request(
        addr,
        "POST",
        "/v1/lock/db/acquire",
        format!(r#"{{"lease": "{la}", "value": "host-a"}}"#).as_bytes(),
    )
    .await?
    .expect(200)?;
    let ta = a["leader"]["token"].as_str().context("token")?.to_string();
    ensure!(a["leader"]["name"] == "lock:db", "{a}");
    // B waits in line (no value: the holder shows an empty one) until A releases.
    let b_body = format!(r#"{{"lease": "{lb}"}}"#);
    let b = tokio::spawn(async move {
        request(addr, "POST", "/v1/lock/db/acquire", b_body.as_bytes()).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(!b.is_finished(), "B got the lock while A held it");
    let held = request(addr, "GET", "/v1/lock/db", b"")
        .await?
        .expect(200)?;
    ensure!(held["leader"]["value"] == "host-a", "{held}");
    let released = request(
        addr,
        "POST",
        "/v1/lock/db/release",
        format!(r#"{{"lease": "{la}", "token": "{ta}"}}"#).as_bytes(),
    )
    .await?
    .expect(200)?;
    ensure!(released["released"] == ta.as_str(), "{released}");
    let b = tokio::time::timeout(Duration::from_secs(10), b)
        .await
        .context("B never got the lock")???
        .expect(200)?;
    let tb = b["leader"]["token"].as_str().context("token")?;
    ensure!(
        u64::from_str_radix(tb, 16)? > u64::from_str_radix(&ta, 16)?,
        "tokens {ta} then {tb}"
    );
    // The lock is the election `lock:db`; bad names are 400.
    let same = request(addr, "GET", "/v1/election/lock:db", b"")
        .await?
        .expect(200)?;
    ensure!(same["leader"]["token"] == tb, "{same}");
    request(addr, "GET", "/v1/lock/a%2Fb", b"")
        .await?
        .error(400)?;
    let client = cluster.client(0).await;
    ensure!(
        matches!(
            client.lock_holder("").await,
            Err(ClientError::BadRequest(_))
        ),
        "an empty lock name is refused"
    );
    gw.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_runs_commands_under_a_lock_one_at_a_time() -> Result<()> {
    use common::process::cli;
    let _serial = serial().await;
    let cluster = TestCluster::start(3, P, fast_core()).await;
    let gw = Gateway::for_client(cluster.client(0).await).await?;
    let endpoint = gw.endpoint();
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("log");
    // Each command appends "start N" then "end N" around a pause: under the lock the lines of
    // two commands never interleave.
    let run = |n: usize| {
        let endpoint = endpoint.clone();
        let script = format!(
            "echo start {n} >> {log}; sleep 0.3; echo end {n} >> {log}; exit {code}",
            log = log.display(),
            code = 10 + n
        );
        tokio::task::spawn_blocking(move || {
            cli(&[
                "lock",
                "deploy",
                "--holder",
                &format!("h{n}"),
                "--ttl",
                "4s",
                "--endpoint",
                &endpoint,
                "--",
                "sh",
                "-c",
                &script,
            ])
        })
    };
    let runs: Vec<_> = (0..3).map(run).collect();
    for (n, r) in runs.into_iter().enumerate() {
        let out = r.await??;
        ensure!(
            out.code == Some(10 + n as i32),
            "lock {n} exited {:?}: {}",
            out.code,
            out.stderr
        );
        ensure!(out.stdout.trim().len() == 16, "a token: {:?}", out.stdout);
    }
    let lines = std::fs::read_to_string(&log)?;
    let lines: Vec<&str> = lines.lines().collect();
    ensure!(lines.len() == 6, "{lines:?}");
    for pair in lines.chunks(2) {
        let n = pair[0].strip_prefix("start ").context("a start line")?;
        ensure!(pair[1] == format!("end {n}"), "interleaved: {lines:?}");
    }
    // Every holder released it: nobody holds the lock now.
    cli(&["leader", "lock:deploy", "--endpoint", &endpoint])?.expect(1)?;
    cli(&["lock", "a/b", "--endpoint", &endpoint])?.expect(2)?;
    gw.shutdown().await
}
