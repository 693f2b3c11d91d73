//! Prints the structured input a random test input or a crash file stands for:
//!   cargo run --manifest-path fuzz/Cargo.toml --example show -- core_requests FILE
use arbitrary::{Arbitrary, Unstructured};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (target, file) = match args.as_slice() {
        [_, t, f] => (t.as_str(), f.as_str()),
        _ => anyhow::bail!("usage: show TARGET FILE"),
    };
    let data = std::fs::read(file)?;
    let u = Unstructured::new(&data);
    match target {
        "core_requests" => println!(
            "{:#?}",
            swarmkv_fuzz::core_requests::Scenario::arbitrary_take_rest(u)
        ),
        "stored_records" => println!(
            "{:#?}",
            swarmkv_fuzz::stored_records::Damage::arbitrary_take_rest(u)
        ),
        "snapshot_chunk" => println!(
            "{:#?}",
            swarmkv_fuzz::snapshot_chunk::Transfer::arbitrary_take_rest(u)
        ),
        other => anyhow::bail!("{other} takes plain bytes"),
    }
    Ok(())
}
