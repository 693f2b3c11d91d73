//! Watches on in-process 3-node clusters: every event exactly once and in revision order per
//! partition across a kill of the watcher's node and a resume from a cursor through another
//! node (compared against the writes the test made); a clear error for a compacted start; the
//! HTTP server-sent events with `Last-Event-ID`; the CLI over HTTP and libp2p; a watch from a
//! scan's cursor seeing exactly the writes the scan did not (in process, over HTTP, CLI).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use swarmkv::client::HttpOptions;
use swarmkv::client::{Cursor, Watch, WatchError, WatchEvent, WatchOptions, WatchTarget};
use swarmkv::core::routing::partition_of;
use swarmkv::core::{Consistency, CoreConfig};
use swarmkv::{Client, Node, NodeHandle};
use swarmkv_store::{CasAction, Compare, EventKind};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

const P: u32 = 8;

fn fast_core() -> CoreConfig {
    CoreConfig {
        tick_ms: 50,
        ..CoreConfig::default()
    }
}

/// A change as the test made it or a watch saw it: (partition, revision, kind, key, value).
type Change = (u32, u64, EventKind, String, String);

fn change_of(e: &WatchEvent) -> Change {
    (
        e.partition,
        e.event.revision,
        e.event.kind,
        String::from_utf8_lossy(&e.event.key).into_owned(),
        String::from_utf8_lossy(&e.event.value).into_owned(),
    )
}

fn seed() -> u64 {
    std::env::var("SWARMKV_WATCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

/// Reads `watch` into `out` until told to stop; gives the watch back (with its cursor).
fn collect(
    mut watch: Watch,
    out: mpsc::UnboundedSender<(Instant, Result<WatchEvent, WatchError>)>,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<Watch>) {
    let (stop, mut stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                item = watch.next() => match item {
                    Some(item) => {
                        let failed = item.is_err();
                        let _ = out.send((Instant::now(), item));
                        if failed {
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
        watch
    });
    (stop, task)
}

/// One write of the workload: a put, or a delete by compare-and-swap on the revision the test
/// wrote last (so the test learns the delete's revision).
async fn write(
    client: &Client,
    rng: &mut StdRng,
    present: &mut BTreeMap<String, u64>,
    i: usize,
) -> Result<Option<Change>> {
    // Some writes outside the watched prefix: they must not show up.
    if rng.gen_bool(0.1) {
        client.put(format!("other/{i}").as_bytes(), b"x").await?;
        return Ok(None);
    }
    let key = format!("w/{}", rng.gen_range(0..24));
    let partition = partition_of(key.as_bytes(), P);
    if let (Some(rev), true) = (present.get(&key).copied(), rng.gen_bool(0.3)) {
        let r = client
            .cas(key.as_bytes(), Compare::ModRevision(rev), CasAction::Delete)
            .await?;
        ensure!(
            r.succeeded,
            "the test is the only writer: cas on {key}@{rev} failed"
        );
        present.remove(&key);
        return Ok(Some((
            partition,
            r.revision,
            EventKind::Delete,
            key,
            String::new(),
        )));
    }
    let value = format!("v{i}");
    let rev = client.put(key.as_bytes(), value.as_bytes()).await?;
    present.insert(key.clone(), rev);
    Ok(Some((partition, rev, EventKind::Put, key, value)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_delivers_every_event_exactly_once_across_a_node_kill_and_a_resume() -> Result<()> {
    let _serial = serial().await;
    let seed = seed();
    println!("seed {seed} (replay with SWARMKV_WATCH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = TestCluster::start(3, P, fast_core()).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(Arc::new(
            c.client(i).await.with_deadline(Duration::from_secs(30)),
        ));
    }
    let options = WatchOptions {
        poll_wait: Duration::from_millis(500),
        give_up: Duration::from_secs(60),
    };
    // The watcher reads through node 0 first; the writes go through node 1.
    let first = Watch::start(
        clients.clone(),
        WatchTarget::Prefix(b"w/".to_vec()),
        Cursor::now(),
        options,
    )
    .await?;
    println!("watch started at {}", first.cursor());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut first = Some(collect(first, tx.clone()));

    let writer = clients[1].clone();
    let mut present = BTreeMap::new();
    let mut made: Vec<Change> = Vec::new();
    // When each change was acknowledged to the writer.
    let mut acked: BTreeMap<Change, Instant> = BTreeMap::new();
    let total = 240;
    let mut killed_at = None;
    let mut second = None;
    for i in 0..total {
        if let Some(change) = write(&writer, &mut rng, &mut present, i).await? {
            acked.insert(change.clone(), Instant::now());
            made.push(change);
        }
        if i == total / 3 {
            println!(
                "killing node 0 (the watcher's node) after {} changes",
                made.len()
            );
            c.kill(0).await;
            killed_at = Some((Instant::now(), made.len()));
        }
        if i == 2 * total / 3 {
            let Some((stop_first, first_task)) = first.take() else {
                bail!("the first watch is gone");
            };
            // The client goes away and comes back: a new watch from the old one's cursor,
            // through another node.
            let _ = stop_first.send(());
            let old = first_task.await?;
            let cursor = old.cursor().clone();
            drop(old);
            println!("resuming from {cursor} through node 2");
            let w = Watch::start(
                vec![clients[2].clone(), clients[1].clone()],
                WatchTarget::Prefix(b"w/".to_vec()),
                cursor,
                options,
            )
            .await?;
            second = Some(collect(w, tx.clone()));
        }
    }
    let Some((stop_second, second_task)) = second else {
        bail!("the second watch never started");
    };
    println!("{} watched changes made; waiting for the watch", made.len());

    let mut seen: Vec<(Instant, Change)> = Vec::new();
    let until = Instant::now() + Duration::from_secs(60);
    while seen.len() < made.len() {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((at, Ok(e)))) => seen.push((at, change_of(&e))),
            Ok(Some((_, Err(e)))) => bail!("the watch failed: {e}"),
            Ok(None) => bail!("the watches ended"),
            Err(_) => bail!(
                "timed out with {} of {} changes seen",
                seen.len(),
                made.len()
            ),
        }
    }
    // Anything repeated would arrive now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while let Ok((at, item)) = rx.try_recv() {
        seen.push((at, change_of(&item.context("the watch failed late")?)));
    }
    let _ = stop_second.send(());
    second_task.await?;

    if let Some((k, before)) = killed_at {
        // Delivery lag (acknowledgement to delivery) of the changes made after the kill, when
        // the watch had to fail over, and of all of them.
        let lag = |c: &Change, at: &Instant| {
            acked
                .get(c)
                .map_or(Duration::ZERO, |a| at.saturating_duration_since(*a))
        };
        let after_kill: Vec<&Change> = made[before..].iter().collect();
        let mut post: Vec<Duration> = seen
            .iter()
            .filter(|(_, c)| after_kill.contains(&c))
            .map(|(at, c)| lag(c, at))
            .collect();
        let mut all: Vec<Duration> = seen.iter().map(|(at, c)| lag(c, at)).collect();
        post.sort();
        all.sort();
        let first_after = seen
            .iter()
            .find(|(_, c)| after_kill.contains(&c))
            .map(|(at, _)| at.duration_since(k));
        println!(
            "delivery lag after the kill: median {:?}, max {:?}; overall median {:?}, max {:?}; \
             first change made after the kill delivered {:?} after the kill",
            post.get(post.len() / 2),
            post.last(),
            all.get(all.len() / 2),
            all.last(),
            first_after
        );
    }
    // Per partition, in delivery order: revisions never go back.
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    for (_, (p, rev, ..)) in &seen {
        let prev = last.insert(*p, *rev).unwrap_or(0);
        ensure!(
            *rev > prev,
            "partition {p}: revision {rev} delivered after {prev}"
        );
    }
    // Exactly the changes made, each once.
    let mut got: Vec<Change> = seen.into_iter().map(|(_, c)| c).collect();
    got.sort();
    made.sort();
    ensure!(
        got == made,
        "delivered {} changes, made {}; first difference: {:?}",
        got.len(),
        made.len(),
        got.iter().zip(&made).find(|(a, b)| a != b)
    );
    println!(
        "{} changes over {} partitions delivered exactly once",
        made.len(),
        last.len()
    );
    Ok(())
}

/// Three nodes whose stores keep `history` revisions of events per partition.
async fn small_history_cluster(history: u64) -> Result<(Vec<Node>, Vec<tempfile::TempDir>)> {
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir()?;
        let mut config = node_config(dir.path(), &fast_core());
        config.store.history_revisions = history;
        let node = Node::start(config).await?;
        addrs.push(listen_addr(&node.handle()).await);
        nodes.push(node);
        dirs.push(dir);
    }
    for (i, n) in nodes.iter().enumerate() {
        for (j, a) in addrs.iter().enumerate() {
            if i != j {
                let _ = n.handle().net().dial(a.clone()).await;
            }
        }
    }
    let peers: Vec<_> = nodes.iter().map(|n| n.handle().peer_id()).collect();
    for n in &nodes {
        n.handle().bootstrap(peers.clone(), P, 3).await?;
    }
    let handles: Vec<NodeHandle> = nodes.iter().map(Node::handle).collect();
    wait_for(
        "a leader for every partition",
        Duration::from_secs(30),
        || {
            let handles = handles.clone();
            async move {
                for h in &handles {
                    match h.status().await {
                        Ok(s) if s.groups.iter().all(|g| g.leader.is_some()) => {}
                        _ => return false,
                    }
                }
                true
            }
        },
    )
    .await;
    Ok((nodes, dirs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_from_a_compacted_revision_gets_a_clear_error() -> Result<()> {
    let _serial = serial().await;
    let (nodes, _dirs) = small_history_cluster(8).await?;
    let client = Arc::new(Client::in_process(nodes[0].handle()).await?);
    let mut first = 0;
    let mut last = 0;
    for i in 0..40 {
        let rev = client.put(b"hot", format!("{i}").as_bytes()).await?;
        if i == 0 {
            first = rev;
        }
        last = rev;
    }
    // From the first write: long compacted away on every replica.
    let mut w = client
        .watch(
            WatchTarget::Key(b"hot".to_vec()),
            Cursor::from_revision(first),
        )
        .await?;
    let item = tokio::time::timeout(Duration::from_secs(30), w.next())
        .await
        .context("no answer from the watch")?;
    match item {
        Some(Err(WatchError::Compacted {
            partition,
            requested,
            compacted,
        })) => {
            println!("compacted: partition {partition}, asked after {requested}, history after {compacted}");
            ensure!(
                requested == first - 1 && compacted >= first,
                "{requested} {compacted}"
            );
            ensure!(partition == partition_of(b"hot", P));
        }
        other => bail!("expected a compacted error, got {other:?}"),
    }
    ensure!(w.next().await.is_none(), "the watch ends after the error");
    // From a recent revision: still kept, delivered.
    let mut w = client
        .watch(
            WatchTarget::Key(b"hot".to_vec()),
            Cursor::from_revision(last),
        )
        .await?;
    let e = tokio::time::timeout(Duration::from_secs(30), w.next())
        .await
        .context("no answer from the watch")?
        .context("the watch ended")??;
    ensure!(e.event.revision == last && e.event.value == b"39", "{e:?}");
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

/// One server-sent event: (event, id, data).
type Sse = (String, String, String);

/// Opens `GET target` on `addr` as HTTP/1.0 (no chunking: the stream is the body) and reads
/// `n` events.
async fn read_sse(
    addr: std::net::SocketAddr,
    target: &str,
    last_event_id: Option<&str>,
    n: usize,
) -> Result<Vec<Sse>> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut head =
        format!("GET {target} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
    if let Some(id) = last_event_id {
        head.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    let mut lines = BufReader::new(stream).lines();
    let status = lines.next_line().await?.context("no status line")?;
    ensure!(status.contains(" 200"), "status {status}");
    while lines.next_line().await?.is_some_and(|l| !l.is_empty()) {}
    let mut events = Vec::new();
    let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
    let read = async {
        while events.len() < n {
            let Some(line) = lines.next_line().await? else {
                bail!("the stream ended after {} events", events.len());
            };
            if line.is_empty() {
                if !event.is_empty() || !data.is_empty() {
                    events.push((
                        std::mem::take(&mut event),
                        std::mem::take(&mut id),
                        std::mem::take(&mut data),
                    ));
                }
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data = v.trim().to_string();
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .context("timed out reading events")??;
    Ok(events)
}

fn sse_change(e: &Sse) -> Result<(String, String, String)> {
    let v: serde_json::Value = serde_json::from_str(&e.2)?;
    Ok((
        e.0.clone(),
        v["key"].as_str().unwrap_or_default().to_string(),
        v["value"].as_str().unwrap_or_default().to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_watch_streams_server_sent_events_and_resumes_from_last_event_id() -> Result<()> {
    let _serial = serial().await;
    let c = TestCluster::start(3, P, fast_core()).await;
    let client = c.client(1).await;
    let g0 = gateway::Gateway::for_client(c.client(0).await).await?;
    let g2 = gateway::Gateway::for_client(c.client(2).await).await?;
    for (k, v) in [("h/a", "1"), ("h/b", "2"), ("x/no", "0"), ("h/c", "3")] {
        client.put(k.as_bytes(), v.as_bytes()).await?;
    }
    let first = read_sse(g0.addr, "/v1/watch?prefix=h%2F&from=1", None, 4).await?;
    ensure!(first[0].0 == "start", "{first:?}");
    let mut got: Vec<_> = first[1..].iter().map(sse_change).collect::<Result<_>>()?;
    got.sort();
    ensure!(
        got == vec![
            ("put".into(), "h/a".into(), "1".into()),
            ("put".into(), "h/b".into(), "2".into()),
            ("put".into(), "h/c".into(), "3".into()),
        ],
        "{got:?}"
    );
    // Reconnect elsewhere with the last id: only what came after.
    let last_id = first[3].1.clone();
    client.put(b"h/d", b"4").await?;
    client.delete(b"h/a").await?;
    let second = read_sse(g2.addr, "/v1/watch?prefix=h%2F", Some(&last_id), 3).await?;
    // The stream starts where the last id pointed.
    ensure!(second[0].0 == "start", "{second:?}");
    ensure!(second[0].1.parse::<Cursor>()? == last_id.parse::<Cursor>()?);
    let mut got: Vec<_> = second[1..].iter().map(sse_change).collect::<Result<_>>()?;
    got.sort();
    ensure!(
        got == vec![
            ("delete".into(), "h/a".into(), String::new()),
            ("put".into(), "h/d".into(), "4".into()),
        ],
        "{got:?}"
    );
    // Mistakes are plain 400s before any stream starts.
    let r = g0.get("/v1/watch?prefix=h&cursor=nonsense").await?;
    ensure!(r.status == 400, "bad cursor: {}", r.status);
    let r = g0.get("/v1/watch").await?;
    ensure!(r.status == 400, "no target: {}", r.status);
    Ok(())
}

/// Runs the built binary with `args`, killed after 60 s; (exit code, stdout, stderr).
async fn swarmkv(args: Vec<String>) -> Result<(i32, String, String)> {
    tokio::task::spawn_blocking(move || -> Result<(i32, String, String)> {
        use std::io::Read as _;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_swarmkv"));
        cmd.args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for v in ["SWARMKV_ENDPOINT", "SWARMKV_PEER", "SWARMKV_HTTP_TOKEN"] {
            cmd.env_remove(v);
        }
        let mut child = cmd.spawn()?;
        let until = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                bail!("swarmkv {args:?} did not finish in 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let (mut out, mut err) = (String::new(), String::new());
        if let Some(mut o) = child.stdout.take() {
            o.read_to_string(&mut out)?;
        }
        if let Some(mut e) = child.stderr.take() {
            e.read_to_string(&mut err)?;
        }
        Ok((status.code().unwrap_or(-1), out, err))
    })
    .await?
}

/// The cursor a CLI watch printed on stderr.
fn resume_cursor(stderr: &str) -> Result<String> {
    let rest = stderr
        .split("--cursor '")
        .nth(1)
        .with_context(|| format!("no resume hint in {stderr:?}"))?;
    Ok(rest.split('\'').next().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_watch_prints_changes_over_http_and_resumes_over_libp2p() -> Result<()> {
    let _serial = serial().await;
    let c = TestCluster::start(3, P, fast_core()).await;
    let client = c.client(1).await;
    let g0 = gateway::Gateway::for_client(c.client(0).await).await?;
    client.put(b"c/a", b"1").await?;
    client.put(b"c/b", b"2").await?;
    client.put(b"d/x", b"no").await?;
    client.delete(b"c/a").await?;
    let (code, out, err) = swarmkv(
        [
            "watch",
            "c/",
            "--from",
            "1",
            "--count",
            "3",
            "--json",
            "--endpoint",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([g0.endpoint()])
        .collect(),
    )
    .await?;
    ensure!(code == 0, "exit {code}: {err}");
    let mut got = Vec::new();
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        ensure!(v["cursor"].as_str().is_some_and(|c| !c.is_empty()), "{v}");
        got.push(format!(
            "{} {} {}",
            v["type"].as_str().unwrap_or_default(),
            v["key"].as_str().unwrap_or_default(),
            v["value"].as_str().unwrap_or_default()
        ));
    }
    got.sort();
    ensure!(got == ["delete c/a ", "put c/a 1", "put c/b 2"], "{got:?}");
    let cursor = resume_cursor(&err)?;
    println!("the HTTP watch stopped at {cursor}");

    // Resume from the printed cursor over libp2p, through another node.
    client.put(b"c/c", b"3").await?;
    let (code, out, err) = swarmkv(vec![
        "watch".into(),
        "c/".into(),
        "--cursor".into(),
        cursor,
        "--count".into(),
        "1".into(),
        "--peer".into(),
        c.addrs[2].to_string(),
    ])
    .await?;
    ensure!(code == 0, "exit {code}: {err}");
    ensure!(out == "put c/c 3\n", "{out:?}");

    // A bad cursor is a usage error.
    let (code, _, err) = swarmkv(
        ["watch", "c/", "--cursor", "bogus", "--endpoint"]
            .iter()
            .map(|s| s.to_string())
            .chain([g0.endpoint()])
            .collect(),
    )
    .await?;
    ensure!(code == 2, "exit {code}: {err}");

    // A scan's printed cursor starts a watch right after it: the scanned keys are not
    // repeated, the next change comes.
    let (code, out, err) = swarmkv(
        ["scan", "--prefix", "c/", "--print-cursor", "--endpoint"]
            .iter()
            .map(|s| s.to_string())
            .chain([g0.endpoint()])
            .collect(),
    )
    .await?;
    ensure!(code == 0, "exit {code}: {err}");
    ensure!(out == "c/b\t2\nc/c\t3\n", "{out:?}");
    let cursor = resume_cursor(&err)?;
    println!("the scan printed {cursor}");
    client.put(b"c/d", b"4").await?;
    let (code, out, err) = swarmkv(vec![
        "watch".into(),
        "c/".into(),
        "--cursor".into(),
        cursor,
        "--count".into(),
        "1".into(),
        "--peer".into(),
        c.addrs[1].to_string(),
    ])
    .await?;
    ensure!(code == 0, "exit {code}: {err}");
    ensure!(out == "put c/d 4\n", "{out:?}");
    Ok(())
}

/// One writer of the scan-then-watch test: `total` puts and compare-and-swap deletes on keys
/// `s/{id}/0..12` (its own, so its deletes cannot race another writer), each sent on `made`
/// once acknowledged, with when it was sent.
async fn scan_writer(
    client: Arc<Client>,
    id: usize,
    seed: u64,
    total: usize,
    made: mpsc::UnboundedSender<(Instant, Change)>,
) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed ^ id as u64);
    let mut present: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..total {
        let key = format!("s/{id}/{}", rng.gen_range(0..12));
        let sent = Instant::now();
        let partition = partition_of(key.as_bytes(), P);
        let change = match present.get(&key).copied() {
            Some(rev) if rng.gen_bool(0.3) => {
                let r = client
                    .cas(key.as_bytes(), Compare::ModRevision(rev), CasAction::Delete)
                    .await?;
                ensure!(r.succeeded, "writer {id} is the only writer of {key}");
                present.remove(&key);
                (partition, r.revision, EventKind::Delete, key, String::new())
            }
            _ => {
                let value = format!("w{id}-{i}");
                let rev = client.put(key.as_bytes(), value.as_bytes()).await?;
                present.insert(key.clone(), rev);
                (partition, rev, EventKind::Put, key, value)
            }
        };
        if made.send((sent, change)).is_err() {
            bail!("the test stopped listening");
        }
    }
    Ok(())
}

/// Writers run; `scanner` scans `s/` with its cursor while they do; a watch through `watcher`
/// from that cursor must then deliver exactly the writes the scan did not see: per partition,
/// every write with a revision above the one the partition was read at, once each, and none
/// at or below it. The scan itself must be the state that the writes up to those revisions
/// leave.
async fn scan_then_watch(
    scanner: &Client,
    watcher: Arc<Client>,
    writers: Vec<Arc<Client>>,
    seed: u64,
) -> Result<()> {
    let total = 90;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tasks: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(id, w)| tokio::spawn(scan_writer(w, id, seed, total, tx.clone())))
        .collect();
    drop(tx);
    let mut made: Vec<(Instant, Change)> = Vec::new();
    // Scan while the writers are a third of the way through.
    while made.len() < tasks.len() * total / 3 {
        match rx.recv().await {
            Some(c) => made.push(c),
            None => bail!("the writers stopped early"),
        }
    }
    let scan = scanner
        .scan_with_cursor(b"s/", Some(b"s0"), 0, Consistency::Linearizable)
        .await?;
    let scanned = Instant::now();
    let scanned_at = made.len();
    ensure!(!scan.more, "an unlimited scan was cut");
    let cursor = scan.cursor();
    println!(
        "scanned {} keys after {scanned_at} acknowledged writes; cursor {cursor}",
        scan.records.len()
    );
    ensure!(
        scan.revisions.len() == P as usize,
        "revisions of {} partitions",
        scan.revisions.len()
    );
    let (events, mut seen_rx) = mpsc::unbounded_channel();
    let watch = watcher
        .watch(WatchTarget::Prefix(b"s/".to_vec()), cursor.clone())
        .await?;
    let (stop, watch_task) = collect(watch, events);
    for t in tasks {
        t.await??;
    }
    while let Some(c) = rx.recv().await {
        made.push(c);
    }
    let at = |p: u32| scan.revisions.get(&p).copied().unwrap_or(0);
    // Every write sent after the scan answered applied after its read (writes in flight
    // during the scan may fall on either side).
    let mut later = 0;
    for (sent, (p, rev, _, key, _)) in &made {
        if *sent > scanned {
            later += 1;
            ensure!(
                *rev > at(*p),
                "{key}@{rev} sent after the scan, which read partition {p} at {}",
                at(*p)
            );
        }
    }
    let made: Vec<Change> = made.into_iter().map(|(_, c)| c).collect();
    // The scan is the state at its revisions: the last write at or below them, per key.
    let mut state: BTreeMap<String, String> = BTreeMap::new();
    let mut upto: Vec<&Change> = made.iter().filter(|c| c.1 <= at(c.0)).collect();
    upto.sort_by_key(|c| c.1);
    for (_, _, kind, key, value) in upto {
        match kind {
            EventKind::Put => state.insert(key.clone(), value.clone()),
            EventKind::Delete => state.remove(key),
        };
    }
    let scanned: BTreeMap<String, String> = scan
        .records
        .iter()
        .map(|(k, r)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(&r.value).into_owned(),
            )
        })
        .collect();
    ensure!(
        scanned == state,
        "the scan is not the state at its revisions: scanned {scanned:?}, expected {state:?}"
    );
    // The watch: exactly the writes after the scan's revisions, each once.
    let mut after: Vec<Change> = made.iter().filter(|c| c.1 > at(c.0)).cloned().collect();
    after.sort();
    let mut seen: Vec<Change> = Vec::new();
    let until = Instant::now() + Duration::from_secs(60);
    while seen.len() < after.len() {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, seen_rx.recv()).await {
            Ok(Some((_, Ok(e)))) => seen.push(change_of(&e)),
            Ok(Some((_, Err(e)))) => bail!("the watch failed: {e}"),
            Ok(None) => bail!("the watch ended"),
            Err(_) => bail!("timed out with {} of {} changes", seen.len(), after.len()),
        }
    }
    // A repeat or an event the scan already showed would arrive now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while let Ok((_, item)) = seen_rx.try_recv() {
        seen.push(change_of(&item.context("the watch failed late")?));
    }
    let _ = stop.send(());
    watch_task.await?;
    seen.sort();
    ensure!(
        seen == after,
        "watched {} changes, expected {}; first difference: {:?}",
        seen.len(),
        after.len(),
        seen.iter().zip(&after).find(|(a, b)| a != b)
    );
    let partitions: std::collections::BTreeSet<u32> = made.iter().map(|c| c.0).collect();
    ensure!(partitions.len() > 1, "the keys all fell in one partition");
    println!(
        "{} writes in {} partitions: {} in the scan's state, {} watched exactly once \
         ({later} sent after the scan answered)",
        made.len(),
        partitions.len(),
        made.len() - after.len(),
        after.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_from_a_scans_cursor_sees_exactly_the_writes_the_scan_did_not() -> Result<()> {
    let _serial = serial().await;
    let seed = seed();
    println!("seed {seed} (replay with SWARMKV_WATCH_SEED={seed})");
    let c = TestCluster::start(3, P, fast_core()).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(Arc::new(
            c.client(i).await.with_deadline(Duration::from_secs(30)),
        ));
    }
    let writers = vec![clients[1].clone(), clients[2].clone()];
    scan_then_watch(&clients[0], clients[2].clone(), writers, seed).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_http_a_scans_cursor_starts_a_watch_without_a_gap_or_a_repeat() -> Result<()> {
    let _serial = serial().await;
    let seed = seed();
    println!("seed {seed} (replay with SWARMKV_WATCH_SEED={seed})");
    let c = TestCluster::start(3, P, fast_core()).await;
    let g0 = gateway::Gateway::for_client(c.client(0).await).await?;
    let g2 = gateway::Gateway::for_client(c.client(2).await).await?;
    let http = |gw: &gateway::Gateway| -> Result<Arc<Client>> {
        Ok(Arc::new(Client::http(
            gw.endpoint().parse()?,
            HttpOptions::default(),
        )))
    };
    let writers = vec![http(&g0)?, Arc::new(c.client(1).await)];
    scan_then_watch(&*http(&g0)?, http(&g2)?, writers, seed).await?;
    // The gateway's own answer names the cursor and the revisions; the watch route takes it.
    let r = g2.get("/v1/kv?prefix=s%2F&limit=2").await?;
    ensure!(r.status == 200, "scan: {}", r.status);
    let body: serde_json::Value = serde_json::from_slice(&r.body)?;
    let cursor = body["cursor"]
        .as_str()
        .context("the scan answer has no cursor")?;
    let parsed: Cursor = cursor.parse()?;
    for p in 0..P {
        let rev = body["revisions"][p.to_string()]
            .as_u64()
            .with_context(|| format!("no revision for partition {p}: {body}"))?;
        ensure!(
            parsed.position(p)
                == Some(swarmkv::client::Position {
                    after: rev,
                    skip: 0
                }),
            "partition {p}: cursor {cursor}, revision {rev}"
        );
    }
    let client = c.client(1).await;
    client.put(b"s/after", b"1").await?;
    let path = format!(
        "/v1/watch?prefix=s%2F&cursor={}",
        cursor
            .replace('*', "%2A")
            .replace(',', "%2C")
            .replace('=', "%3D")
    );
    let events = read_sse(g0.addr, &path, None, 2).await?;
    ensure!(events[0].0 == "start", "{events:?}");
    ensure!(
        sse_change(&events[1])? == ("put".into(), "s/after".into(), "1".into()),
        "{events:?}"
    );
    Ok(())
}
