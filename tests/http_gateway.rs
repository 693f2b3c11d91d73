//! The HTTP gateway in front of a 3-node in-process cluster on 127.0.0.1: every endpoint,
//! every documented error, and a partition without a leader answering 503 then recovering.
//!
//! The requests go over a real TCP connection through a minimal HTTP/1.1 client written
//! here (one request per connection, `Connection: close`, `Expect: 100-continue` for large
//! bodies): it is enough for a JSON API, shows exactly which bytes cross the wire (raw
//! percent-encoded paths included), and adds no HTTP client stack to the build.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::gateway::Gateway;
use common::http::{b64, enc, request, scan_keys as keys};
use common::*;
use serde_json::{json, Value};
use swarmkv::core::CoreConfig;

const P: u32 = 8;

fn fast_core() -> CoreConfig {
    CoreConfig {
        tick_ms: 50,
        ..CoreConfig::default()
    }
}

async fn cluster_and_gateway(deadline: Duration) -> Result<(TestCluster, Gateway)> {
    let cluster = TestCluster::start(3, P, fast_core()).await;
    let gateway = Gateway::for_client(cluster.client(0).await.with_deadline(deadline)).await?;
    Ok((cluster, gateway))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_round_trips_bytes_slashes_and_revisions() -> Result<()> {
    let _serial = serial().await;
    let (_cluster, gw) = cluster_and_gateway(Duration::from_secs(10)).await?;

    // A key with '/' inside, as in Consul: the path after /v1/kv/ is the key.
    let put = gw.put("/v1/kv/config/db/host", b"db1.local").await?;
    let rev = put.expect(200)?["rev"].as_u64().context("rev")?;
    let got = gw.get("/v1/kv/config/db/host").await?.expect(200)?;
    assert_eq!(got["key"], "config/db/host");
    assert_eq!(got["value"], "db1.local");
    assert_eq!(got["value_b64"], b64(b"db1.local"));
    assert_eq!(got["mod_rev"], rev);
    assert_eq!(got["create_rev"], rev);
    assert_eq!(got["version"], 1);

    // An overwrite bumps mod_rev and version, keeps create_rev.
    let rev2 = gw
        .put("/v1/kv/config/db/host", b"db2.local")
        .await?
        .expect(200)?["rev"]
        .as_u64()
        .context("rev")?;
    assert!(rev2 > rev);
    let got = gw
        .get("/v1/kv/config/db/host?serializable=true")
        .await?
        .expect(200)?;
    // A serializable read may lag: it shows the first or the second write, never neither.
    assert!(got["value"] == "db1.local" || got["value"] == "db2.local");
    let got = gw.get("/v1/kv/config/db/host").await?.expect(200)?;
    assert_eq!(
        (got["value"].clone(), got["version"].clone()),
        (json!("db2.local"), json!(2))
    );
    assert_eq!(got["create_rev"], rev);

    // Non-UTF-8 key and value: the key reaches every byte through percent-encoding; JSON
    // carries them only as base64.
    let key = [0x00u8, 0xff, b'/', 0x80, b'k'];
    let value = [0xc3u8, 0x28, 0x00, 0xfe];
    let path = format!("/v1/kv/{}", enc(&key));
    gw.put(&path, &value).await?.expect(200)?;
    let got = gw.get(&path).await?.expect(200)?;
    assert!(got.get("value").is_none(), "no text for non-UTF-8: {got}");
    assert!(got.get("key").is_none(), "no text for non-UTF-8: {got}");
    assert_eq!(got["value_b64"], b64(&value));
    assert_eq!(got["key_b64"], b64(&key));

    // The last segment `cas` is part of the key for GET/PUT/DELETE.
    gw.put("/v1/kv/jobs/cas", b"x").await?.expect(200)?;
    assert_eq!(gw.get("/v1/kv/jobs/cas").await?.expect(200)?["value"], "x");

    // An empty value is a value.
    gw.put("/v1/kv/empty", b"").await?.expect(200)?;
    let got = gw.get("/v1/kv/empty").await?.expect(200)?;
    assert_eq!(
        (got["value"].clone(), got["value_b64"].clone()),
        (json!(""), json!(""))
    );

    // Delete: {deleted}, then 404; deleting again says it did not exist.
    let del = gw.call("DELETE", &path, b"").await?.expect(200)?;
    assert_eq!(del["deleted"], true);
    assert_eq!(gw.get(&path).await?.error(404)?, "not_found");
    let del = gw.call("DELETE", &path, b"").await?.expect(200)?;
    assert_eq!(del["deleted"], false);
    assert_eq!(
        gw.get("/v1/kv/never/written").await?.error(404)?,
        "not_found"
    );

    gw.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_400_and_oversized_input_is_413() -> Result<()> {
    let _serial = serial().await;
    let (_cluster, gw) = cluster_and_gateway(Duration::from_secs(10)).await?;

    // Keys.
    assert_eq!(gw.get("/v1/kv/").await?.error(400)?, "empty_key");
    assert_eq!(gw.put("/v1/kv/", b"v").await?.error(400)?, "empty_key");
    for bad in ["/v1/kv/a%2", "/v1/kv/%zz", "/v1/kv/a%"] {
        assert_eq!(gw.get(bad).await?.error(400)?, "bad_encoding", "{bad}");
    }
    assert_eq!(
        gw.get("/v1/kv?prefix=%4").await?.error(400)?,
        "bad_encoding"
    );
    let long_key = "k".repeat(5000);
    let code = gw
        .put(&format!("/v1/kv/{long_key}"), b"v")
        .await?
        .error(413)?;
    assert_eq!(code, "key_too_large");

    // Query parameters.
    assert_eq!(
        gw.get("/v1/kv/a?serialisable=1").await?.error(400)?,
        "bad_request"
    );
    assert_eq!(
        gw.get("/v1/kv/a?serializable=maybe").await?.error(400)?,
        "bad_request"
    );
    assert_eq!(gw.get("/v1/kv?limit=0").await?.error(400)?, "bad_request");
    assert_eq!(
        gw.get("/v1/kv?limit=10001").await?.error(400)?,
        "bad_request"
    );
    assert_eq!(
        gw.get("/v1/kv?prefix=a&start=b").await?.error(400)?,
        "bad_request"
    );

    // CAS bodies.
    let bad_json = gw.call("POST", "/v1/kv/c/cas", b"{not json").await?;
    assert_eq!(bad_json.error(400)?, "bad_request");
    let bad_b64 = gw
        .cas("c", json!({"expect_absent": true, "value_b64": "***"}))
        .await?;
    assert_eq!(bad_b64.error(400)?, "bad_request");
    let two = gw
        .cas(
            "c",
            json!({"expect_absent": true, "expect_mod_rev": 3, "value": "v"}),
        )
        .await?;
    assert_eq!(two.error(400)?, "bad_request");
    let none = gw.cas("c", json!({"value": "v"})).await?;
    assert_eq!(none.error(400)?, "bad_request");
    let unknown = gw
        .cas("c", json!({"expect_absent": true, "value": "v", "ttl": 5}))
        .await?;
    assert_eq!(unknown.error(400)?, "bad_request");
    // POST without the /cas verb is not a write.
    let post = gw.call("POST", "/v1/kv/c", b"{}").await?;
    assert_eq!(post.error(405)?, "method_not_allowed");

    // Sizes: a body over the gateway's limit is refused from its headers (the body is never
    // sent); a value just over the store's 1 MiB limit is refused by the store.
    let huge = vec![b'x'; 3 << 20];
    assert_eq!(
        gw.put("/v1/kv/big", &huge).await?.error(413)?,
        "body_too_large"
    );
    let over = vec![b'x'; (1 << 20) + 1];
    assert_eq!(
        gw.put("/v1/kv/big", &over).await?.error(413)?,
        "value_too_large"
    );
    assert_eq!(gw.get("/v1/kv/big").await?.error(404)?, "not_found");
    let at_limit = vec![b'y'; 1 << 20];
    gw.put("/v1/kv/big", &at_limit).await?.expect(200)?;
    let got = gw.get("/v1/kv/big").await?.expect(200)?;
    assert_eq!(got["value"].as_str().map(str::len), Some(1 << 20));

    // Routes and methods.
    assert_eq!(gw.get("/v2/kv/a").await?.error(404)?, "not_found");
    let patch = gw.call("PATCH", "/v1/kv/a", b"").await?;
    assert_eq!(patch.error(405)?, "method_not_allowed");

    gw.shutdown().await
}

/// A client that sends its whole body before reading (Python's `urllib` does) still reads the
/// 413 of an oversized body, whether the route refuses it (2 MiB `PUT`) or the gateway's
/// admission does (3 MiB, over any route's limit), instead of a reset connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_sent_before_reading_gets_its_413() -> Result<()> {
    let _serial = serial().await;
    let (_cluster, gw) = cluster_and_gateway(Duration::from_secs(10)).await?;
    let addr = gw.addr;
    let refused = tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
        let two = vec![b'x'; 2 << 20];
        let three = vec![b'x'; 3 << 20];
        let mut codes = Vec::new();
        for i in 0..100 {
            let reply = common::http::send_first(addr, "PUT", "/v1/kv/big", &two)
                .with_context(|| format!("2 MiB try {i}"))?;
            codes.push(reply.error(413)?);
        }
        for i in 0..10 {
            let reply = common::http::send_first(addr, "PUT", "/v1/kv/big", &three)
                .with_context(|| format!("3 MiB try {i}"))?;
            codes.push(reply.error(413)?);
        }
        Ok(codes)
    })
    .await??;
    assert_eq!(refused.len(), 110);
    assert!(refused.iter().all(|c| c == "body_too_large"), "{refused:?}");
    assert_eq!(gw.get("/v1/kv/big").await?.error(404)?, "not_found");
    gw.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_applies_on_a_matching_compare_and_conflicts_with_the_current_record() -> Result<()> {
    let _serial = serial().await;
    let (_cluster, gw) = cluster_and_gateway(Duration::from_secs(10)).await?;

    // Create if absent; a second create conflicts and shows what is there.
    let created = gw
        .cas("lock/a", json!({"expect_absent": true, "value": "owner-1"}))
        .await?
        .expect(200)?;
    assert_eq!(created["succeeded"], true);
    assert!(created["current"].is_null(), "nothing before: {created}");
    let rev = created["rev"].as_u64().context("rev")?;
    let conflict = gw
        .cas("lock/a", json!({"expect_absent": true, "value": "owner-2"}))
        .await?
        .expect(409)?;
    assert_eq!(conflict["succeeded"], false);
    assert_eq!(conflict["error"]["code"], "cas_conflict");
    assert_eq!(conflict["current"]["value"], "owner-1");
    assert_eq!(conflict["current"]["mod_rev"], rev);

    // By revision: the current one wins, a stale one conflicts.
    let swapped = gw
        .cas("lock/a", json!({"expect_mod_rev": rev, "value": "owner-2"}))
        .await?
        .expect(200)?;
    assert_eq!(
        swapped["current"]["value"], "owner-1",
        "current is the record before"
    );
    let stale = gw
        .cas("lock/a", json!({"expect_mod_rev": rev, "value": "owner-3"}))
        .await?
        .expect(409)?;
    assert_eq!(stale["current"]["value"], "owner-2");

    // By value, in base64 (bytes), writing bytes; then a delete by value.
    let bytes = [0xffu8, 0x00, 0x01];
    gw.cas(
        "lock/a",
        json!({"expect_value": "owner-2", "value_b64": b64(&bytes)}),
    )
    .await?
    .expect(200)?;
    let wrong = gw
        .cas("lock/a", json!({"expect_value": "owner-2", "delete": true}))
        .await?
        .expect(409)?;
    assert_eq!(wrong["current"]["value_b64"], b64(&bytes));
    gw.cas(
        "lock/a",
        json!({"expect_value_b64": b64(&bytes), "delete": true}),
    )
    .await?
    .expect(200)?;
    assert_eq!(gw.get("/v1/kv/lock/a").await?.error(404)?, "not_found");

    // A key whose last segment is `cas`: POST always takes the last segment as the verb.
    gw.cas("jobs/cas", json!({"expect_absent": true, "value": "j"}))
        .await?
        .expect(200)?;
    assert_eq!(gw.get("/v1/kv/jobs/cas").await?.expect(200)?["value"], "j");

    gw.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_returns_keys_in_order_by_prefix_or_range_and_says_when_there_are_more() -> Result<()>
{
    let _serial = serial().await;
    let (_cluster, gw) = cluster_and_gateway(Duration::from_secs(10)).await?;
    for i in 0..15 {
        gw.put(&format!("/v1/kv/user/{i:02}"), format!("u{i}").as_bytes())
            .await?
            .expect(200)?;
    }
    gw.put("/v1/kv/userz", b"outside").await?.expect(200)?;
    gw.put("/v1/kv/app/1", b"a").await?.expect(200)?;

    let first = gw
        .get("/v1/kv?prefix=user%2F&limit=10")
        .await?
        .expect(200)?;
    let want: Vec<String> = (0..10).map(|i| format!("user/{i:02}")).collect();
    assert_eq!(keys(&first), want);
    assert_eq!(first["more"], true);
    assert_eq!(first["records"][3]["value"], "u3");
    assert_eq!(first["records"][3]["value_b64"], b64(b"u3"));
    assert!(first["records"][3]["mod_rev"].as_u64().is_some());

    // The next page: after the last key (last key + a zero byte), within the prefix.
    let second = gw
        .get("/v1/kv?start=user%2F09%00&end=user0&limit=10")
        .await?
        .expect(200)?;
    let want: Vec<String> = (10..15).map(|i| format!("user/{i:02}")).collect();
    assert_eq!(keys(&second), want);
    assert_eq!(second["more"], false);

    // A range; the whole keyspace; the default limit.
    let range = gw
        .get("/v1/kv?start=app&end=user%2F01")
        .await?
        .expect(200)?;
    assert_eq!(keys(&range), vec!["app/1", "user/00"]);
    let all = gw.get("/v1/kv?serializable=true").await?.expect(200)?;
    assert_eq!(keys(&all).len(), 17);
    assert_eq!(all["more"], false);
    let empty = gw.get("/v1/kv?prefix=nothing").await?.expect(200)?;
    assert_eq!(keys(&empty), Vec::<String>::new());

    // Keys only; a count of the whole range, whatever the limit.
    let names = gw
        .get("/v1/kv?prefix=user%2F&limit=3&keys_only=true")
        .await?
        .expect(200)?;
    assert_eq!(names["keys"][2]["key"], "user/02");
    assert_eq!(names["keys"][2]["key_b64"], b64(b"user/02"));
    assert!(names.get("records").is_none() && names["keys"][2].get("value").is_none());
    assert_eq!(names["more"], true);
    let count = gw
        .get("/v1/kv?prefix=user%2F&limit=1&count=true")
        .await?
        .expect(200)?;
    assert_eq!(count, serde_json::json!({ "count": 15 }));

    // A range delete needs a bound, removes exactly its range and says how many.
    for unbounded in ["/v1/kv", "/v1/kv?prefix="] {
        let r = gw.call("DELETE", unbounded, b"").await?;
        assert_eq!(r.error(400)?, "bad_request", "{unbounded}");
    }
    let deleted = gw
        .call("DELETE", "/v1/kv?prefix=user%2F", b"")
        .await?
        .expect(200)?;
    assert_eq!(deleted, serde_json::json!({ "deleted": 15 }));
    let rest = gw.get("/v1/kv").await?.expect(200)?;
    assert_eq!(keys(&rest), vec!["app/1", "userz"]);

    // A put can answer the record it replaced.
    let first_write = gw
        .put("/v1/kv/app/1?prev_kv=true", b"b")
        .await?
        .expect(200)?;
    assert_eq!(first_write["prev"]["value"], "a");
    let new_key = gw
        .put("/v1/kv/app/2?prev_kv=true", b"c")
        .await?
        .expect(200)?;
    assert!(new_key["prev"].is_null() && new_key["rev"].as_u64().is_some());

    gw.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_health_and_readiness_describe_the_serving_node() -> Result<()> {
    let _serial = serial().await;
    let (cluster, gw) = cluster_and_gateway(Duration::from_secs(10)).await?;

    assert_eq!(gw.get("/healthz").await?.expect(200)?["status"], "ok");
    assert_eq!(gw.get("/readyz").await?.expect(200)?["ready"], true);

    let s = gw.get("/v1/status").await?.expect(200)?;
    let me = format!("{:016x}", cluster.handles[0].node_id());
    assert_eq!(s["node"], me);
    assert_eq!(s["peer"], cluster.handles[0].peer_id().to_string());
    assert_eq!(s["partitions"], P);
    assert_eq!(s["state"], "ready");
    assert!(s["cluster_id"].as_str().is_some_and(|c| c.len() == 16));
    assert!(
        s["meta_leader"].as_str().is_some(),
        "meta leader known: {s}"
    );
    let groups = s["groups"].as_array().context("groups")?;
    // Every partition and the meta group have a replica on each of the 3 nodes.
    assert_eq!(groups.len(), P as usize + 1);
    for g in groups {
        assert_eq!(g["voters"].as_array().map(Vec::len), Some(3), "{g}");
        assert!(g["leader"].as_str().is_some(), "{g}");
        assert!(g["applied"].as_u64() <= g["commit"].as_u64(), "{g}");
    }
    assert_eq!(s["summary"]["groups"], P + 1);
    assert_eq!(s["summary"]["with_leader"], P + 1);
    assert_eq!(s["summary"]["under_replicated"], 0);
    // Peers are listed once their membership heartbeats arrive (gossip, about a second).
    wait_for(
        "node 0 to list its two peers",
        Duration::from_secs(15),
        || async {
            match gw.get("/v1/status").await.and_then(|r| r.expect(200)) {
                Ok(s) => s["peers"].as_array().map(Vec::len) == Some(2),
                Err(_) => false,
            }
        },
    )
    .await;

    gw.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_without_a_leader_answers_503_and_the_gateway_recovers_with_the_cluster(
) -> Result<()> {
    let _serial = serial().await;
    let (mut cluster, gw) = cluster_and_gateway(Duration::from_secs(2)).await?;
    gw.put("/v1/kv/before", b"kept").await?.expect(200)?;

    // Two of three replicas gone: no partition can elect a leader or commit a write.
    cluster.kill(1).await;
    cluster.kill(2).await;
    let during = gw.put("/v1/kv/during", b"x").await?;
    let status = during.status;
    let body = during.json()?;
    println!("write right after the kill: {status} {body}");
    // Depending on where the write was when the leaders vanished, the client's deadline ends
    // it as "no leader" (503, nothing happened) or as ambiguous (503/504, and the message
    // says so).
    assert!(status == 503 || status == 504, "{status} {body}");
    let code = body["error"]["code"].as_str().context("code")?;
    if code != "unavailable" && code != "not_leader" {
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains("may or may not"), "{body}");
    }

    // Once node 0 knows no leader for any of its groups, a write is a plain 503 and the node
    // is not ready; liveness is unaffected.
    wait_for(
        "node 0 to know no leader",
        Duration::from_secs(30),
        || async {
            match gw.get("/v1/status").await.and_then(|r| r.expect(200)) {
                Ok(s) => s["summary"]["with_leader"] == 0 && s["state"] == "degraded",
                Err(_) => false,
            }
        },
    )
    .await;
    let refused = gw.put("/v1/kv/during", b"x").await?;
    assert_eq!(refused.error(503)?, "unavailable");
    let read = gw.get("/v1/kv/before").await?;
    assert_eq!(read.status, 503, "a linearizable read needs a leader too");
    let ready = gw.get("/readyz").await?;
    assert_eq!(ready.error(503)?, "not_ready");
    assert_eq!(gw.get("/healthz").await?.expect(200)?["status"], "ok");

    // The two nodes come back: the same gateway serves again and lost nothing.
    cluster.restart(1).await;
    cluster.restart(2).await;
    cluster.wait_for_leaders(Duration::from_secs(30)).await;
    wait_for(
        "the gateway to take writes again",
        Duration::from_secs(30),
        || async { matches!(gw.put("/v1/kv/after", b"y").await, Ok(r) if r.status == 200) },
    )
    .await;
    assert_eq!(gw.get("/v1/kv/before").await?.expect(200)?["value"], "kept");
    assert_eq!(gw.get("/v1/kv/after").await?.expect(200)?["value"], "y");
    assert_eq!(gw.get("/readyz").await?.expect(200)?["ready"], true);

    gw.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decommission_drains_a_member_refuses_bad_or_unknown_ids_and_is_503_without_a_meta_leader(
) -> Result<()> {
    let _serial = serial().await;
    let (mut cluster, gw) = cluster_and_gateway(Duration::from_secs(10)).await?;
    let post = |id: String| {
        let target = format!("/v1/nodes/{id}/decommission");
        let gw = &gw;
        async move { gw.call("POST", &target, b"").await }
    };

    for bad in ["zz", "0", "0x", "1ffffffffffffffff"] {
        assert_eq!(post(bad.into()).await?.error(400)?, "bad_node_id", "{bad}");
    }
    let members: Vec<u64> = cluster.handles.iter().map(|h| h.node_id()).collect();
    let stranger = (1..)
        .find(|id| !members.contains(id))
        .context("an unused id")?;
    let unknown = post(format!("{stranger:016x}")).await?;
    assert_eq!(unknown.error(404)?, "unknown_node");
    let get = gw
        .get(&format!("/v1/nodes/{:016x}/decommission", members[2]))
        .await?;
    assert_eq!(get.error(405)?, "method_not_allowed");

    // A member: accepted (node 0 passes it to the meta leader), and again (idempotent).
    let target = format!("{:016x}", members[2]);
    for _ in 0..2 {
        let body = post(target.clone()).await?.expect(200)?;
        assert_eq!(body["decommissioning"], target.as_str());
    }

    // Two of three nodes gone: no meta leader can be reached, so nothing can be decided.
    cluster.kill(1).await;
    cluster.kill(2).await;
    let one = format!("{:016x}", members[1]);
    wait_for(
        "decommission to answer 503 without a meta leader",
        Duration::from_secs(60),
        || async {
            match post(one.clone()).await {
                Ok(r) if r.status == 503 => {
                    let code = r.error(503).unwrap_or_default();
                    assert_eq!(code, "unavailable");
                    true
                }
                _ => false,
            }
        },
    )
    .await;

    gw.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outside_a_cluster_is_live_not_ready_and_serves_keys_once_it_forms() -> Result<()> {
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;
    let node = swarmkv::Node::start(node_config(dir.path(), &fast_core())).await?;
    let handle = node.handle();
    // What `swarmkv start` runs: the gateway comes up with the node, before any cluster.
    let listener = swarmkv::http::bind(([127, 0, 0, 1], 0).into()).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(swarmkv::http::serve_node(
        listener,
        handle.clone(),
        async move {
            let _ = stopped.await;
        },
    ));

    assert_eq!(
        request(addr, "GET", "/healthz", b"").await?.expect(200)?["status"],
        "ok"
    );
    let ready = request(addr, "GET", "/readyz", b"").await?;
    assert_eq!(ready.error(503)?, "not_ready");
    let status = request(addr, "GET", "/v1/status", b"").await?.expect(200)?;
    assert_eq!(status["state"], "unformed");
    assert!(status["cluster_id"].is_null(), "{status}");
    let get = request(addr, "GET", "/v1/kv/a", b"").await?;
    assert_eq!(get.error(503)?, "unavailable");
    // Bad input is still bad input: 400 before 503.
    assert_eq!(
        request(addr, "GET", "/v1/kv/%zz", b"").await?.error(400)?,
        "bad_encoding"
    );

    // The node forms a cluster of one: the same gateway starts serving keys.
    handle.bootstrap(vec![handle.peer_id()], 2, 1).await?;
    wait_for(
        "the gateway to serve keys",
        Duration::from_secs(30),
        || async {
            matches!(request(addr, "PUT", "/v1/kv/a", b"1").await, Ok(r) if r.status == 200)
        },
    )
    .await;
    let got = request(addr, "GET", "/v1/kv/a", b"").await?.expect(200)?;
    assert_eq!(got["value"], "1");
    let status = request(addr, "GET", "/v1/status", b"").await?.expect(200)?;
    assert_eq!(status["partitions"], 2);
    // One voter per group: every group is reported under-replicated.
    assert_eq!(
        status["summary"]["under_replicated"],
        status["summary"]["groups"]
    );
    wait_for("readiness", Duration::from_secs(30), || async {
        matches!(request(addr, "GET", "/readyz", b"").await, Ok(r) if r.status == 200)
    })
    .await;

    let _ = stop.send(());
    server.await??;
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_proposals_fsyncs_and_request_latency() -> Result<()> {
    let _serial = serial().await;
    let cluster = TestCluster::start(3, P, fast_core()).await;
    let listener = swarmkv::http::bind(([127, 0, 0, 1], 0).into()).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(swarmkv::http::serve_node(
        listener,
        cluster.handles[0].clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    // The gateway makes its client once the node is in a cluster: wait for keys to serve.
    let mut ready = false;
    for _ in 0..100 {
        if request(addr, "PUT", "/v1/kv/metrics/probe", b"1")
            .await?
            .status
            == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the gateway never served a write");
    for i in 0..5 {
        request(addr, "PUT", &format!("/v1/kv/metrics/{i}"), b"v")
            .await?
            .expect(200)?;
        request(addr, "GET", &format!("/v1/kv/metrics/{i}"), b"")
            .await?
            .expect(200)?;
    }
    let reply = request(addr, "GET", "/metrics", b"").await?;
    assert_eq!(reply.status, 200);
    let text = String::from_utf8(reply.body)?;
    let value = |name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    for family in [
        "swarmkv_proposals_total",
        "swarmkv_applies_total",
        "swarmkv_raft_messages_sent_total",
        "swarmkv_raft_messages_received_total",
        "swarmkv_fsync_seconds_count",
        "swarmkv_peers_up",
    ] {
        assert!(value(family).is_some(), "{family} missing from:\n{text}");
    }
    assert!(value("swarmkv_applies_total").unwrap_or(0.0) > 0.0);
    assert!(value("swarmkv_fsync_seconds_count").unwrap_or(0.0) > 0.0);
    // The Raft stream to the peers wrote frames, in at least one write.
    let raft_frames = value("swarmkv_stream_frames_total{stream=\"raft\"}").unwrap_or(0.0);
    let raft_writes = value("swarmkv_stream_writes_total{stream=\"raft\"}").unwrap_or(0.0);
    assert!(raft_frames > 0.0 && raft_writes > 0.0, "{text}");
    assert!(
        value("swarmkv_stream_frames_total{stream=\"kv\"}").is_some(),
        "{text}"
    );
    assert!(
        value("swarmkv_request_seconds_count{op=\"put\"}").unwrap_or(0.0) >= 6.0,
        "{text}"
    );
    assert!(
        value("swarmkv_request_seconds_count{op=\"get\"}").unwrap_or(0.0) >= 5.0,
        "{text}"
    );
    // Peers count once their heartbeats (every 200 ms here) have been heard.
    let mut peers = 0.0;
    for _ in 0..50 {
        let reply = request(addr, "GET", "/metrics", b"").await?;
        let text = String::from_utf8(reply.body)?;
        peers = text
            .lines()
            .find(|l| l.starts_with("swarmkv_peers_up "))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if peers >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(peers, 2.0, "both other nodes should count as up");
    let _ = stop.send(());
    server.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_grant_attach_keep_alive_query_revoke_and_expire_over_http() -> Result<()> {
    let _serial = serial().await;
    let (_cluster, gw) = cluster_and_gateway(Duration::from_secs(10)).await?;
    let post = |target: String, body: Value| {
        let gw = &gw;
        async move { gw.call("POST", &target, body.to_string().as_bytes()).await }
    };

    // Grant: the id is 16 hex digits, the TTL given in seconds or milliseconds.
    let lease = post("/v1/lease".into(), json!({ "ttl": 30 }))
        .await?
        .expect(200)?;
    let id = lease["id"].as_str().context("id")?.to_string();
    assert_eq!(id.len(), 16);
    assert_eq!(lease["ttl"], 30);
    assert_eq!(lease["ttl_ms"], 30_000);
    assert!(lease["remaining_ms"].as_u64().context("remaining")? <= 30_000);
    for bad in [
        json!({}),
        json!({ "ttl": 0 }),
        json!({ "ttl": 1, "ttl_ms": 5 }),
        // Under the minimum, four election timeouts (2 s with this test's 50 ms ticks).
        json!({ "ttl_ms": 1999 }),
        json!({ "ttl": 1 }),
    ] {
        let r = post("/v1/lease".into(), bad.clone()).await?;
        assert_eq!(r.error(400)?, "bad_request", "{bad}");
    }

    // Attach keys; an unknown lease is 404, a malformed id 400.
    gw.put(&format!("/v1/kv/svc/a?lease={id}"), b"1")
        .await?
        .expect(200)?;
    gw.put(&format!("/v1/kv/svc/b?lease={id}"), b"2")
        .await?
        .expect(200)?;
    let unknown = gw.put("/v1/kv/svc/x?lease=00000000000000ff", b"1").await?;
    assert_eq!(unknown.error(404)?, "lease_not_found");
    let bad = gw.put("/v1/kv/svc/x?lease=zz", b"1").await?;
    assert_eq!(bad.error(400)?, "bad_lease_id");

    // Keep-alive and time-to-live.
    let kept = post(format!("/v1/lease/{id}/keepalive"), json!({}))
        .await?
        .expect(200)?;
    assert_eq!(kept["id"], id.as_str());
    let ttl = gw.get(&format!("/v1/lease/{id}")).await?.expect(200)?;
    assert_eq!(ttl["ttl_ms"], 30_000);
    let missing = gw.get("/v1/lease/00000000000000ff").await?;
    assert_eq!(missing.error(404)?, "lease_not_found");

    // Revoke: the keys go, the lease is gone.
    let revoked = gw
        .call("DELETE", &format!("/v1/lease/{id}"), b"")
        .await?
        .expect(200)?;
    assert_eq!(revoked["revoked"], id.as_str());
    for key in ["svc/a", "svc/b"] {
        let target = format!("/v1/kv/{key}");
        wait_for(
            "a revoked lease's key to go",
            Duration::from_secs(10),
            || {
                let gw = &gw;
                let target = target.clone();
                async move { gw.get(&target).await.is_ok_and(|r| r.status == 404) }
            },
        )
        .await;
    }
    let after = post(format!("/v1/lease/{id}/keepalive"), json!({})).await?;
    assert_eq!(after.error(404)?, "lease_not_found");

    // A short lease (the shortest allowed here) expires on its own and takes its key with it.
    let short = post("/v1/lease".into(), json!({ "ttl_ms": 2000 }))
        .await?
        .expect(200)?;
    let short_id = short["id"].as_str().context("id")?.to_string();
    gw.put(&format!("/v1/kv/svc/short?lease={short_id}"), b"1")
        .await?
        .expect(200)?;
    wait_for(
        "an expired lease's key to go",
        Duration::from_secs(10),
        || {
            let gw = &gw;
            async move {
                gw.get("/v1/kv/svc/short")
                    .await
                    .is_ok_and(|r| r.status == 404)
            }
        },
    )
    .await;
    let gone = gw.get(&format!("/v1/lease/{short_id}")).await?;
    assert_eq!(gone.error(404)?, "lease_not_found");

    gw.shutdown().await
}
