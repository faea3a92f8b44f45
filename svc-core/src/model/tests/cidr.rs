//! [`Ipv4Cidr`] parsing and arithmetic.

use super::*;

#[test]
fn cidr_parses_and_clears_host_bits() {
    let c: Ipv4Cidr = "10.96.3.4/16".parse().expect("cidr");
    assert_eq!(c.to_string(), "10.96.0.0/16");
    assert_eq!(c.broadcast(), Ipv4Addr::new(10, 96, 255, 255));
    assert!(c.contains(Ipv4Addr::new(10, 96, 200, 1)));
    assert!(!c.contains(Ipv4Addr::new(10, 97, 0, 1)));
    assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
    assert!("10.0.0.0".parse::<Ipv4Cidr>().is_err());
    let all: Ipv4Cidr = "0.0.0.0/0".parse().expect("cidr");
    assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)));
    assert_eq!(Ipv4Cidr::default().to_string(), "10.96.0.0/16");
}
