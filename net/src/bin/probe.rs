//! `swarmkv-net-probe`: one swarm in a process, printing machine-readable event lines.
//!
//! Used by the LAN test, which runs several probes in their own network namespaces, and handy
//! for poking at a real network by hand. Each stdout line is `KIND field...`:
//! `READY <peer>`, `LISTEN <addr>`, `UP <peer>`, `SUSPECT <peer>`, `DOWN <peer>`,
//! `HB <peer> <seq>`, `FOREIGN <peer>`, `RAFT <peer> <messages>`, `REJECTED <peer> <reason>`.
//! It exits when stdin closes, so a parent that dies takes its probes with it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use swarmkv_net::{load_or_create_identity, Multiaddr, NetConfig, NetEvent};
use tokio::io::AsyncReadExt;

const USAGE: &str = "usage: swarmkv-net-probe --data DIR [--listen ADDR]... [--join ADDR]... \
[--mdns] [--cluster NAME] [--heartbeat-ms N] [--suspect-ms N] [--down-ms N]";

struct Args {
    data: PathBuf,
    listen: Vec<Multiaddr>,
    join: Vec<Multiaddr>,
    mdns: bool,
    cluster: Option<String>,
    heartbeat_ms: Option<u64>,
    suspect_ms: Option<u64>,
    down_ms: Option<u64>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        data: PathBuf::new(),
        listen: Vec::new(),
        join: Vec::new(),
        mdns: false,
        cluster: None,
        heartbeat_ms: None,
        suspect_ms: None,
        down_ms: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--mdns" {
            args.mdns = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let addr = || {
            value
                .parse::<Multiaddr>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        let ms = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--data" => args.data = PathBuf::from(&value),
            "--listen" => args.listen.push(addr()?),
            "--join" => args.join.push(addr()?),
            "--cluster" => args.cluster = Some(value.clone()),
            "--heartbeat-ms" => args.heartbeat_ms = Some(ms()?),
            "--suspect-ms" => args.suspect_ms = Some(ms()?),
            "--down-ms" => args.down_ms = Some(ms()?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.data.as_os_str().is_empty() {
        return Err("--data is required".to_string());
    }
    Ok(args)
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    // A closed stdout means the parent is gone; the stdin watch ends the process soon.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn run(args: Args) -> Result<(), swarmkv_net::NetError> {
    let mut config = NetConfig::new(load_or_create_identity(&args.data)?);
    if !args.listen.is_empty() {
        config.listen_addrs = args.listen;
    }
    config.join_addrs = args.join;
    config.enable_mdns = args.mdns;
    if let Some(name) = args.cluster {
        config.cluster_name = name;
    }
    if let Some(ms) = args.heartbeat_ms {
        config.heartbeat_interval = Duration::from_millis(ms);
    }
    if let Some(ms) = args.suspect_ms {
        config.suspect_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = args.down_ms {
        config.down_timeout = Duration::from_millis(ms);
    }
    let (handle, mut events, event_loop) = swarmkv_net::new(config)?;
    let task = tokio::spawn(event_loop.run());
    say(format!("READY {}", handle.local_peer_id()));
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            read = stdin.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            event = events.recv() => match event {
                Some(event) => report(event),
                None => break,
            },
        }
    }
    let _ = handle.shutdown().await;
    let _ = task.await;
    Ok(())
}

fn report(event: NetEvent) {
    match event {
        NetEvent::Listening { addr } => say(format!("LISTEN {addr}")),
        NetEvent::PeerUp { peer } => say(format!("UP {peer}")),
        NetEvent::PeerSuspect { peer } => say(format!("SUSPECT {peer}")),
        NetEvent::PeerDown { peer } => say(format!("DOWN {peer}")),
        NetEvent::Heartbeat { info } => say(format!("HB {} {}", info.peer, info.seq)),
        NetEvent::ForeignPeer { peer, .. } => say(format!("FOREIGN {peer}")),
        NetEvent::Raft { peer, batch } => say(format!("RAFT {peer} {}", batch.len())),
        NetEvent::FrameRejected { peer, reason, .. } => say(format!("REJECTED {peer} {reason}")),
        NetEvent::RaftSendFailed { .. }
        | NetEvent::KvRequest { .. }
        | NetEvent::SnapshotChunk { .. } => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
