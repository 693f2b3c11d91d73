//! See `swarmkv_fuzz::kv_wire` for what this target feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| swarmkv_fuzz::kv_wire::check(data));
