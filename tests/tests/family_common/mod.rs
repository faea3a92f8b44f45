//! What the network test binaries that run one body per address family share.

/// Two `#[test]`s running `body(Family)`, named `body::ipv4` (the scene as it always was) and
/// `body::ipv6` (the dual-stack topology, clients talking IPv6). Both need root.
macro_rules! per_family {
    ($body:ident) => {
        mod $body {
            #[test]
            #[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
            fn ipv4() {
                svc_testkit::topology::require_root();
                super::$body(svc_testkit::topology::Family::V4)
            }

            #[test]
            #[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
            fn ipv6() {
                svc_testkit::topology::require_root();
                super::$body(svc_testkit::topology::Family::V6)
            }
        }
    };
}
