//! In-process swarms on 127.0.0.1 (explicit dials; mDNS is off and would ignore loopback).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use common::{cluster, config, connect, spawn, Node};
use rand::{Rng, SeedableRng};
use swarmkv_net::{
    generate_psk_file, load_or_create_identity, Keypair, NetConfig, NetError, NetEvent, PeerId,
    RawProtocol, SnapshotChunk,
};

/// Waits for a raft event from `from` and returns its batch.
async fn next_raft_from(node: &mut Node, from: PeerId) -> Result<swarmkv_net::RaftBatch> {
    node.wait_for("raft batch", |e| match e {
        NetEvent::Raft { peer, batch } if peer == from => Some(batch),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn raft_batches_kv_requests_and_snapshot_chunks_round_trip_between_three_swarms() -> Result<()>
{
    let mut nodes = cluster(3).await?;
    let ids: Vec<PeerId> = nodes.iter().map(|n| n.peer).collect();

    // Every node sends one batch to every other node.
    for (i, node) in nodes.iter().enumerate() {
        for (j, &to) in ids.iter().enumerate() {
            if i != j {
                let batch = vec![(i as u64, vec![j as u8; 10]), (7, b"raft".to_vec())];
                node.handle.send_raft(to, batch).await?;
            }
        }
    }
    for (j, node) in nodes.iter_mut().enumerate() {
        // Batches from different senders may arrive in any order.
        let mut got = HashMap::new();
        while got.len() < 2 {
            let (from, batch) = node
                .wait_for("raft batch", |e| match e {
                    NetEvent::Raft { peer, batch } => Some((peer, batch)),
                    _ => None,
                })
                .await?;
            got.insert(from, batch);
        }
        for (i, &from) in ids.iter().enumerate() {
            if i != j {
                assert_eq!(
                    got.get(&from),
                    Some(&vec![(i as u64, vec![j as u8; 10]), (7, b"raft".to_vec())])
                );
            }
        }
    }

    // A client request from node 0 to node 1, answered by node 1's application.
    let client = nodes[0].handle.clone();
    let server = ids[1];
    let request = tokio::spawn(async move { client.kv_request(server, b"get k".to_vec()).await });
    let (payload, responder) = nodes[1]
        .wait_for("kv request", |e| match e {
            NetEvent::KvRequest {
                payload, responder, ..
            } => Some((payload, responder)),
            _ => None,
        })
        .await?;
    assert_eq!(payload, b"get k");
    responder.respond(b"v".to_vec())?;
    assert_eq!(request.await??, b"v");

    // A snapshot chunk from node 2 to node 0 is acknowledged once delivered.
    let chunk = SnapshotChunk {
        group: 3,
        snapshot_id: 42,
        seq: 0,
        last: true,
        data: vec![9; 100_000],
    };
    let sender = nodes[2].handle.clone();
    let (to, sent) = (ids[0], chunk.clone());
    let ack = tokio::spawn(async move { sender.send_snapshot_chunk(to, sent).await });
    let got = nodes[0]
        .wait_for("snapshot chunk", |e| match e {
            NetEvent::SnapshotChunk { chunk, .. } => Some(chunk),
            _ => None,
        })
        .await?;
    assert_eq!(got, chunk);
    ack.await??;
    Ok(())
}

/// Receives `expect` messages on `node`, checking that each sender's sequence is contiguous.
async fn receive_in_order(
    node: &mut Node,
    idx: usize,
    expect: usize,
    next: &mut HashMap<(usize, PeerId), u64>,
) -> Result<()> {
    let mut done = 0;
    while done < expect {
        let (from, batch) = node
            .wait_for("raft batch", |e| match e {
                NetEvent::Raft { peer, batch } => Some((peer, batch)),
                _ => None,
            })
            .await?;
        for (group, data) in batch {
            let want = next.entry((idx, from)).or_insert(0);
            ensure!(
                group == *want && data == want.to_be_bytes(),
                "{} got message {group} from {from}, expected {want}",
                node.peer
            );
            *want += 1;
            done += 1;
        }
    }
    Ok(())
}

#[tokio::test]
async fn ten_thousand_messages_arrive_in_order_per_peer_pair() -> Result<()> {
    const N: u64 = 10_000;
    let mut nodes = cluster(3).await?;
    let ids: Vec<PeerId> = nodes.iter().map(|n| n.peer).collect();
    // Nodes 0 and 1 both send to node 2 while node 2 sends to node 0: three ordered streams
    // interleaving on the same swarms.
    let mut senders = Vec::new();
    for (from, to) in [(0, 2), (1, 2), (2, 0)] {
        let handle = nodes[from].handle.clone();
        let to = ids[to];
        senders.push(tokio::spawn(async move {
            for seq in 0..N {
                handle
                    .send_raft(to, vec![(seq, seq.to_be_bytes().to_vec())])
                    .await?;
            }
            Ok::<_, NetError>(())
        }));
    }
    let mut next: HashMap<(usize, PeerId), u64> = HashMap::new();
    let (first, rest) = nodes.split_at_mut(2);
    receive_in_order(&mut rest[0], 2, 2 * N as usize, &mut next).await?;
    receive_in_order(&mut first[0], 0, N as usize, &mut next).await?;
    for sender in senders {
        sender.await??;
    }
    assert_eq!(next.get(&(2, ids[0])), Some(&N));
    assert_eq!(next.get(&(2, ids[1])), Some(&N));
    assert_eq!(next.get(&(0, ids[2])), Some(&N));
    Ok(())
}

/// Two connected swarms with generous liveness timers (the garbage tests assert that nobody
/// is suspected, and a loaded CI machine must not make that fail); `b` has small frame limits.
async fn patient_pair(limits: FrameLimits) -> Result<(Node, Node)> {
    let patient = || {
        let mut c = config();
        c.suspect_timeout = Duration::from_secs(10);
        c.down_timeout = Duration::from_secs(20);
        c
    };
    let mut a = spawn(patient()).await?;
    let mut small = patient();
    small.max_raft_frame = limits.raft;
    small.max_kv_frame = limits.kv;
    small.max_snapshot_frame = limits.snapshot;
    let mut b = spawn(small).await?;
    connect(&mut a, &mut b).await?;
    Ok((a, b))
}

/// The frame limits of the receiving side of a [`patient_pair`].
struct FrameLimits {
    raft: usize,
    kv: usize,
    snapshot: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            raft: 1 << 20,
            kv: 1 << 20,
            snapshot: 1 << 20,
        }
    }
}

/// Waits for `b` to report a frame refused for its size.
async fn oversize_refused(b: &mut Node) -> Result<()> {
    let reason = b
        .wait_for("oversize rejection", |e| match e {
            NetEvent::FrameRejected { reason, .. } => Some(reason),
            _ => None,
        })
        .await?;
    ensure!(reason.contains("exceeds"), "{reason}");
    Ok(())
}

/// Fails if `a` saw a peer suspected or down in the next moments.
async fn nobody_suspected(a: &mut Node) -> Result<()> {
    for event in a.drain_for(Duration::from_millis(300)).await {
        if let NetEvent::PeerSuspect { .. } | NetEvent::PeerDown { .. } = event {
            bail!("connection suffered from garbage: {event:?}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn oversized_and_garbage_snapshot_requests_are_refused_and_the_connection_keeps_working(
) -> Result<()> {
    let (mut a, mut b) = patient_pair(FrameLimits {
        snapshot: 64 << 10,
        ..FrameLimits::default()
    })
    .await?;

    // A request above b's limit: b refuses it without reading its body. a gets either the
    // refusal or a reset stream, depending on how much it had written when b answered.
    let oversized = vec![0u8; 200 << 10];
    let sent = a
        .handle
        .send_raw_frame(b.peer, RawProtocol::Snapshot, oversized)
        .await;
    if let Ok(answer) = &sent {
        let text = String::from_utf8_lossy(answer);
        ensure!(
            text.contains("exceeds"),
            "oversized frame was accepted: {text}"
        );
    }
    oversize_refused(&mut b).await?;

    // Random garbage of every size: answered (a refusal, or an ack if it happens to decode).
    let seed: u64 = rand::random();
    println!("garbage seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for round in 0..20 {
        let len = rng.gen_range(0..2000);
        let garbage: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let answer = a
            .handle
            .send_raw_frame(b.peer, RawProtocol::Snapshot, garbage.clone())
            .await?;
        let ack = swarmkv_net::fuzzing::decode_ack(&answer).map_err(anyhow::Error::msg)?;
        let decodes = swarmkv_net::fuzzing::decode_snapshot_frame(&garbage).is_ok();
        ensure!(
            ack.is_ok() == decodes,
            "garbage answered {ack:?} (seed {seed})"
        );
        // Refusals reach the application at most 5 a second per peer (bursts of 10), so only
        // the first rounds are sure to be reported one by one.
        if round >= 6 {
            continue;
        }
        b.wait_for("garbage rejection or delivery", |e| match e {
            NetEvent::FrameRejected { .. } | NetEvent::SnapshotChunk { .. } => Some(()),
            _ => None,
        })
        .await?;
    }

    // Frames above the sender's own limits are refused locally.
    let too_big = vec![(1, vec![0u8; 17 << 20])];
    let local = a.handle.send_raft(b.peer, too_big).await;
    ensure!(
        matches!(local, Err(NetError::FrameTooLarge { .. })),
        "{local:?}"
    );
    let chunk = SnapshotChunk {
        group: 1,
        snapshot_id: 1,
        seq: 0,
        last: true,
        data: vec![0u8; 5 << 20],
    };
    let local = a.handle.send_snapshot_chunk(b.peer, chunk).await;
    ensure!(
        matches!(local, Err(NetError::FrameTooLarge { .. })),
        "{local:?}"
    );

    // Honest traffic still flows on the same connection, and nobody was reported lost.
    let chunk = SnapshotChunk {
        group: 2,
        snapshot_id: 7,
        seq: 0,
        last: true,
        data: b"honest".to_vec(),
    };
    let sender = a.handle.clone();
    let (to, sent) = (b.peer, chunk.clone());
    let acked = tokio::spawn(async move { sender.send_snapshot_chunk(to, sent).await });
    let got = b
        .wait_for("honest snapshot chunk", |e| match e {
            NetEvent::SnapshotChunk { chunk, .. } => Some(chunk),
            _ => None,
        })
        .await?;
    assert_eq!(got, chunk);
    acked.await??;
    a.handle
        .send_raft(b.peer, vec![(5, b"honest".to_vec())])
        .await?;
    let batch = next_raft_from(&mut b, a.peer).await?;
    assert_eq!(batch, vec![(5, b"honest".to_vec())]);
    ensure!(a.handle.cluster_peers().await?.contains(&b.peer));
    nobody_suspected(&mut a).await
}

/// The frames of a stream's raw bytes (length-prefixed).
fn frames_of(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let Some(frame) = bytes.get(4..4 + len) else {
            break;
        };
        out.push(frame.to_vec());
        bytes = &bytes[4 + len..];
    }
    out
}

#[tokio::test]
async fn kv_stream_requests_are_answered_by_id_and_garbage_or_oversized_frames_are_refused(
) -> Result<()> {
    let (mut a, mut b) = patient_pair(FrameLimits {
        kv: 4 << 10,
        ..FrameLimits::default()
    })
    .await?;
    // The regular path: a's requests travel on its kv link to b, answered by id, also when
    // several are in flight at once and answered out of order.
    let mut calls = Vec::new();
    for i in 0..3u8 {
        let h = a.handle.clone();
        let peer = b.peer;
        calls.push(tokio::spawn(
            async move { h.kv_request(peer, vec![i]).await },
        ));
    }
    let mut responders = Vec::new();
    while responders.len() < 3 {
        if let NetEvent::KvRequest {
            payload, responder, ..
        } = b.wait_for("an event", Some).await?
        {
            responders.push((payload, responder));
        }
    }
    for (payload, responder) in responders.into_iter().rev() {
        responder.respond([payload.clone(), b"!".to_vec()].concat())?;
    }
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await??, vec![i as u8, b'!']);
    }

    // Raw bytes on a new kv stream: garbage (refused and skipped), then a request that is
    // answered on the same stream.
    let seed: u64 = rand::random();
    println!("garbage seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // A first byte of 0xff is a variant index other than V1's 0: never a request.
    let mut garbage = vec![0xffu8];
    garbage.extend((0..rng.gen_range(0..500)).map(|_| rng.gen::<u8>()));
    let mut bytes = prefixed(&garbage);
    let request = swarmkv_net::fuzzing::encode_kv_stream_request(42, b"raw".to_vec())
        .map_err(anyhow::Error::msg)?;
    bytes.extend(prefixed(&request));
    let sent = {
        let h = a.handle.clone();
        let peer = b.peer;
        tokio::spawn(async move { h.send_raw_frame(peer, RawProtocol::KvStream, bytes).await })
    };
    let mut refused = 0;
    loop {
        match b.wait_for("an event", Some).await? {
            NetEvent::FrameRejected { protocol, .. } => {
                ensure!(protocol == "/swarmkv/kv-stream/1", "{protocol}");
                refused += 1;
            }
            NetEvent::KvRequest {
                payload, responder, ..
            } => {
                assert_eq!(payload, b"raw");
                responder.respond(b"answer".to_vec())?;
                break;
            }
            _ => {}
        }
    }
    ensure!(
        refused == 1,
        "{refused} refusals for one garbage frame (seed {seed})"
    );
    let back = sent.await??;
    let answers: Vec<_> = frames_of(&back)
        .iter()
        .map(|f| swarmkv_net::fuzzing::decode_kv_stream_answer(f))
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    assert_eq!(answers, vec![(42, Ok(b"answer".to_vec()))]);

    // A length above b's kv limit: refused unread, that stream dropped.
    let mut oversized = (64u32 << 10).to_be_bytes().to_vec();
    oversized.extend(vec![0u8; 100]);
    a.handle
        .send_raw_frame(b.peer, RawProtocol::KvStream, oversized)
        .await?;
    oversize_refused(&mut b).await?;

    // a's own link is untouched.
    let h = a.handle.clone();
    let peer = b.peer;
    let call = tokio::spawn(async move { h.kv_request(peer, b"again".to_vec()).await });
    loop {
        if let NetEvent::KvRequest { responder, .. } = b.wait_for("an event", Some).await? {
            responder.respond(b"ok".to_vec())?;
            break;
        }
    }
    assert_eq!(call.await??, b"ok");
    nobody_suspected(&mut a).await
}

/// The test runtime is single-threaded, so answers given in one go (without awaiting
/// anything that waits) all queue before the stream's writer task runs: one turn of the writer
/// then carries them all, and small answers fit in one write.
#[tokio::test]
async fn answers_queued_together_leave_in_one_write_each_once_under_its_id() -> Result<()> {
    const N: u32 = 64;
    let (a, mut b) = patient_pair(FrameLimits::default()).await?;
    let mut calls = Vec::new();
    for i in 0..N {
        let h = a.handle.clone();
        let peer = b.peer;
        calls.push(tokio::spawn(async move {
            h.kv_request(peer, i.to_be_bytes().to_vec()).await
        }));
    }
    let mut responders = Vec::new();
    while responders.len() < N as usize {
        if let NetEvent::KvRequest {
            payload, responder, ..
        } = b.wait_for("a kv request", Some).await?
        {
            responders.push((payload, responder));
        }
    }
    let before = b.handle.stats().kv;
    // Out of order, so only the ids can match answers to requests.
    for (payload, responder) in responders.into_iter().rev() {
        responder.respond([b"re:".to_vec(), payload].concat())?;
    }
    for (i, call) in calls.into_iter().enumerate() {
        let want = [b"re:".to_vec(), (i as u32).to_be_bytes().to_vec()].concat();
        assert_eq!(call.await??, want, "answer to request {i}");
    }
    let after = b.handle.stats().kv;
    let frames = after.frames - before.frames;
    let writes = after.writes - before.writes;
    println!(
        "{frames} answers in {writes} writes; requests: {:?}",
        a.handle.stats().kv
    );
    // Each request had its answer and no more left b: no answer was written twice.
    assert_eq!(frames, u64::from(N));
    assert!(writes < frames, "{frames} answers took {writes} writes");
    assert_eq!(
        writes, 1,
        "{frames} small answers queued together take one write"
    );
    assert_eq!(a.handle.stats().kv.frames, u64::from(N), "requests written");
    Ok(())
}

/// A length-prefixed frame as the Raft stream carries it.
fn prefixed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

#[tokio::test]
async fn garbage_and_oversized_frames_on_the_raft_stream_are_refused_and_raft_keeps_flowing(
) -> Result<()> {
    let (mut a, mut b) = patient_pair(FrameLimits {
        raft: 64 << 10,
        ..FrameLimits::default()
    })
    .await?;
    // The regular link is up first, so the raw streams below are extra streams.
    a.handle
        .send_raft(b.peer, vec![(1, b"first".to_vec())])
        .await?;
    assert_eq!(
        next_raft_from(&mut b, a.peer).await?,
        vec![(1, b"first".to_vec())]
    );

    // Well-delimited garbage: each frame is refused, the stream stays in step, and a good
    // frame after them on the same stream is delivered.
    let seed: u64 = rand::random();
    println!("garbage seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut bytes = Vec::new();
    let mut garbage_frames = 0;
    for _ in 0..3 {
        let len = rng.gen_range(1..2000);
        let body: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        // Garbage that happens to decode would be a delivery: skip it, it proves nothing.
        if swarmkv_net::fuzzing::decode_raft_frame(&body).is_ok() {
            continue;
        }
        bytes.extend(prefixed(&body));
        garbage_frames += 1;
    }
    let good = swarmkv_net::fuzzing::encode_raft_frame(vec![vec![(7, b"after garbage".to_vec())]])
        .map_err(anyhow::Error::msg)?;
    bytes.extend(prefixed(&good));
    a.handle
        .send_raw_frame(b.peer, RawProtocol::RaftStream, bytes)
        .await?;
    let mut refused = 0;
    let delivered = loop {
        match b
            .wait_for("raft stream refusal or delivery", |e| match e {
                e @ (NetEvent::FrameRejected { .. } | NetEvent::Raft { .. }) => Some(e),
                _ => None,
            })
            .await?
        {
            NetEvent::FrameRejected { protocol, .. } => {
                ensure!(
                    protocol == "/swarmkv/raft-stream/1",
                    "{protocol} (seed {seed})"
                );
                refused += 1;
            }
            NetEvent::Raft { batch, .. } => break batch,
            _ => unreachable!(),
        }
    };
    ensure!(
        refused == garbage_frames,
        "{refused} of {garbage_frames} refused (seed {seed})"
    );
    assert_eq!(delivered, vec![(7, b"after garbage".to_vec())]);

    // A length above the reader's limit: refused unread, that stream dropped.
    let mut oversized = ((200u32) << 10).to_be_bytes().to_vec();
    oversized.extend(vec![0u8; 1000]);
    let _ = a
        .handle
        .send_raw_frame(b.peer, RawProtocol::RaftStream, oversized)
        .await;
    oversize_refused(&mut b).await?;

    // The regular link is untouched and nobody was reported lost.
    a.handle
        .send_raft(b.peer, vec![(5, b"honest".to_vec())])
        .await?;
    assert_eq!(
        next_raft_from(&mut b, a.peer).await?,
        vec![(5, b"honest".to_vec())]
    );
    nobody_suspected(&mut a).await
}

#[tokio::test]
async fn peers_of_another_cluster_name_or_id_deliver_nothing() -> Result<()> {
    let mut home = config();
    home.cluster_id = Some(1);
    let mut a = spawn(home).await?;
    let mut other_name = config();
    other_name.cluster_name = "elsewhere".to_string();
    let mut x = spawn(other_name).await?;
    let mut other_id = config();
    other_id.cluster_id = Some(2);
    let mut y = spawn(other_id).await?;

    for stranger in [&mut x, &mut y] {
        // The dial itself works (same transport), the hello does not.
        stranger.handle.dial(a.addr.clone()).await?;
        let foreign = a
            .wait_for("ForeignPeer", |e| match e {
                NetEvent::ForeignPeer { peer, .. } => Some(peer),
                _ => None,
            })
            .await?;
        assert_eq!(foreign, stranger.peer);
        // Whatever it tries is refused on its side too.
        stranger
            .handle
            .send_raft(a.peer, vec![(0, b"x".to_vec())])
            .await?;
        let kv = stranger.handle.kv_request(a.peer, b"x".to_vec()).await;
        ensure!(kv.is_err(), "foreign kv request answered: {kv:?}");
    }
    // For a while (several heartbeat intervals) nothing from them reaches a's application.
    for event in a.drain_for(Duration::from_millis(1500)).await {
        match &event {
            NetEvent::Raft { .. }
            | NetEvent::KvRequest { .. }
            | NetEvent::SnapshotChunk { .. }
            | NetEvent::Heartbeat { .. }
            | NetEvent::PeerUp { .. } => bail!("foreign peer reached the app: {event:?}"),
            _ => {}
        }
    }
    let members = a.handle.cluster_peers().await?;
    ensure!(
        members.is_empty(),
        "foreign peers listed as members: {members:?}"
    );
    Ok(())
}

#[tokio::test]
async fn diverging_cluster_ids_split_connected_peers() -> Result<()> {
    let mut nodes = cluster(2).await?;
    let (a, b) = nodes.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    a.handle.set_cluster_id(Some(10)).await?;
    b.handle.set_cluster_id(Some(11)).await?;
    let foreign = a
        .wait_for("ForeignPeer after id change", |e| match e {
            NetEvent::ForeignPeer {
                peer, cluster_id, ..
            } => Some((peer, cluster_id)),
            _ => None,
        })
        .await?;
    assert_eq!(foreign, (b.peer, Some(11)));
    Ok(())
}

#[tokio::test]
async fn a_peer_without_the_right_psk_cannot_finish_a_handshake() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let key = generate_psk_file(&dir.path().join("a.key"), false)?;
    let other_key = generate_psk_file(&dir.path().join("b.key"), false)?;
    let with_key = || {
        let mut c = config();
        c.psk = Some(key);
        c
    };
    let mut a = spawn(with_key()).await?;
    let mut wrong = config();
    wrong.psk = Some(other_key);
    let wrong = spawn(wrong).await?;
    let none = spawn(config()).await?;
    let mut friend = spawn(with_key()).await?;

    for stranger in [&wrong, &none] {
        let dialed = stranger.handle.dial(a.addr.clone()).await;
        ensure!(dialed.is_err(), "stranger finished a handshake: {dialed:?}");
    }
    connect(&mut friend, &mut a).await?;
    friend
        .handle
        .send_raft(a.peer, vec![(1, b"ok".to_vec())])
        .await?;
    assert_eq!(
        next_raft_from(&mut a, friend.peer).await?,
        vec![(1, b"ok".to_vec())]
    );
    for event in a.drain_for(Duration::from_millis(500)).await {
        if let NetEvent::PeerUp { peer } = event {
            ensure!(peer == friend.peer, "stranger {peer} came up");
        }
    }
    ensure!(a.handle.cluster_peers().await? == vec![friend.peer]);
    Ok(())
}

#[tokio::test]
async fn dropping_a_swarm_reports_it_down_on_the_others_within_the_timeout() -> Result<()> {
    let mut nodes = cluster(3).await?;
    let victim = nodes.remove(2);
    let down_timeout = config().down_timeout;
    let gone = victim.peer;
    victim.task.abort();
    drop(victim);
    let start = Instant::now();
    for node in &mut nodes {
        node.wait_for_within("PeerDown", down_timeout * 4, |e| match e {
            NetEvent::PeerDown { peer } if peer == gone => Some(()),
            _ => None,
        })
        .await?;
    }
    println!(
        "PeerDown after {:?} (down timeout {down_timeout:?})",
        start.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn a_restarted_swarm_keeps_its_peer_id_and_is_redialed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut a = spawn(config()).await?;
    let first_config = swarmkv_net::NetConfig::loopback(load_or_create_identity(dir.path())?);
    let mut b = spawn(first_config).await?;
    connect(&mut a, &mut b).await?;
    let (id, addr) = (b.peer, b.addr.clone());
    b.handle.shutdown().await?;
    let Node { task, .. } = b;
    task.await?;
    a.wait_for("PeerSuspect", |e| match e {
        NetEvent::PeerSuspect { peer } if peer == id => Some(()),
        _ => None,
    })
    .await?;

    // Same data dir, same port: same PeerId, and a redials it by itself.
    let mut again = swarmkv_net::NetConfig::loopback(load_or_create_identity(dir.path())?);
    again.listen_addrs = vec![addr];
    let b = spawn(again).await?;
    assert_eq!(b.peer, id);
    assert_eq!(b.handle.local_peer_id(), id);
    a.wait_up(id).await?;
    Ok(())
}

#[tokio::test]
async fn join_addresses_connect_and_heartbeats_spread_membership() -> Result<()> {
    let nodes = cluster(2).await?;
    nodes[0].handle.set_app_payload(b"load=3".to_vec()).await?;
    // c knows only node 0's address; it learns node 1 from the heartbeats and dials it.
    let mut c_config = config();
    c_config.join_addrs = vec![nodes[0].addr.clone()];
    let mut c = spawn(c_config).await?;
    let (p0, p1) = (nodes[0].peer, nodes[1].peer);
    c.wait_up(p0).await?;
    let info = c
        .wait_for("heartbeat of node 0 with its payload", |e| match e {
            NetEvent::Heartbeat { info } if info.peer == p0 && !info.app.is_empty() => Some(info),
            _ => None,
        })
        .await?;
    assert_eq!(info.app, b"load=3");
    assert_eq!(info.cluster_name, swarmkv_net::DEFAULT_CLUSTER_NAME);
    c.wait_up(p1).await?;
    let deadline = Instant::now() + common::PATIENCE;
    while !c.handle.cluster_peers().await?.contains(&p1) {
        ensure!(
            Instant::now() < deadline,
            "c never connected to node 1 directly"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn undeliverable_sends_are_reported_not_lost_silently() -> Result<()> {
    let mut nodes = cluster(2).await?;
    // A peer nobody knows: the batch is reported as failed at once.
    let stranger = PeerId::random();
    nodes[0]
        .handle
        .send_raft(stranger, vec![(1, b"x".to_vec())])
        .await?;
    let failed = nodes[0]
        .wait_for("RaftSendFailed", |e| match e {
            NetEvent::RaftSendFailed { peer, batches, .. } => Some((peer, batches)),
            _ => None,
        })
        .await?;
    assert_eq!(failed, (stranger, 1));
    let kv = nodes[0].handle.kv_request(stranger, b"x".to_vec()).await;
    ensure!(
        matches!(kv, Err(NetError::NotConnected(p)) if p == stranger),
        "{kv:?}"
    );

    // A request whose responder is dropped by the application fails for the requester.
    let client = nodes[0].handle.clone();
    let server = nodes[1].peer;
    let request = tokio::spawn(async move { client.kv_request(server, b"q".to_vec()).await });
    let responder = nodes[1]
        .wait_for("kv request", |e| match e {
            NetEvent::KvRequest { responder, .. } => Some(responder),
            _ => None,
        })
        .await?;
    drop(responder);
    let answer = request.await?;
    ensure!(
        answer.is_err(),
        "dropped responder still answered: {answer:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_peer_flooding_heartbeats_is_held_to_its_gossip_rate_then_cut_off() -> Result<()> {
    let mut honest_config = config();
    honest_config.gossip_rate_per_peer = 20;
    let mut a = spawn(honest_config).await?;
    // The flooder publishes a heartbeat every 2 ms: 500 a second, 25 times its allowance.
    let mut flood = config();
    flood.heartbeat_interval = Duration::from_millis(2);
    let mut b = spawn(flood).await?;
    connect(&mut b, &mut a).await?;
    let started = Instant::now();
    let events = a.drain_for(Duration::from_secs(3)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let heard = events
        .iter()
        .filter(|e| matches!(e, NetEvent::Heartbeat { info } if info.peer == b.peer))
        .count();
    let cut_off = events.iter().any(|e| {
        matches!(e, NetEvent::PeerSuspect { peer } | NetEvent::PeerDown { peer } if *peer == b.peer)
    });
    println!(
        "{heard} heartbeats from the flooder reached the application in {elapsed:.1} s; cut off: {cut_off}"
    );
    // 20/s plus a burst of 40 (and slack for the connection's first moments).
    let allowed = (20.0 * elapsed) as usize + 40 + 10;
    ensure!(
        heard <= allowed,
        "{heard} heartbeats passed, more than the {allowed} the rate allows"
    );
    ensure!(
        heard >= 20,
        "the flooder's heartbeats did not arrive at all ({heard})"
    );
    // 200 messages over the rate (10 s worth of allowance) make it a flooder: disconnected,
    // and its redials are refused.
    ensure!(cut_off, "the flooder was not disconnected");
    let again = b.handle.dial(a.addr.clone()).await;
    let kv = b.handle.kv_request(a.peer, b"x".to_vec()).await;
    ensure!(
        kv.is_err(),
        "a banned flooder was answered (dial: {again:?})"
    );
    Ok(())
}

#[tokio::test]
async fn a_closed_gate_refuses_unlisted_peers_and_drops_connected_ones() -> Result<()> {
    let mut nodes = cluster(2).await?;
    let stranger = spawn(config()).await?;
    let (member, admitted) = (nodes[0].peer, nodes[1].peer);
    let allowed: std::collections::HashSet<PeerId> = [member, admitted].into_iter().collect();
    // Connected before the gate closes: dropped when it does.
    let _ = stranger.handle.dial(nodes[0].addr.clone()).await?;
    nodes[0].wait_up(stranger.peer).await?;
    nodes[0].handle.set_allowed_peers(Some(allowed)).await?;
    nodes[0]
        .wait_for("the stranger to go", |e| match e {
            NetEvent::PeerSuspect { peer } | NetEvent::PeerDown { peer }
                if peer == stranger.peer =>
            {
                Some(())
            }
            _ => None,
        })
        .await?;
    // Redials are denied: nothing the stranger sends arrives, and it is no member.
    for _ in 0..3 {
        let _ = stranger.handle.dial(nodes[0].addr.clone()).await;
        let kv = stranger
            .handle
            .kv_request(nodes[0].peer, b"x".to_vec())
            .await;
        ensure!(kv.is_err(), "a refused peer got an answer: {kv:?}");
    }
    for event in nodes[0].drain_for(Duration::from_millis(1500)).await {
        if let NetEvent::KvRequest { peer, .. } | NetEvent::Raft { peer, .. } = &event {
            ensure!(
                *peer != stranger.peer,
                "the stranger reached the app: {event:?}"
            );
        }
    }
    let members = nodes[0].handle.cluster_peers().await?;
    ensure!(
        members == vec![admitted],
        "members after closing: {members:?}"
    );
    // The listed member still works both ways.
    nodes[1]
        .handle
        .send_raft(member, vec![(1, b"still here".to_vec())])
        .await?;
    let batch = next_raft_from(&mut nodes[0], admitted).await?;
    ensure!(batch == vec![(1, b"still here".to_vec())], "{batch:?}");
    // Opening the gate again lets the stranger in.
    nodes[0].handle.set_allowed_peers(None).await?;
    let _ = stranger.handle.dial(nodes[0].addr.clone()).await?;
    nodes[0].wait_up(stranger.peer).await?;
    Ok(())
}

#[tokio::test]
async fn a_light_client_is_served_but_never_gossips_nor_hears_gossip() -> Result<()> {
    let mut nodes = cluster(2).await?;
    // A light client listens on nothing, so it cannot be `spawn`ed (which waits for an
    // address): run it by hand.
    let config = NetConfig::light_client(Keypair::generate_ed25519());
    let client_peer = config.peer_id();
    let (client, mut client_events, event_loop) = swarmkv_net::new(config)?;
    let task = tokio::spawn(event_loop.run());
    let _stop = AbortOnDrop(task);
    ensure!(client.listen_addrs().await?.is_empty());
    ensure!(client.dial(nodes[0].addr.clone()).await? == nodes[0].peer);

    // Its requests are delivered once its hello proved its cluster.
    let server = nodes[0].peer;
    let handle = client.clone();
    let request = tokio::spawn(async move { handle.kv_request(server, b"get k".to_vec()).await });
    let (from, responder) = nodes[0]
        .wait_for("kv request from the light client", |e| match e {
            NetEvent::KvRequest {
                peer, responder, ..
            } => Some((peer, responder)),
            _ => None,
        })
        .await?;
    ensure!(from == client_peer);
    responder.respond(b"v".to_vec())?;
    ensure!(request.await?? == b"v");

    // Over several heartbeat periods: the nodes hear each other but never the client, and
    // the client hears no heartbeat at all.
    let window = Duration::from_secs(2);
    let (node0, rest) = nodes.split_at_mut(1);
    let (seen0, seen1, seen_by_client) = tokio::join!(
        node0[0].drain_for(window),
        rest[0].drain_for(window),
        async {
            let deadline = tokio::time::Instant::now() + window;
            let mut all = Vec::new();
            while let Ok(Some(e)) = tokio::time::timeout_at(deadline, client_events.recv()).await {
                all.push(e);
            }
            all
        }
    );
    let heartbeats_from = |events: &[NetEvent], who: PeerId| {
        events
            .iter()
            .filter(|e| matches!(e, NetEvent::Heartbeat { info } if info.peer == who))
            .count()
    };
    ensure!(
        heartbeats_from(&seen1, nodes[0].peer) > 0,
        "node 1 heard no heartbeat of node 0"
    );
    for seen in [&seen0, &seen1] {
        ensure!(
            heartbeats_from(seen, client_peer) == 0,
            "a node heard the light client"
        );
    }
    let client_heard = seen_by_client
        .iter()
        .filter(|e| matches!(e, NetEvent::Heartbeat { .. }))
        .count();
    ensure!(
        client_heard == 0,
        "the light client heard {client_heard} heartbeats"
    );
    Ok(())
}

/// Aborts a task when dropped (the light client's event loop).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
