//! The `swarmkv` binary's client verbs over HTTP (`--endpoint`): the built binary run against
//! the gateway of a 3-node in-process cluster on 127.0.0.1, checking output and exit status
//! (0 done, 1 not found / compare failed / refused, 2 usage, 3 unavailable) for every verb.

mod common;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt as _;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::gateway::Gateway;
use common::*;
use serde_json::Value;
use swarmkv::core::CoreConfig;

fn fast_core() -> CoreConfig {
    CoreConfig {
        tick_ms: 50,
        ..CoreConfig::default()
    }
}

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Checks the exit status; on success the stdout as text.
    fn expect(&self, code: i32) -> Result<String> {
        if self.code != code {
            bail!(
                "exit {} instead of {code}\nstdout: {}\nstderr: {}",
                self.code,
                self.stdout(),
                self.stderr
            );
        }
        if code != 0 {
            // The contract: one `error: ...` line on stderr saying why.
            let lines: Vec<&str> = self.stderr.lines().collect();
            if lines.len() != 1 || !lines[0].starts_with("error: ") {
                bail!("stderr is not one `error:` line: {:?}", self.stderr);
            }
        }
        Ok(self.stdout())
    }

    fn json(&self) -> Result<Value> {
        self.expect(0)?;
        serde_json::from_slice(&self.stdout)
            .with_context(|| format!("stdout is not JSON: {}", self.stdout()))
    }
}

/// Runs the built `swarmkv` with `args` (any bytes), outside any `SWARMKV_*` setting of the
/// test's own environment except those in `env`.
async fn swarmkv(args: Vec<OsString>, env: Vec<(&'static str, String)>) -> Result<Run> {
    let output = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_swarmkv"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SWARMKV_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(args).envs(env).output()
    })
    .await??;
    Ok(Run {
        // A run killed by a signal has no code: -1 fails every expectation.
        code: output.status.code().unwrap_or(-1),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

/// `swarmkv VERB ... --endpoint ENDPOINT`.
async fn at(endpoint: &str, list: &[&str]) -> Result<Run> {
    let mut a = args(list);
    a.extend(args(&["--endpoint", endpoint]));
    swarmkv(a, Vec::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_verb_works_over_the_http_gateway() -> Result<()> {
    let _serial = serial().await;
    let cluster = TestCluster::start(3, 8, fast_core()).await;
    let gw = Gateway::for_node(cluster.handles[0].clone()).await?;
    let ep = gw.endpoint();
    // The gateway makes its client once it sees the node in a cluster.
    let mut probe = at(&ep, &["put", "probe", "1"]).await?;
    for _ in 0..100 {
        if probe.code == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        probe = at(&ep, &["put", "probe", "1"]).await?;
    }
    probe.expect(0)?;

    // put / get.
    let put = at(&ep, &["put", "greeting", "hello"]).await?.expect(0)?;
    let rev: u64 = put
        .trim()
        .strip_prefix("rev ")
        .and_then(|r| r.parse().ok())
        .with_context(|| format!("put printed {put:?}"))?;
    assert_eq!(at(&ep, &["get", "greeting"]).await?.expect(0)?, "hello\n");
    let rec = at(&ep, &["get", "greeting", "--json"]).await?.json()?;
    assert_eq!(rec["key"], "greeting");
    assert_eq!(rec["value"], "hello");
    assert_eq!(rec["value_b64"], STANDARD.encode("hello"));
    assert_eq!(rec["mod_rev"], rev);
    assert_eq!(rec["version"], 1);
    assert_eq!(
        at(&ep, &["get", "greeting", "--serializable"])
            .await?
            .expect(0)?,
        "hello\n"
    );

    // The endpoint can come from the environment.
    let from_env = swarmkv(
        args(&["get", "greeting"]),
        vec![("SWARMKV_ENDPOINT", ep.clone())],
    )
    .await?
    .expect(0)?;
    assert_eq!(from_env, "hello\n");

    // Both transports read the same record (--peer: libp2p to another node).
    let over_p2p = swarmkv(
        args(&[
            "get",
            "greeting",
            "--json",
            "--peer",
            &cluster.addrs[1].to_string(),
        ]),
        Vec::new(),
    )
    .await?
    .json()?;
    assert_eq!(over_p2p, rec);

    // Keys and values of any bytes round-trip through the URL and the JSON: slashes (doubled,
    // leading, trailing), dot segments, URL metacharacters, the CAS suffix, non-UTF-8 (any
    // byte but NUL, which no command-line argument can hold).
    let odd_keys: Vec<Vec<u8>> = vec![
        b"dir/sub//x/".to_vec(),
        b"/lead".to_vec(),
        b"a/../b".to_vec(),
        b"sp ace+plus%25&=?#".to_vec(),
        b"k/cas".to_vec(),
        vec![0x01, 0xff, b'/', 0x80],
    ];
    let reader = cluster.client(2).await;
    for (i, key) in odd_keys.iter().enumerate() {
        let value = vec![0xfe, i as u8 + 1, 0x7f];
        let put = vec![
            OsString::from("put"),
            OsString::from_vec(key.clone()),
            OsString::from_vec(value.clone()),
            OsString::from("--endpoint"),
            OsString::from(&ep),
        ];
        swarmkv(put, Vec::new()).await?.expect(0)?;
        let stored = reader.get(key).await?.context("the key was not stored")?;
        assert_eq!(stored.value, value, "key {key:?}");
        let get = vec![
            OsString::from("get"),
            OsString::from_vec(key.clone()),
            OsString::from("--json"),
            OsString::from("--endpoint"),
            OsString::from(&ep),
        ];
        let json = swarmkv(get, Vec::new()).await?.json()?;
        assert_eq!(json["key_b64"], STANDARD.encode(key), "key {key:?}");
        assert_eq!(json["value_b64"], STANDARD.encode(&value), "key {key:?}");
    }

    // cas: success with each kind of expectation, then conflicts (exit 1, nothing written).
    let mod_rev = rec["mod_rev"].to_string();
    let swapped = at(
        &ep,
        &["cas", "greeting", "hi", "--expect-mod-rev", &mod_rev],
    )
    .await?
    .expect(0)?;
    assert!(swapped.starts_with("rev "), "{swapped}");
    at(&ep, &["cas", "greeting", "hey", "--expect-value", "hi"])
        .await?
        .expect(0)?;
    at(&ep, &["cas", "fresh", "1", "--expect-absent"])
        .await?
        .expect(0)?;
    let stale = at(
        &ep,
        &["cas", "greeting", "lost", "--expect-mod-rev", &mod_rev],
    )
    .await?;
    stale.expect(1)?;
    assert!(stale.stderr.contains("compare failed"), "{}", stale.stderr);
    assert!(stale.stderr.contains("value hey"), "{}", stale.stderr);
    at(&ep, &["cas", "fresh", "2", "--expect-absent"])
        .await?
        .expect(1)?;
    let absent = at(&ep, &["cas", "nobody", "x", "--expect-value", "y"]).await?;
    absent.expect(1)?;
    assert!(absent.stderr.contains("absent"), "{}", absent.stderr);
    assert_eq!(at(&ep, &["get", "greeting"]).await?.expect(0)?, "hey\n");

    // scan: prefix, range, limit, JSON; more keys than a page would hold are not needed to
    // show the shape, the paging is the same loop.
    for i in 0..5 {
        at(&ep, &["put", &format!("user/{i}"), &format!("u{i}")])
            .await?
            .expect(0)?;
    }
    let lines = at(&ep, &["scan", "--prefix", "user/"]).await?.expect(0)?;
    let expected: String = (0..5).map(|i| format!("user/{i}\tu{i}\n")).collect();
    assert_eq!(lines, expected);
    let limited = at(&ep, &["scan", "--prefix", "user/", "--limit", "2"])
        .await?
        .expect(0)?;
    assert_eq!(limited, "user/0\tu0\nuser/1\tu1\n");
    let range = at(&ep, &["scan", "--start", "user/1", "--end", "user/3"])
        .await?
        .expect(0)?;
    assert_eq!(range, "user/1\tu1\nuser/2\tu2\n");
    let json = at(&ep, &["scan", "--prefix", "user/", "--json"])
        .await?
        .json()?;
    let records = json.as_array().context("scan --json is an array")?;
    assert_eq!(records.len(), 5);
    assert_eq!(records[4]["key"], "user/4");
    assert_eq!(records[4]["value_b64"], STANDARD.encode("u4"));

    // Over libp2p the same verbs give the same answers and exit statuses.
    let peer = cluster.addrs[1].to_string();
    let p2p_scan = swarmkv(
        args(&["scan", "--prefix", "user/", "--json", "--peer", &peer]),
        Vec::new(),
    )
    .await?
    .json()?;
    assert_eq!(p2p_scan, json);
    let p2p_cas = swarmkv(
        args(&["cas", "fresh", "3", "--expect-absent", "--peer", &peer]),
        Vec::new(),
    )
    .await?;
    p2p_cas.expect(1)?;
    assert!(
        p2p_cas.stderr.contains("compare failed"),
        "{}",
        p2p_cas.stderr
    );
    let p2p_unknown = swarmkv(
        args(&["decommission", "00000000000000ff", "--peer", &peer]),
        Vec::new(),
    )
    .await?;
    p2p_unknown.expect(1)?;

    // del: 0 whether or not the key existed; then get says not found, exit 1.
    assert_eq!(at(&ep, &["del", "greeting"]).await?.expect(0)?, "deleted\n");
    let again = at(&ep, &["delete", "greeting"]).await?.expect(0)?;
    assert!(again.contains("not found"), "{again}");
    let missing = at(&ep, &["get", "greeting"]).await?;
    assert_eq!(
        missing.expect(1)?,
        "",
        "nothing on stdout for a missing key"
    );
    assert!(missing.stderr.contains("not found"), "{}", missing.stderr);

    // Requests the gateway refuses are 1, not 3: an empty key (400), a key over the 4 KiB
    // limit (413).
    let empty = at(&ep, &["put", "", "v"]).await?;
    empty.expect(1)?;
    assert!(empty.stderr.contains("400"), "{}", empty.stderr);
    let long = at(&ep, &["put", &"k".repeat(5000), "v"]).await?;
    long.expect(1)?;
    assert!(long.stderr.contains("key_too_large"), "{}", long.stderr);

    // status: the table and the gateway's JSON.
    let node0 = format!("{:016x}", cluster.handles[0].node_id());
    let table = at(&ep, &["status"]).await?.expect(0)?;
    assert!(table.contains(&node0), "{table}");
    assert!(table.contains("state        ready"), "{table}");
    assert!(table.contains("GROUP"), "{table}");
    let status = at(&ep, &["status", "--json"]).await?.json()?;
    assert_eq!(status["node"], node0.as_str());
    assert_eq!(status["partitions"], 8);

    // decommission: an unknown node is refused (1); a member starts draining (0).
    let unknown = at(&ep, &["decommission", "00000000000000ff"]).await?;
    unknown.expect(1)?;
    assert!(unknown.stderr.contains("unknown"), "{}", unknown.stderr);
    let node2 = format!("{:016x}", cluster.handles[2].node_id());
    let drain = at(&ep, &["decommission", &node2]).await?.expect(0)?;
    assert!(
        drain.contains(&format!("decommissioning {node2}")),
        "{drain}"
    );

    gw.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_serve_keys_is_unavailable_but_reports_its_status() -> Result<()> {
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;
    let node = swarmkv::Node::start(node_config(dir.path(), &fast_core())).await?;
    let gw = Gateway::for_node(node.handle()).await?;
    let ep = gw.endpoint();
    // Not part of a cluster: keys answer 503, which is exit 3.
    let get = at(&ep, &["get", "k"]).await?;
    get.expect(3)?;
    assert!(get.stderr.contains("503"), "{}", get.stderr);
    at(&ep, &["put", "k", "v"]).await?.expect(3)?;
    let table = at(&ep, &["status"]).await?.expect(0)?;
    assert!(table.contains("none yet"), "{table}");
    assert!(table.contains("state        unformed"), "{table}");
    gw.shutdown().await?;
    node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_endpoint_nobody_listens_on_is_unavailable() -> Result<()> {
    // A port that was free a moment ago: connection refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    let ep = format!("http://127.0.0.1:{port}");
    for verb in [
        &["get", "k"][..],
        &["put", "k", "v"],
        &["del", "k"],
        &["cas", "k", "v", "--expect-absent"],
        &["scan"],
        &["status"],
        &["decommission", "ab"],
    ] {
        let run = at(&ep, verb).await?;
        run.expect(3)?;
        assert!(
            run.stderr.contains("cannot connect"),
            "{verb:?}: {}",
            run.stderr
        );
    }
    Ok(())
}

#[tokio::test]
async fn bad_usage_exits_2_before_anything_is_sent() -> Result<()> {
    for list in [
        &["cas", "k", "v"][..],
        &["cas", "k", "v", "--expect-absent", "--expect-mod-rev", "3"],
        &["get"],
        &["get", "k", "--endpoint", "https://127.0.0.1:7380"],
        &[
            "get",
            "k",
            "--endpoint",
            "http://127.0.0.1:7380",
            "--peer",
            "/ip4/127.0.0.1/tcp/7379",
        ],
        &["scan", "--prefix", "a", "--end", "b"],
        &["decommission", "not-hex"],
        &["frobnicate"],
    ] {
        let run = swarmkv(args(list), Vec::new()).await?;
        assert_eq!(run.code, 2, "{list:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{list:?}");
    }
    // A usage error found by swarmkv rather than clap: a missing PSK file for --peer.
    let run = swarmkv(
        args(&[
            "status",
            "--peer",
            "/ip4/127.0.0.1/tcp/9",
            "--psk-file",
            "/nonexistent/swarm.key",
        ]),
        Vec::new(),
    )
    .await?;
    run.expect(2)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_verbs_work_over_both_transports() -> Result<()> {
    let _serial = serial().await;
    let cluster = TestCluster::start(3, 8, fast_core()).await;
    let gw = Gateway::for_node(cluster.handles[0].clone()).await?;
    let ep = gw.endpoint();
    let peer = cluster.addrs[1].to_string();
    let mut probe = at(&ep, &["put", "probe", "1"]).await?;
    for _ in 0..100 {
        if probe.code == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        probe = at(&ep, &["put", "probe", "1"]).await?;
    }
    probe.expect(0)?;
    let over_peer = |list: &[&str]| {
        let mut a = args(list);
        a.extend(args(&["--peer", &peer]));
        swarmkv(a, Vec::new())
    };

    // grant prints the id alone (for ID=$(swarmkv lease grant 30)); over HTTP and libp2p.
    let id = at(&ep, &["lease", "grant", "30"]).await?.expect(0)?;
    let id = id.trim().to_string();
    assert_eq!(id.len(), 16, "{id:?}");
    let json = over_peer(&["lease", "grant", "20s", "--json"])
        .await?
        .json()?;
    let id2 = json["id"].as_str().context("id")?.to_string();
    assert_eq!(json["ttl_ms"], 20_000);

    // Keys attach with put --lease, over both transports.
    at(&ep, &["put", "svc/one", "1", "--lease", &id])
        .await?
        .expect(0)?;
    over_peer(&["put", "svc/two", "2", "--lease", &id2])
        .await?
        .expect(0)?;
    let unknown = at(&ep, &["put", "svc/x", "1", "--lease", "ff"]).await?;
    unknown.expect(1)?;
    assert!(unknown.stderr.contains("lease"), "{}", unknown.stderr);
    over_peer(&["put", "svc/x", "1", "--lease", "ff"])
        .await?
        .expect(1)?;

    // ttl and a single keep-alive.
    let ttl = at(&ep, &["lease", "ttl", &id]).await?.expect(0)?;
    assert!(ttl.contains(&id) && ttl.contains("of a 30.0s TTL"), "{ttl}");
    let ttl2 = over_peer(&["lease", "ttl", &id2, "--json"]).await?.json()?;
    assert_eq!(ttl2["id"], id2.as_str());
    at(&ep, &["lease", "keep-alive", &id, "--once"])
        .await?
        .expect(0)?;
    over_peer(&["lease", "keep-alive", &id2, "--once"])
        .await?
        .expect(0)?;

    // Revoke: the keys go; afterwards the lease is unknown (exit 1).
    assert_eq!(
        at(&ep, &["lease", "revoke", &id]).await?.expect(0)?,
        format!("revoked {id}\n")
    );
    over_peer(&["lease", "revoke", &id2]).await?.expect(0)?;
    for key in ["svc/one", "svc/two"] {
        let mut gone = false;
        for _ in 0..100 {
            if at(&ep, &["get", key]).await?.code == 1 {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(gone, "{key} outlived its lease's revocation");
    }
    at(&ep, &["lease", "ttl", &id]).await?.expect(1)?;
    over_peer(&["lease", "keep-alive", &id2, "--once"])
        .await?
        .expect(1)?;
    // A lease lost while keep-alive runs: exit 1 (not 0, not a hang).
    let short = at(&ep, &["lease", "grant", "3"]).await?.expect(0)?;
    let short = short.trim().to_string();
    let keeper = tokio::spawn(swarmkv(
        args(&["lease", "keep-alive", &short, "--endpoint", &ep]),
        Vec::new(),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    at(&ep, &["lease", "revoke", &short]).await?.expect(0)?;
    let kept = tokio::time::timeout(Duration::from_secs(20), keeper).await???;
    kept.expect(1)?;
    assert!(kept.stdout().contains(&short), "{}", kept.stdout());

    // Bad usage: exit 2 (clap's message).
    assert_eq!(at(&ep, &["lease", "grant", "0"]).await?.code, 2);
    assert_eq!(at(&ep, &["lease", "ttl", "xyz"]).await?.code, 2);

    gw.shutdown().await
}
