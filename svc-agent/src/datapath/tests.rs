//! Classic tc records: the pin names that carry interface and hook.
use super::*;

#[test]
fn classic_records_name_their_interface_and_hook() {
    let pin = Path::new("/b/links/7-veth-a-b-uplink_egress");
    let record = classic_record(pin);
    assert_eq!(record, Path::new("/b/links/7-veth-a-b-uplink_egress_cls"));
    let name = record.file_name().unwrap().to_str().unwrap();
    assert_eq!(
        parse_classic_record(name),
        Some((7, "veth-a-b", TcAttachType::Egress))
    );
    assert_eq!(
        parse_classic_record("3-eth0-uplink_cls"),
        Some((3, "eth0", TcAttachType::Ingress))
    );
    // tcx link pins, XDP, socket hooks and junk are not classic records.
    for other in [
        "3-eth0-uplink",
        "3-eth0-xdp_cls",
        "cgroup-svc_sock_connect4",
        "x-eth0-ingress_cls",
    ] {
        assert_eq!(parse_classic_record(other), None, "{other}");
    }
}

#[test]
fn xdp_modes_never_fall_back_to_generic_unasked() {
    let names = |c, veth| -> Vec<&str> { xdp_modes(c, veth).iter().map(|(_, n)| *n).collect() };
    let table: [(XdpChoice, bool, &[&str]); 8] = [
        (XdpChoice::Auto, false, &["native"]),
        (XdpChoice::Auto, true, &[]),
        (XdpChoice::Native, false, &["native"]),
        (XdpChoice::Native, true, &["native"]),
        (XdpChoice::Generic, false, &["generic"]),
        (XdpChoice::Generic, true, &["generic"]),
        (XdpChoice::Off, false, &[]),
        (XdpChoice::Off, true, &[]),
    ];
    for (choice, veth, want) in table {
        assert_eq!(names(choice, veth), want, "{choice:?}, veth {veth}");
    }
}
