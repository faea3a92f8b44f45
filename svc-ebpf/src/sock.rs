//! cgroup socket hooks: socket-level load balancing, for the node's own processes and for pods.
//!
//! Instead of translating packets, `connect4`/`sendmsg4` rewrite the destination a socket asks
//! for, before any packet exists; `recvmsg4` and `getpeername4` show the application the
//! frontend again. The connection then goes straight to the backend: no conntrack entry, no
//! NAT of any packet, in either direction.
//!
//! Cgroup hooks are not per network namespace: every process of the cgroup runs them
//! (`--cgroup`, the cgroup v2 root in a cluster), whatever its namespace. Two kinds of socket:
//! - **the node's** (`Config::netns_cookie`): every Service, and localhost NodePorts
//!   (`--nodeport-addresses 127.0.0.0/8`) without `route_localnet=1` (CVE-2020-8558):
//!   127.0.0.1:nodePort is rewritten to a backend in the call, so no packet with a loopback
//!   address ever leaves the loopback device. The node's processes (the kubelet, hostNetwork
//!   pods) have no other path to a ClusterIP.
//! - **a pod's** (any other namespace, with `CONFIG_F_SOCK_PODS`): what the call can decide
//!   exactly as the per-packet path would. Everything else is left untouched for the tc
//!   program on the pod's veth (`Reason::SockPerPacket`), so both paths behave the same: a
//!   frontend with session affinity or `loadBalancerSourceRanges` (both need the client's
//!   address, which a socket has no earlier than its first packet), one without endpoints
//!   (the per-packet reject or policy drop), the pod's own loopback (127.0.0.0/8 is the pod's,
//!   never a node's localhost NodePort), and `connect()` on a UDP socket when the agent cannot
//!   destroy sockets (`CONFIG_F_SOCK_DESTROY`: a connected socket would keep a backend that
//!   left; conntrack follows the change instead). Hairpin needs nothing: a pod that reaches
//!   itself connects to its own address.
//!
//! `internalTrafficPolicy: Local` needs nothing either: the frontend's entry holds only local
//! endpoints then, for sockets as for packets.
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
    FrontendKey, Hook, Reason, SockKey, SockRevNat, CONFIG_F_SOCK_DESTROY, CONFIG_F_SOCK_PODS,
    FRONTEND_F_DENY_NODE, FRONTEND_F_DROP_NO_BACKEND, FRONTEND_F_SOURCE_RANGES, PROTO_UDP,
    SCOPE_ANY,
};

use crate::{
    maps::{SVC_CONFIG, SVC_FRONTENDS, SVC_SOCK_REV},
    stats::count,
    v4::lb::{mix, pick_backend},
};

/// Let the call proceed.
const ALLOW: i32 = 1;
/// Fail the call; the error is set with `bpf_set_retval`.
const DENY: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub(crate) fn svc_sock_connect4(ctx: SockAddrContext) -> i32 {
    translate(&ctx, None, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub(crate) fn svc_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate(&ctx, Some(PROTO_UDP), false)
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

/// Whose socket a call is on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// The node's own network namespace.
    Node,
    /// Another namespace of the cgroup: a pod (with `CONFIG_F_SOCK_PODS`).
    Pod,
}

/// Whose socket this is, and the config flags; `None` when the hooks leave it alone.
#[inline(always)]
fn owner(ctx: &SockAddrContext) -> Option<(Owner, u32)> {
    let config = SVC_CONFIG.get(0)?;
    if config.netns_cookie == 0 {
        // Not configured yet: the agent writes the config (with the SNAT source) just after
        // attaching the hooks, which leave every socket alone until then.
        return None;
    }
    // SAFETY: plain helper call on the program's own context.
    if unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == config.netns_cookie {
        Some((Owner::Node, config.flags))
    } else if config.flags & CONFIG_F_SOCK_PODS != 0 {
        Some((Owner::Pod, config.flags))
    } else {
        None
    }
}

#[inline(always)]
fn protocol(ctx: &SockAddrContext, known: Option<u8>) -> u8 {
    match known {
        Some(p) => p,
        // SAFETY: reading a field of the program's own context.
        None => (unsafe { (*ctx.sock_addr).protocol }) as u8,
    }
}

/// `call` is a `connect()` (the socket will stay bound to the backend), not a `sendmsg()`.
#[inline(always)]
fn translate(ctx: &SockAddrContext, known_proto: Option<u8>, connect: bool) -> i32 {
    let Some((owner, flags)) = owner(ctx) else {
        return ALLOW;
    };
    let (addr, port) = destination(ctx);
    let proto = protocol(ctx, known_proto);
    if owner == Owner::Pod && addr[0] == 127 {
        // The pod's own loopback: never a Service (localhost NodePorts are the node's).
        return ALLOW;
    }
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
    if owner == Owner::Pod {
        let per_packet = fe.backend_count == 0
            || fe.affinity_timeout_s != 0
            || fe.flags & FRONTEND_F_SOURCE_RANGES != 0
            || (connect && proto == PROTO_UDP && flags & CONFIG_F_SOCK_DESTROY == 0);
        if per_packet {
            count(Hook::Sock, Reason::SockPerPacket);
            return ALLOW;
        }
    }
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
    // SAFETY: plain helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // TCP: random, not a tuple hash (the socket has no source port yet, so a hash of what it
    // has would send every connection of a client to one backend). UDP: a hash of the socket,
    // so every datagram an unconnected socket sends goes to one backend while the frontend's
    // backends stay the same, as the per-packet path keeps one flow per source port.
    let choice = if proto == PROTO_UDP {
        mix((cookie ^ (cookie >> 32)) as u32)
    } else {
        // SAFETY: helper without arguments.
        unsafe { bpf_get_prandom_u32() }
    };
    let Some((backend_id, backend, _)) = pick_backend(&fe, node_client(), now, choice) else {
        count(Hook::Sock, Reason::BackendMissing);
        return ALLOW;
    };
    set_destination(ctx, backend.addr, backend.port);
    let rev = SockKey {
        cookie,
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
            frontend_id: fe.id,
            backend_id,
        },
        0,
    );
    count(Hook::Sock, Reason::SockTranslated);
    ALLOW
}

#[inline(always)]
fn restore(ctx: &SockAddrContext, known_proto: Option<u8>) -> i32 {
    if owner(ctx).is_none() {
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
