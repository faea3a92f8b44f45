//! The fuzzed Service set: [`install_services`] writes several Services (with and without
//! backends, an LB IP with source ranges, an `externalTrafficPolicy: Local` NodePort, an
//! external IP behind a narrow path, a hairpin Service) and returns the [`ServiceSet`] the
//! generator and the oracle read.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddrV4},
};

use svc_common::{
    Frontend, FrontendKey, BACKEND_F_LOCAL, FRONTEND_F_DROP_NO_BACKEND, FRONTEND_F_EXTERNAL_IP,
    FRONTEND_F_EXTERNAL_SCOPE, FRONTEND_F_NODEPORT, FRONTEND_F_SOURCE_RANGES, PROTO_TCP, PROTO_UDP,
    SCOPE_ANY, SCOPE_EXTERNAL,
};

use crate::fixtures::*;

/// ClusterIP of a Service with two backends (TCP 80, UDP 53).
pub const FZ_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// ClusterIP of a Service without endpoints (rejects).
pub const FZ_EMPTY_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// ClusterIP whose only backend is [`CLIENT_POD`] itself (hairpin).
pub const FZ_HAIRPIN_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
/// ClusterIP with session affinity.
pub const FZ_AFFINITY_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
/// LoadBalancer ingress IP with `loadBalancerSourceRanges`.
pub const FZ_LB_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// An `externalIP` whose backends sit behind a narrow path or an unresolved next hop.
pub const FZ_EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);

/// One frontend of the set.
#[derive(Clone, Copy, Debug)]
pub struct FrontendDesc {
    pub addr: SocketAddrV4,
    pub proto: u8,
}

/// What the generator knows about the maps it wrote: the frontends, and every address that
/// can appear in a frontend, backend or conntrack key (frontends, backends, the node).
#[derive(Clone, Debug)]
pub struct ServiceSet {
    pub frontends: Vec<FrontendDesc>,
    pub related: HashSet<[u8; 4]>,
}

pub(super) fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// (frontend address, proto, scope, id, `FRONTEND_F_*` flags, affinity timeout, backend ids).
type FrontendRow = (SocketAddrV4, u8, u8, u32, u32, u32, Vec<u32>);

/// Writes the Service set (backends, slots, source ranges, frontends last, as the agent does)
/// and returns what the generator and the oracle know about it.
pub fn install_services(dp: &mut Datapath) -> ServiceSet {
    let hairpin_backend = sa(*CLIENT_POD.ip(), 8080);
    // (id, address, proto, flags)
    let backends = [
        (1, BACKEND_A, PROTO_TCP, BACKEND_F_LOCAL),
        (2, BACKEND_B, PROTO_TCP, 0),
        (3, BACKEND_NARROW, PROTO_TCP, 0),
        (4, BACKEND_UNRESOLVED, PROTO_TCP, 0),
        (5, hairpin_backend, PROTO_TCP, BACKEND_F_LOCAL),
        (11, sa(*BACKEND_A.ip(), 5353), PROTO_UDP, BACKEND_F_LOCAL),
        (12, sa(*BACKEND_B.ip(), 5353), PROTO_UDP, 0),
    ];
    for (id, addr, proto, flags) in backends {
        dp.put_backend_flags(id, addr, proto, flags).unwrap();
    }
    let nodeport = NODEPORT.port();
    let frontends: Vec<FrontendRow> = vec![
        (
            sa(FZ_CLUSTER_IP, 80),
            PROTO_TCP,
            SCOPE_ANY,
            1,
            0,
            0,
            vec![1, 2],
        ),
        (
            sa(FZ_CLUSTER_IP, 53),
            PROTO_UDP,
            SCOPE_ANY,
            2,
            0,
            0,
            vec![11, 12],
        ),
        (sa(FZ_EMPTY_IP, 80), PROTO_TCP, SCOPE_ANY, 3, 0, 0, vec![]),
        (sa(FZ_EMPTY_IP, 53), PROTO_UDP, SCOPE_ANY, 4, 0, 0, vec![]),
        (
            sa(FZ_LB_IP, 80),
            PROTO_TCP,
            SCOPE_ANY,
            5,
            FRONTEND_F_EXTERNAL_IP | FRONTEND_F_SOURCE_RANGES,
            0,
            vec![1, 2],
        ),
        (
            sa(FZ_HAIRPIN_IP, 80),
            PROTO_TCP,
            SCOPE_ANY,
            6,
            0,
            0,
            vec![5],
        ),
        // NodePort, externalTrafficPolicy Local: the external scope holds the local endpoint.
        (
            sa(NODE_IP, nodeport),
            PROTO_TCP,
            SCOPE_EXTERNAL,
            8,
            FRONTEND_F_NODEPORT,
            0,
            vec![1],
        ),
        (
            sa(NODE_IP, nodeport),
            PROTO_TCP,
            SCOPE_ANY,
            7,
            FRONTEND_F_NODEPORT | FRONTEND_F_EXTERNAL_SCOPE,
            0,
            vec![1, 2],
        ),
        (
            sa(NODE_IP, nodeport),
            PROTO_UDP,
            SCOPE_ANY,
            10,
            FRONTEND_F_NODEPORT,
            0,
            vec![11, 12],
        ),
        (
            sa(FZ_EXTERNAL_IP, 443),
            PROTO_TCP,
            SCOPE_ANY,
            9,
            FRONTEND_F_EXTERNAL_IP,
            0,
            vec![3, 4, 2],
        ),
        // NodePort, policy Local, no local endpoint: external clients are dropped.
        (
            sa(NODE_IP, nodeport + 1),
            PROTO_TCP,
            SCOPE_EXTERNAL,
            14,
            FRONTEND_F_NODEPORT | FRONTEND_F_DROP_NO_BACKEND,
            0,
            vec![],
        ),
        (
            sa(NODE_IP, nodeport + 1),
            PROTO_TCP,
            SCOPE_ANY,
            13,
            FRONTEND_F_NODEPORT | FRONTEND_F_EXTERNAL_SCOPE,
            0,
            vec![2],
        ),
        (
            sa(FZ_AFFINITY_IP, 80),
            PROTO_TCP,
            SCOPE_ANY,
            15,
            0,
            10_800,
            vec![1, 2],
        ),
    ];
    let mut set = ServiceSet {
        frontends: Vec::new(),
        related: HashSet::new(),
    };
    for (_, addr, _, _) in backends {
        set.related.insert(addr.ip().octets());
    }
    set.related.insert(NODE_IP.octets());
    for (addr, proto, scope, id, flags, affinity, bids) in frontends {
        for (i, bid) in bids.iter().enumerate() {
            dp.put_slot(id, i as u32 + 1, *bid).unwrap();
        }
        if flags & FRONTEND_F_SOURCE_RANGES != 0 {
            // External clients on the underlay and the first pods of this node; FAR_CLIENT's
            // network (198.51.100.0/24) is outside.
            dp.put_source_range(id, Ipv4Addr::new(172, 18, 0, 0), 24)
                .unwrap();
            dp.put_source_range(id, Ipv4Addr::new(10, 244, 1, 0), 30)
                .unwrap();
        }
        dp.put_frontend_entry(
            FrontendKey {
                addr: addr.ip().octets(),
                port: addr.port(),
                proto,
                scope,
            },
            Frontend {
                id,
                backend_count: bids.len() as u32,
                flags,
                affinity_timeout_s: affinity,
            },
        )
        .unwrap();
        set.related.insert(addr.ip().octets());
        if scope == SCOPE_ANY {
            set.frontends.push(FrontendDesc { addr, proto });
        }
    }
    set
}
