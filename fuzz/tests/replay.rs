//! Replays every corpus file through its target's check, and a few hundred seeded random
//! inputs per target, in a plain test build (no sanitizer, no libFuzzer): a quick way to run
//! the checks, and to replay a crash file saved under `fuzz/corpus/<target>/` after its fix.
//!
//!   cargo test --manifest-path fuzz/Cargo.toml --release
//!   SWARMKV_FUZZ_SEED=S SWARMKV_FUZZ_INPUTS=N ...   (other random inputs)

use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use swarmkv_fuzz::{
    core_requests, heartbeat, http_bodies, kv_wire, raft_batch, snapshot_chunk, stored_records,
};

/// A target's check on raw bytes.
type Check = fn(&[u8]);

/// Every target by name, with its check.
fn targets() -> Vec<(&'static str, Check)> {
    vec![
        ("raft_batch", raft_batch::check),
        ("kv_wire", kv_wire::check),
        ("heartbeat", heartbeat::check),
        ("http_bodies", http_bodies::check),
        ("snapshot_chunk", snapshot_chunk::check),
        ("stored_records", |data| {
            if let Ok(d) = stored_records::Damage::arbitrary_take_rest(Unstructured::new(data)) {
                stored_records::check(&d)
            }
        }),
        ("core_requests", |data| {
            if let Ok(s) = core_requests::Scenario::arbitrary_take_rest(Unstructured::new(data)) {
                core_requests::check(&s)
            }
        }),
    ]
}

#[test]
fn every_corpus_file_passes_its_check() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut files = 0;
    for (name, check) in targets() {
        let dir = root.join(name);
        if !dir.exists() {
            continue;
        }
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let data = std::fs::read(&path)?;
            println!("{}", path.display());
            check(&data);
            files += 1;
        }
    }
    println!("{files} corpus files replayed");
    Ok(())
}

/// splitmix64, so the random inputs need no crate and replay from the printed seed.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[test]
fn seeded_random_inputs_pass_every_check() {
    let seed = std::env::var("SWARMKV_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64);
    let inputs: usize = std::env::var("SWARMKV_FUZZ_INPUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    println!("seed {seed} ({inputs} inputs per target; SWARMKV_FUZZ_SEED={seed} replays)");
    for (name, check) in targets() {
        let mut state = seed;
        for i in 0..inputs {
            let len = (next(&mut state) % 512) as usize;
            let data: Vec<u8> = (0..len).map(|_| next(&mut state) as u8).collect();
            if std::env::var("SWARMKV_FUZZ_SAVE").is_ok_and(|want| want == format!("{name}/{i}")) {
                std::fs::write(format!("/tmp/{name}-{i}"), &data).ok();
            }
            println!("{name} input {i} ({len} bytes)");
            check(&data);
        }
    }
}
