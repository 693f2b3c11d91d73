//! See `swarmkv_fuzz::core_requests` for what this target feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|scenario: swarmkv_fuzz::core_requests::Scenario| {
    swarmkv_fuzz::core_requests::check(&scenario)
});
