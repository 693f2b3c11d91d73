//! The `swarmkv` command line.

use clap::Parser;

/// swarmkv: a zero-config, peer-to-peer, Raft-replicated key-value store.
#[derive(Parser, Debug)]
#[command(name = "swarmkv", version = swarmkv::VERSION, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    env_logger::init();
    let _cli = Cli::parse();
    println!(
        "swarmkv {}: the node is not built yet; this binary only answers --version and --help",
        swarmkv::VERSION
    );
    Ok(())
}
