//! See `swarmkv_fuzz::http_bodies` for what this target feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| swarmkv_fuzz::http_bodies::check(data));
