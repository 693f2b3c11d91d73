//! Which partition a key belongs to.
//!
//! `partition = xxh3_64(tag) mod P`, where the tag is the key's hash tag if it has one and
//! the whole key otherwise. A hash tag is Redis Cluster's: the bytes between the key's first
//! `{` and the first `}` after it, when there is at least one byte between them. Keys with the
//! same tag share a partition, so they can share a transaction: `{user:42}/name` and
//! `{user:42}/email` do. Keys without braces, or with an empty `{}`, hash whole.
//!
//! This mapping is part of the on-disk format (it decides where every stored key lives): it
//! changes only together with the store's `FORMAT_VERSION`. xxh3 is specified and frozen
//! upstream.

use swarmkv_store::KvOp;
use xxhash_rust::xxh3::xxh3_64;

use super::RequestBody;

/// The partition of `key` among `partitions` (which must be at least 1).
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    (xxh3_64(hash_tag(key)) % u64::from(partitions.max(1))) as u32
}

/// The part of `key` that decides its partition: the hash tag, or the whole key.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|b| *b == b'{') else {
        return key;
    };
    let rest = &key[open + 1..];
    match rest.iter().position(|b| *b == b'}') {
        Some(close) if close > 0 => &rest[..close],
        _ => key,
    }
}

/// A key of `body` that does not belong to `partition`, if any. A node serves only requests
/// whose every single key lives in the partition they are addressed to: a key written into
/// another partition would be stored where no read of it ever looks.
pub fn misrouted_key(body: &RequestBody, partition: u32, partitions: u32) -> Option<&[u8]> {
    let foreign = |key: &&[u8]| partition_of(key, partitions) != partition;
    match body {
        RequestBody::Get { key, .. } => Some(key.as_slice()).filter(foreign),
        RequestBody::Write { op, .. } => match op {
            KvOp::Txn(txn) => txn.keys().find(foreign),
            op => op.key().filter(foreign),
        },
        RequestBody::Scan { .. } => None,
    }
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
    fn a_hash_tag_decides_the_partition() {
        let cases: [(&[u8], &[u8]); 8] = [
            (b"{user:42}/name", b"user:42"),
            (b"orders/{user:42}", b"user:42"),
            (b"a{b}c{d}", b"b"),
            (b"a{{b}}", b"{b"),
            (b"{}x", b"{}x"),
            (b"x{}{y}", b"x{}{y}"),
            (b"no tag", b"no tag"),
            (b"open { only", b"open { only"),
        ];
        for (key, tag) in cases {
            assert_eq!(hash_tag(key), tag, "{}", String::from_utf8_lossy(key));
        }
        assert_eq!(
            partition_of(b"{user:42}/name", 64),
            partition_of(b"{user:42}/email", 64)
        );
        assert_eq!(
            partition_of(b"{user:42}/name", 64),
            partition_of(b"user:42", 64)
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
