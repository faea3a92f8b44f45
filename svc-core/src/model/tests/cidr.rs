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
