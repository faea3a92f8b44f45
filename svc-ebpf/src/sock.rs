//! cgroup socket hooks: Services for processes on the node itself (host network namespace).
//!
//! Instead of translating packets, `connect4`/`sendmsg4` rewrite the destination a socket asks
//! for, before any packet exists; `recvmsg4` and `getpeername4` show the application the
//! frontend again. This is how localhost NodePorts (`--nodeport-addresses 127.0.0.0/8`) work
//! without `route_localnet=1` (CVE-2020-8558): 127.0.0.1:nodePort is rewritten to a backend in
//! the socket call, so no packet with a loopback address ever leaves the loopback device. The
//! same hooks give host-network processes (the kubelet, hostNetwork pods) every ClusterIP.
//!
//! Cgroup hooks are not per network namespace: every process of the cgroup runs them. Only
//! sockets of this node's namespace are translated (`Config::netns_cookie`), so pods, which have
//! their own namespaces (and their own 127.0.0.1), are never affected here; their traffic is
//! translated per packet on their veth.
use aya_ebpf::{
    helpers::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
        bpf_set_retval,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext,
};
use svc_common::{
    FrontendKey, Hook, Reason, SockKey, SockRevNat, FRONTEND_F_DENY_NODE,
    FRONTEND_F_DROP_NO_BACKEND, PROTO_UDP, SCOPE_ANY,
};

use crate::{
    lb::pick_backend,
    maps::{SVC_CONFIG, SVC_FRONTENDS, SVC_SOCK_REV},
    stats::count,
};

/// Let the call proceed.
const ALLOW: i32 = 1;
/// Fail the call; the error is set with `bpf_set_retval`.
const DENY: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub(crate) fn svc_sock_connect4(ctx: SockAddrContext) -> i32 {
    translate(&ctx, None)
}

#[cgroup_sock_addr(sendmsg4)]
pub(crate) fn svc_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate(&ctx, Some(PROTO_UDP))
}

#[cgroup_sock_addr(recvmsg4)]
pub(crate) fn svc_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore(&ctx, Some(PROTO_UDP))
}

#[cgroup_sock_addr(getpeername4)]
pub(crate) fn svc_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    restore(&ctx, None)
}

/// The client address session affinity keys on for a node process: the node's own address,
/// which every socket of the node would have as a packet's source.
#[inline(always)]
fn node_client() -> [u8; 4] {
    SVC_CONFIG.get(0).map(|c| c.node_addr).unwrap_or_default()
}

/// The address of the call: the destination (connect, sendmsg) or the peer (recvmsg,
/// getpeername). `user_ip4` is network order; `user_port` holds a network-order port in its
/// low 16 bits.
#[inline(always)]
fn destination(ctx: &SockAddrContext) -> ([u8; 4], u16) {
    // SAFETY: reading fields of the program's own context.
    unsafe {
        let sa = ctx.sock_addr;
        (
            (*sa).user_ip4.to_ne_bytes(),
            u16::from_be((*sa).user_port as u16),
        )
    }
}

/// Replaces the address of the call (see [`destination`]).
#[inline(always)]
fn set_destination(ctx: &SockAddrContext, addr: [u8; 4], port: u16) {
    // SAFETY: writing fields of the program's own context, which these hooks may rewrite.
    unsafe {
        let sa = ctx.sock_addr;
        (*sa).user_ip4 = u32::from_ne_bytes(addr);
        (*sa).user_port = port.to_be() as u32;
    }
}

/// Whether the socket belongs to this node's network namespace.
#[inline(always)]
fn ours(ctx: &SockAddrContext) -> bool {
    let Some(config) = SVC_CONFIG.get(0) else {
        return false;
    };
    // SAFETY: plain helper call on the program's own context.
    config.netns_cookie != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == config.netns_cookie
}

#[inline(always)]
fn protocol(ctx: &SockAddrContext, known: Option<u8>) -> u8 {
    match known {
        Some(p) => p,
        // SAFETY: reading a field of the program's own context.
        None => (unsafe { (*ctx.sock_addr).protocol }) as u8,
    }
}

#[inline(always)]
fn translate(ctx: &SockAddrContext, known_proto: Option<u8>) -> i32 {
    if !ours(ctx) {
        return ALLOW;
    }
    let (addr, port) = destination(ctx);
    let proto = protocol(ctx, known_proto);
    let key = FrontendKey {
        addr,
        port,
        proto,
        scope: SCOPE_ANY,
    };
    // SAFETY: value copied out.
    let Some(fe) = (unsafe { SVC_FRONTENDS.get(&key) }).copied() else {
        return ALLOW;
    };
    if fe.backend_count == 0 {
        if fe.flags & FRONTEND_F_DROP_NO_BACKEND == 0 {
            // As kube-proxy's REJECT would answer: the connection is refused.
            // SAFETY: plain helper call.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
        }
        count(Hook::Sock, Reason::NoBackend);
        return DENY;
    }
    // `loadBalancerSourceRanges` that contain no node address: kube-proxy's filter-output
    // `firewall-check` drops the node's packets (after its endpoint check, as here). A socket
    // call has no source address yet, so the agent decided it (`FRONTEND_F_DENY_NODE`). The
    // call fails with EPERM, which is what a UDP sendmsg() gets from netfilter's drop too; a
    // TCP connect() would retry its SYN until it timed out instead of failing at once.
    if fe.flags & FRONTEND_F_DENY_NODE != 0 {
        count(Hook::Sock, Reason::SourceRangeDenied);
        return DENY;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // Random, not a tuple hash: the socket has no source port yet, so a hash would send every
    // connection of this node to one backend.
    // SAFETY: helper without arguments.
    let choice = unsafe { bpf_get_prandom_u32() };
    let Some((_, backend, _)) = pick_backend(&fe, node_client(), now, choice) else {
        count(Hook::Sock, Reason::BackendMissing);
        return ALLOW;
    };
    set_destination(ctx, backend.addr, backend.port);
    let rev = SockKey {
        // SAFETY: plain helper call on the program's own context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        backend_addr: backend.addr,
        backend_port: backend.port,
        proto,
        _pad: 0,
    };
    let _ = SVC_SOCK_REV.insert(
        &rev,
        &SockRevNat {
            addr,
            port,
            _pad: 0,
        },
        0,
    );
    count(Hook::Sock, Reason::SockTranslated);
    ALLOW
}

#[inline(always)]
fn restore(ctx: &SockAddrContext, known_proto: Option<u8>) -> i32 {
    if !ours(ctx) {
        return ALLOW;
    }
    let (addr, port) = destination(ctx);
    let key = SockKey {
        // SAFETY: plain helper call on the program's own context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        backend_addr: addr,
        backend_port: port,
        proto: protocol(ctx, known_proto),
        _pad: 0,
    };
    // SAFETY: value copied out.
    if let Some(fe) = unsafe { SVC_SOCK_REV.get(&key) }.copied() {
        set_destination(ctx, fe.addr, fe.port);
        count(Hook::Sock, Reason::SockRevNat);
    }
    ALLOW
}
