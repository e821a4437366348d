//! MurmurHash2 (32-bit) as systemd's `string_hash32`, and the 64-bit tag bloom
//! filter of libudev messages; receivers compare these in their socket filter.

const M: u32 = 0x5bd1e995;
const R: u32 = 24;

/// Austin Appleby's MurmurHash2, 32-bit, reading 4-byte blocks little-endian
/// (what systemd computes on the little-endian machines it runs on).
pub fn murmur_hash2(data: &[u8], seed: u32) -> u32 {
    // The C code mixes in the length as a 32-bit int; longer inputs wrap.
    let mut h = seed ^ (data.len() as u32);
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        for (i, &byte) in tail.iter().enumerate() {
            h ^= u32::from(byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// systemd's `string_hash32`: MurmurHash2 of the string with seed 0.
pub fn string_hash32(text: &str) -> u32 {
    murmur_hash2(text.as_bytes(), 0)
}

/// The libudev tag bloom filter: for each tag, bits `h & 63`, `(h >> 6) & 63`,
/// `(h >> 12) & 63` and `(h >> 18) & 63` of `h = string_hash32(tag)`.
pub fn tag_bloom64<'a>(tags: impl IntoIterator<Item = &'a str>) -> u64 {
    tags.into_iter().fold(0, |bits, tag| {
        let h = string_hash32(tag);
        bits | 1 << (h & 63) | 1 << ((h >> 6) & 63) | 1 << ((h >> 12) & 63) | 1 << ((h >> 18) & 63)
    })
}
