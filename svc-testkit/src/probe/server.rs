//! The echo-identity [`Server`]: TCP and UDP listeners that answer every request with one
//! JSON [`Reply`] naming the backend, the client address as seen and the local address the
//! request arrived on (UDP through `IP_PKTINFO` / `IPV6_PKTINFO`). Bound to the unspecified
//! address, a server answers on both families, one socket each (see `sock.rs` for why).

use std::{
    io::{self, BufRead, BufReader, ErrorKind, Write},
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, RawFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use super::{sockaddr_from_raw, tcp_listeners, udp_sockets, Reply, MAX_LINE, STOP_POLL};

/// What [`Server::start`] binds.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Backend identity put in every reply.
    pub id: String,
    /// TCP ports to listen on.
    pub tcp: Vec<u16>,
    /// UDP ports to answer on.
    pub udp: Vec<u16>,
    /// Address to bind; `0.0.0.0` (the default for the binary) or `::` answers on every
    /// address of the namespace, of both families (one socket each), like a pod's server does.
    pub bind: IpAddr,
}

/// Running TCP/UDP servers. Sockets are bound when [`Server::start`] returns (so a caller can
/// signal readiness right after); each listener is served by its own thread, each TCP
/// connection by another. Threads block in `poll(2)`/`read(2)` for at most [`STOP_POLL`]
/// before re-checking the stop flag, so [`Server::stop`] (or drop) returns promptly and closes
/// every socket — which matters because a socket keeps its network namespace alive after the
/// namespace's name is deleted.
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Requests answered so far (TCP lines and UDP datagrams).
    served: Arc<AtomicU64>,
}

impl Server {
    /// Binds every port of `cfg` in the calling thread's network namespace and starts serving.
    pub fn start(cfg: ServeConfig) -> Result<Server> {
        if cfg.tcp.is_empty() && cfg.udp.is_empty() {
            bail!("serve {}: no --tcp or --udp port given", cfg.id);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let served = Arc::new(AtomicU64::new(0));
        let mut server = Server {
            stop: stop.clone(),
            threads: Vec::new(),
            conns: conns.clone(),
            served: served.clone(),
        };
        // Bind everything first: a bind failure must surface before any thread runs.
        let mut listeners = Vec::new();
        for &port in &cfg.tcp {
            let l = tcp_listeners(cfg.bind, port)
                .with_context(|| format!("binding TCP {}", SocketAddr::new(cfg.bind, port)))?;
            listeners.extend(l);
        }
        let mut udps = Vec::new();
        for &port in &cfg.udp {
            for s in udp_sockets(cfg.bind, port)
                .with_context(|| format!("binding UDP {}", SocketAddr::new(cfg.bind, port)))?
            {
                set_pktinfo(&s).with_context(|| format!("PKTINFO on UDP port {port}"))?;
                udps.push(s);
            }
        }
        for l in listeners {
            let (id, stop, conns, served) =
                (cfg.id.clone(), stop.clone(), conns.clone(), served.clone());
            server.threads.push(std::thread::spawn(move || {
                tcp_accept_loop(l, &id, &stop, &conns, &served)
            }));
        }
        for s in udps {
            let (id, stop, served) = (cfg.id.clone(), stop.clone(), served.clone());
            server
                .threads
                .push(std::thread::spawn(move || udp_loop(s, &id, &stop, &served)));
        }
        Ok(server)
    }

    /// The flag the server threads watch; setting it stops them (what the binary's SIGTERM
    /// handler does through [`Server::run_until`]).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Blocks until `stop` is set, then stops the server.
    pub fn run_until(self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop();
    }

    /// Stops all threads and closes all sockets; returns within about [`STOP_POLL`].
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let conns = std::mem::take(&mut *lock(&self.conns));
        for t in conns {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking server thread must not make the whole test infrastructure panic again.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until `fd` is readable or `timeout` passes. `Ok(false)` on timeout.
fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `pfd` is a valid, initialised pollfd array of length 1 for the whole call.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    match rc {
        0 => Ok(false),
        n if n > 0 => Ok(true),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

fn tcp_accept_loop(
    l: TcpListener,
    id: &str,
    stop: &Arc<AtomicBool>,
    conns: &Arc<Mutex<Vec<JoinHandle<()>>>>,
    served: &Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        match wait_readable(l.as_raw_fd(), STOP_POLL) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => {
                eprintln!("svc-probe serve {id}: poll on TCP listener: {e}");
                return;
            }
        }
        let (stream, peer) = match l.accept() {
            Ok(x) => x,
            Err(e) => {
                eprintln!("svc-probe serve {id}: accept: {e}");
                continue;
            }
        };
        let (id, stop2, served) = (id.to_owned(), stop.clone(), served.clone());
        let t = std::thread::spawn(move || {
            if let Err(e) = tcp_conn(stream, peer, &id, &stop2, &served) {
                // Resets from clients that time out are expected; log for diagnosis only.
                eprintln!("svc-probe serve {id}: connection from {peer}: {e}");
            }
        });
        let mut guard = lock(conns);
        guard.retain(|h| !h.is_finished());
        guard.push(t);
    }
}

fn tcp_conn(
    stream: TcpStream,
    peer: SocketAddr,
    id: &str,
    stop: &AtomicBool,
    served: &AtomicU64,
) -> io::Result<()> {
    let local = stream.local_addr()?;
    stream.set_read_timeout(Some(STOP_POLL))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        // read_until keeps the bytes read so far in `line` when it returns an error, so a
        // timeout in the middle of a line loses nothing.
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return Ok(()),
            Ok(_) if line.ends_with(b"\n") => {
                let reply = Reply {
                    id: id.to_owned(),
                    peer: peer.to_string(),
                    local: local.to_string(),
                    req: echo(&line),
                };
                let mut out = serde_json::to_vec(&reply).map_err(io::Error::other)?;
                out.push(b'\n');
                writer.write_all(&out)?;
                served.fetch_add(1, Ordering::Relaxed);
                line.clear();
            }
            Ok(_) => return Ok(()), // EOF in the middle of a line
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if line.len() > MAX_LINE {
            return Err(io::Error::other("request line too long"));
        }
    }
}

fn echo(req: &[u8]) -> String {
    let s = String::from_utf8_lossy(req);
    let s = s.trim();
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Asks for the destination address of every datagram (`IP_PKTINFO` / `IPV6_RECVPKTINFO`).
fn set_pktinfo(s: &UdpSocket) -> io::Result<()> {
    if s.local_addr()?.is_ipv4() {
        super::setsockopt_int(s, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
    } else {
        super::setsockopt_int(s, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)
    }
}

/// `recvmsg` with `IP_PKTINFO` / `IPV6_PKTINFO`: returns (length, source, destination address
/// of the datagram). The destination is what makes `local` meaningful for a socket bound to
/// the unspecified address.
fn recv_with_dst(s: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, IpAddr)> {
    // SAFETY: all-zero is a valid bit pattern for these plain C structs.
    let mut src: libc::sockaddr_storage = unsafe { zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // u64 array: cmsg buffers must be aligned for cmsghdr.
    let mut cbuf = [0u64; 16];
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut src as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 16]>();
    // SAFETY: msg points at live buffers (src, iov→buf, cbuf) with the lengths given above.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let src = sockaddr_from_raw(&src)
        .ok_or_else(|| io::Error::other("datagram from a non-IP address"))?;
    let mut dst: IpAddr = if src.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    // SAFETY: the CMSG_* macros walk the control buffer the kernel just filled, bounded by
    // msg_controllen; the payloads are in_pktinfo / in6_pktinfo structs (read unaligned).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                let info: libc::in_pktinfo =
                    std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>());
                dst = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)).into();
            } else if (*c).cmsg_level == libc::IPPROTO_IPV6 && (*c).cmsg_type == libc::IPV6_PKTINFO
            {
                let info: libc::in6_pktinfo =
                    std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>());
                dst = Ipv6Addr::from(info.ipi6_addr.s6_addr).into();
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, src, dst))
}

fn udp_loop(s: UdpSocket, id: &str, stop: &AtomicBool, served: &AtomicU64) {
    let port = s.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        match wait_readable(s.as_raw_fd(), STOP_POLL) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => {
                eprintln!("svc-probe serve {id}: poll on UDP port {port}: {e}");
                return;
            }
        }
        let (n, src, dst) = match recv_with_dst(&s, &mut buf) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("svc-probe serve {id}: recvmsg on UDP port {port}: {e}");
                continue;
            }
        };
        let reply = Reply {
            id: id.to_owned(),
            peer: src.to_string(),
            local: SocketAddr::new(dst, port).to_string(),
            req: echo(&buf[..n]),
        };
        let Ok(mut out) = serde_json::to_vec(&reply) else {
            continue;
        };
        out.push(b'\n');
        match s.send_to(&out, src) {
            Ok(_) => {
                served.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => eprintln!("svc-probe serve {id}: reply to {src}: {e}"),
        }
    }
}
