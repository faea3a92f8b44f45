//! Generators of hostile (and valid) Services, EndpointSlices and node contexts from seeds.
use super::*;

// ---------------------------------------------------------------------------------------------
// Generators. Each object field is decoded from a few bits of one `u64` (its *seed*) and picks
// from a small pool, so collisions (names, addresses, ports) are likely; pool entries marked
// "arbitrary" take any i32, any IPv4 address or any Unicode text from a stream derived from the
// seed. Proptest then has one value per port or endpoint to generate and shrink, not a tree of
// a dozen: that keeps 10 000 cases of a debug build within seconds. Seed 0 decodes to the
// first (plainest) entry of every pool, which is where shrinking heads.

pub(crate) const NODE_IP: &str = "172.18.0.2";

/// A seed being decoded: `take` reads its bits from the low end; `wide` draws arbitrary data
/// from a splitmix64 stream seeded by it.
pub(crate) struct Bits {
    direct: u64,
    stream: u64,
}

impl Bits {
    fn new(seed: u64) -> Self {
        Self {
            direct: seed,
            stream: seed,
        }
    }

    fn take(&mut self, bits: u32) -> usize {
        let v = self.direct & ((1 << bits) - 1);
        self.direct >>= bits;
        v as usize
    }

    fn wide(&mut self) -> u64 {
        self.stream = self.stream.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.stream;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// An entry of `pool` (of 2^`bits` entries), by `bits` bits of the seed.
    fn pick<T: Clone>(&mut self, bits: u32, pool: &[T]) -> T {
        debug_assert_eq!(pool.len(), 1 << bits);
        pool[self.take(bits)].clone()
    }

    fn any_i32(&mut self) -> i32 {
        self.wide() as i32
    }

    fn any_ipv4(&mut self) -> String {
        Ipv4Addr::from(self.wide() as u32).to_string()
    }

    /// 1-12 arbitrary Unicode scalar values, control characters and all.
    fn any_text(&mut self) -> String {
        let len = 1 + self.wide() % 12;
        (0..len)
            .map(|_| {
                let w = self.wide();
                // Mostly the BMP, where most scripts (and the bidi controls) are.
                let c = if w & 3 == 0 {
                    w >> 2
                } else {
                    (w >> 2) & 0xffff
                };
                char::from_u32((c % 0x11_0000) as u32).unwrap_or('\u{fffd}')
            })
            .collect()
    }
}

/// A text field's choice: absent, given, or arbitrary Unicode.
#[derive(Clone, Copy)]
pub(crate) enum Text {
    Absent,
    Is(&'static str),
    /// `"n".repeat(63)` and the like: names at and past the length limits.
    Repeat(&'static str, usize),
    Unicode,
}

impl Text {
    fn decode(self, b: &mut Bits) -> Option<String> {
        match self {
            Text::Absent => None,
            Text::Is(s) => Some(s.to_owned()),
            Text::Repeat(s, n) => Some(s.repeat(n)),
            Text::Unicode => Some(b.any_text()),
        }
    }
}

use Text::{Absent, Is, Repeat, Unicode};

/// A number field's choice.
#[derive(Clone, Copy)]
pub(crate) enum Num {
    Absent,
    Is(i32),
    Any,
}

impl Num {
    fn decode(self, b: &mut Bits) -> Option<i32> {
        match self {
            Num::Absent => None,
            Num::Is(n) => Some(n),
            Num::Any => Some(b.any_i32()),
        }
    }
}

/// An address field's choice.
#[derive(Clone, Copy)]
pub(crate) enum Addr {
    Is(&'static str),
    AnyIpv4,
    Unicode,
}

impl Addr {
    fn decode(self, b: &mut Bits) -> String {
        match self {
            Addr::Is(s) => s.to_owned(),
            Addr::AnyIpv4 => b.any_ipv4(),
            Addr::Unicode => b.any_text(),
        }
    }
}

/// Object names: colliding short ones (`a` sorts before and `z` after the valid Services'
/// `m0`…), empty, the DNS label limit (63) and one past it, the subdomain limit (253), Unicode.
#[rustfmt::skip]
pub(crate) const NAMES: [Text; 16] = [
    Is("web"), Is("db"), Is("a"), Is("z"), Is("web"), Is("db"), Is("a"), Is("z"),
    Is("web"), Is("a"), Is(""), Repeat("n", 63), Repeat("n", 64), Repeat("x", 253),
    Is("ünïcødé-名前-🦀"), Unicode,
];
#[rustfmt::skip]
pub(crate) const NAMESPACES: [Text; 8] = [
    Is("default"), Is("default"), Is("default"), Is("default"), Is(""), Is("aaa"),
    Is("kube-system"), Unicode,
];
#[rustfmt::skip]
pub(crate) const PORT_NAMES: [Text; 16] = [
    Absent, Is(""), Is("http"), Is("dns"), Is("p0"), Is("p1"), Is("p2"), Absent, Is("http"),
    Is("p0"), Is("p1"), Repeat("p", 15), Repeat("p", 64), Is("\u{202e}evil\u{0}nul"), Unicode,
    Is("dns"),
];
#[rustfmt::skip]
pub(crate) const PROTOCOLS: [Text; 8] = [
    Absent, Is("TCP"), Is("UDP"), Is("TCP"), Absent, Is("SCTP"), Is("tcp"), Unicode,
];
/// Port numbers: the usual ones (colliding), the bounds and past them, anything.
#[rustfmt::skip]
pub(crate) const PORTS: [Num; 16] = [
    Num::Is(80), Num::Is(443), Num::Is(53), Num::Is(8080), Num::Is(80), Num::Is(443),
    Num::Is(0), Num::Is(-1), Num::Is(1), Num::Is(65_535), Num::Is(65_536), Num::Is(i32::MIN),
    Num::Is(i32::MAX), Num::Any, Num::Is(80), Num::Is(8080),
];
/// nodePort values: those of the valid Services (30000 + 10 i + j), 0, out of range, anything.
#[rustfmt::skip]
pub(crate) const NODE_PORTS: [Num; 8] = [
    Num::Absent, Num::Absent, Num::Is(30_000), Num::Is(30_001), Num::Is(30_010), Num::Is(0),
    Num::Is(65_536), Num::Any,
];
#[rustfmt::skip]
pub(crate) const SLICE_PORTS: [Num; 8] = [
    Num::Is(8080), Num::Is(8081), Num::Is(8082), Num::Absent, Num::Is(0), Num::Is(-1),
    Num::Is(65_536), Num::Any,
];
/// ClusterIPs, external and ingress IPs: the valid Services' ClusterIPs, external IPs and the
/// node's address (so conflicts happen), IPv6, `None`, and no address at all.
#[rustfmt::skip]
pub(crate) const ADDRESSES: [Addr; 32] = [
    Addr::Is("10.96.0.1"), Addr::Is("10.96.0.2"), Addr::Is("10.96.1.1"), Addr::Is("10.96.1.2"),
    Addr::Is("192.0.2.1"), Addr::Is("198.51.100.1"), Addr::Is(NODE_IP), Addr::Is("10.96.0.1"),
    Addr::Is("10.96.1.1"), Addr::Is("10.96.0.2"), Addr::Is("192.0.2.2"), Addr::Is("10.96.1.3"),
    Addr::Is("10.96.0.1"), Addr::Is("10.96.1.2"), Addr::Is("192.0.2.1"), Addr::Is("10.96.0.3"),
    Addr::Is("None"), Addr::Is(""), Addr::Is("fd00::1"), Addr::Is("::ffff:10.96.0.1"),
    Addr::Is("10.96.0.256"), Addr::Is("010.096.000.001"), Addr::Is(" 10.96.0.1"),
    Addr::Is("0.0.0.0"), Addr::Is("255.255.255.255"), Addr::Is("127.0.0.1"),
    Addr::Is("10.96.0.1/32"), Addr::Is("1.2.3"), Addr::AnyIpv4, Addr::AnyIpv4, Addr::Unicode,
    Addr::Is("٣.٣.٣.٣"),
];
/// Endpoint addresses: pod addresses (colliding), the node's own, every range the API server
/// refuses (unspecified, loopback, link-local, link-local multicast), IPv6, not addresses.
#[rustfmt::skip]
pub(crate) const ENDPOINT_ADDRESSES: [Addr; 16] = [
    Addr::Is("10.244.0.1"), Addr::Is("10.244.0.2"), Addr::Is("10.244.1.1"), Addr::Is(NODE_IP),
    Addr::Is("10.244.0.1"), Addr::Is("10.244.0.3"), Addr::Is("0.0.0.0"), Addr::Is("127.0.0.1"),
    Addr::Is("169.254.169.254"), Addr::Is("224.0.0.251"), Addr::Is("255.255.255.255"),
    Addr::Is("fd00::5"), Addr::Is("10.244.0.01"), Addr::Is("10.244.0.1:80"), Addr::AnyIpv4,
    Addr::Unicode,
];
#[rustfmt::skip]
pub(crate) const SOURCE_RANGES: [Addr; 16] = [
    Addr::Is("203.0.113.0/24"), Addr::Is("0.0.0.0/0"), Addr::Is("172.18.0.0/16"),
    Addr::Is("203.0.113.0/24"), Addr::Is("fd00::/8"), Addr::Is("1.2.3.4/33"), Addr::Is("1.2.3.4"),
    Addr::Is(" 10.0.0.0/8 "), Addr::Is("010.0.0.0/8"), Addr::Is("10.0.0.0/+8"),
    Addr::Is("::/129"), Addr::Is(""), Addr::Is("10.0.0.0/08"), Addr::Is("1.2.3.4/-1"),
    Addr::Is("0.0.0.0/0"), Addr::Unicode,
];

#[rustfmt::skip]
pub(crate) const PROXY_LABELS: [Text; 8] = [
    Absent, Absent, Absent, Absent, Absent, Is("svc-lb"), Is("svc-lb"), Is(""),
];
#[rustfmt::skip]
pub(crate) const TYPES: [Text; 8] = [
    Absent, Is("ClusterIP"), Is("NodePort"), Is("LoadBalancer"), Is("NodePort"),
    Is("LoadBalancer"), Is("ExternalName"), Is("Bogus"),
];
#[rustfmt::skip]
pub(crate) const AFFINITIES: [Text; 8] = [
    Absent, Absent, Is("ClientIP"), Is("None"), Is("Sticky"), Absent, Is("ClientIP"), Absent,
];
#[rustfmt::skip]
pub(crate) const TIMEOUTS: [Num; 8] = [
    Num::Absent, Num::Is(60), Num::Is(0), Num::Is(86_401), Num::Any, Num::Absent, Num::Absent,
    Num::Is(86_400),
];
pub(crate) const POLICIES: [Text; 4] = [Absent, Is("Local"), Is("Cluster"), Is("Both")];
#[rustfmt::skip]
pub(crate) const INGRESS_MODES: [Text; 8] = [
    Absent, Absent, Is("VIP"), Is("Proxy"), Absent, Is("Teleport"), Absent, Is(""),
];

pub(crate) fn put(m: &mut Map<String, Value>, key: &str, value: Option<impl Into<Value>>) {
    if let Some(v) = value {
        m.insert(key.to_owned(), v.into());
    }
}

/// A list of 0-3 addresses from `pool`, absent one time in `1 << absent_bits`.
pub(crate) fn address_list<const N: usize>(
    b: &mut Bits,
    absent_bits: u32,
    pool: &[Addr; N],
) -> Option<Value> {
    if b.take(absent_bits) == 0 {
        return None;
    }
    let bits = N.trailing_zeros();
    let n = b.take(2).min(3);
    Some(
        (0..n)
            .map(|_| b.pick(bits, pool).decode(b))
            .collect::<Vec<_>>()
            .into(),
    )
}

pub(crate) fn service_port(seed: u64) -> Value {
    let b = &mut Bits::new(seed);
    let mut m = Map::new();
    put(&mut m, "name", b.pick(4, &PORT_NAMES).decode(b));
    put(&mut m, "port", b.pick(4, &PORTS).decode(b).or(Some(80)));
    put(&mut m, "protocol", b.pick(3, &PROTOCOLS).decode(b));
    put(&mut m, "nodePort", b.pick(3, &NODE_PORTS).decode(b));
    Value::Object(m)
}

/// An arbitrary Service: `meta` and `spec` seeds decode its metadata and scalar fields, `lists`
/// its address lists; `ports` its ports (up to 49 in target 1, with duplicates).
pub(crate) fn service(meta: u64, spec_seed: u64, lists: u64, ports: &[u64]) -> Manifest {
    let b = &mut Bits::new(meta);
    let name = b.pick(4, &NAMES).decode(b);
    let ns = b.pick(3, &NAMESPACES).decode(b);
    let proxy = b.pick(3, &PROXY_LABELS).decode(b);
    let no_spec = b.take(5) == 31;
    let mut labels = Map::new();
    put(&mut labels, LABEL_SERVICE_PROXY_NAME, proxy);
    let mut m = Map::new();
    m.insert(
        "metadata".into(),
        json!({"name": name, "namespace": ns, "labels": labels}),
    );

    let b = &mut Bits::new(spec_seed);
    let mut spec = Map::new();
    put(&mut spec, "type", b.pick(3, &TYPES).decode(b));
    if b.take(3) != 0 {
        spec.insert("clusterIP".into(), b.pick(5, &ADDRESSES).decode(b).into());
    }
    put(
        &mut spec,
        "sessionAffinity",
        b.pick(3, &AFFINITIES).decode(b),
    );
    put(
        &mut spec,
        "sessionAffinityConfig",
        b.pick(3, &TIMEOUTS)
            .decode(b)
            .map(|t| json!({"clientIP": {"timeoutSeconds": t}})),
    );
    put(
        &mut spec,
        "externalTrafficPolicy",
        b.pick(2, &POLICIES).decode(b),
    );
    put(
        &mut spec,
        "internalTrafficPolicy",
        b.pick(2, &POLICIES).decode(b),
    );
    put(
        &mut spec,
        "healthCheckNodePort",
        b.pick(3, &NODE_PORTS).decode(b),
    );
    if b.take(4) != 0 {
        spec.insert(
            "ports".into(),
            ports
                .iter()
                .map(|&p| service_port(p))
                .collect::<Vec<_>>()
                .into(),
        );
    }

    let b = &mut Bits::new(lists);
    put(
        &mut spec,
        "clusterIPs",
        address_list(b, 2, &ADDRESSES).filter(|_| b.take(1) == 0),
    );
    put(&mut spec, "externalIPs", address_list(b, 1, &ADDRESSES));
    put(
        &mut spec,
        "loadBalancerSourceRanges",
        address_list(b, 2, &SOURCE_RANGES),
    );
    if b.take(2) != 0 {
        let n = b.take(2).min(3);
        let ingress: Vec<Value> = (0..n)
            .map(|_| {
                let mut i = Map::new();
                if b.take(3) != 0 {
                    i.insert("ip".into(), b.pick(5, &ADDRESSES).decode(b).into());
                }
                put(&mut i, "ipMode", b.pick(3, &INGRESS_MODES).decode(b));
                Value::Object(i)
            })
            .collect();
        m.insert(
            "status".into(),
            json!({"loadBalancer": {"ingress": ingress}}),
        );
    }
    if !no_spec {
        m.insert("spec".into(), Value::Object(spec));
    }
    Manifest(Value::Object(m))
}

pub(crate) fn endpoint(seed: u64) -> Value {
    let b = &mut Bits::new(seed);
    let count = [1, 1, 1, 1, 1, 1, 0, 2][b.take(3)];
    let addresses: Vec<String> = (0..count)
        .map(|_| b.pick(4, &ENDPOINT_ADDRESSES).decode(b))
        .collect();
    let mut m = Map::new();
    m.insert("addresses".into(), addresses.into());
    if b.take(1) == 1 {
        let mut cond = || [None, Some(true), Some(false), None][b.take(2)];
        m.insert(
            "conditions".into(),
            json!({"ready": cond(), "serving": cond(), "terminating": cond()}),
        );
    }
    put(
        &mut m,
        "nodeName",
        b.pick(2, &[Absent, Is("node-a"), Is("node-b"), Is("")])
            .decode(b),
    );
    if b.take(2) == 3 {
        let zones = [
            json!([]),
            json!([{"name": "zone-a"}]),
            json!([{"name": "zone-b"}]),
            json!([{"name": ""}]),
        ];
        let nodes = [
            json!([]),
            json!([{"name": "node-a"}]),
            json!([{"name": "node-b"}]),
            json!([{"name": "node-a"}, {"name": "node-b"}]),
        ];
        m.insert(
            "hints".into(),
            json!({"forZones": zones[b.take(2)], "forNodes": nodes[b.take(2)]}),
        );
    }
    Value::Object(m)
}

pub(crate) fn slice_port(seed: u64) -> Value {
    let b = &mut Bits::new(seed);
    let mut m = Map::new();
    put(&mut m, "name", b.pick(4, &PORT_NAMES).decode(b));
    put(&mut m, "port", b.pick(3, &SLICE_PORTS).decode(b));
    put(&mut m, "protocol", b.pick(3, &PROTOCOLS).decode(b));
    Value::Object(m)
}

/// An arbitrary EndpointSlice; its service-name label (if any) is drawn from the same pool as
/// Service names.
pub(crate) fn slice(meta: u64, ports: &[u64], endpoints: &[u64]) -> Manifest {
    let b = &mut Bits::new(meta);
    let name = b.pick(4, &NAMES).decode(b);
    let ns = b.pick(3, &NAMESPACES).decode(b);
    let service = if b.take(4) == 15 {
        None
    } else {
        b.pick(4, &NAMES).decode(b)
    };
    let headless = (b.take(5) == 31).then_some("");
    let family = [
        "IPv4", "IPv4", "IPv4", "IPv4", "IPv4", "IPv6", "FQDN", "ipv4",
    ][b.take(3)];
    let mut labels = Map::new();
    put(&mut labels, LABEL_SERVICE_NAME, service);
    put(&mut labels, LABEL_HEADLESS, headless);
    let mut m = Map::new();
    m.insert(
        "metadata".into(),
        json!({"name": name, "namespace": ns, "labels": labels}),
    );
    m.insert("addressType".into(), family.into());
    if b.take(3) != 7 {
        m.insert(
            "ports".into(),
            ports
                .iter()
                .map(|&p| slice_port(p))
                .collect::<Vec<_>>()
                .into(),
        );
    }
    m.insert(
        "endpoints".into(),
        endpoints
            .iter()
            .map(|&e| endpoint(e))
            .collect::<Vec<_>>()
            .into(),
    );
    Manifest(Value::Object(m))
}

pub(crate) fn seeds(max: usize) -> prop::collection::VecStrategy<prop::num::u64::Any> {
    prop::collection::vec(any::<u64>(), 0..max)
}

/// An arbitrary Service with up to `max_ports - 1` ports.
pub(crate) fn hostile_service(max_ports: usize) -> BoxedStrategy<Manifest> {
    (any::<u64>(), any::<u64>(), any::<u64>(), seeds(max_ports))
        .prop_map(|(meta, spec, lists, ports)| service(meta, spec, lists, &ports))
        .boxed()
}

/// An arbitrary EndpointSlice with up to `max_endpoints - 1` endpoints and 5 ports.
pub(crate) fn hostile_slice(max_endpoints: usize) -> BoxedStrategy<Manifest> {
    (any::<u64>(), seeds(6), seeds(max_endpoints))
        .prop_map(|(meta, ports, endpoints)| slice(meta, &ports, &endpoints))
        .boxed()
}

/// Sets a slice's namespace and service-name label, so it belongs to `owner`.
pub(crate) fn label_for(slice: &mut Manifest, owner: &ObjectRef) {
    let meta = &mut slice.0["metadata"];
    meta["namespace"] = owner.namespace.clone().into();
    meta["labels"][LABEL_SERVICE_NAME] = owner.name.clone().into();
}

/// The node: plain; with a zone and localhost NodePorts; with `--external-ip-cidrs`; or with a
/// `--service-proxy-name`.
pub(crate) fn node_context() -> BoxedStrategy<NodeContext> {
    (0..4u8)
        .prop_map(|n| {
            let mut node = base_node();
            match n {
                1 => {
                    node.zone = Some("zone-a".into());
                    node.nodeport_addresses = vec![
                        "127.0.0.0/8".parse().expect("cidr"),
                        "172.18.0.0/16".parse().expect("cidr"),
                    ];
                }
                2 => node.external_ip_cidrs = Some(vec!["192.0.2.0/24".parse().expect("cidr")]),
                3 => node.service_proxy_name = Some("svc-lb".into()),
                _ => {}
            }
            node
        })
        .boxed()
}

pub(crate) fn base_node() -> NodeContext {
    NodeContext {
        node_name: "node-a".into(),
        node_ips: vec![NODE_IP.parse().expect("node IP")],
        ..Default::default()
    }
}

/// Valid Services `default/m0`…: distinct ClusterIPs 10.96.1.(i+1), distinct ports with
/// distinct names `p<j>` and nodePorts 30000 + 10 i + j, external IP 192.0.2.(i+1), ingress
/// 198.51.100.(i+1); one slice `m<i>-0` of ready, unhinted endpoints 10.244.(100+i).(k+1).
/// `desired()` finds no problem in them (checked).
pub(crate) fn valid_services(max: usize) -> BoxedStrategy<Vec<(Manifest, Manifest)>> {
    let one = (
        0..3usize,
        prop::collection::vec((0..4usize, any::<bool>()), 1..5),
        any::<bool>(),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        prop::collection::vec(any::<bool>(), 0..5),
    );
    prop::collection::vec(one, 1..=max)
        .prop_map(|all| {
            all.into_iter()
                .enumerate()
                .map(|(i, (ty, ports, ext, (etp, itp, affinity, ranges), eps))| {
                    valid_service(i, ty, ports, ext, etp, itp, affinity, ranges, &eps)
                })
                .collect()
        })
        .boxed()
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn valid_service(
    i: usize,
    ty: usize,
    ports: Vec<(usize, bool)>,
    ext: bool,
    etp: bool,
    itp: bool,
    affinity: bool,
    ranges: bool,
    endpoints: &[bool],
) -> (Manifest, Manifest) {
    let ty = ["ClusterIP", "NodePort", "LoadBalancer"][ty];
    let mut seen = BTreeSet::new();
    let ports: Vec<(usize, u16, &str)> = ports
        .into_iter()
        .filter(|p| seen.insert(*p))
        .enumerate()
        .map(|(j, (p, udp))| (j, [80, 443, 53, 8080][p], if udp { "UDP" } else { "TCP" }))
        .collect();
    let svc_ports: Vec<Value> = ports
        .iter()
        .map(|&(j, port, proto)| {
            let mut m = json!({"name": format!("p{j}"), "port": port, "protocol": proto});
            if ty != "ClusterIP" {
                m["nodePort"] = (30_000 + 10 * i + j).into();
            }
            m
        })
        .collect();
    let mut spec = json!({
        "type": ty,
        "clusterIP": format!("10.96.1.{}", i + 1),
        "clusterIPs": [format!("10.96.1.{}", i + 1)],
        "ports": svc_ports,
        "externalTrafficPolicy": if etp { "Local" } else { "Cluster" },
        "internalTrafficPolicy": if itp { "Local" } else { "Cluster" },
    });
    if ext {
        spec["externalIPs"] = json!([format!("192.0.2.{}", i + 1)]);
    }
    if affinity {
        spec["sessionAffinity"] = "ClientIP".into();
        spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 60}});
    }
    if ranges {
        spec["loadBalancerSourceRanges"] = json!(["203.0.113.0/24"]);
    }
    let mut svc = json!({
        "metadata": {"namespace": "default", "name": format!("m{i}")},
        "spec": spec,
    });
    if ty == "LoadBalancer" {
        svc["status"] =
            json!({"loadBalancer": {"ingress": [{"ip": format!("198.51.100.{}", i + 1)}]}});
    }
    let slice_ports: Vec<Value> = ports
        .iter()
        .map(|&(j, _, proto)| json!({"name": format!("p{j}"), "port": 8080 + j, "protocol": proto}))
        .collect();
    let eps: Vec<Value> = endpoints
        .iter()
        .enumerate()
        .map(|(k, local)| {
            json!({
                "addresses": [format!("10.244.{}.{}", 100 + i, k + 1)],
                "conditions": {"ready": true},
                "nodeName": if *local { "node-a" } else { "node-b" },
            })
        })
        .collect();
    let slice = json!({
        "metadata": {"namespace": "default", "name": format!("m{i}-0"),
                     "labels": {LABEL_SERVICE_NAME: format!("m{i}")}},
        "addressType": "IPv4",
        "ports": slice_ports,
        "endpoints": eps,
    });
    (Manifest(svc), Manifest(slice))
}
