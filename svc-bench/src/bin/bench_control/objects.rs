//! The objects the benchmark writes: Service and EndpointSlice names, ClusterIPs, endpoint
//! addresses and their JSON objects, the frontend key each must become, and the fixed random
//! sequence that picks which to change.

use super::*;

pub(crate) fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

pub(crate) fn slice_name(i: usize) -> String {
    format!("svc-{i:05}-bench")
}

/// ClusterIP of Service `i`: 10.96.1.1 onwards, 250 per /24, set explicitly so both sources
/// (API server, manifests) give the same frontends.
pub(crate) fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (1 + i / 250) as u8, (1 + i % 250) as u8)
}

pub(crate) fn frontend_key(i: usize) -> FrontendKey {
    FrontendKey {
        addr: cluster_ip(i).octets(),
        port: SERVICE_PORT,
        proto: PROTO_TCP,
        scope: SCOPE_ANY,
    }
}

/// Endpoint `j` of Service `i`: distinct for every pair (10.128.0.0/9), so each endpoint is its
/// own backend entry, as pod addresses are.
pub(crate) fn endpoint_ip(i: usize, j: usize) -> Ipv4Addr {
    let k = (i * ENDPOINT_SLOTS + j) as u32;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + k)
}

pub(crate) fn service(i: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name(i), "namespace": NAMESPACE},
        "spec": {
            "clusterIP": cluster_ip(i).to_string(),
            "selector": {"app": service_name(i)},
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": TARGET_PORT, "protocol": "TCP"}],
        },
    })
}

pub(crate) fn slice(i: usize, endpoints: &BTreeSet<usize>) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(i),
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": service_name(i)},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|&j| json!({
            "addresses": [endpoint_ip(i, j).to_string()],
            "conditions": {"ready": true},
            "nodeName": "node1",
        })).collect::<Vec<_>>(),
    })
}

/// splitmix64: a fixed, dependency-free sequence.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
