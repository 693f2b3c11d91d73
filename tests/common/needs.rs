//! What a test needs from the machine beyond the Rust toolchain, and what happens when it is
//! missing.
//!
//! `cargo test --workspace` must pass on a fresh machine with only the toolchain, so a test
//! whose need is unmet prints `skipped: needs ...` and passes. CI must never pass on a skip, so
//! with `SWARMKV_REQUIRE_ALL=1` (which `.ci/run` sets after installing everything) an unmet
//! need fails the test instead, with what to install.
//!
//! Included with `#[path = "common/needs.rs"] mod needs;` by the tests that do not use
//! `common` (it is also `common::needs`).

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Result};

/// The variable that turns a skip into a failure.
pub const REQUIRE_ALL: &str = "SWARMKV_REQUIRE_ALL";

/// Something a test needs.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// Root: network namespaces, mounts.
    Root,
    /// `ip` from iproute2: network namespaces.
    Ip,
    /// Debian's headless Chromium at `/usr/bin/chromium`.
    Chromium,
}

impl Need {
    fn met(self) -> bool {
        match self {
            Need::Root => is_root(),
            Need::Ip => Command::new("ip")
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            Need::Chromium => Path::new("/usr/bin/chromium").exists(),
        }
    }

    fn how(self) -> &'static str {
        match self {
            Need::Root => "root (run the tests as root)",
            Need::Ip => "`ip` (apt-get install iproute2)",
            Need::Chromium => "/usr/bin/chromium (apt-get install chromium)",
        }
    }
}

/// `Ok(true)` when the test must be skipped because one of `needs` is unmet (a `skipped:` line
/// says which and `why` the test needs it); `Err` instead of a skip under
/// [`REQUIRE_ALL`]; `Ok(false)` when everything is there.
pub fn skip_unless(needs: &[Need], why: &str) -> Result<bool> {
    let Some(unmet) = needs.iter().find(|n| !n.met()) else {
        return Ok(false);
    };
    if std::env::var_os(REQUIRE_ALL).is_some_and(|v| v == "1") {
        bail!(
            "this test needs {} ({why}), and {REQUIRE_ALL}=1 forbids skipping it",
            unmet.how()
        );
    }
    println!("skipped: needs {} ({why})", unmet.how());
    Ok(true)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // The effective uid is the second field of the `Uid:` line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
