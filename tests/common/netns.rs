//! A LAN made of Linux network namespaces, for tests of real `swarmkv` processes: one
//! namespace per node (`10.77.0.i/24` on its `eth0`), joined by veth pairs to a bridge in a
//! hub namespace that itself has `10.77.0.254`, so a test thread that enters the hub (see
//! [`enter`]) reaches every node by its address. Nothing is created in the machine's own
//! namespace: mDNS multicast stays on the bridge.
//!
//! Needs root and `ip` (see `needs.rs`: a test skips visibly without them). Dropping the [`Lan`]
//! deletes its namespaces (the caller kills its processes first).
//!
//! Included with `#[path = "common/netns.rs"] mod netns;` by the tests that use it, so the
//! other test binaries do not compile it.

#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The address of the hub on the bridge: where test threads that [`enter`] the hub speak from.
pub const HUB_ADDR: &str = "10.77.0.254";

/// Runs `ip` with the given arguments and fails with its stderr if it fails.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {args:?}"))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Moves the calling thread (only it) into the network namespace `ns`: sockets it opens from
/// then on live there. Used by client threads that speak to the nodes over the bridge.
pub fn enter(ns: &str) -> Result<()> {
    let path = format!("/var/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a valid namespace file descriptor affects only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The namespaces of one test.
pub struct Lan {
    tag: String,
    nodes: usize,
    namespaces: Vec<String>,
}

impl Lan {
    /// Builds the hub with its bridge and one namespace per node, wired by veth pairs. `tag`
    /// must be short (interface and namespace names) and unique among concurrent tests.
    pub fn build(tag: &str, nodes: usize) -> Result<Lan> {
        let mut lan = Lan {
            tag: format!("{tag}{}", std::process::id()),
            nodes,
            namespaces: Vec::new(),
        };
        // Leftovers of an earlier run that had our pid and was killed before its cleanup.
        for name in std::iter::once(lan.hub()).chain((1..=nodes).map(|i| lan.node(i))) {
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
        }
        let hub = lan.hub();
        lan.add_namespace(hub.clone())?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &hub,
            "addr",
            "add",
            &format!("{HUB_ADDR}/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 1..=nodes {
            let ns = lan.node(i);
            let veth = Lan::veth(i);
            lan.add_namespace(ns.clone())?;
            // Created inside the hub, with its peer created directly as eth0 of the node:
            // nothing ever appears in the machine's own namespace.
            ip(&[
                "-n", &hub, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &hub, "link", "set", &veth, "master", "br0"])?;
            ip(&["-n", &hub, "link", "set", &veth, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", Lan::addr(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            // Multicast (mDNS) leaves by the veth, as it would by a LAN card.
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(lan)
    }

    /// The hub's namespace (the bridge, and the test's client threads).
    pub fn hub(&self) -> String {
        format!("{}h", self.tag)
    }

    /// Node i's namespace (1-based).
    pub fn node(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    /// Node i's address on the bridge.
    pub fn addr(i: usize) -> String {
        format!("10.77.0.{i}")
    }

    /// How many node namespaces there are.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    fn veth(i: usize) -> String {
        format!("vh{i}")
    }

    fn add_namespace(&mut self, name: String) -> Result<()> {
        ip(&["netns", "add", &name])?;
        self.namespaces.push(name);
        Ok(())
    }

    /// Cuts node i's cable (its port on the bridge goes down) or plugs it back in.
    pub fn set_link(&self, i: usize, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.hub(), "link", "set", &Lan::veth(i), state])
    }

    /// A command run inside node i's namespace (`ip netns exec` execs it in place, so the
    /// child's pid is the program's own), with none of the caller's `SWARMKV_*` settings.
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node(i), program]);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SWARMKV_") {
                cmd.env_remove(&k);
            }
        }
        cmd
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}
