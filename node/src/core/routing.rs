//! Which partition a key belongs to.
//!
//! `partition = xxh3_64(key) mod P`. The hash is part of the on-disk format (it decides where
//! every stored key lives) and must never change; xxh3 is specified and frozen upstream.

use xxhash_rust::xxh3::xxh3_64;

/// The partition of `key` among `partitions` (which must be at least 1).
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    (xxh3_64(key) % u64::from(partitions.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_frozen() {
        // If this changes, existing data becomes unreachable: the hash is an on-disk format.
        assert_eq!(xxh3_64(b"swarmkv"), 0x777e_bd34_527f_3f8b);
        assert_eq!(
            partition_of(b"swarmkv", 64),
            (0x777e_bd34_527f_3f8bu64 % 64) as u32
        );
    }

    #[test]
    fn keys_spread_over_partitions() {
        let mut counts = [0u32; 64];
        for i in 0..64_000 {
            counts[partition_of(format!("k{i:015}").as_bytes(), 64) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().copied(), counts.iter().max().copied());
        assert!(min > Some(850) && max < Some(1150), "{min:?}..{max:?}");
    }
}
