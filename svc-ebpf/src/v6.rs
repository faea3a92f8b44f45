//! The load-balancing decisions (`lb`, `ct`, `frag`, and the socket hooks' `sock`) for IPv6.
//! The same source files are compiled in `v4` with `A = [u8; 4]`: each family's copy is
//! concrete code.
//! See `v4` for why the decisions are compiled once per family instead of being generic.
/// The address type of this instance.
pub(crate) type A = svc_common::Addr6;
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
