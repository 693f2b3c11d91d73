//! See `swarmkv_fuzz::stored_records` for what this target feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|damage: swarmkv_fuzz::stored_records::Damage| {
    swarmkv_fuzz::stored_records::check(&damage)
});
