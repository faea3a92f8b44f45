//! svc-probe: the small traffic tool the network tests drive through services.
//!
//! # Layout
//! - [`Server`]: TCP and UDP echo-identity servers. Every reply is one line of JSON ([`Reply`])
//!   naming the backend (`id`), the client address *as the backend saw it* (`peer`, to check
//!   client-IP preservation and source NAT) and the local address the request arrived on
//!   (`local`, to check that destination NAT really happened).
//! - [`run_tcp`], [`run_udp`]: bounded runs of short request/reply exchanges, summarised as a
//!   [`Summary`] (which backends answered, from which address the replies came back).
//! - [`run_hold`]: long-lived TCP connections exchanged on periodically, summarised as a
//!   [`HoldSummary`]; a connection that changes backend or breaks is the failure to look for
//!   (agent restarts and map updates must not disturb established flows).
//!
//! The same code runs in two ways: inside the `svc-probe` binary (started in a namespace with
//! `ip netns exec`) and in-process on a thread that entered a namespace
//! ([`crate::topology::Topology::run_in`]), which is what the library's own tests use because
//! `cargo test --lib` does not build binaries.
//!
//! # Safety net
//! Every run is bounded in count and time ([`MAX_COUNT`], [`MAX_DURATION`], …), and clients
//! refuse targets outside the address plan of DESIGN §3 ([`check_target`]), so a mistyped
//! address cannot send traffic anywhere but the test namespaces.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::mem::{size_of, zeroed};
use std::net::{
    Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, ToSocketAddrs, UdpSocket,
};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Upper bound on exchanges in one client run.
pub const MAX_COUNT: u64 = 1_000_000;
/// Upper bound on the duration of any run (and on per-exchange timeouts).
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Upper bound on concurrent client threads of [`run_tcp`].
pub const MAX_PARALLEL: usize = 256;
/// Upper bound on connections held open by [`run_hold`].
pub const MAX_HOLD_CONNS: usize = 4096;
/// How many error strings a summary keeps (distinct ones, first seen first).
pub const MAX_ERRORS: usize = 8;
/// Longest request line a server accepts; longer ones close the connection.
const MAX_LINE: usize = 4096;
/// How long a blocked server thread sleeps in the kernel before re-checking its stop flag.
/// It bounds how long [`Server::stop`] takes, not the latency of replies.
const STOP_POLL: Duration = Duration::from_millis(100);

/// One server answer, serialized as a single JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The serving backend's `--id`.
    pub id: String,
    /// The client address as the backend's socket saw it (`ip:port`): after any source NAT.
    pub peer: String,
    /// The address the request arrived on (`ip:port`): after destination NAT this is the
    /// backend's own address, never the service frontend.
    pub local: String,
    /// The request line, echoed (trimmed, at most 64 bytes) so a client reusing one UDP socket
    /// can match replies to requests and ignore late ones.
    #[serde(default)]
    pub req: String,
}

/// Result of [`run_tcp`] / [`run_udp`], printed by the binary as one JSON line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Exchanges that got a well-formed reply.
    pub ok: u64,
    /// Exchanges that failed (connect, send, timeout, malformed reply).
    pub failed: u64,
    /// Replies per backend id.
    pub by_backend: BTreeMap<String, u64>,
    /// Distinct `peer` values reported by backends (the client address they saw).
    pub peers_seen_by_backend: Vec<String>,
    /// Distinct remote addresses the client saw replies come from: `getpeername` for TCP,
    /// the `recvfrom` source for UDP. Reverse NAT is right when this is only the target.
    pub reply_from: Vec<String>,
    /// First [`MAX_ERRORS`] distinct error strings.
    pub errors: Vec<String>,
    /// Wall time of the whole run.
    pub elapsed_ms: u64,
    /// Percentiles of the successful exchanges' durations (TCP: connect to reply; UDP: send
    /// to reply), for benchmarks. Optional, so summaries of older probes still parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<Latency>,
}

/// Percentiles of exchange durations in microseconds (nearest rank over every sample).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl Latency {
    /// Nearest-rank percentiles of `samples` (sorted here); `None` when there are none.
    pub fn of(samples: &mut [u64]) -> Option<Latency> {
        samples.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1]
        };
        (!samples.is_empty()).then(|| Latency {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        })
    }
}

impl Summary {
    /// Parses the summary from a probe's stdout: the last non-empty line is the JSON.
    pub fn from_output(stdout: &str) -> Result<Summary> {
        parse_last_line(stdout)
    }

    /// Runs the `svc-probe` binary in namespace `ns` for `count` short TCP exchanges with
    /// `target` (4 at a time, 2 s timeout each) and returns their summary.
    pub fn tcp_from(
        t: &crate::topology::Topology,
        ns: &str,
        target: &str,
        count: u32,
    ) -> Result<Summary> {
        let probe = crate::agent::workspace_bin("svc-probe")?;
        let probe = probe.to_str().context("svc-probe path is not UTF-8")?;
        let count = count.to_string();
        let out = t.exec_ok(
            ns,
            &[
                probe,
                "tcp",
                "--target",
                target,
                "--count",
                &count,
                "--timeout-ms",
                "2000",
                "--parallel",
                "4",
            ],
        )?;
        Summary::from_output(&out)
    }
}

/// One long-lived connection of [`run_hold`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldConn {
    /// The client's local address (`ip:port`), to find the flow in a conntrack dump.
    pub local: String,
    /// Distinct backend ids that answered, in order of first answer. More than one means the
    /// flow was moved to another backend mid-connection.
    pub backends: Vec<String>,
    /// Distinct client addresses the backend reported.
    pub peers: Vec<String>,
    /// Successful exchanges.
    pub ok: u64,
    /// Failed exchanges (at most one: a failure breaks the connection).
    pub failed: u64,
    /// The connection failed to connect or an exchange failed; it was not used afterwards.
    pub broken: bool,
    /// Why it broke.
    pub error: Option<String>,
}

/// Result of [`run_hold`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldSummary {
    /// One entry per requested connection.
    pub conns: Vec<HoldConn>,
    /// Total successful exchanges.
    pub ok: u64,
    /// Total failed exchanges.
    pub failed: u64,
    /// Connections that broke (including those that never connected).
    pub broken: u64,
    /// Connections whose answers came from more than one backend.
    pub switched: u64,
    /// Wall time of the whole run.
    pub elapsed_ms: u64,
    /// The run ended early because it was told to stop (SIGTERM/SIGINT or the stop flag).
    pub stopped_early: bool,
}

impl HoldSummary {
    /// Parses the summary from a probe's stdout: the last non-empty line is the JSON (a
    /// `ready` line precedes it).
    pub fn from_output(stdout: &str) -> Result<HoldSummary> {
        parse_last_line(stdout)
    }
}

fn parse_last_line<T: for<'de> Deserialize<'de>>(stdout: &str) -> Result<T> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("probe printed nothing on stdout")?;
    serde_json::from_str(line).with_context(|| format!("parsing probe summary {line:?}"))
}

/// Refuses targets outside the test address plan (DESIGN §3): pod (10.244/16), service
/// (10.96/16) and underlay (172.18/16) networks, loopback (localhost NodePorts) and the three
/// documentation ranges used for "public" addresses.
pub fn check_target(target: SocketAddr) -> Result<SocketAddrV4> {
    let SocketAddr::V4(v4) = target else {
        bail!("target {target}: only IPv4 targets are supported");
    };
    let o = v4.ip().octets();
    let allowed = matches!(
        o,
        [10, 244, ..]
            | [10, 96, ..]
            | [172, 18, ..]
            // The seed document's LoadBalancer example chooses this clusterIP; like every
            // Service address it exists only in the datapath of our namespaces.
            | [10, 0, 171, 239]
            | [127, ..]
            | [192, 0, 2, _]
            | [198, 51, 100, _]
            | [203, 0, 113, _]
    );
    if !allowed {
        bail!(
            "target {target} is outside the test address plan (10.244/16, 10.96/16, \
             10.0.171.239, 172.18/16, 127/8, 192.0.2/24, 198.51.100/24, 203.0.113/24)"
        );
    }
    if v4.port() == 0 {
        bail!("target {target}: port 0");
    }
    Ok(v4)
}

/// Parses `IP:PORT` and applies [`check_target`].
pub fn parse_target(s: &str) -> Result<SocketAddrV4> {
    let addr = s
        .to_socket_addrs()
        .with_context(|| format!("parsing target {s:?} (want IP:PORT)"))?
        .next()
        .with_context(|| format!("target {s:?} resolves to nothing"))?;
    check_target(addr)
}

/// Path of the `svc-probe` binary for code that cannot use `env!("CARGO_BIN_EXE_svc-probe")`
/// (which Cargo sets for integration tests only): `$SVC_PROBE_BIN`, else `svc-probe` next to
/// the running executable or one directory up (test executables live in `target/*/deps/`).
pub fn probe_bin() -> Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("SVC_PROBE_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("svc-probe"))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "svc-probe not found near {} (build it: cargo build -p tests --bins)",
                exe.display()
            )
        })
}

fn check_duration(what: &str, d: Duration) -> Result<()> {
    if d.is_zero() || d > MAX_DURATION {
        bail!("{what} {d:?} is outside (0, {MAX_DURATION:?}]");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// What [`Server::start`] binds.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Backend identity put in every reply.
    pub id: String,
    /// TCP ports to listen on.
    pub tcp: Vec<u16>,
    /// UDP ports to answer on.
    pub udp: Vec<u16>,
    /// Address to bind; `0.0.0.0` (the default for the binary) answers on every address of the
    /// namespace, like a pod's server does.
    pub bind: Ipv4Addr,
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
            let l = TcpListener::bind((cfg.bind, port))
                .with_context(|| format!("binding TCP {}:{port}", cfg.bind))?;
            listeners.push(l);
        }
        let mut udps = Vec::new();
        for &port in &cfg.udp {
            let s = UdpSocket::bind((cfg.bind, port))
                .with_context(|| format!("binding UDP {}:{port}", cfg.bind))?;
            set_pktinfo(&s).with_context(|| format!("IP_PKTINFO on UDP port {port}"))?;
            udps.push(s);
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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

fn set_pktinfo(s: &UdpSocket) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: valid socket fd; the option value points at a c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `recvmsg` with `IP_PKTINFO`: returns (length, source, destination address of the datagram).
/// The destination is what makes `local` meaningful for a socket bound to 0.0.0.0.
fn recv_with_dst(s: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddrV4, Ipv4Addr)> {
    // SAFETY: all-zero is a valid bit pattern for these plain C structs.
    let mut src: libc::sockaddr_in = unsafe { zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // u64 array: cmsg buffers must be aligned for cmsghdr.
    let mut cbuf = [0u64; 16];
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut src as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 16]>();
    // SAFETY: msg points at live buffers (src, iov→buf, cbuf) with the lengths given above.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut dst = Ipv4Addr::UNSPECIFIED;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel just filled, bounded by
    // msg_controllen; IP_PKTINFO payloads are in_pktinfo structs (read unaligned to be safe).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                let info: libc::in_pktinfo =
                    std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>());
                dst = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let src = SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(src.sin_addr.s_addr)),
        u16::from_be(src.sin_port),
    );
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
            local: SocketAddrV4::new(dst, port).to_string(),
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

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// Accumulates exchange results from several threads into a [`Summary`].
#[derive(Default)]
struct Acc {
    summary: Summary,
    peers: BTreeSet<String>,
    reply_from: BTreeSet<String>,
    /// Duration of every successful exchange, µs (8 bytes × at most [`MAX_COUNT`]).
    took_us: Vec<u64>,
}

impl Acc {
    fn ok(&mut self, reply: Reply, from: SocketAddr, took: Duration) {
        self.took_us.push(took.as_micros() as u64);
        self.summary.ok += 1;
        *self.summary.by_backend.entry(reply.id).or_default() += 1;
        self.peers.insert(reply.peer);
        self.reply_from.insert(from.to_string());
    }

    fn failed(&mut self, err: String) {
        self.summary.failed += 1;
        push_error(&mut self.summary.errors, err);
    }

    fn finish(mut self, started: Instant) -> Summary {
        self.summary.peers_seen_by_backend = self.peers.into_iter().collect();
        self.summary.reply_from = self.reply_from.into_iter().collect();
        self.summary.elapsed_ms = started.elapsed().as_millis() as u64;
        self.summary.latency_us = Latency::of(&mut self.took_us);
        self.summary
    }
}

fn push_error(errors: &mut Vec<String>, err: String) {
    if errors.len() < MAX_ERRORS && !errors.contains(&err) {
        errors.push(err);
    }
}

/// Parameters of [`run_tcp`].
#[derive(Debug, Clone)]
pub struct TcpClientConfig {
    /// Where to connect (a frontend or a pod address).
    pub target: SocketAddrV4,
    /// Number of connections, each carrying one exchange.
    pub count: u64,
    /// Bound on connect, and on each send and receive.
    pub timeout: Duration,
    /// Number of threads making connections concurrently.
    pub parallel: usize,
}

/// Makes `count` short connections (connect, send one line, read the reply, close), with up to
/// `parallel` in flight. Never fails as a whole: every failure is counted in the summary.
pub fn run_tcp(cfg: &TcpClientConfig) -> Result<Summary> {
    run_tcp_multi(cfg, &[cfg.target])
}

/// [`run_tcp`] spreading the connections round-robin over `targets` (by sequence number;
/// `cfg.target` is ignored): one client run against several pod addresses, which is how the
/// benchmark's no-translation floor mirrors a Service's balancing.
pub fn run_tcp_multi(cfg: &TcpClientConfig, targets: &[SocketAddrV4]) -> Result<Summary> {
    run_tcp_paced(cfg, targets, 0, &AtomicBool::new(false))
}

/// [`run_tcp_multi`] with connection `n` started no earlier than `n / rate_per_s` seconds
/// after the first (0: as fast as `parallel` allows), so a load runs at a set arrival rate
/// (it falls behind, never ahead, when connections take longer than `parallel / rate`).
/// Once `stop` is set, no new connection starts; those in flight finish and are counted.
pub fn run_tcp_paced(
    cfg: &TcpClientConfig,
    targets: &[SocketAddrV4],
    rate_per_s: u32,
    stop: &AtomicBool,
) -> Result<Summary> {
    if targets.is_empty() {
        bail!("no target");
    }
    for t in targets {
        check_target((*t).into())?;
    }
    check_duration("timeout", cfg.timeout)?;
    if cfg.count > MAX_COUNT {
        bail!("count {} exceeds {MAX_COUNT}", cfg.count);
    }
    let parallel = cfg.parallel.clamp(1, MAX_PARALLEL);
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let acc = Mutex::new(Acc::default());
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= cfg.count {
                    break;
                }
                let target = targets[(seq % targets.len() as u64) as usize];
                if rate_per_s > 0 {
                    let due = started
                        + Duration::from_micros(
                            seq.saturating_mul(1_000_000) / u64::from(rate_per_s),
                        );
                    // In short steps, so a stop is seen while waiting.
                    while Instant::now() < due && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(
                            due.saturating_duration_since(Instant::now())
                                .min(Duration::from_millis(50)),
                        );
                    }
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let began = Instant::now();
                match tcp_exchange(target, cfg.timeout, seq) {
                    Ok((reply, from)) => lock(&acc).ok(reply, from, began.elapsed()),
                    Err(e) => lock(&acc).failed(format!("{e:#}")),
                }
            });
        }
    });
    let acc = acc.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(acc.finish(started))
}

fn tcp_exchange(target: SocketAddrV4, timeout: Duration, seq: u64) -> Result<(Reply, SocketAddr)> {
    let stream = TcpStream::connect_timeout(&target.into(), timeout)
        .with_context(|| format!("connect {target}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let from = stream.peer_addr().context("getpeername")?;
    let reply = line_exchange(&stream, seq).with_context(|| format!("exchange with {target}"))?;
    let _ = stream.shutdown(Shutdown::Both);
    Ok((reply, from))
}

/// Sends `probe <seq>\n` and reads one reply line. Reads byte-wise through a small buffer so
/// nothing past the reply is consumed (the connection may be reused by [`run_hold`]).
fn line_exchange(mut stream: &TcpStream, seq: u64) -> Result<Reply> {
    stream
        .write_all(format!("probe {seq}\n").as_bytes())
        .context("send")?;
    let mut line = Vec::with_capacity(128);
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => bail!("connection closed before a reply ({} bytes)", line.len()),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!("timed out waiting for a reply")
            }
            Err(e) => return Err(e).context("recv"),
        }
        if line.len() > MAX_LINE {
            bail!("reply longer than {MAX_LINE} bytes");
        }
    }
    serde_json::from_slice(&line)
        .with_context(|| format!("malformed reply {:?}", String::from_utf8_lossy(&line)))
}

/// How [`run_udp`] uses sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UdpSockets {
    /// A new socket (new source port) per exchange: every exchange is a new flow, like DNS
    /// clients that randomise ports. Exercises frontend lookup and backend choice each time.
    #[default]
    PerRequest,
    /// One socket for the whole run: one long flow, which must stay on one backend.
    One,
}

/// Parameters of [`run_udp`].
#[derive(Debug, Clone)]
pub struct UdpClientConfig {
    /// Where to send.
    pub target: SocketAddrV4,
    /// Number of request/reply exchanges.
    pub count: u64,
    /// How long to wait for each reply.
    pub timeout: Duration,
    /// Socket per exchange or one for all.
    pub sockets: UdpSockets,
}

/// Runs `count` UDP exchanges, one at a time. Sockets are left unconnected and replies are
/// read with `recvfrom`, so a reply from the wrong source (missing reverse NAT) is still
/// received and shows up in `reply_from` instead of being silently filtered by the kernel.
pub fn run_udp(cfg: &UdpClientConfig) -> Result<Summary> {
    run_udp_multi(cfg, &[cfg.target], 1)
}

/// [`run_udp`] with `parallel` threads, each running its share of the exchanges one at a time
/// (and with its own socket under [`UdpSockets::One`], since replies are matched per socket),
/// round-robin over `targets` by sequence number (`cfg.target` is ignored).
pub fn run_udp_multi(
    cfg: &UdpClientConfig,
    targets: &[SocketAddrV4],
    parallel: usize,
) -> Result<Summary> {
    if targets.is_empty() {
        bail!("no target");
    }
    for t in targets {
        check_target((*t).into())?;
    }
    check_duration("timeout", cfg.timeout)?;
    if cfg.count > MAX_COUNT {
        bail!("count {} exceeds {MAX_COUNT}", cfg.count);
    }
    let parallel = parallel.clamp(1, MAX_PARALLEL);
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let acc = Mutex::new(Acc::default());
    // Bound before any exchange, so a bind failure fails the run as a whole, as before.
    let shared: Vec<Option<UdpSocket>> = (0..parallel)
        .map(|_| match cfg.sockets {
            UdpSockets::One => udp_socket().map(Some),
            UdpSockets::PerRequest => Ok(None),
        })
        .collect::<Result<_>>()?;
    std::thread::scope(|scope| {
        for sock in &shared {
            let (next, acc) = (&next, &acc);
            scope.spawn(move || udp_worker(cfg, targets, sock.as_ref(), next, acc));
        }
    });
    let acc = acc.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(acc.finish(started))
}

/// One thread of [`run_udp_multi`]: takes sequence numbers until `count` is reached.
fn udp_worker(
    cfg: &UdpClientConfig,
    targets: &[SocketAddrV4],
    shared: Option<&UdpSocket>,
    next: &AtomicU64,
    acc: &Mutex<Acc>,
) {
    loop {
        let seq = next.fetch_add(1, Ordering::Relaxed);
        if seq >= cfg.count {
            break;
        }
        let owned;
        let sock = match shared {
            Some(s) => s,
            None => match udp_socket() {
                Ok(s) => {
                    owned = s;
                    &owned
                }
                Err(e) => {
                    lock(acc).failed(format!("{e:#}"));
                    continue;
                }
            },
        };
        let target = targets[(seq % targets.len() as u64) as usize];
        let began = Instant::now();
        match udp_exchange(sock, target, cfg.timeout, seq) {
            Ok((reply, from)) => lock(acc).ok(reply, from, began.elapsed()),
            Err(e) => lock(acc).failed(format!("{e:#}")),
        }
    }
}

fn udp_socket() -> Result<UdpSocket> {
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("binding UDP client socket")
}

fn udp_exchange(
    sock: &UdpSocket,
    target: SocketAddrV4,
    timeout: Duration,
    seq: u64,
) -> Result<(Reply, SocketAddr)> {
    let req = format!("probe {seq}");
    sock.send_to(format!("{req}\n").as_bytes(), target)
        .with_context(|| format!("sendto {target}"))?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("timed out waiting for a reply from {target}");
        }
        sock.set_read_timeout(Some(left))?;
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            // ICMP port unreachable (the "reject" path) surfaces here on Linux.
            Err(e) => return Err(e).with_context(|| format!("recvfrom (target {target})")),
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        let reply: Reply = serde_json::from_str(text.trim())
            .with_context(|| format!("malformed reply {text:?} from {from}"))?;
        // A late reply to an earlier, timed-out request on a reused socket: skip it.
        if reply.req == req {
            return Ok((reply, from));
        }
    }
}

/// Parameters of [`run_hold`].
#[derive(Debug, Clone)]
pub struct HoldConfig {
    /// Where to connect.
    pub target: SocketAddrV4,
    /// Number of connections held open.
    pub conns: usize,
    /// How long to keep exchanging.
    pub duration: Duration,
    /// Pause between rounds of exchanges (one exchange on every live connection per round).
    pub interval: Duration,
    /// Bound on connect and on each exchange.
    pub timeout: Duration,
}

/// Opens `conns` connections, calls `on_ready` once all are attempted, then exchanges one
/// line on every live connection each `interval` until `duration` passes or `stop` is set.
/// A failed exchange marks the connection broken (and it is not used again), so `broken`
/// counts flows that a datapath change disturbed.
pub fn run_hold(
    cfg: &HoldConfig,
    stop: &AtomicBool,
    on_ready: impl FnOnce(),
) -> Result<HoldSummary> {
    check_target(cfg.target.into())?;
    check_duration("timeout", cfg.timeout)?;
    check_duration("duration", cfg.duration)?;
    check_duration("interval", cfg.interval)?;
    if cfg.conns == 0 || cfg.conns > MAX_HOLD_CONNS {
        bail!("conns {} is outside 1..={MAX_HOLD_CONNS}", cfg.conns);
    }
    let started = Instant::now();
    let end = started + cfg.duration;
    let mut conns: Vec<(HoldConn, Option<TcpStream>)> = Vec::with_capacity(cfg.conns);
    for _ in 0..cfg.conns {
        let mut c = HoldConn::default();
        let stream = TcpStream::connect_timeout(&cfg.target.into(), cfg.timeout)
            .and_then(|s| {
                s.set_read_timeout(Some(cfg.timeout))?;
                s.set_write_timeout(Some(cfg.timeout))?;
                s.set_nodelay(true)?;
                c.local = s.local_addr()?.to_string();
                Ok(s)
            })
            .map_err(|e| {
                c.broken = true;
                c.error = Some(format!("connect {}: {e}", cfg.target));
            })
            .ok();
        conns.push((c, stream));
    }
    on_ready();
    let mut seq = 0u64;
    let mut stopped_early = false;
    loop {
        for (c, stream) in conns.iter_mut() {
            let Some(s) = stream.as_ref() else { continue };
            seq += 1;
            match line_exchange(s, seq) {
                Ok(r) => {
                    c.ok += 1;
                    if !c.backends.contains(&r.id) {
                        c.backends.push(r.id);
                    }
                    if !c.peers.contains(&r.peer) {
                        c.peers.push(r.peer);
                    }
                }
                Err(e) => {
                    c.failed += 1;
                    c.broken = true;
                    c.error = Some(format!("{e:#}"));
                    *stream = None;
                }
            }
        }
        // Sleep until the next round in short steps so a stop request is honoured quickly.
        let next_round = Instant::now() + cfg.interval;
        loop {
            if stop.load(Ordering::Relaxed) {
                stopped_early = true;
                break;
            }
            let now = Instant::now();
            if now >= end || now >= next_round {
                break;
            }
            std::thread::sleep((next_round.min(end) - now).min(Duration::from_millis(20)));
        }
        if stopped_early || Instant::now() >= end {
            break;
        }
    }
    let mut sum = HoldSummary {
        stopped_early,
        ..HoldSummary::default()
    };
    for (c, _) in conns {
        sum.ok += c.ok;
        sum.failed += c.failed;
        sum.broken += u64::from(c.broken);
        sum.switched += u64::from(c.backends.len() > 1);
        sum.conns.push(c);
    }
    sum.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback_server(id: &str) -> (Server, u16, u16) {
        // Port 0 is not usable through ServeConfig (tests of the binary pass real ports), so
        // probe for a free pair by binding and releasing.
        let tcp = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let udp = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let srv = Server::start(ServeConfig {
            id: id.into(),
            tcp: vec![tcp],
            udp: vec![udp],
            bind: Ipv4Addr::LOCALHOST,
        })
        .expect("start server");
        (srv, tcp, udp)
    }

    #[test]
    fn tcp_udp_and_hold_over_loopback() {
        let (srv, tcp, udp) = loopback_server("a");
        let t = run_tcp(&TcpClientConfig {
            target: SocketAddrV4::new(Ipv4Addr::LOCALHOST, tcp),
            count: 20,
            timeout: Duration::from_secs(2),
            parallel: 4,
        })
        .unwrap();
        assert_eq!((t.ok, t.failed), (20, 0), "{t:?}");
        assert_eq!(t.by_backend.get("a"), Some(&20));
        assert_eq!(t.reply_from, vec![format!("127.0.0.1:{tcp}")]);
        assert_eq!(t.peers_seen_by_backend.len(), 20, "one peer per connection");

        for sockets in [UdpSockets::PerRequest, UdpSockets::One] {
            let u = run_udp(&UdpClientConfig {
                target: SocketAddrV4::new(Ipv4Addr::LOCALHOST, udp),
                count: 10,
                timeout: Duration::from_secs(2),
                sockets,
            })
            .unwrap();
            assert_eq!((u.ok, u.failed), (10, 0), "{u:?}");
            assert_eq!(u.reply_from, vec![format!("127.0.0.1:{udp}")]);
            let want = if sockets == UdpSockets::One { 1 } else { 10 };
            assert_eq!(u.peers_seen_by_backend.len(), want, "{sockets:?}");
        }

        let stop = AtomicBool::new(false);
        let h = run_hold(
            &HoldConfig {
                target: SocketAddrV4::new(Ipv4Addr::LOCALHOST, tcp),
                conns: 3,
                duration: Duration::from_millis(300),
                interval: Duration::from_millis(50),
                timeout: Duration::from_secs(2),
            },
            &stop,
            || {},
        )
        .unwrap();
        assert_eq!((h.broken, h.failed, h.switched), (0, 0, 0), "{h:?}");
        assert!(h.ok >= 6, "{h:?}");
        assert!(h.conns.iter().all(|c| c.backends == ["a"]));
        assert!(srv.served() >= 36);
        let summary_line = serde_json::to_string(&h).unwrap();
        assert_eq!(
            HoldSummary::from_output(&format!("ready\n{summary_line}\n")).unwrap(),
            h
        );
        srv.stop();
    }

    #[test]
    fn refuses_targets_outside_the_plan() {
        assert!(parse_target("8.8.8.8:53").is_err());
        assert!(parse_target("10.1.2.3:80").is_err());
        assert!(parse_target("10.96.0.10:80").is_ok());
        assert!(parse_target("203.0.113.7:443").is_ok());
    }

    #[test]
    fn refused_connection_is_counted_not_fatal() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = run_tcp(&TcpClientConfig {
            target: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            count: 3,
            timeout: Duration::from_millis(500),
            parallel: 1,
        })
        .unwrap();
        assert_eq!((s.ok, s.failed), (0, 3));
        assert_eq!(
            s.errors.len(),
            1,
            "identical errors are kept once: {:?}",
            s.errors
        );
    }
}
