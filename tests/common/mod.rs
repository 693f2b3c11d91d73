//! In-process swarms on 127.0.0.1 for the integration tests.
#![allow(dead_code)]

pub mod gateway;
pub mod http;
pub mod needs;
pub mod process;
pub mod tmpfs;

use std::time::{Duration, Instant};

use swarmkv::core::{CoreConfig, NodeId};
use swarmkv::{Client, Node, NodeConfig, NodeHandle};
use swarmkv_net::{Multiaddr, PeerId};

pub struct TestCluster {
    pub nodes: Vec<Option<Node>>,
    pub handles: Vec<NodeHandle>,
    pub dirs: Vec<tempfile::TempDir>,
    pub addrs: Vec<Multiaddr>,
    pub partitions: u32,
    pub core: CoreConfig,
}

pub fn node_config(dir: &std::path::Path, core: &CoreConfig) -> NodeConfig {
    let mut c = NodeConfig::loopback(dir);
    c.core = core.clone();
    c
}

pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn listen_addr(h: &NodeHandle) -> Multiaddr {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(a) = h.net().listen_addrs().await {
            if let Some(a) = a.into_iter().next() {
                return a;
            }
        }
        assert!(Instant::now() < until, "node never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl TestCluster {
    /// Starts `n` nodes, connects them, bootstraps a cluster of `partitions` partitions with
    /// 3 replicas and waits until every partition has a leader.
    pub async fn start(n: usize, partitions: u32, core: CoreConfig) -> TestCluster {
        TestCluster::start_in(n, partitions, core, &[]).await
    }

    /// [`TestCluster::start`] with node `i`'s data directory made inside `bases[i % len]`
    /// (a disk the test controls, say).
    pub async fn start_in(
        n: usize,
        partitions: u32,
        core: CoreConfig,
        bases: &[std::path::PathBuf],
    ) -> TestCluster {
        let mut c = TestCluster {
            nodes: Vec::new(),
            handles: Vec::new(),
            dirs: Vec::new(),
            addrs: Vec::new(),
            partitions,
            core,
        };
        c.start_nodes(n, bases).await;
        c.form().await;
        c
    }

    async fn start_nodes(&mut self, n: usize, bases: &[std::path::PathBuf]) {
        let c = self;
        for i in 0..n {
            let dir = match bases.get(i % bases.len().max(1)) {
                Some(base) => tempfile::tempdir_in(base).expect("tempdir"),
                None => tempfile::tempdir().expect("tempdir"),
            };
            let node = Node::start(node_config(dir.path(), &c.core))
                .await
                .expect("start node");
            let h = node.handle();
            c.addrs.push(listen_addr(&h).await);
            c.handles.push(h);
            c.nodes.push(Some(node));
            c.dirs.push(dir);
        }
    }

    async fn form(&self) {
        self.connect_all().await;
        let peers: Vec<PeerId> = self.handles.iter().map(|h| h.peer_id()).collect();
        for h in &self.handles {
            h.bootstrap(peers.clone(), self.partitions, 3)
                .await
                .expect("bootstrap");
        }
        self.wait_for_leaders(Duration::from_secs(20)).await;
    }

    pub async fn connect_all(&self) {
        for (i, h) in self.handles.iter().enumerate() {
            if self.nodes[i].is_none() {
                continue;
            }
            for (j, a) in self.addrs.iter().enumerate() {
                if j != i && self.nodes[j].is_some() {
                    let _ = h.net().dial(a.clone()).await;
                }
            }
        }
    }

    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect()
    }

    /// Waits until every group on every live node knows a leader that is live.
    pub async fn wait_for_leaders(&self, timeout: Duration) {
        let live_ids: Vec<NodeId> = self
            .live()
            .iter()
            .map(|i| self.handles[*i].node_id())
            .collect();
        let handles: Vec<NodeHandle> = self
            .live()
            .iter()
            .map(|i| self.handles[*i].clone())
            .collect();
        wait_for("a live leader for every partition", timeout, || {
            let handles = handles.clone();
            let live_ids = live_ids.clone();
            async move {
                for h in &handles {
                    let Ok(s) = h.status().await else {
                        return false;
                    };
                    for g in &s.groups {
                        match g.leader {
                            Some(l) if live_ids.contains(&l) => {}
                            _ => return false,
                        }
                    }
                }
                true
            }
        })
        .await
    }

    /// The live node that leads the most groups, and how many.
    pub async fn busiest_leader(&self) -> (usize, usize) {
        let mut best = (0, 0);
        for i in self.live() {
            let s = self.handles[i].status().await.expect("status");
            let led = s.groups.iter().filter(|g| g.leader == Some(s.node)).count();
            if led > best.1 {
                best = (i, led);
            }
        }
        best
    }

    pub async fn client(&self, i: usize) -> Client {
        Client::in_process(self.handles[i].clone())
            .await
            .expect("client")
    }

    pub async fn kill(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.kill().await;
        }
    }

    pub async fn restart(&mut self, i: usize) {
        let node = Node::start(node_config(self.dirs[i].path(), &self.core))
            .await
            .expect("restart node");
        let h = node.handle();
        assert_eq!(
            h.peer_id(),
            self.handles[i].peer_id(),
            "identity survives restart"
        );
        self.addrs[i] = listen_addr(&h).await;
        self.handles[i] = h;
        self.nodes[i] = Some(node);
        self.connect_all().await;
    }
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs the calling test alone among the tests of its binary that take this guard: each of
/// them runs several nodes with real timers, and on a 2-core machine running them all at once
/// turns election timeouts into noise.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}
