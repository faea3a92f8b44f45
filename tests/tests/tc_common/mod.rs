//! What the `fixtures_tc*` test binaries share: a private datapath per test, the one-backend
//! Service, the client's SYN and its source ports.
// Each binary uses a part of these.
#![allow(dead_code)]

use std::net::SocketAddrV4;

use svc_common::{PROTO_TCP, PROTO_UDP};
use svc_testkit::fixtures::*;

/// The datapath for one test; panics when not root. A missing object fails first, so an
/// unbuilt tree can never look green.
pub(crate) fn datapath() -> Datapath {
    if let Err(e) = read_object() {
        panic!("{e:#}");
    }
    require_root();
    Datapath::load().unwrap_or_else(|e| panic!("{e:#}"))
}

/// [`SVC_VIP`] over TCP and UDP, each balancing across [`BACKEND_A`] only.
pub(crate) fn one_backend(dp: &mut Datapath) {
    dp.add_service(SVC_VIP, PROTO_TCP, SVC_ID, &[(BACKEND_A_ID, BACKEND_A)])
        .unwrap();
    // UDP gets its own frontend and backend ids (a backend is an address, port and protocol).
    dp.add_service(
        SVC_VIP,
        PROTO_UDP,
        SVC_ID + 1,
        &[(BACKEND_A_ID + 10, BACKEND_A)],
    )
    .unwrap();
}

pub(crate) fn syn() -> Pkt {
    Pkt::tcp(CLIENT_POD, SVC_VIP, TCP_SYN)
}

pub(crate) fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(*CLIENT_POD.ip(), port)
}
