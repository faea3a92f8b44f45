//! Unit tests of the traffic pattern and the sized request layout.

use super::*;
use std::net::Ipv4Addr;

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

/// Both kinds of transfer, both ways, over loopback: verified ones agree on SHA-256, raw ones
/// count bytes and hash nothing.
#[test]
fn bulk_verified_and_raw_transfers_over_loopback() {
    // A port the kernel just handed out and took back: free unless something races for it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = BulkServer::start("lo", &[port]).unwrap();
    for raw in [false, true] {
        for dir in [BulkDir::Download, BulkDir::Upload] {
            let r = run_bulk(&BulkConfig {
                target: (Ipv4Addr::LOCALHOST, port).into(),
                dir,
                bytes: 3 << 20,
                stall: Duration::from_secs(5),
                deadline: Duration::from_secs(30),
                raw,
            })
            .unwrap();
            assert!(r.ok, "raw {raw}, {dir:?}: {r:?}");
            assert_eq!((r.bytes, r.backend.as_str()), (3 << 20, "lo"));
            assert_eq!(r.sha256_got.is_empty(), raw, "{r:?}");
        }
    }
    server.stop();
}
