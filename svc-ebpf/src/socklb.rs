//! The socket hooks' decisions (`sock.rs`), compiled once per family like `lb.rs`:
//! `v4::sock` with the IPv4 maps, `v6::sock` with the IPv6 ones (see `v4` for why not generic
//! functions). They take the address of the call as a value and give the rewritten one to a
//! setter, so they never touch the context's address fields: the hooks read and write
//! `user_ip4` or `user_ip6`, and an IPv4-mapped address (`::ffff:a.b.c.d`) of a dual-stack
//! socket's `connect6` goes through `v4::sock` (the IPv4 maps) and back as IPv4-mapped.
use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_set_retval},
    programs::SockAddrContext,
    EbpfContext,
};
use svc_common::{
    FrontendKeyOf, Hook, Reason, SockRevNatOf, CONFIG_F_SOCK_DESTROY, FRONTEND_F_DENY_NODE,
    FRONTEND_F_DROP_NO_BACKEND, FRONTEND_F_SOURCE_RANGES, PROTO_UDP, SCOPE_ANY,
};

use super::{
    lb::{mix, pick_backend},
    A,
};
use crate::{
    family::Family,
    maps::SVC_CONFIG,
    sock::{Owner, ALLOW, DENY, ECONNREFUSED},
    stats::count,
};

/// The client address session affinity keys on for a node process: the node's own address of
/// the family, which every socket of the node would have as a packet's source.
#[inline(always)]
fn node_client() -> A {
    SVC_CONFIG.get(0).map(A::snat_addr).unwrap_or_default()
}

/// Translates a `connect()` (`connect`: the socket will stay bound to the backend) or a
/// `sendmsg()` to `addr`:`port` (host order) on a socket of `owner`; `set` writes the
/// backend into the call. Counted under `hook`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn translate(
    ctx: &SockAddrContext,
    hook: Hook,
    owner: Owner,
    flags: u32,
    addr: A,
    port: u16,
    proto: u8,
    connect: bool,
    set: impl FnOnce(A, u16),
) -> i32 {
    if owner == Owner::Pod && addr.is_loopback() {
        // The pod's own loopback: never a Service (localhost NodePorts are the node's).
        return ALLOW;
    }
    let key = FrontendKeyOf {
        addr,
        port,
        proto,
        scope: SCOPE_ANY,
    };
    // SAFETY: value copied out.
    let Some(fe) = (unsafe { A::frontends().get(&key) }).copied() else {
        return ALLOW;
    };
    if owner == Owner::Pod {
        let per_packet = fe.backend_count == 0
            || fe.affinity_timeout_s != 0
            || fe.flags & FRONTEND_F_SOURCE_RANGES != 0
            || (connect && proto == PROTO_UDP && flags & CONFIG_F_SOCK_DESTROY == 0);
        if per_packet {
            count(hook, Reason::SockPerPacket);
            return ALLOW;
        }
    }
    if fe.backend_count == 0 {
        if fe.flags & FRONTEND_F_DROP_NO_BACKEND == 0 {
            // As kube-proxy's REJECT would answer: the connection is refused.
            // SAFETY: plain helper call.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
        }
        count(hook, Reason::NoBackend);
        return DENY;
    }
    // `loadBalancerSourceRanges` that contain no node address: kube-proxy's filter-output
    // `firewall-check` drops the node's packets (after its endpoint check, as here). A socket
    // call has no source address yet, so the agent decided it (`FRONTEND_F_DENY_NODE`). The
    // call fails with EPERM, which is what a UDP sendmsg() gets from netfilter's drop too; a
    // TCP connect() would retry its SYN until it timed out instead of failing at once.
    if fe.flags & FRONTEND_F_DENY_NODE != 0 {
        count(hook, Reason::SourceRangeDenied);
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
        count(hook, Reason::BackendMissing);
        return ALLOW;
    };
    set(backend.addr, backend.port);
    let rev = A::sock_key(cookie, backend.addr, backend.port, proto);
    let _ = A::sock_rev().insert(
        &rev,
        &SockRevNatOf {
            addr,
            port,
            _pad: 0,
            frontend_id: fe.id,
            backend_id,
        },
        0,
    );
    count(hook, Reason::SockTranslated);
    ALLOW
}

/// Shows the frontend again where the call names a backend `addr`:`port` a hook sent this
/// socket to (`recvmsg`, `getpeername`); `set` writes it into the call. `proto` is read after
/// the cookie, as the IPv4 hooks always did (one instruction fewer in `getpeername4`).
#[inline(always)]
pub(crate) fn restore(
    ctx: &SockAddrContext,
    hook: Hook,
    addr: A,
    port: u16,
    proto: impl FnOnce() -> u8,
    set: impl FnOnce(A, u16),
) -> i32 {
    // SAFETY: plain helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = A::sock_key(cookie, addr, port, proto());
    // SAFETY: value copied out.
    if let Some(fe) = unsafe { A::sock_rev().get(&key) }.copied() {
        set(fe.addr, fe.port);
        count(hook, Reason::SockRevNat);
    }
    ALLOW
}
