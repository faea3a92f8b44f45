//! What every target checks of the model's output: well-formed, bounded, problems named.
use super::*;

// ---------------------------------------------------------------------------------------------
// Checks.

/// Whether the API server would refuse `addr` as an endpoint (what no backend may be).
pub(crate) fn refused(addr: [u8; 4]) -> bool {
    let ip = Ipv4Addr::from(addr);
    ip.is_unspecified() || ip.is_loopback() || ip.is_link_local() || addr[..3] == [224, 0, 0]
}

pub(crate) fn len_of(v: Option<&Value>) -> usize {
    v.and_then(Value::as_array).map_or(0, Vec::len)
}

/// What `desired()` may produce at most for `objects` on `node`: (frontends, problems).
/// Frontends: two (both scopes) per port and address; problems: a few per field given.
pub(crate) fn bounds(
    services: &[Manifest],
    slices: &[Manifest],
    node: &NodeContext,
) -> (usize, usize) {
    let (mut frontends, mut problems) = (0, 0);
    let node_ports = node.nodeport_ips().len();
    for s in services {
        let spec = &s.0["spec"];
        let ingress = len_of(s.0.pointer("/status/loadBalancer/ingress"));
        let addrs = 1
            + len_of(spec.get("clusterIPs"))
            + node_ports
            + len_of(spec.get("externalIPs"))
            + ingress;
        let ports = len_of(spec.get("ports"));
        frontends += 2 * ports * addrs;
        problems += 8 + ports * (5 + addrs) + addrs + len_of(spec.get("loadBalancerSourceRanges"));
    }
    for s in slices {
        problems += len_of(s.0.get("ports")) + len_of(s.0.get("endpoints"));
    }
    (frontends, problems)
}

/// Everything target 1 asserts about one `desired()` result.
pub(crate) fn check_desired(objects: &Objects, d: &Desired) -> Result<(), TestCaseError> {
    let services: BTreeSet<String> = objects
        .services
        .keys()
        .map(|r| format!("Service {r}"))
        .collect();
    let slices: BTreeSet<String> = objects
        .slices
        .keys()
        .map(|r| format!("EndpointSlice {r}"))
        .collect();
    for p in &d.problems {
        prop_assert!(!p.field.is_empty(), "problem without a field: {p:?}");
        prop_assert!(!p.message.is_empty(), "problem without a message: {p:?}");
        if services.contains(&p.object) {
            prop_assert!(
                p.field.starts_with("spec") || p.field.starts_with("status"),
                "Service field {:?} is no field of a Service: {p:?}",
                p.field
            );
        } else if slices.contains(&p.object) {
            prop_assert!(
                p.field.starts_with("ports[") || p.field.starts_with("endpoints["),
                "EndpointSlice field {:?} is no field of a slice: {p:?}",
                p.field
            );
        } else {
            prop_assert!(false, "problem names no object given: {p:?}");
        }
    }
    for (key, fe) in &d.frontends {
        prop_assert!(
            objects.services.contains_key(&fe.service),
            "{key:?}: {fe:?}"
        );
        prop_assert!(
            key.port != 0 && [PROTO_TCP, PROTO_UDP].contains(&key.proto),
            "{key:?}"
        );
        prop_assert!(
            key.scope == SCOPE_ANY || key.scope == SCOPE_EXTERNAL,
            "{key:?}"
        );
        prop_assert!(
            fe.backends.windows(2).all(|w| w[0] < w[1]),
            "{key:?}: backends not sorted and distinct: {:?}",
            fe.backends
        );
        prop_assert!(fe.backends.len() <= MAX_BACKENDS_PER_FRONTEND as usize);
        for b in &fe.backends {
            prop_assert!(!refused(b.addr), "{key:?}: refused address {b:?}");
            prop_assert!(b.port != 0 && b.proto == key.proto, "{key:?}: {b:?}");
            prop_assert!(
                b.flags & !(BACKEND_F_LOCAL | BACKEND_F_TERMINATING) == 0,
                "{b:?}"
            );
        }
        prop_assert_eq!(
            fe.flags & FRONTEND_F_SOURCE_RANGES != 0,
            !fe.source_ranges.is_empty(),
            "{:?}: {:?}",
            key,
            fe
        );
        prop_assert!(fe.source_ranges.windows(2).all(|w| w[0] < w[1]));
        prop_assert!(fe.affinity_timeout_s <= MAX_AFFINITY_TIMEOUT_S);
        let any = FrontendKey {
            scope: SCOPE_ANY,
            ..*key
        };
        let scoped = FrontendKey {
            scope: SCOPE_EXTERNAL,
            ..*key
        };
        if key.scope == SCOPE_ANY && fe.flags & FRONTEND_F_EXTERNAL_SCOPE != 0 {
            let sibling = d.frontends.get(&scoped);
            prop_assert!(
                sibling.is_some_and(|s| s.service == fe.service),
                "{key:?} says it has a scoped entry: {sibling:?}"
            );
        }
        if key.scope == SCOPE_EXTERNAL {
            let sibling = d.frontends.get(&any);
            prop_assert!(
                sibling.is_some_and(
                    |s| s.service == fe.service && s.flags & FRONTEND_F_EXTERNAL_SCOPE != 0
                ),
                "{key:?} is a scoped entry without its SCOPE_ANY one: {sibling:?}"
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
