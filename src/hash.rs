//! FNV-1a, the 64-bit hash behind cmrm's cache keys and file identities: fast, stable across
//! runs and platforms, and not cryptographic.

/// The FNV-1a offset basis: the hash of nothing.
pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Continues the FNV-1a hash `h` over `bytes` (hashing in pieces gives the hash of the whole).
pub(crate) fn fnv1a_from(h: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes
        .into_iter()
        .fold(h, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The FNV-1a hash of `bytes` (used by the steering, which needs the `llama` feature).
#[cfg_attr(not(feature = "llama"), allow(dead_code))]
pub(crate) fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    fnv1a_from(FNV_OFFSET, bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_the_published_test_vectors_and_hashes_in_pieces() {
        assert_eq!(super::fnv1a(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv1a(*b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(super::fnv1a(*b"foobar"), 0x8594_4171_f739_67e8);
        let half = super::fnv1a(*b"foo");
        assert_eq!(super::fnv1a_from(half, *b"bar"), super::fnv1a(*b"foobar"));
    }
}
