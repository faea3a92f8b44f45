//! The UDP socket iterator (`iter/udp`): destroys connected UDP sockets whose backend left
//! their frontend.
//!
//! A socket-LB `connect()` binds a UDP socket to the backend chosen in the call (`sock.rs`);
//! no packet of it ever reaches a frontend again, so when that backend leaves the Service
//! nothing would move the socket, and the application would send into a dead backend until it
//! closed the socket (the best-known failure of socket-level load balancing). The agent
//! writes the (frontend, backend) pairs a plan removed into `SVC_SOCK_DOOMED` and runs this
//! iterator once in every network namespace of its cgroup: a UDP socket whose current peer is
//! a backend a socket hook chose (`SVC_SOCK_REV`) for a doomed pair is destroyed with the
//! `bpf_sock_destroy` kfunc (Linux 6.5; net/core/filter.c: for UDP it calls `udp_abort`,
//! which sets `sk_err = ECONNABORTED` and disconnects the socket, so the application's next
//! `send`/`recv` fails and it reconnects, through `connect4` again, to a live backend).
//!
//! The iterator walks the one UDP table both families share. An IPv6 socket's peer is
//! `skc_v6_daddr` and its entry is in `SVC_SOCK_REV6`; a dual-stack socket connected to an
//! IPv4-mapped address (through `connect6`, into `SVC_SOCK_REV`) also has the IPv4 peer in
//! `skc_daddr` (`__ip4_datagram_connect`), so the IPv4 lookup finds it, while a plain IPv6
//! socket has 127.0.0.6 there (`LOOPBACK4_IPV6`), which no backend is.
//!
//! The kfunc is called with a marker instruction (see [`sock_destroy`]) that the agent patches
//! into a kfunc call with the kernel's BTF id before loading; aya 0.14 cannot relocate
//! `__ksym` externs. Without the kfunc (older kernels) the agent does not load this program
//! and clears `CONFIG_F_SOCK_DESTROY`, and pods' UDP `connect()` stays per packet.
use core::ffi::c_void;

use aya_ebpf::helpers::bpf_get_socket_cookie;
use svc_common::{
    Addr6, DoomedPair, Hook, Reason, SockKey6, SockRevNatOf, AF_INET6, PROTO_UDP, SOCK_DESTROY_MARK,
};

use crate::{family::Family, maps::SVC_SOCK_DOOMED, stats::count};

/// The head of `struct bpf_iter__udp` (net/ipv4/udp.c): the iterator's context. Both fields
/// are `__bpf_md_ptr`s, 8 bytes each; `udp_sk` is NULL at the end of a batch.
#[repr(C)]
pub(crate) struct IterUdp {
    meta: *mut c_void,
    udp_sk: *mut c_void,
}

/// Offsets in `struct sock_common` (include/net/sock.h), the head of every `udp_sock`
/// (`udp_sock.inet.sk.__sk_common`): `skc_daddr` (`__be32`, first in `skc_addrpair`),
/// `skc_dport` (`__be16`, first in `skc_portpair`, after `skc_hash`) and `skc_state`
/// (`unsigned char`, after `skc_family`). They have not moved since the structure was split
/// out of `struct sock` (2.6.x); the verifier checks each load against the kernel's BTF, and
/// the network test of socket destruction fails if they ever do.
const SKC_DADDR: usize = 0;
const SKC_DPORT: usize = 12;
const SKC_STATE: usize = 18;
/// `skc_family` (`unsigned short`, after `skc_portpair`) and `skc_v6_daddr` (`struct in6_addr`,
/// after `skc_bind_node`, `skc_prot` and `skc_net`: 56 with `CONFIG_NET_NS`, which every
/// kernel running pods has; Linux 6.18's BTF says 448 bits).
const SKC_FAMILY: usize = 16;
const SKC_V6_DADDR: usize = 56;
/// `TCP_ESTABLISHED` (include/net/tcp_states.h): a UDP socket's state once connected
/// (`ip4_datagram_connect`); an unconnected one is `TCP_CLOSE`.
const TCP_ESTABLISHED: u8 = 1;

#[no_mangle]
#[link_section = "iter/udp"]
pub(crate) extern "C" fn svc_sock_reap_udp(ctx: *mut IterUdp) -> i32 {
    // SAFETY: the iterator's context, read at the offset the kernel defines it at.
    let sk = unsafe { (*ctx).udp_sk };
    if sk.is_null() {
        return 0;
    }
    // SAFETY: `sk` is the kernel's (trusted, non-NULL) socket; the verifier turns these loads
    // into checked BTF accesses at the offsets documented above.
    let (state, daddr, dport) = unsafe {
        let base = sk as *const u8;
        (
            *base.add(SKC_STATE),
            // One 4-byte load of the `__be32`, its bytes in network order as the maps keep them.
            (*(base.add(SKC_DADDR) as *const u32)).to_ne_bytes(),
            *(base.add(SKC_DPORT) as *const u16),
        )
    };
    if state != TCP_ESTABLISHED {
        // Unconnected: every sendmsg() is translated afresh, nothing to destroy.
        return 0;
    }
    // SAFETY: helper on the kernel's socket (ARG_PTR_TO_BTF_ID_SOCK_COMMON).
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    let port = u16::from_be(dport);
    let key = <[u8; 4]>::sock_key(cookie, daddr, port, PROTO_UDP);
    // Written (whole) only on the IPv6 path, read only where `is6` says it was.
    let mut key6 = core::mem::MaybeUninit::<SockKey6>::uninit();
    let mut is6 = false;
    let doomed = match doomed::<[u8; 4]>(&key) {
        Some(d) => d,
        None => {
            // SAFETY: as above, a BTF-checked load at the offset documented above.
            let family = unsafe { *((sk as *const u8).add(SKC_FAMILY) as *const u16) };
            if family != AF_INET6 as u16 {
                return 0;
            }
            // SAFETY: as above (`struct in6_addr` read as four words); every field of `key6` is
            // written.
            let k6 = unsafe {
                let w = (sk as *const u8).add(SKC_V6_DADDR) as *const u32;
                let k = key6.as_mut_ptr();
                (*k).cookie = cookie;
                let d = core::ptr::addr_of_mut!((*k).backend_addr) as *mut u32;
                for i in 0..4 {
                    *d.add(i) = *w.add(i);
                }
                (*k).backend_port = port;
                (*k).proto = PROTO_UDP;
                // The pad as a byte and an aligned word (at 27 and 28): a `[0; 5]` became a
                // call of `memset`.
                let pad = core::ptr::addr_of_mut!((*k)._pad) as *mut u8;
                *pad = 0;
                *(pad.add(1) as *mut u32) = 0;
                key6.assume_init_ref()
            };
            let Some(d) = doomed::<Addr6>(k6) else {
                return 0;
            };
            is6 = true;
            d
        }
    };
    if !doomed {
        return 0;
    }
    // One call site: the agent patches exactly one placeholder. `is6` is read back volatile
    // so that LLVM does not thread the family's branch through the call, duplicating it.
    if sock_destroy(sk) == 0 {
        // SAFETY: reading a local.
        if unsafe { core::ptr::read_volatile(&is6) } {
            count(Hook::Sock6, Reason::SockDestroyed);
            // SAFETY: `is6`: written whole above.
            let _ = Addr6::sock_rev().remove(unsafe { key6.assume_init_ref() });
        } else {
            count(Hook::Sock, Reason::SockDestroyed);
            let _ = <[u8; 4]>::sock_rev().remove(&key);
        }
    }
    0
}

/// Whether the pair a hook sent the socket of `key` to was removed; `None`: no hook did (a
/// socket connected to a pod IP, say), not ours.
#[inline(always)]
fn doomed<A: Family>(key: &A::SockKey) -> Option<bool> {
    // SAFETY: value copied out.
    let rev: SockRevNatOf<A> = (unsafe { A::sock_rev().get(key) }).copied()?;
    let pair = DoomedPair {
        frontend_id: rev.frontend_id,
        backend_id: rev.backend_id,
    };
    // SAFETY: presence only.
    Some(unsafe { SVC_SOCK_DOOMED.get(&pair) }.is_some())
}

/// `bpf_sock_destroy(sk)`. The `call` with the immediate [`SOCK_DESTROY_MARK`] is a helper call
/// as far as LLVM and aya know; the agent rewrites it (`src_reg = BPF_PSEUDO_KFUNC_CALL`,
/// `imm` = the kfunc's id in the kernel's BTF) before loading. r1 is the argument, r0 the
/// result, r1–r5 are clobbered, as for any call.
#[inline(always)]
fn sock_destroy(sk: *mut c_void) -> i64 {
    let ret: i64;
    // SAFETY: a call the agent patches into the kfunc before the verifier sees it; it takes
    // the trusted socket pointer the iterator handed us and follows the BPF calling
    // convention declared here.
    unsafe {
        core::arch::asm!(
            "call {mark}",
            mark = const SOCK_DESTROY_MARK,
            inlateout("r1") sk => _,
            lateout("r0") ret,
            lateout("r2") _,
            lateout("r3") _,
            lateout("r4") _,
            lateout("r5") _,
        );
    }
    ret
}
