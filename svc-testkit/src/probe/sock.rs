//! Sockets of either family: listeners on both families ([`tcp_listeners`], [`udp_sockets`])
//! and raw `sockaddr` conversions for the code that calls libc directly.
//!
//! A server bound to the unspecified address listens on **two** sockets, `0.0.0.0` and `[::]`
//! with `IPV6_V6ONLY`, rather than one dual-stack `[::]` socket: on a dual-stack socket an IPv4
//! client shows up as `[::ffff:10.244.1.2]:port`, which would change every `peer`/`local` an
//! existing IPv4 test compares, and IPv4 destinations would arrive as `IPV6_PKTINFO`. Two
//! sockets keep IPv4 exactly as it was and make IPv6 a plain addition.

use std::{
    io,
    mem::{size_of, zeroed},
    net::{
        IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, UdpSocket,
    },
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result};

/// `a` as a `sockaddr_storage` and its length, for `bind(2)`, `connect(2)` and `sendto(2)`.
pub fn sockaddr_raw(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// The address in a `sockaddr_storage` the kernel filled, if it is IPv4 or IPv6.
pub fn sockaddr_from_raw(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in; storage is aligned for it.
            let sin: &libc::sockaddr_in = unsafe { &*(ss as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6; storage is aligned for it.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The unspecified address of `target`'s family with port 0: where a client socket binds.
pub fn any_of(target: SocketAddr) -> SocketAddr {
    match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// The addresses a server bound to `bind` listens on: both families' unspecified addresses
/// for `0.0.0.0` or `::` (see the module docs), else `bind` alone.
fn bind_addrs(bind: IpAddr, port: u16) -> Vec<SocketAddr> {
    if bind.is_unspecified() {
        vec![
            (Ipv4Addr::UNSPECIFIED, port).into(),
            (Ipv6Addr::UNSPECIFIED, port).into(),
        ]
    } else {
        vec![(bind, port).into()]
    }
}

/// A bound socket of `addr`'s family, `IPV6_V6ONLY` for IPv6 (so `[::]` leaves IPv4 to the
/// `0.0.0.0` socket) and `SO_REUSEADDR` for TCP (as std's listeners have it). `Ok(None)`
/// when the kernel has no IPv6 at all (`EAFNOSUPPORT`) and `addr` is the unspecified `::`.
fn bound(addr: SocketAddr, ty: libc::c_int) -> Result<Option<OwnedFd>> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if addr.is_ipv6()
            && addr.ip().is_unspecified()
            && e.raw_os_error() == Some(libc::EAFNOSUPPORT)
        {
            return Ok(None);
        }
        return Err(e).context("socket");
    }
    // SAFETY: fd is a fresh socket we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if addr.is_ipv6() {
        setsockopt_int(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1).context("IPV6_V6ONLY")?;
    }
    if ty == libc::SOCK_STREAM {
        setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).context("SO_REUSEADDR")?;
    }
    let (ss, len) = sockaddr_raw(addr);
    // SAFETY: `ss` holds a valid sockaddr of length `len`.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    } != 0
    {
        return Err(io::Error::last_os_error()).with_context(|| format!("bind {addr}"));
    }
    Ok(Some(fd))
}

/// TCP listeners on `port` of `bind` (both families for an unspecified `bind`).
pub fn tcp_listeners(bind: IpAddr, port: u16) -> Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for addr in bind_addrs(bind, port) {
        let Some(fd) = bound(addr, libc::SOCK_STREAM)? else {
            continue;
        };
        // SAFETY: listen(2) on our bound socket.
        if unsafe { libc::listen(fd.as_raw_fd(), 128) } != 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("listen {addr}"));
        }
        out.push(TcpListener::from(fd));
    }
    Ok(out)
}

/// UDP sockets on `port` of `bind` (both families for an unspecified `bind`).
pub fn udp_sockets(bind: IpAddr, port: u16) -> Result<Vec<UdpSocket>> {
    let mut out = Vec::new();
    for addr in bind_addrs(bind, port) {
        if let Some(fd) = bound(addr, libc::SOCK_DGRAM)? {
            out.push(UdpSocket::from(fd));
        }
    }
    Ok(out)
}

/// `setsockopt` of one `c_int`.
pub fn setsockopt_int(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: valid fd; the option value points at a c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
