//! See `swarmkv_fuzz::raft_batch` for what this target feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| swarmkv_fuzz::raft_batch::check(data));
