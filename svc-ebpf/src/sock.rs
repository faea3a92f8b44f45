//! cgroup socket hooks: socket-level load balancing, for the node's own processes and for pods.
//!
//! Instead of translating packets, `connect4`/`sendmsg4` (`connect6`/`sendmsg6`) rewrite the
//! destination a socket asks for, before any packet exists; `recvmsg4` and `getpeername4`
//! (`recvmsg6`, `getpeername6`) show the application the frontend again. The connection then
//! goes straight to the backend: no conntrack entry, no NAT of any packet, in either direction.
//!
//! The decisions are `socklb.rs`, compiled per family (`v4::sock`, `v6::sock`); this file
//! only reads and writes the call's address. The IPv6 hooks count under `Hook::Sock6`, an
//! IPv6 socket's own loopback is ::1, and session affinity of a node process keys on the
//! node's IPv6 address (`Config::node_addr6`). **IPv4-mapped addresses**: a dual-stack
//! (`AF_INET6`) socket that connects to `::ffff:a.b.c.d` runs `connect6`, not `connect4`, so
//! the IPv6 hooks translate such an address with the IPv4 maps (`SVC_FRONTENDS`,
//! `SVC_SOCK_REV`) and write the backend back IPv4-mapped, as Cilium's
//! `sock6_xlate_v4_in_v6`. (`sendmsg()` to a mapped address runs `sendmsg4`: udpv6_sendmsg
//! hands it to udp_sendmsg; `recvmsg6` and `getpeername6` see the peer mapped.)
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
    helpers::bpf_get_netns_cookie, macros::cgroup_sock_addr, programs::SockAddrContext, EbpfContext,
};
use svc_common::{Addr6, Hook, CONFIG_F_SOCK_PODS, PROTO_UDP};

use crate::{maps::SVC_CONFIG, v4, v6};

/// Let the call proceed.
pub(crate) const ALLOW: i32 = 1;
/// Fail the call; the error is set with `bpf_set_retval`.
pub(crate) const DENY: i32 = 0;
pub(crate) const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub(crate) fn svc_sock_connect4(ctx: SockAddrContext) -> i32 {
    translate4(&ctx, None, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub(crate) fn svc_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate4(&ctx, Some(PROTO_UDP), false)
}

#[cgroup_sock_addr(recvmsg4)]
pub(crate) fn svc_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore4(&ctx, Some(PROTO_UDP))
}

#[cgroup_sock_addr(getpeername4)]
pub(crate) fn svc_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    restore4(&ctx, None)
}

#[cgroup_sock_addr(connect6)]
pub(crate) fn svc_sock_connect6(ctx: SockAddrContext) -> i32 {
    translate6(&ctx, None, true)
}

#[cgroup_sock_addr(sendmsg6)]
pub(crate) fn svc_sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    translate6(&ctx, Some(PROTO_UDP), false)
}

#[cgroup_sock_addr(recvmsg6)]
pub(crate) fn svc_sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    restore6(&ctx, Some(PROTO_UDP))
}

#[cgroup_sock_addr(getpeername6)]
pub(crate) fn svc_sock_getpeername6(ctx: SockAddrContext) -> i32 {
    restore6(&ctx, None)
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

/// [`destination`] of an IPv6 call: `user_ip6` as four network-order words, each read with
/// a 4-byte load (the size the verifier allows for every one of them).
#[inline(always)]
fn destination6(ctx: &SockAddrContext) -> ([u32; 4], u16) {
    // SAFETY: reading fields of the program's own context.
    unsafe {
        let sa = ctx.sock_addr;
        let ip = core::ptr::addr_of!((*sa).user_ip6) as *const u32;
        (
            [
                core::ptr::read_volatile(ip),
                core::ptr::read_volatile(ip.add(1)),
                core::ptr::read_volatile(ip.add(2)),
                core::ptr::read_volatile(ip.add(3)),
            ],
            u16::from_be((*sa).user_port as u16),
        )
    }
}

/// Replaces the address of an IPv6 call (see [`destination6`]), word by word.
#[inline(always)]
fn set_destination6(ctx: &SockAddrContext, words: [u32; 4], port: u16) {
    // SAFETY: writing fields of the program's own context, which these hooks may rewrite.
    unsafe {
        let sa = ctx.sock_addr;
        let ip = core::ptr::addr_of_mut!((*sa).user_ip6) as *mut u32;
        core::ptr::write_volatile(ip, words[0]);
        core::ptr::write_volatile(ip.add(1), words[1]);
        core::ptr::write_volatile(ip.add(2), words[2]);
        core::ptr::write_volatile(ip.add(3), words[3]);
        (*sa).user_port = port.to_be() as u32;
    }
}

/// The third word of an IPv4-mapped address (`::ffff:0:0/96`), as it lies in memory.
const V4_MAPPED_W2: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The IPv4 address an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) carries.
#[inline(always)]
fn v4_mapped(w: &[u32; 4]) -> Option<[u8; 4]> {
    if w[0] | w[1] == 0 && w[2] == V4_MAPPED_W2 {
        Some(w[3].to_ne_bytes())
    } else {
        None
    }
}

/// `addr` as an IPv4-mapped IPv6 address.
#[inline(always)]
fn mapped(addr: [u8; 4]) -> [u32; 4] {
    [0, 0, V4_MAPPED_W2, u32::from_ne_bytes(addr)]
}

/// Whose socket a call is on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
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

/// `connect`: a `connect()` (the socket will stay bound to the backend), not a `sendmsg()`.
#[inline(always)]
fn translate4(ctx: &SockAddrContext, known_proto: Option<u8>, connect: bool) -> i32 {
    let Some((owner, flags)) = owner(ctx) else {
        return ALLOW;
    };
    let (addr, port) = destination(ctx);
    let proto = protocol(ctx, known_proto);
    v4::sock::translate(
        ctx,
        Hook::Sock,
        owner,
        flags,
        addr,
        port,
        proto,
        connect,
        |a, p| set_destination(ctx, a, p),
    )
}

#[inline(always)]
fn restore4(ctx: &SockAddrContext, known_proto: Option<u8>) -> i32 {
    if owner(ctx).is_none() {
        return ALLOW;
    }
    let (addr, port) = destination(ctx);
    let proto = || protocol(ctx, known_proto);
    v4::sock::restore(ctx, Hook::Sock, addr, port, proto, |a, p| {
        set_destination(ctx, a, p)
    })
}

/// [`translate4`] of an IPv6 call: an IPv4-mapped destination with the IPv4 maps.
#[inline(always)]
fn translate6(ctx: &SockAddrContext, known_proto: Option<u8>, connect: bool) -> i32 {
    let Some((owner, flags)) = owner(ctx) else {
        return ALLOW;
    };
    let (words, port) = destination6(ctx);
    let proto = protocol(ctx, known_proto);
    if let Some(addr) = v4_mapped(&words) {
        return v4::sock::translate(
            ctx,
            Hook::Sock6,
            owner,
            flags,
            addr,
            port,
            proto,
            connect,
            |a, p| set_destination6(ctx, mapped(a), p),
        );
    }
    v6::sock::translate(
        ctx,
        Hook::Sock6,
        owner,
        flags,
        addr6_of(words),
        port,
        proto,
        connect,
        |a, p| set_destination6(ctx, *a.words(), p),
    )
}

/// [`restore4`] of an IPv6 call: an IPv4-mapped peer with the IPv4 reverse map.
#[inline(always)]
fn restore6(ctx: &SockAddrContext, known_proto: Option<u8>) -> i32 {
    if owner(ctx).is_none() {
        return ALLOW;
    }
    let (words, port) = destination6(ctx);
    let proto = || protocol(ctx, known_proto);
    if let Some(addr) = v4_mapped(&words) {
        return v4::sock::restore(ctx, Hook::Sock6, addr, port, proto, |a, p| {
            set_destination6(ctx, mapped(a), p)
        });
    }
    v6::sock::restore(ctx, Hook::Sock6, addr6_of(words), port, proto, |a, p| {
        set_destination6(ctx, *a.words(), p)
    })
}

/// Four network-order words as an [`Addr6`].
#[inline(always)]
fn addr6_of(words: [u32; 4]) -> Addr6 {
    let mut a = Addr6::default();
    // SAFETY: `Addr6` is 16 bytes aligned to 4: four `u32`s.
    unsafe { *(core::ptr::addr_of_mut!(a) as *mut [u32; 4]) = words };
    a
}
