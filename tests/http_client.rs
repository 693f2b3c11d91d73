//! The Rust client's HTTP transport (`Client::http`) against the gateway of a 3-node
//! in-process cluster on 127.0.0.1: the same calls give the same results and the same typed
//! errors as the in-process client.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::gateway::Gateway;
use common::*;
use swarmkv::client::{Cursor, Endpoint, HttpOptions, WatchTarget};
use swarmkv::core::{ClientError, Consistency, CoreConfig};
use swarmkv::{Client, DecommissionError};
use swarmkv_store::{CasAction, Compare, EventKind};

fn fast_core() -> CoreConfig {
    CoreConfig {
        tick_ms: 50,
        ..CoreConfig::default()
    }
}

/// A client of `gw`, once the gateway serves keys (it makes its own client when it sees its
/// node in a cluster).
async fn http_client(gw: &Gateway) -> Result<Arc<Client>> {
    let endpoint: Endpoint = gw.endpoint().parse()?;
    let client = Client::http(endpoint, HttpOptions::default());
    for _ in 0..100 {
        if client.put(b"probe", b"1").await.is_ok() {
            return Ok(Arc::new(client));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the gateway never served keys")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_transport_gives_the_results_and_errors_of_the_in_process_client() -> Result<()> {
    let _serial = serial().await;
    let cluster = TestCluster::start(3, 8, fast_core()).await;
    let gw = Gateway::for_node(cluster.handles[0].clone()).await?;
    let http = http_client(&gw).await?;
    let local = Client::in_process(cluster.handles[1].clone()).await?;

    // Keys, with bytes that are not UTF-8: written over one transport, read over the other.
    let key = b"k/\xff\x00.";
    let rev = http.put(key, b"\x00v").await?;
    let rec = local.get(key).await?.context("written over HTTP")?;
    ensure!(rec.value == b"\x00v" && rec.mod_rev == rev, "{rec:?}");
    let seen = http
        .get_with(key, Consistency::Linearizable)
        .await?
        .context("read back")?;
    ensure!(
        seen.value == rec.value && seen.version == rec.version,
        "{seen:?}"
    );
    ensure!(
        http.get(b"k/absent").await?.is_none(),
        "a missing key is None"
    );

    // Compare-and-swap: a failed comparison is a result, with the key as it is.
    let failed = http
        .cas(key, Compare::ModRevision(rev + 1000), CasAction::Delete)
        .await?;
    ensure!(!failed.succeeded, "{failed:?}");
    ensure!(
        failed.current.as_ref().map(|c| c.mod_rev) == Some(rev),
        "{failed:?}"
    );
    let swapped = http
        .cas(
            key,
            Compare::ModRevision(rev),
            CasAction::Put(b"w".to_vec()),
        )
        .await?;
    ensure!(swapped.succeeded && swapped.revision > 0, "{swapped:?}");

    // Scans merge every partition in key order, over both transports alike.
    for i in 0..20 {
        local.put(format!("s/{i:02}").as_bytes(), b"x").await?;
    }
    let over_http = http.scan_prefix(b"s/", 0).await?;
    let in_process = local.scan_prefix(b"s/", 0).await?;
    let keys = |r: &[(Vec<u8>, swarmkv_store::KvRecord)]| -> Vec<Vec<u8>> {
        r.iter().map(|(k, _)| k.clone()).collect()
    };
    ensure!(over_http.len() == 20 && keys(&over_http) == keys(&in_process));
    ensure!(keys(&http.scan_prefix(b"s/", 5).await?) == keys(&in_process[..5]));
    ensure!(http.delete(b"s/00").await? && !http.delete(b"s/00").await?);

    // Leases: a put naming a lease that does not exist is LeaseNotFound on both.
    let lease = http.grant(Duration::from_secs(30)).await?;
    http.put_with_lease(b"l/one", b"1", lease.id).await?;
    ensure!(http.time_to_live(lease.id).await?.ttl_ms == 30_000);
    let unknown = 0xfeed_u64;
    let over_http = http.put_with_lease(b"l/x", b"1", unknown).await;
    let in_process = local.put_with_lease(b"l/x", b"1", unknown).await;
    ensure!(
        over_http == Err(ClientError::LeaseNotFound(unknown)) && over_http == in_process,
        "{over_http:?} / {in_process:?}"
    );
    http.revoke(lease.id).await?;
    let mut attached = local.get(b"l/one").await?;
    for _ in 0..50 {
        if attached.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        attached = local.get(b"l/one").await?;
    }
    ensure!(attached.is_none(), "revoking deleted the key");
    ensure!(http.keep_alive_once(lease.id).await == Err(ClientError::LeaseNotFound(lease.id)));

    // Elections: campaign on a kept-alive lease, seen as the leader by the other transport;
    // a proclamation for a candidate that does not lead is NotLeading.
    let kept = http.grant_kept_alive(Duration::from_secs(5)).await?;
    let mut leadership = http.campaign("jobs", b"a", &kept).await?;
    let leader = local.leader("jobs").await?.context("a leader")?;
    ensure!(leader.token == leadership.token() && leader.value == b"a");
    let stranger = http
        .proclaim("jobs", leadership.token() + 1, kept.id(), b"b")
        .await;
    ensure!(
        matches!(stranger, Err(ClientError::NotLeading { .. })),
        "{stranger:?}"
    );
    let mut observer = http.observe("jobs");
    let seen = observer
        .next()
        .await?
        .context("the observer sees the leader")?;
    ensure!(seen.token == leadership.token(), "{seen:?}");
    leadership.resign().await?;
    ensure!(local.leader("jobs").await?.is_none(), "resigned");
    let after = tokio::time::timeout(Duration::from_secs(10), observer.next()).await??;
    ensure!(
        after.is_none(),
        "the observer sees the resignation: {after:?}"
    );

    // A watch over HTTP sees a later put, with a cursor to resume from.
    let mut watch = http
        .watch(WatchTarget::Prefix(b"w/".to_vec()), Cursor::now())
        .await?;
    local.put(b"w/1", b"hello").await?;
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await?
        .context("the watch ended")??;
    ensure!(event.event.kind == EventKind::Put && event.event.key == b"w/1");
    ensure!(watch.cursor().position(event.partition).is_some());

    // The status document is the gateway's JSON, with the cluster view.
    let status = http.status_document().await?;
    ensure!(status.report.node == cluster.handles[0].node_id());
    ensure!(status.json["cluster"].is_object(), "{}", status.json);

    // Refusals are BadRequest with the gateway's status and code; an oversized value gets
    // its 413 although the transport sends the whole body before it reads the answer.
    let big = vec![b'x'; 2 * 1024 * 1024];
    let refused = http.put(b"big", &big).await;
    ensure!(
        matches!(&refused, Err(ClientError::BadRequest(m)) if m.starts_with("413") && m.contains("too_large")),
        "{refused:?}"
    );
    ensure!(
        local.get(b"big").await?.is_none(),
        "a refused put wrote nothing"
    );
    let too_long = http.grant(Duration::from_secs(100 * 24 * 3600)).await;
    ensure!(
        matches!(&too_long, Err(ClientError::BadRequest(m)) if m.starts_with("400")),
        "{too_long:?}"
    );
    let unknown_node = http.decommission(0xdead_beef).await;
    ensure!(
        matches!(
            unknown_node,
            Err(DecommissionError::UnknownNode(0xdead_beef))
        ),
        "{unknown_node:?}"
    );

    // A put that asks for the record it replaced, and range deletes (s/01..s/19 are left,
    // and s/new is added), give what the in-process client gives.
    let (rev, prev) = http.put_prev(b"s/01", b"y", true).await?;
    ensure!(
        prev.as_ref().map(|p| p.value.as_slice()) == Some(b"x".as_slice()),
        "{prev:?}"
    );
    ensure!(local.get(b"s/01").await?.map(|r| r.mod_rev) == Some(rev));
    ensure!(http.put_prev(b"s/new", b"z", true).await?.1.is_none());
    // A delete that asks for the record it removed gets it, then nothing.
    let removed = http.delete_prev(b"s/new").await?;
    ensure!(
        removed.as_ref().map(|r| (r.value.as_slice(), r.version)) == Some((b"z".as_slice(), 1)),
        "{removed:?}"
    );
    ensure!(local.delete_prev(b"s/new").await?.is_none());
    ensure!(http.delete_prev(b"s/new").await?.is_none());
    http.put(b"s/new", b"z").await?;
    ensure!(http.delete_range(b"s/", Some(b"s/10")).await? == 9);
    ensure!(http.delete_range(b"s/", Some(b"s0")).await? == 11);
    ensure!(local.scan_prefix(b"s/", 0).await?.is_empty());

    // A transaction goes to POST /v1/txn: the gateway routes it by its keys' partition.
    let txn = swarmkv_store::Txn {
        compares: Vec::new(),
        success: vec![swarmkv_store::TxnOp::Get { key: b"k".to_vec() }],
        failure: Vec::new(),
    };
    let r = http.txn(txn.clone()).await?;
    ensure!(
        r.succeeded && r.results == local.txn(txn).await?.results,
        "{r:?}"
    );
    // The gateway's graceful shutdown waits for open streams (the watch's, the observer's).
    drop((watch, observer, kept, http));
    gw.shutdown().await
}

/// How many times the client below announced that it waits.
static NOTICES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn count_notice(_line: &str) {
    NOTICES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

#[tokio::test]
async fn a_gateway_nobody_listens_on_is_unavailable_and_safe_to_retry() -> Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let endpoint: Endpoint = format!("http://{}", listener.local_addr()?).parse()?;
    drop(listener);
    // Refused connections are retried for `retry_for`, announced once, then reported.
    let options = HttpOptions {
        retry_for: Duration::from_millis(700),
        notice: Some(count_notice),
        ..HttpOptions::default()
    };
    let client = Client::http(endpoint, options);
    let e = client
        .put(b"k", b"v")
        .await
        .err()
        .context("put succeeded")?;
    ensure!(e.is_retryable(), "nothing was sent: {e:?}");
    ensure!(e.to_string().contains("cannot connect"), "{e}");
    let again = client.get(b"k").await;
    ensure!(
        matches!(again, Err(ClientError::Unavailable { .. })),
        "{again:?}"
    );
    let notices = NOTICES.load(std::sync::atomic::Ordering::Relaxed);
    ensure!(notices == 1, "the wait was announced {notices} times");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_several_gateways_moves_past_one_that_is_down() -> Result<()> {
    let _serial = serial().await;
    let cluster = TestCluster::start(3, 8, fast_core()).await;
    let gw = Gateway::for_node(cluster.handles[0].clone()).await?;
    http_client(&gw).await?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let dead: Endpoint = format!("http://{}", listener.local_addr()?).parse()?;
    drop(listener);
    let live: Endpoint = gw.endpoint().parse()?;
    let options = HttpOptions {
        retry_for: Duration::ZERO,
        ..HttpOptions::default()
    };
    let client = Client::http_failover(vec![dead, live.clone()], options)?;
    let rev = client.put(b"failover", b"1").await?;
    ensure!(client.get(b"failover").await?.map(|r| r.mod_rev) == Some(rev));
    ensure!(client.endpoint() == Some(&live), "{:?}", client.endpoint());
    ensure!(Client::http_failover(Vec::new(), HttpOptions::default()).is_err());
    drop(client);
    gw.shutdown().await
}
