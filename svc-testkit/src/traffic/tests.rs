//! Unit tests of the traffic pattern and the sized request layout.

use super::*;

#[test]
fn pattern_is_deterministic_and_fill_wraps() {
    let p = pattern();
    assert_eq!(p.len(), PATTERN_LEN);
    let mut a = vec![0u8; 10];
    fill(&mut a, PATTERN_LEN as u64 - 5);
    assert_eq!(&a[..5], &p[PATTERN_LEN - 5..]);
    assert_eq!(&a[5..], &p[..5]);
    assert_ne!(stream_sha256(1000), stream_sha256(1001));
}

#[test]
fn sized_request_layout() {
    let r = sized_request(7, 3000, 100);
    assert_eq!(r.len(), 100);
    assert!(r.starts_with(b"sized 7 3000\n"));
    let short = sized_request(7, 3000, 3);
    assert_eq!(short, b"sized 7 3000\n");
}
