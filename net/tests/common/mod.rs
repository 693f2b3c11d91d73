//! Helpers for in-process swarm tests: loopback only, mDNS off, explicit dials.

#![allow(dead_code)]

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use swarmkv_net::{Keypair, Multiaddr, NetConfig, NetEvent, NetEvents, NetHandle, PeerId};
use tokio::task::JoinHandle;

/// How long any single expected event may take before a test fails (generous: CI is slow).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// One running swarm.
pub struct Node {
    pub handle: NetHandle,
    pub events: NetEvents,
    pub task: JoinHandle<()>,
    pub addr: Multiaddr,
    pub peer: PeerId,
}

impl Node {
    /// Waits for the first event `f` maps to `Some`, skipping the others.
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(NetEvent) -> Option<T>,
    ) -> Result<T> {
        self.wait_for_within(what, PATIENCE, &mut f).await
    }

    pub async fn wait_for_within<T>(
        &mut self,
        what: &str,
        patience: Duration,
        mut f: impl FnMut(NetEvent) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| anyhow!("timed out waiting for {what} on {}", self.peer))?
                .ok_or_else(|| anyhow!("event stream of {} ended", self.peer))?;
            if let Some(t) = f(event) {
                return Ok(t);
            }
        }
    }

    /// Collects every event for `window` (for "nothing arrives" checks).
    pub async fn drain_for(&mut self, window: Duration) -> Vec<NetEvent> {
        let deadline = tokio::time::Instant::now() + window;
        let mut all = Vec::new();
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            all.push(event);
        }
        all
    }

    /// Waits until `peer` is reported up.
    pub async fn wait_up(&mut self, peer: PeerId) -> Result<()> {
        self.wait_for(&format!("PeerUp {peer}"), |e| match e {
            NetEvent::PeerUp { peer: p } if p == peer => Some(()),
            _ => None,
        })
        .await
    }
}

/// A loopback-only test configuration with a fresh identity.
pub fn config() -> NetConfig {
    NetConfig::loopback(Keypair::generate_ed25519())
}

/// Starts a swarm and waits until it listens.
pub async fn spawn(config: NetConfig) -> Result<Node> {
    assert!(
        !config.enable_mdns,
        "tests must never run mDNS on real interfaces"
    );
    let peer = config.peer_id();
    let (handle, events, event_loop) = swarmkv_net::new(config)?;
    let task = tokio::spawn(event_loop.run());
    let mut node = Node {
        handle,
        events,
        task,
        addr: Multiaddr::empty(),
        peer,
    };
    node.addr = node
        .wait_for("Listening", |e| match e {
            NetEvent::Listening { addr } => Some(addr),
            _ => None,
        })
        .await?;
    Ok(node)
}

/// Connects `a` to `b` and waits until each reports the other up.
pub async fn connect(a: &mut Node, b: &mut Node) -> Result<()> {
    let got = a.handle.dial(b.addr.clone()).await.context("dial")?;
    if got != b.peer {
        bail!("dialed {} but reached {got}", b.peer);
    }
    a.wait_up(b.peer).await?;
    b.wait_up(a.peer).await?;
    Ok(())
}

/// Starts `n` swarms, all connected to each other.
pub async fn cluster(n: usize) -> Result<Vec<Node>> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(spawn(config()).await?);
    }
    for i in 0..n {
        for j in i + 1..n {
            let (left, right) = nodes.split_at_mut(j);
            connect(&mut left[i], &mut right[0]).await?;
        }
    }
    Ok(nodes)
}
