//! The status page at `/`, in a real browser: headless Chromium (Debian's `chromium`, which
//! `.ci/run` installs) loads the page from a gateway, lets its script poll `/v1/status`, and
//! dumps the DOM it rendered; a second run takes a screenshot.
//!
//! - Against a 3-node in-process cluster: the node count the page shows is the one
//!   `/v1/status` reports, the grid has one cell per partition, and the screenshot is a real
//!   image (also saved as `target/status_page.png` for people to look at). Then a node stops:
//!   the page shows it silent and every partition under-replicated.
//! - Against a stand-in server that drops the status requests and then answers: the page
//!   says the node is unreachable, and clears that once the node answers again; it draws
//!   the stand-in's degraded cluster (a dead node, a partition under-replicated, one without
//!   a leader) with the matching marks, saved as `target/status_page_degraded.png`.
//!
//! Chromium runs with `--virtual-time-budget`: its timers (the page's one-second poll) run on
//! a virtual clock that only waits for the network, so five seconds of page life take about as
//! long as the requests do. Each run is bounded (killed by its process group after 60 s).
//! Without Chromium the tests are skipped visibly, or fail under `SWARMKV_REQUIRE_ALL=1` (CI
//! installs it and sets that).

mod common;

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::gateway::Gateway;
use common::http::request;
use common::*;
use serde_json::{json, Value};
use swarmkv::core::CoreConfig;

/// Partitions of the test cluster: enough for the grid to look like one.
const P: u32 = 24;

/// Where Debian's `chromium` package puts the browser.
const CHROMIUM: &str = "/usr/bin/chromium";

/// How long one browser run may take before it is killed.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// A screenshot smaller than this is blank or an error page.
const MIN_PNG_BYTES: u64 = 10 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_every_node_and_one_cell_per_partition_in_headless_chromium() -> Result<()> {
    let Some(browser) = chromium()? else {
        return Ok(());
    };
    let _serial = serial().await;
    let mut cluster = TestCluster::start(
        3,
        P,
        CoreConfig {
            tick_ms: 50,
            ..CoreConfig::default()
        },
    )
    .await;
    let gateway = Gateway::for_node(cluster.handles[0].clone()).await?;
    let addr = gateway.addr;

    wait_for(
        "/v1/status to show 3 reachable nodes and every partition led by a full replica set",
        Duration::from_secs(60),
        || async {
            match get_json(addr, "/v1/status").await {
                Ok(s) => {
                    let c = &s["cluster"]["summary"];
                    c["nodes"] == 3
                        && c["reachable"] == 3
                        && c["with_leader"] == P
                        && c["under_replicated"] == 0
                }
                Err(_) => false,
            }
        },
    )
    .await;

    let url = format!("http://{addr}/");
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    // A leadership change (the cluster balances leaders) can leave a partition without a
    // known leader for a moment; the page draws whatever the status said at its last poll.
    let dom = dump_steady(&browser, dir.path(), &url, |dom| {
        Ok(element_text(dom, "led-count")? == P.to_string()
            && dom.matches("class=\"cell healthy\"").count() == P as usize)
    })
    .await?;
    println!(
        "DOM dumped in {:?} ({} bytes)",
        started.elapsed(),
        dom.len()
    );
    // Asked after the browser's last poll: the cluster is steady, so both saw the same.
    let status = get_json(addr, "/v1/status").await?;
    let nodes = status["cluster"]["summary"]["nodes"]
        .as_u64()
        .context("cluster.summary.nodes")?;
    assert_eq!(element_text(&dom, "node-count")?, nodes.to_string());
    assert_eq!(nodes, 3);
    assert_eq!(element_text(&dom, "partition-count")?, P.to_string());
    assert_eq!(dom.matches("data-partition=\"").count(), P as usize);
    for n in status["cluster"]["nodes"].as_array().context("nodes")? {
        let id = n["id"].as_str().context("node id")?;
        assert!(
            dom.contains(&format!("<tr class=\"\" data-node=\"{id}\"")),
            "node {id} not listed as heard"
        );
    }
    assert_eq!(
        element_text(&dom, "cluster-name")?,
        cluster.handles[0].cluster_name()
    );
    assert!(dom.contains("data-reachable=\"true\""), "{dom}");
    assert_eq!(element_text(&dom, "banner")?, "", "a banner is shown");

    let started = Instant::now();
    let png = {
        let (browser, dir, url) = (browser.clone(), dir.path().to_path_buf(), url.clone());
        tokio::task::spawn_blocking(move || screenshot(&browser, &dir, &url)).await??
    };
    println!("screenshot taken in {:?}", started.elapsed());
    check_png(&png)?;
    keep(&png, "status_page.png")?;

    // A node goes down: the page still counts it (the registry keeps it), shows it silent,
    // and every partition, of which it was a voter, under-replicated but led.
    cluster.kill(2).await;
    let gone = format!("{:016x}", cluster.handles[2].node_id());
    wait_for(
        "/v1/status to hear 2 nodes and every partition led again",
        Duration::from_secs(60),
        || async {
            match get_json(addr, "/v1/status").await {
                Ok(s) => {
                    let c = &s["cluster"]["summary"];
                    c["nodes"] == 3 && c["reachable"] == 2 && c["with_leader"] == P
                }
                Err(_) => false,
            }
        },
    )
    .await;
    let dom = dump_steady(&browser, dir.path(), &url, |dom| {
        Ok(element_text(dom, "led-count")? == P.to_string())
    })
    .await?;
    assert_eq!(element_text(&dom, "node-count")?, "3");
    assert_eq!(element_text(&dom, "under-count")?, P.to_string());
    assert_eq!(
        dom.matches("class=\"cell under_replicated\"").count(),
        P as usize
    );
    assert!(
        dom.contains(&format!("<tr class=\"silent\" data-node=\"{gone}\"")),
        "the stopped node is not shown silent"
    );

    gateway.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_says_when_the_node_is_unreachable_and_recovers_when_it_answers() -> Result<()> {
    let Some(browser) = chromium()? else {
        return Ok(());
    };
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;

    // A node that never answers its status: the page says so, with the failure.
    let down = StandIn::start(usize::MAX)?;
    let dom = dump_dom(&browser, dir.path(), &down.url())?;
    ensure!(
        dom.contains("data-reachable=\"false\""),
        "the page does not say the node is unreachable:\n{dom}"
    );
    let banner = element_text(&dom, "banner")?;
    assert!(
        banner.contains("Cannot reach this node (no connection"),
        "{banner}"
    );
    assert_eq!(
        element_text(&dom, "node-count")?,
        "–",
        "nothing to count yet"
    );
    assert!(
        down.status_requests() >= 3,
        "the page kept polling ({} requests)",
        down.status_requests()
    );

    // A node that fails twice and then answers: the page renders the status and the banner
    // goes (it says "Reconnected." for three seconds first).
    let flaky = StandIn::start(2)?;
    let dom = dump_dom(&browser, dir.path(), &flaky.url())?;
    ensure!(
        dom.contains("data-loaded=\"true\""),
        "the page never rendered:\n{dom}"
    );
    assert!(dom.contains("data-reachable=\"true\""), "{dom}");
    let banner = element_text(&dom, "banner")?;
    assert!(
        banner.is_empty() || banner == "Reconnected.",
        "the banner stayed: {banner}"
    );
    assert!(flaky.status_requests() >= 3, "{}", flaky.status_requests());
    // What the stand-in reports: 4 nodes, 4 partitions, one without a leader and one
    // under-replicated.
    assert_eq!(element_text(&dom, "node-count")?, "4");
    assert_eq!(element_text(&dom, "led-count")?, "3");
    assert_eq!(element_text(&dom, "under-count")?, "1");
    assert_eq!(dom.matches("data-partition=\"").count(), 4);
    assert_eq!(dom.matches("class=\"cell no_leader\"").count(), 1);
    assert_eq!(dom.matches("class=\"cell under_replicated\"").count(), 1);
    assert_eq!(dom.matches("class=\"cell healthy\"").count(), 2);
    // Text from the cluster is text: the markup in the cluster name is shown, not parsed.
    assert_eq!(
        element_text(&dom, "cluster-name")?,
        "&lt;b&gt;lab&lt;/b&gt;"
    );

    // How a degraded cluster looks, for people: target/status_page_degraded.png.
    let steady = StandIn::start(0)?;
    let png = screenshot(&browser, dir.path(), &steady.url())?;
    check_png(&png)?;
    keep(&png, "status_page_degraded.png")?;
    Ok(())
}

/// Copies a screenshot to `target/NAME`, where people look.
fn keep(png: &Path, name: &str) -> Result<()> {
    let kept = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(name);
    if let Some(parent) = kept.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(png, &kept)?;
    println!("screenshot saved as {}", kept.display());
    Ok(())
}

/// Dumps the DOM of `url` until `steady` holds for it (at most three runs): for facts of the
/// cluster that may be in flux for a moment when the browser polls.
async fn dump_steady(
    browser: &Path,
    dir: &Path,
    url: &str,
    steady: impl Fn(&str) -> Result<bool>,
) -> Result<String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let dom = {
            let (browser, dir, url) = (browser.to_path_buf(), dir.to_path_buf(), url.to_string());
            tokio::task::spawn_blocking(move || dump_dom(&browser, &dir, &url)).await??
        };
        ensure!(
            dom.contains("data-loaded=\"true\""),
            "the page never rendered a status:\n{dom}"
        );
        if steady(&dom)? {
            return Ok(dom);
        }
        let seen = format!(
            "nodes {}, led {}, under-replicated {}",
            element_text(&dom, "node-count")?,
            element_text(&dom, "led-count")?,
            element_text(&dom, "under-count")?
        );
        ensure!(attempt < 3, "the page never settled ({seen}):\n{dom}");
        println!("run {attempt}: the page caught the cluster in flux ({seen}); again");
    }
}

/// The browser, or `None` when it is missing and the test is skipped (see `common::needs`).
fn chromium() -> Result<Option<PathBuf>> {
    if common::needs::skip_unless(&[common::needs::Need::Chromium], "draws the page")? {
        return Ok(None);
    }
    Ok(Some(PathBuf::from(CHROMIUM)))
}

/// Loads `url`, lets the page run for five seconds of virtual time, and returns its DOM.
fn dump_dom(browser: &Path, dir: &Path, url: &str) -> Result<String> {
    let out = dir.join("dom.html");
    run_browser(browser, dir, &["--dump-dom".into(), url.into()], &out)?;
    Ok(fs::read_to_string(&out)?)
}

/// Loads `url`, lets the page run for five seconds of virtual time, and returns the path of
/// a 1280x900 screenshot.
fn screenshot(browser: &Path, dir: &Path, url: &str) -> Result<PathBuf> {
    let png = dir.join("status.png");
    let _ = fs::remove_file(&png);
    let args = [
        format!("--screenshot={}", png.display()),
        "--window-size=1280,900".into(),
        "--hide-scrollbars".into(),
        url.into(),
    ];
    run_browser(browser, dir, &args, &dir.join("screenshot.out"))?;
    Ok(png)
}

/// Runs headless Chromium with a fresh profile, its stdout in `out`; kills it (its whole
/// process group: the browser starts helpers) if it outlives [`BROWSER_TIMEOUT`].
fn run_browser(browser: &Path, dir: &Path, args: &[String], out: &Path) -> Result<()> {
    let profile = tempfile::tempdir_in(dir)?;
    let log = dir.join("chromium.log");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(out)?)
        .stderr(fs::File::create(&log)?)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot run {}", browser.display()))?;
    let guard = KillGroup(child.id() as i32);
    let until = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > until {
            drop(guard);
            let _ = child.wait();
            bail!(
                "chromium did not finish within {BROWSER_TIMEOUT:?}; its log:\n{}",
                tail(&log)
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    // The browser is gone; its helpers follow it, or the guard ends them now.
    drop(guard);
    ensure!(
        status.success(),
        "chromium failed ({status}); its log:\n{}",
        tail(&log)
    );
    Ok(())
}

/// Kills a process group this test started, when dropped.
struct KillGroup(i32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        // SAFETY: plain syscall on a process group we created (`process_group(0)` makes the
        // child's pid its group id); a group already gone is ESRCH, harmless.
        unsafe {
            libc::kill(-self.0, libc::SIGKILL);
        }
    }
}

/// The last lines of a log, for failure messages.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Checks that `path` is a PNG of some substance.
fn check_png(path: &Path) -> Result<()> {
    let bytes = fs::read(path).with_context(|| format!("no screenshot at {}", path.display()))?;
    ensure!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
    ensure!(
        bytes.len() as u64 > MIN_PNG_BYTES,
        "the screenshot is only {} bytes: blank?",
        bytes.len()
    );
    println!("screenshot: {} bytes", bytes.len());
    Ok(())
}

/// The text of the element with `id` in a DOM dump: `<tag id="ID" ...>TEXT</tag>`, where TEXT
/// has no markup.
fn element_text(dom: &str, id: &str) -> Result<String> {
    let marker = format!("id=\"{id}\"");
    let at = dom
        .find(&marker)
        .with_context(|| format!("no element #{id}"))?;
    let open_end = at + dom[at..].find('>').context("unterminated tag")? + 1;
    let close = open_end + dom[open_end..].find('<').context("no closing tag")?;
    Ok(dom[open_end..close].to_string())
}

/// `GET path` from the gateway, as JSON, after checking for a 200.
async fn get_json(addr: SocketAddr, path: &str) -> Result<Value> {
    request(addr, "GET", path, b"").await?.expect(200)
}

/// A stand-in for a node's gateway: serves the real page at `/`, drops the first
/// `failures` status requests (closes the connection without an answer, as a dying node
/// would), and answers the later ones with a fixed status. Stops when dropped.
struct StandIn {
    addr: SocketAddr,
    status_requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl StandIn {
    fn start(failures: usize) -> Result<StandIn> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let status_requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopping) = (status_requests.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let _ = serve_one(conn, failures, &count);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(StandIn {
            addr,
            status_requests,
            stop,
            thread: Some(thread),
        })
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn status_requests(&self) -> usize {
        self.status_requests.load(Ordering::Relaxed)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_one(
    mut conn: std::net::TcpStream,
    failures: usize,
    count: &AtomicUsize,
) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split(' ').nth(1).unwrap_or("");
    let (status, kind, body) = match path {
        "/" => (
            "200 OK",
            "text/html; charset=utf-8",
            swarmkv::http::page::STATUS_PAGE.to_string(),
        ),
        "/v1/status" => {
            if count.fetch_add(1, Ordering::Relaxed) < failures {
                // Gone without a word: the browser's fetch fails.
                return Ok(());
            }
            ("200 OK", "application/json", stand_in_status().to_string())
        }
        _ => (
            "404 Not Found",
            "application/json",
            json!({"error": {"code": "not_found", "message": "no such endpoint"}}).to_string(),
        ),
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

/// The status the stand-in reports: four nodes, one of them dead; of four partitions, two
/// healthy, one under-replicated (a voter is the dead node), one without a leader. The cluster
/// name carries markup, to show it is rendered as text.
fn stand_in_status() -> Value {
    let a = "3f9a1c0d7e42b851";
    let b = "b7d0e4a9c1f36e20";
    let c = "5c2e8f01a4d9b736";
    let d = "9e04d2b6a1c87f53";
    let node = |id: &str, state: &str, reachable: bool, leads: u32, port: u16| {
        json!({
            "id": id, "peer": null, "addrs": if reachable {
                vec![format!("/ip4/127.0.0.1/tcp/{port}")]
            } else {
                vec![]
            },
            "state": state, "reachable": reachable, "is_self": id == a,
            "is_meta_leader": id == a, "leads": leads,
        })
    };
    let part = |p: u32, leader: Option<&str>, voters: &[&str], reachable: u32, health: &str| {
        json!({"partition": p, "leader": leader, "voters": voters,
               "reachable_voters": reachable, "health": health})
    };
    json!({
        "cluster_name": "<b>lab</b>",
        "node": a, "peer": "12D3KooWStandIn", "cluster_id": "e1a44c0b9f27d35a",
        "state": "degraded", "partitions": 4, "meta_leader": a, "is_meta_leader": true,
        "peers": [c, d], "foreign": [], "groups": [],
        "summary": {"groups": 0, "with_leader": 0, "under_replicated": 0},
        "cluster": {
            "nodes": [
                node(a, "live", true, 2, 4001),
                node(b, "dead", false, 0, 4002),
                node(c, "live", true, 1, 4003),
                node(d, "live", true, 0, 4004),
            ],
            "partitions": [
                part(0, Some(a), &[a, c, d], 3, "healthy"),
                part(1, Some(c), &[a, c, d], 3, "healthy"),
                part(2, Some(a), &[a, b, c], 2, "under_replicated"),
                part(3, None, &[b], 0, "no_leader"),
            ],
            "summary": {"nodes": 4, "reachable": 3, "partitions": 4, "with_leader": 3,
                        "under_replicated": 1},
        },
    })
}
