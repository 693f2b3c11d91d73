//! The workload of `../shared/bench/WORKLOAD.md`, item by item: the reference PRNG
//! (splitmix64, client `i` seeded with `seed * 1000003 + i`), the 16-byte keys, the 256-byte
//! alphanumeric values and how the N operations are split among the C clients.
//!
//! Everything here is deterministic, so a run can be repeated exactly and the etcd driver
//! draws the very same keys and values as the swarmkv one.

/// The operations of the workload (item 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Op {
    /// Unconditional single-key overwrite (etcd `Put`, no lease, no prev_kv).
    Put,
    /// Single-key linearizable read (etcd `Range` default: ReadIndex through the leader).
    GetLinearizable,
    /// Single-key read from the local state of the node the client talks to; may be stale.
    GetSerializable,
    /// A transaction writing the two keys of one hash tag that key `k` names (see
    /// [`txn_pair`]): one compare that always holds (version != the largest number), then a
    /// put of each. Not in WORKLOAD.md: the same value, 256 bytes, goes to both keys.
    Txn,
}

impl Op {
    /// The name the output uses (`put`, `get-linearizable`, `get-serializable`).
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::GetLinearizable => "get-linearizable",
            Op::GetSerializable => "get-serializable",
            Op::Txn => "txn",
        }
    }
}

/// The alphabet of values: `[A-Za-z0-9]`, 62 symbols (about 5.95 bits per byte, so a value
/// does not compress in any useful way).
const ALPHA: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// The multiplier that spreads the per-client seeds (`seed * 1000003 + i`).
const CLIENT_SEED_STRIDE: u64 = 1_000_003;

/// splitmix64 (Vigna): tiny, well distributed and trivially re-implemented in any language,
/// which is why the workload names it as the reference generator.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose state starts at `state`.
    pub fn new(state: u64) -> SplitMix64 {
        SplitMix64 { state }
    }

    /// The generator of client `client` of a run with seed `seed`.
    pub fn for_client(seed: u64, client: usize) -> SplitMix64 {
        SplitMix64::new(
            seed.wrapping_mul(CLIENT_SEED_STRIDE)
                .wrapping_add(client as u64),
        )
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A key index uniform in `[0, keys)` (`next() mod K`; the modulo bias is below
    /// `keys / 2^64`, negligible).
    pub fn key_index(&mut self, keys: u64) -> u64 {
        self.next_u64() % keys
    }

    /// Fills `value` with fresh alphanumeric bytes: `ALPHA[b mod 62]` for the 8
    /// little-endian bytes `b` of successive outputs.
    pub fn fill_value(&mut self, value: &mut [u8]) {
        for chunk in value.chunks_mut(8) {
            let bits = self.next_u64().to_le_bytes();
            for (out, b) in chunk.iter_mut().zip(bits) {
                *out = ALPHA[usize::from(b % 62)];
            }
        }
    }
}

/// The key of index `index`: `k` and the index in 15 zero-padded decimal digits, 16 ASCII
/// bytes for every index below 10^15.
pub fn key_of(index: u64) -> [u8; 16] {
    let mut key = [b'0'; 16];
    key[0] = b'k';
    let mut rest = index;
    for slot in key[1..].iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    key
}

/// How many of the `total` operations client `client` of `clients` does: `total div C`, plus
/// one for the first `total mod C` clients.
pub fn ops_of_client(total: u64, clients: usize, client: usize) -> u64 {
    let c = clients as u64;
    total / c + u64::from((client as u64) < total % c)
}

/// The two keys of the transaction on key `key`: `{` + its last 13 bytes + `}a` and `}b`,
/// 16 bytes each like every workload key, sharing their hash tag and so one partition.
pub fn txn_pair(key: &[u8; 16]) -> ([u8; 16], [u8; 16]) {
    let mut a = [0u8; 16];
    a[0] = b'{';
    a[1..14].copy_from_slice(&key[3..]);
    a[14] = b'}';
    a[15] = b'a';
    let mut b = a;
    b[15] = b'b';
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_gives_the_reference_outputs() {
        // State 0: the published first output of splitmix64.
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(g.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        // State 1 (computed independently with a Python transcription of the algorithm).
        let mut g = SplitMix64::new(1);
        assert_eq!(g.next_u64(), 0x910a_2dec_8902_5cc1);
        assert_eq!(g.next_u64(), 0xbeeb_8da1_658e_ec67);
        assert_eq!(g.next_u64(), 0xf893_a2ee_fb32_555e);
    }

    #[test]
    fn client_generators_are_seeded_seed_times_1000003_plus_i() {
        let mut c0 = SplitMix64::for_client(1, 0);
        assert_eq!(c0.next_u64(), 0x5a00_52b9_13b2_1d24);
        let mut c7 = SplitMix64::for_client(1, 7);
        assert_eq!(c7.next_u64(), SplitMix64::new(1_000_010).next_u64());
        // Client 0 of seed 1, first put: its key index, then its value's first 16 bytes
        // (same Python transcription).
        let mut c0 = SplitMix64::for_client(1, 0);
        assert_eq!(c0.key_index(100_000), 81_604);
        let mut value = [0u8; 16];
        c0.fill_value(&mut value);
        assert_eq!(&value, b"9bXw0P4FMUGNkAUo");
    }

    #[test]
    fn values_are_alphanumeric_of_any_length() {
        let mut g = SplitMix64::new(42);
        for len in [0, 1, 7, 8, 9, 256] {
            let mut v = vec![0u8; len];
            g.fill_value(&mut v);
            assert!(v.iter().all(u8::is_ascii_alphanumeric), "{v:?}");
        }
    }

    #[test]
    fn keys_are_k_and_15_zero_padded_digits() {
        assert_eq!(&key_of(42), b"k000000000000042");
        assert_eq!(&key_of(0), b"k000000000000000");
        assert_eq!(
            txn_pair(&key_of(42)),
            (*b"{0000000000042}a", *b"{0000000000042}b")
        );
        assert_eq!(&key_of(99_999), b"k000000000099999");
        assert_eq!(&key_of(999_999_999_999_999), b"k999999999999999");
        assert_eq!(
            key_of(123_456_789).to_vec(),
            format!("k{:015}", 123_456_789).into_bytes()
        );
    }

    #[test]
    fn operations_are_split_evenly_with_the_remainder_to_the_first_clients() {
        assert_eq!(ops_of_client(10, 4, 0), 3);
        assert_eq!(ops_of_client(10, 4, 1), 3);
        assert_eq!(ops_of_client(10, 4, 2), 2);
        assert_eq!(ops_of_client(10, 4, 3), 2);
        for (total, clients) in [(50_000, 64), (15_000, 1), (60_000, 256), (3, 5)] {
            let sum: u64 = (0..clients).map(|i| ops_of_client(total, clients, i)).sum();
            assert_eq!(sum, total);
        }
    }
}
