//! Transactions on a 3-node in-process cluster on 127.0.0.1: transfers between two keys of one
//! hash tag keep their sum through concurrent clients and a leader kill, a transaction over
//! several partitions is refused by the client and by the node, and `POST /v1/txn` speaks the
//! same semantics over HTTP.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::gateway::Gateway;
use common::*;
use serde_json::json;
use swarmkv::core::routing::partition_of;
use swarmkv::core::{group_of_partition, ClientError, CoreConfig, Request, RequestBody};
use swarmkv::Client;
use swarmkv_store::{CompareOp, CompareTarget, KvOp, Txn, TxnCompare, TxnOp, TxnOpResult};

const P: u32 = 16;

fn fast_core() -> CoreConfig {
    CoreConfig {
        tick_ms: 50,
        ..CoreConfig::default()
    }
}

fn get(key: &[u8]) -> TxnOp {
    TxnOp::Get { key: key.to_vec() }
}

fn mod_rev_is(key: &[u8], rev: u64) -> TxnCompare {
    TxnCompare {
        key: key.to_vec(),
        target: CompareTarget::ModRevision(rev),
        op: CompareOp::Equal,
    }
}

/// Reads both accounts in one transaction (one revision): their values and mod revisions.
async fn read_both(client: &Client, a: &[u8], b: &[u8]) -> Result<[(u64, u64); 2], ClientError> {
    let r = client
        .txn(Txn {
            compares: vec![],
            success: vec![get(a), get(b)],
            failure: vec![],
        })
        .await?;
    let mut out = [(0, 0); 2];
    for (slot, result) in out.iter_mut().zip(&r.results) {
        if let TxnOpResult::Get(Some(rec)) = result {
            let n = String::from_utf8_lossy(&rec.value).parse().unwrap_or(0);
            *slot = (n, rec.mod_rev);
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_between_keys_of_one_tag_keep_their_sum_through_a_leader_kill() -> Result<()> {
    let _serial = serial().await;
    let mut cluster = TestCluster::start(3, P, fast_core()).await;
    let (a, b) = (b"{acct:7}/alice".to_vec(), b"{acct:7}/bob".to_vec());
    assert_eq!(partition_of(&a, P), partition_of(&b, P), "one hash tag");
    const TOTAL: u64 = 2_000;
    // The node leading the accounts' partition is the one to kill.
    let group = group_of_partition(partition_of(&a, P));
    let mut victim = 0;
    for i in 0..3 {
        let s = cluster.handles[i].status().await?;
        if s.groups
            .iter()
            .any(|g| g.group == group && g.leader == Some(s.node))
        {
            victim = i;
        }
    }
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let setup = cluster.client(survivors[0]).await;
    setup.put(&a, b"1000").await?;
    setup.put(&b, b"1000").await?;

    let moved = Arc::new(AtomicU64::new(0));
    let torn = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(8);
    let mut tasks = Vec::new();
    for c in 0..16usize {
        let client = cluster.client(survivors[c % 2]).await;
        let (a, b) = (a.clone(), b.clone());
        let (moved, torn) = (moved.clone(), torn.clone());
        tasks.push(tokio::spawn(async move {
            let mut amount = c as u64 + 1;
            while Instant::now() < stop_at {
                let Ok([(va, ra), (vb, rb)]) = read_both(&client, &a, &b).await else {
                    continue;
                };
                if va + vb != TOTAL {
                    torn.fetch_add(1, Ordering::SeqCst);
                }
                // Alternate directions so neither account runs dry.
                let (from, to, vf, vt) = if c % 2 == 0 {
                    (&a, &b, va, vb)
                } else {
                    (&b, &a, vb, va)
                };
                amount = amount % 7 + 1;
                if vf < amount {
                    continue;
                }
                let txn = Txn {
                    compares: vec![mod_rev_is(&a, ra), mod_rev_is(&b, rb)],
                    success: vec![
                        TxnOp::Put {
                            key: from.clone(),
                            value: (vf - amount).to_string().into_bytes(),
                            lease: 0,
                        },
                        TxnOp::Put {
                            key: to.clone(),
                            value: (vt + amount).to_string().into_bytes(),
                            lease: 0,
                        },
                    ],
                    failure: vec![],
                };
                if let Ok(r) = client.txn(txn).await {
                    if r.succeeded {
                        moved.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.kill(victim).await;
    for t in tasks {
        t.await?;
    }
    let [(va, _), (vb, _)] = read_both(&setup, &a, &b).await?;
    let (moved, torn) = (moved.load(Ordering::SeqCst), torn.load(Ordering::SeqCst));
    println!("transfers acknowledged {moved}, reads with a wrong sum {torn}, final {va} + {vb}");
    assert!(moved > 0, "no transfer succeeded");
    assert_eq!(torn, 0, "a transaction's read saw half a transfer");
    assert_eq!(va + vb, TOTAL, "the transfers did not keep the sum");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_over_several_partitions_is_refused_by_client_and_node() -> Result<()> {
    let _serial = serial().await;
    let cluster = TestCluster::start(3, P, fast_core()).await;
    let client = cluster.client(0).await;
    // Two keys without a common tag, in different partitions.
    let x = b"x".to_vec();
    let y = (0..)
        .map(|i| format!("y{i}").into_bytes())
        .find(|k| partition_of(k, P) != partition_of(&x, P))
        .context("a key in another partition")?;
    let spanning = Txn {
        compares: vec![],
        success: vec![
            TxnOp::Put {
                key: x.clone(),
                value: b"1".to_vec(),
                lease: 0,
            },
            TxnOp::Put {
                key: y.clone(),
                value: b"1".to_vec(),
                lease: 0,
            },
        ],
        failure: vec![],
    };
    match client.txn(spanning.clone()).await {
        Err(ClientError::BadRequest(m)) => {
            let (px, py) = (partition_of(&x, P), partition_of(&y, P));
            assert!(
                m.contains(&format!("partition {px}")) && m.contains(&format!("partition {py}")),
                "the refusal names both partitions: {m}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let empty = client.txn(Txn::default()).await;
    assert!(
        matches!(empty, Err(ClientError::BadRequest(_))),
        "{empty:?}"
    );
    // A client that addresses a partition by hand cannot slip a foreign key in either.
    let request = Request {
        partition: partition_of(&x, P),
        body: RequestBody::Write {
            op: KvOp::Txn(spanning),
            session: None,
        },
    };
    match client.call(request).await {
        Err(ClientError::BadRequest(m)) => assert!(m.contains("belongs to partition"), "{m}"),
        other => panic!("expected the node to refuse, got {other:?}"),
    }
    assert_eq!(client.get(&x).await?, None, "nothing was written");
    assert_eq!(client.get(&y).await?, None, "nothing was written");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_txn_runs_compares_and_branches_over_http() -> Result<()> {
    let _serial = serial().await;
    let cluster = TestCluster::start(3, P, fast_core()).await;
    let gw = Gateway::for_client(cluster.client(0).await).await?;
    let post = |body: serde_json::Value| {
        let gw = &gw;
        async move {
            gw.call("POST", "/v1/txn", body.to_string().as_bytes())
                .await
        }
    };

    // Create both keys only if the first is absent.
    let created = post(json!({
        "compare": [{"key": "{cfg}/a", "version": 0, "op": "="}],
        "success": [
            {"put": {"key": "{cfg}/a", "value": "1"}},
            {"put": {"key": "{cfg}/b", "value_b64": "/wA="}},
            {"get": {"key": "{cfg}/b"}}
        ],
        "failure": [{"get": {"key": "{cfg}/a"}}]
    }))
    .await?
    .expect(200)?;
    assert_eq!(created["succeeded"], true, "{created}");
    let rev = created["rev"].as_u64().context("rev")?;
    assert_eq!(created["results"][0], json!({"put": {}}));
    assert_eq!(created["results"][2]["get"]["record"]["value_b64"], "/wA=");
    assert_eq!(created["results"][2]["get"]["record"]["mod_rev"], rev);

    // Again: the compare fails, the failure branch reads what is there.
    let again = post(json!({
        "compare": [{"key": "{cfg}/a", "version": 0, "op": "="}],
        "success": [{"put": {"key": "{cfg}/a", "value": "2"}}],
        "failure": [{"get": {"key": "{cfg}/a"}}, {"delete_range": {"prefix": "{cfg}/"}}]
    }))
    .await?
    .expect(200)?;
    assert_eq!(again["succeeded"], false, "{again}");
    assert_eq!(again["results"][0]["get"]["record"]["value"], "1");
    assert_eq!(again["results"][1], json!({"delete_range": {"deleted": 2}}));
    assert_eq!(gw.get("/v1/kv/%7Bcfg%7D/a").await?.error(404)?, "not_found");

    // Refusals: malformed, two targets, spanning partitions, a duplicate write, too many ops.
    for (body, code) in [
        (
            json!({"compare": [{"key": "k", "op": "~", "version": 1}]}),
            400,
        ),
        (
            json!({"compare": [{"key": "k", "op": "=", "version": 1, "mod_rev": 1}]}),
            400,
        ),
        (json!({"success": [{"put": {"key": "k"}}]}), 400),
        (json!({"success": [{"upsert": {"key": "k"}}]}), 400),
        (json!({"success": [{"delete_range": {"prefix": ""}}]}), 400),
        (
            json!({"success": [{"put": {"key": "x", "value": "1"}}, {"put": {"key": "y", "value": "1"}}]}),
            400,
        ),
        (
            json!({"success": [{"put": {"key": "k", "value": "1"}}, {"delete": {"key": "k"}}]}),
            400,
        ),
    ] {
        let shown = body.to_string();
        let reply = post(body).await?;
        assert_eq!(reply.status, code, "{shown}: {}", reply.text());
        assert_eq!(reply.json()?["error"]["code"], "bad_request", "{shown}");
    }
    let many: Vec<_> = (0..129).map(|_| json!({"get": {"key": "k"}})).collect();
    let reply = post(json!({ "success": many })).await?;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(reply.text().contains("128"), "{}", reply.text());
    let _ = cluster;
    gw.shutdown().await
}
