//! See `swarmkv_fuzz::snapshot_chunk` for what this target feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| swarmkv_fuzz::snapshot_chunk::check(data));
