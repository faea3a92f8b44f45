//! One's-complement checksum arithmetic (RFC 1071, RFC 1624) over 16-bit words read from the
//! packet in native order, which yields each field's own in-packet representation.

/// Folds a one's-complement sum of 16-bit words to 16 bits.
#[inline(always)]
pub(crate) fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

#[inline(always)]
pub(crate) fn words(a: [u8; 4]) -> u32 {
    u16::from_ne_bytes([a[0], a[1]]) as u32 + u16::from_ne_bytes([a[2], a[3]]) as u32
}

/// RFC 1624 incremental update: `HC' = ~(~HC + ~m + m')` over the changed 16-bit words.
#[inline(always)]
pub(crate) fn csum_update(check: u16, old: &[u16; 6], new: &[u16; 6], n: usize) -> u16 {
    let mut sum = !check as u32;
    for i in 0..6 {
        if i < n {
            sum += !old[i] as u32 + new[i] as u32;
        }
    }
    !fold(sum)
}

#[inline(always)]
pub(crate) fn halves(a: [u8; 4]) -> [u16; 2] {
    [
        u16::from_ne_bytes([a[0], a[1]]),
        u16::from_ne_bytes([a[2], a[3]]),
    ]
}
