//! The load-balancing decisions (`lb`, `ct`, `frag`, and the socket hooks' `sock`) for IPv4.
//! The same source files are compiled again in `v6` with `A = [u8; 16]`: each family's copy is
//! concrete code.
//!
//! Why not generic functions (`fn decide<A: Family>`): instantiated from generic code, the IPv4
//! decisions verified ~20 % more instructions (svc_pod_ingress 736k → 883k of the verifier's
//! 1M) for the same logic. Rust's MIR inliner runs on concrete functions only, so generic
//! bodies reached LLVM with their small helpers not yet inlined, and LLVM's different inlining
//! order produced more register spills, which the verifier walks on every path. Compiled as a
//! module with a concrete `A`, the IPv4 code is what it was before IPv6 existed (measured:
//! within 0.2 % of the old budget), and everything the two families share is still written
//! once.
/// The address type of this instance.
pub(crate) type A = [u8; 4];
#[path = "ct.rs"]
pub(crate) mod ct;
#[path = "frag.rs"]
pub(crate) mod frag;
#[path = "lb.rs"]
pub(crate) mod lb;
#[path = "socklb.rs"]
pub(crate) mod sock;
#[path = "trace.rs"]
pub(crate) mod trace;
