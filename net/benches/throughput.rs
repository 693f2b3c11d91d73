//! Raft batch throughput between two swarms on 127.0.0.1, against a plain TCP echo baseline
//! measured in the same run. `cargo bench -p swarmkv-net` prints a table; the ratio column is
//! the figure that matters (machines differ, the ratio much less).
//!
//! Every loop is bounded in count and in time. Traffic stays on 127.0.0.1.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use swarmkv_net::{Keypair, NetConfig, NetEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Longest a single measurement may run; it stops early and reports what it measured.
const TIME_LIMIT: Duration = Duration::from_secs(8);
/// Bytes allowed in flight (sent, not yet received) in both measurements.
const WINDOW_BYTES: usize = 8 << 20;

struct Figure {
    batches: u64,
    bytes: u64,
    elapsed: Duration,
}

impl Figure {
    fn per_second(&self) -> f64 {
        self.batches as f64 / self.elapsed.as_secs_f64()
    }

    fn mb_per_second(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// Progress shared between a sender and its receiver.
#[derive(Default)]
struct Progress {
    received: AtomicU64,
    changed: Notify,
}

impl Progress {
    fn add(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Release);
        self.changed.notify_waiters();
    }

    fn get(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    /// Waits until `received` reaches `target` or the deadline passes.
    async fn wait_for(&self, target: u64, deadline: Instant) -> bool {
        while self.get() < target {
            let notified = self.changed.notified();
            if self.get() >= target {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), notified).await;
        }
        true
    }
}

/// libp2p: `count` raft batches of one `size`-byte message from one swarm to another.
async fn libp2p_run(size: usize, count: u64) -> Result<Figure> {
    let start_swarm = || -> Result<_> {
        let config = NetConfig::loopback(Keypair::generate_ed25519());
        let (handle, events, event_loop) = swarmkv_net::new(config)?;
        let task = tokio::spawn(event_loop.run());
        Ok((handle, events, task))
    };
    let (sender, mut sender_events, sender_task) = start_swarm()?;
    let (receiver, mut receiver_events, receiver_task) = start_swarm()?;
    let addr = loop {
        match receiver_events.recv().await {
            Some(NetEvent::Listening { addr }) => break addr,
            Some(_) => {}
            None => bail!("receiver stopped"),
        }
    };
    let receiver_id = sender.dial(addr).await?;
    // Drain the sender's events (it receives only acks and membership).
    tokio::spawn(async move { while sender_events.recv().await.is_some() {} });
    let progress = Arc::new(Progress::default());
    let counter = progress.clone();
    tokio::spawn(async move {
        while let Some(event) = receiver_events.recv().await {
            if let NetEvent::Raft { batch, .. } = event {
                std::hint::black_box(&batch);
                counter.add(1);
            }
        }
    });

    let window = (WINDOW_BYTES / size).max(1) as u64;
    let payload = vec![0xa5u8; size];
    let deadline = Instant::now() + TIME_LIMIT;
    let start = Instant::now();
    let mut sent = 0;
    while sent < count && Instant::now() < deadline {
        if sent - progress.get() >= window && !progress.wait_for(sent + 1 - window, deadline).await
        {
            break;
        }
        sender
            .send_raft(receiver_id, vec![(0, payload.clone())])
            .await?;
        sent += 1;
    }
    let finished = progress
        .wait_for(sent, deadline + Duration::from_secs(5))
        .await;
    let elapsed = start.elapsed();
    let received = progress.get();
    sender.shutdown().await?;
    receiver.shutdown().await?;
    let _ = sender_task.await;
    let _ = receiver_task.await;
    if !finished && received == 0 {
        return Err(anyhow!("no batch arrived"));
    }
    Ok(Figure {
        batches: received,
        bytes: received * size as u64,
        elapsed,
    })
}

/// Plain TCP: `count` length-prefixed frames of `size` bytes to an echo server, frames
/// counted when their echo is back.
async fn tcp_run(size: usize, count: u64) -> Result<Figure> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let (mut rd, mut wr) = socket.into_split();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            wr.write_all(&buf[..n]).await?;
        }
    });
    let socket = TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let (mut rd, mut wr) = socket.into_split();
    let progress = Arc::new(Progress::default());
    let counter = progress.clone();
    let frame_len = size + 4;
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        let mut pending = 0usize;
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            pending += n;
            let frames = pending / frame_len;
            pending %= frame_len;
            if frames > 0 {
                counter.add(frames as u64);
            }
        }
    });
    let window = (WINDOW_BYTES / size).max(1) as u64;
    let mut frame = (size as u32).to_be_bytes().to_vec();
    frame.extend(std::iter::repeat_n(0xa5u8, size));
    let deadline = Instant::now() + TIME_LIMIT;
    let start = Instant::now();
    let mut sent = 0;
    while sent < count && Instant::now() < deadline {
        if sent - progress.get() >= window && !progress.wait_for(sent + 1 - window, deadline).await
        {
            break;
        }
        wr.write_all(&frame).await?;
        sent += 1;
    }
    progress
        .wait_for(sent, deadline + Duration::from_secs(5))
        .await;
    let elapsed = start.elapsed();
    let received = progress.get();
    drop(wr);
    let _ = reader.await;
    let _ = server.await;
    Ok(Figure {
        batches: received,
        bytes: received * size as u64,
        elapsed,
    })
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Warm up both paths (connections, allocator, CPU frequency).
        libp2p_run(1024, 2_000).await?;
        tcp_run(1024, 2_000).await?;
        println!(
            "{:>8} {:>9} {:>13} {:>10} {:>13} {:>10} {:>8}",
            "batch", "batches", "libp2p b/s", "MB/s", "tcp echo b/s", "MB/s", "ratio"
        );
        for (size, count) in [(1024usize, 200_000u64), (64 << 10, 20_000)] {
            let net = libp2p_run(size, count).await?;
            let tcp = tcp_run(size, count).await?;
            println!(
                "{:>7}K {:>9} {:>13.0} {:>10.1} {:>13.0} {:>10.1} {:>8.2}",
                size / 1024,
                net.batches,
                net.per_second(),
                net.mb_per_second(),
                tcp.per_second(),
                tcp.mb_per_second(),
                net.per_second() / tcp.per_second()
            );
        }
        Ok(())
    })
}
