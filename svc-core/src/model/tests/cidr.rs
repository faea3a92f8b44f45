//! [`Ipv4Net`] parsing and arithmetic.

use super::*;

#[test]
fn cidr_parses_and_clears_host_bits() {
    let c = parse_cidr("10.96.3.4/16").expect("cidr");
    assert_eq!(c.to_string(), "10.96.0.0/16");
    assert_eq!(c.broadcast(), Ipv4Addr::new(10, 96, 255, 255));
    assert!(c.contains(&Ipv4Addr::new(10, 96, 200, 1)));
    assert!(!c.contains(&Ipv4Addr::new(10, 97, 0, 1)));
    assert!(parse_cidr("10.0.0.0/33").is_err());
    assert!(parse_cidr("10.0.0.0").is_err());
    let all = parse_cidr("0.0.0.0/0").expect("cidr");
    assert!(all.contains(&Ipv4Addr::new(1, 2, 3, 4)));
    assert_eq!(default_service_cidr().to_string(), "10.96.0.0/16");
}

#[test]
fn service_cidrs_are_an_ipv4_range_and_optionally_an_ipv6_one() {
    let one = parse_service_cidrs("10.96.0.0/16").expect("v4");
    assert_eq!(
        (one.v4.to_string(), one.v6),
        ("10.96.0.0/16".to_owned(), None)
    );
    let two = parse_service_cidrs("10.96.0.0/16,fd00:10:96::/112").expect("dual");
    assert_eq!(
        two.v6.map(|n| n.to_string()).as_deref(),
        Some("fd00:10:96::/112")
    );
    for (bad, words) in [
        ("fd00:10:96::/112", "the first range must be IPv4"),
        ("10.96.0.0/16,10.97.0.0/16", "the second range must be IPv6"),
        ("10.96.0.0/16,fd00::/64", "must be /108 or longer"),
        ("10.96.0.0/16,fd00::/112,fd01::/112", "at most two ranges"),
        ("10.96.0.0/40", "prefix length above 32"),
        ("10.96.0.0/16,fd00::x/112", "not an IPv6 address"),
    ] {
        let err = parse_service_cidrs(bad).expect_err(bad);
        assert!(err.contains(words), "{bad}: {err}");
    }
}
