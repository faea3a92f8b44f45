//! UDP: sized request/reply with large (fragmented) datagrams ([`SizedUdpServer`],
//! [`run_sized_udp`]), one datagram on a connected socket that must see ECONNREFUSED
//! ([`run_udp_connected`]), and a long-lived sender recording who answered when
//! ([`run_udp_stream`]).

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    check_duration, fill, hex, pattern, unix_ms, wait_readable, MAX_UDP_PAYLOAD, STOP_POLL,
};
use crate::probe::{any_of, check_target, udp_sockets, Reply, MAX_COUNT};

// ---------------------------------------------------------------------------------------------
// Sized UDP
// ---------------------------------------------------------------------------------------------

/// The JSON line a [`SizedUdpServer`] reply starts with (pattern padding follows).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizedReply {
    pub id: String,
    pub peer: String,
    pub local: String,
    /// `<seq>` of the request.
    pub seq: u64,
    /// Length and SHA-256 of the request datagram as the server received it.
    pub req_len: usize,
    pub req_sha256: String,
}

/// Builds a request: `sized <seq> <reply_len>\n` then pattern bytes up to `len`.
pub fn sized_request(seq: u64, reply_len: usize, len: usize) -> Vec<u8> {
    let mut v = format!("sized {seq} {reply_len}\n").into_bytes();
    let head = v.len();
    if len > head {
        v.resize(len, 0);
        fill(&mut v[head..], head as u64);
    }
    v
}

/// UDP servers answering sized requests (see the module docs).
pub struct SizedUdpServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl SizedUdpServer {
    /// Binds every port (on 0.0.0.0 and `[::]`, one socket each) in the calling thread's
    /// namespace and starts serving.
    pub fn start(id: &str, ports: &[u16]) -> Result<SizedUdpServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut socks = Vec::new();
        for &port in ports {
            socks.extend(
                udp_sockets(Ipv4Addr::UNSPECIFIED.into(), port)
                    .with_context(|| format!("binding sized UDP port {port}"))?,
            );
        }
        pattern();
        let threads = socks
            .into_iter()
            .map(|s| {
                let (id, stop) = (id.to_owned(), stop.clone());
                std::thread::spawn(move || sized_loop(s, &id, &stop))
            })
            .collect();
        Ok(SizedUdpServer { stop, threads })
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for SizedUdpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn sized_loop(s: UdpSocket, id: &str, stop: &AtomicBool) {
    let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        match wait_readable(s.as_raw_fd(), STOP_POLL) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                eprintln!("sized {id}: poll: {e}");
                return;
            }
        }
        let Ok((n, src)) = s.recv_from(&mut buf) else {
            continue;
        };
        let req = &buf[..n];
        let head_end = req.iter().position(|&b| b == b'\n').unwrap_or(n);
        let head = String::from_utf8_lossy(&req[..head_end]).into_owned();
        let mut words = head.split_whitespace();
        let (Some("sized"), Some(seq), Some(len)) = (words.next(), words.next(), words.next())
        else {
            eprintln!("sized {id}: bad request from {src}: {head:?}");
            continue;
        };
        let (Ok(seq), Ok(reply_len)) = (seq.parse::<u64>(), len.parse::<usize>()) else {
            continue;
        };
        let hdr = SizedReply {
            id: id.to_owned(),
            peer: src.to_string(),
            local: local.clone(),
            seq,
            req_len: n,
            req_sha256: hex(&Sha256::digest(req)),
        };
        let Ok(mut out) = serde_json::to_vec(&hdr) else {
            continue;
        };
        out.push(b'\n');
        let head = out.len();
        let reply_len = reply_len.min(MAX_UDP_PAYLOAD);
        if reply_len > head {
            out.resize(reply_len, 0);
            fill(&mut out[head..], head as u64);
        }
        if let Err(e) = s.send_to(&out, src) {
            eprintln!("sized {id}: reply of {} bytes to {src}: {e}", out.len());
        }
    }
}

/// Parameters of [`run_sized_udp`].
#[derive(Debug, Clone)]
pub struct SizedUdpConfig {
    /// `IP:PORT` of either family.
    pub target: SocketAddr,
    pub count: u64,
    pub request_len: usize,
    pub reply_len: usize,
    pub timeout: Duration,
}

/// Result of [`run_sized_udp`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizedUdpSummary {
    pub target: String,
    pub request_len: usize,
    pub reply_len: usize,
    /// Exchanges whose reply arrived complete and intact, answering an intact request.
    pub ok: u64,
    /// Exchanges without a (matching) reply in time, or with a socket error.
    pub failed: u64,
    /// Replies that arrived but were wrong: length, padding, or the request's hash.
    pub corrupt: u64,
    pub by_backend: std::collections::BTreeMap<String, u64>,
    /// Sources of the replies (`recvfrom`): reverse NAT is right when this is the target only.
    pub reply_from: Vec<String>,
    pub errors: Vec<String>,
    pub elapsed_ms: u64,
}

/// `count` exchanges on one socket, one at a time. Each request is `request_len` bytes and asks
/// for `reply_len` bytes back; both are checked byte for byte.
pub fn run_sized_udp(cfg: &SizedUdpConfig) -> Result<SizedUdpSummary> {
    check_target(cfg.target)?;
    check_duration("timeout", cfg.timeout)?;
    ensure!(
        cfg.count <= MAX_COUNT,
        "count {} exceeds {MAX_COUNT}",
        cfg.count
    );
    ensure!(
        cfg.request_len <= MAX_UDP_PAYLOAD && cfg.reply_len <= MAX_UDP_PAYLOAD,
        "sizes must be at most {MAX_UDP_PAYLOAD}"
    );
    let started = Instant::now();
    let mut sum = SizedUdpSummary {
        target: cfg.target.to_string(),
        request_len: cfg.request_len,
        reply_len: cfg.reply_len,
        ..SizedUdpSummary::default()
    };
    let mut from_set = std::collections::BTreeSet::new();
    let sock = UdpSocket::bind(any_of(cfg.target)).context("binding UDP socket")?;
    let mut buf = vec![0u8; 65_536];
    let err = |sum: &mut SizedUdpSummary, e: String| {
        if sum.errors.len() < 8 && !sum.errors.contains(&e) {
            sum.errors.push(e);
        }
    };
    for seq in 0..cfg.count {
        let req = sized_request(seq, cfg.reply_len, cfg.request_len);
        let want_req_sha = hex(&Sha256::digest(&req));
        if let Err(e) = sock.send_to(&req, cfg.target) {
            sum.failed += 1;
            err(&mut sum, format!("sendto: {e}"));
            continue;
        }
        let deadline = Instant::now() + cfg.timeout;
        let outcome = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(format!(
                    "no reply of {} bytes within {:?} (request {} bytes)",
                    cfg.reply_len, cfg.timeout, cfg.request_len
                ));
            }
            sock.set_read_timeout(Some(left))?;
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                Err(e) => break Err(format!("recvfrom: {e}")),
            };
            let data = &buf[..n];
            let head_end = data.iter().position(|&b| b == b'\n').unwrap_or(n);
            let Ok(hdr) = serde_json::from_slice::<SizedReply>(&data[..head_end]) else {
                break Ok(Err(format!(
                    "reply from {from} of {n} bytes does not start with a header"
                )));
            };
            if hdr.seq != seq {
                continue; // a late reply to an earlier request
            }
            from_set.insert(from.to_string());
            let mut want = vec![0u8; cfg.reply_len.max(head_end + 1)];
            want[..=head_end].copy_from_slice(&data[..=head_end.min(n - 1)]);
            if want.len() > head_end + 1 {
                fill(&mut want[head_end + 1..], head_end as u64 + 1);
            }
            let verdict = if hdr.req_len != req.len() || hdr.req_sha256 != want_req_sha {
                Err(format!(
                    "request corrupted on the way: server got {} bytes sha256 {}, sent {} bytes sha256 {}",
                    hdr.req_len,
                    hdr.req_sha256,
                    req.len(),
                    want_req_sha
                ))
            } else if n != want.len() {
                Err(format!("reply of {n} bytes, expected {}", want.len()))
            } else if data != &want[..] {
                let at = data
                    .iter()
                    .zip(&want)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                Err(format!("reply padding differs at byte {at} of {n}"))
            } else {
                Ok(hdr.id)
            };
            break Ok(verdict);
        };
        match outcome {
            Ok(Ok(id)) => {
                sum.ok += 1;
                *sum.by_backend.entry(id).or_default() += 1;
            }
            Ok(Err(e)) => {
                sum.corrupt += 1;
                err(&mut sum, e);
            }
            Err(e) => {
                sum.failed += 1;
                err(&mut sum, e);
            }
        }
    }
    sum.reply_from = from_set.into_iter().collect();
    sum.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(sum)
}

// ---------------------------------------------------------------------------------------------
// Connected UDP: ECONNREFUSED
// ---------------------------------------------------------------------------------------------

/// Result of [`run_udp_connected`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectedUdpResult {
    pub target: String,
    /// `refused` (ECONNREFUSED: an ICMP port unreachable reached the socket), `reply`,
    /// `timeout`, or `error`.
    pub outcome: String,
    /// From the first send to the outcome.
    pub elapsed_ms: u64,
    /// Datagrams sent (one per `resend` interval until the outcome).
    pub sent: u64,
    pub error: Option<String>,
    /// With a hop limit ([`run_udp_connected_hops`]): the ICMP error the socket's error queue
    /// held (`IP_RECVERR` / `IPV6_RECVERR`), when the outcome was an error.
    #[serde(default)]
    pub icmp: Option<IcmpError>,
}

/// An ICMP or ICMPv6 error as the kernel queued it for a socket (`struct sock_extended_err`
/// and its offender address, linux/errqueue.h).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcmpError {
    /// `icmp` or `icmp6` (`SO_EE_ORIGIN_ICMP`, `SO_EE_ORIGIN_ICMP6`), or `local`.
    pub origin: String,
    /// ICMP type and code: (11, 0) is IPv4 TTL exceeded in transit, (3, 0) ICMPv6 hop limit
    /// exceeded, (3, 3) / (1, 4) port unreachable.
    pub icmp_type: u8,
    pub code: u8,
    /// `ee_errno`, as text.
    pub errno: String,
    /// Who sent it (`SO_EE_OFFENDER`), when the kernel knew.
    pub offender: Option<String>,
}

/// Connects a UDP socket to `target`, sends a request every `resend` and waits for the first
/// outcome until `timeout`.
pub fn run_udp_connected(
    target: SocketAddr,
    timeout: Duration,
    resend: Duration,
) -> Result<ConnectedUdpResult> {
    run_udp_connected_hops(target, timeout, resend, None)
}

/// [`run_udp_connected`] sending with `IP_TTL` / `IPV6_UNICAST_HOPS` set to `hop_limit` and
/// `IP_RECVERR` / `IPV6_RECVERR` on, so that every ICMP error reaches the socket (without it a
/// connected UDP socket only hears of hard errors: udp_err, __udp6_lib_err) and is reported
/// from its error queue: outcome `refused` (port unreachable) or `icmp` (any other error),
/// details in [`ConnectedUdpResult::icmp`].
pub fn run_udp_connected_hops(
    target: SocketAddr,
    timeout: Duration,
    resend: Duration,
    hop_limit: Option<u8>,
) -> Result<ConnectedUdpResult> {
    check_target(target)?;
    check_duration("timeout", timeout)?;
    check_duration("resend", resend)?;
    let sock = UdpSocket::bind(any_of(target)).context("binding")?;
    if let Some(hops) = hop_limit {
        ensure!(hops > 0, "hop limit 0");
        let (level, hops_opt, recverr) = if target.is_ipv6() {
            (
                libc::IPPROTO_IPV6,
                libc::IPV6_UNICAST_HOPS,
                libc::IPV6_RECVERR,
            )
        } else {
            (libc::IPPROTO_IP, libc::IP_TTL, libc::IP_RECVERR)
        };
        set_int_opt(&sock, level, hops_opt, i32::from(hops)).context("setting the hop limit")?;
        set_int_opt(&sock, level, recverr, 1).context("setting RECVERR")?;
    }
    sock.connect(target).context("connect")?;
    let mut r = ConnectedUdpResult {
        target: target.to_string(),
        ..ConnectedUdpResult::default()
    };
    let started = Instant::now();
    let mut buf = vec![0u8; 65_536];
    let mut next_send = started;
    loop {
        let now = Instant::now();
        if now >= started + timeout {
            r.outcome = "timeout".into();
            break;
        }
        if now >= next_send {
            match sock.send(format!("probe {}\n", r.sent).as_bytes()) {
                Ok(_) => r.sent += 1,
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    r.outcome = "refused".into();
                    break;
                }
                Err(e) => {
                    r.outcome = "error".into();
                    r.error = Some(format!("send: {e}"));
                    break;
                }
            }
            next_send = now + resend;
        }
        let wait = (started + timeout)
            .min(next_send)
            .saturating_duration_since(Instant::now());
        sock.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        match sock.recv(&mut buf) {
            Ok(_) => {
                r.outcome = "reply".into();
                break;
            }
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                r.outcome = "refused".into();
                break;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                r.outcome = "error".into();
                r.error = Some(format!("recv: {e}"));
                break;
            }
        }
    }
    if hop_limit.is_some() && r.outcome != "reply" && r.outcome != "timeout" {
        r.icmp = read_error_queue(&sock);
        if r.outcome == "error" && r.icmp.is_some() {
            r.outcome = "icmp".into();
        }
    }
    r.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(r)
}

fn set_int_opt(sock: &UdpSocket, level: i32, name: i32, value: i32) -> std::io::Result<()> {
    // SAFETY: setsockopt on an fd we own with a pointer to a live int and its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The first ICMP error on the socket's error queue (`recvmsg(MSG_ERRQUEUE)`), if any.
fn read_error_queue(sock: &UdpSocket) -> Option<IcmpError> {
    let mut data = [0u8; 2048];
    let mut control = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: recvmsg on an fd we own, with buffers described by `msg`.
    let n = unsafe {
        libc::recvmsg(
            sock.as_raw_fd(),
            &mut msg,
            libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return None;
    }
    // SAFETY: walking the control messages the kernel wrote into `control`, as CMSG_* allow.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let (level, ty) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
            // The data's length, to bound every read below.
            let len = ((*cmsg).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
            let ee_len = std::mem::size_of::<libc::sock_extended_err>();
            if ((level == libc::IPPROTO_IP && ty == libc::IP_RECVERR)
                || (level == libc::IPPROTO_IPV6 && ty == libc::IPV6_RECVERR))
                && len >= ee_len + std::mem::size_of::<libc::sockaddr>()
            {
                let ee_ptr = libc::CMSG_DATA(cmsg) as *const libc::sock_extended_err;
                let ee = std::ptr::read_unaligned(ee_ptr);
                let origin = match ee.ee_origin {
                    libc::SO_EE_ORIGIN_ICMP => "icmp",
                    libc::SO_EE_ORIGIN_ICMP6 => "icmp6",
                    libc::SO_EE_ORIGIN_LOCAL => "local",
                    _ => "other",
                };
                // SO_EE_OFFENDER: the sockaddr right after the struct.
                let off = ee_ptr.add(1) as *const libc::sockaddr;
                let fits = |n: usize| len >= ee_len + n;
                let offender = match i32::from(std::ptr::read_unaligned(off).sa_family) {
                    libc::AF_INET if fits(std::mem::size_of::<libc::sockaddr_in>()) => {
                        let a = std::ptr::read_unaligned(off as *const libc::sockaddr_in);
                        Some(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).to_string())
                    }
                    libc::AF_INET6 if fits(std::mem::size_of::<libc::sockaddr_in6>()) => {
                        let a = std::ptr::read_unaligned(off as *const libc::sockaddr_in6);
                        Some(std::net::Ipv6Addr::from(a.sin6_addr.s6_addr).to_string())
                    }
                    _ => None,
                };
                return Some(IcmpError {
                    origin: origin.into(),
                    icmp_type: ee.ee_type,
                    code: ee.ee_code,
                    errno: std::io::Error::from_raw_os_error(ee.ee_errno as i32).to_string(),
                    offender,
                });
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Long-lived UDP sender
// ---------------------------------------------------------------------------------------------

/// One reply of [`run_udp_stream`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamReply {
    pub seq: u64,
    /// Wall-clock ms ([`unix_ms`]) when the request was sent and when the reply arrived.
    pub sent_ms: u64,
    pub recv_ms: u64,
    pub backend: String,
    /// `recvfrom` source.
    pub from: String,
}

/// Result of [`run_udp_stream`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSummary {
    pub target: String,
    /// The socket's own address (the flow's tuple).
    pub local: String,
    pub sent: u64,
    pub replies: Vec<StreamReply>,
    /// Socket errors (e.g. ECONNREFUSED from an ICMP error), first few.
    pub errors: Vec<String>,
    pub stopped_early: bool,
    /// With `connect`: when (unix ms) a send or receive failed and the socket was connected
    /// again (as an application does after ECONNABORTED).
    #[serde(default)]
    pub reconnects_ms: Vec<u64>,
}

impl StreamSummary {
    /// Sequence numbers sent at or after `from_ms` that got no reply.
    pub fn lost_after(&self, from_ms: u64, interval_ms: u64) -> Vec<u64> {
        let answered: std::collections::BTreeSet<u64> =
            self.replies.iter().map(|r| r.seq).collect();
        let first = self.replies.first().map(|r| (r.seq, r.sent_ms));
        (0..self.sent)
            .filter(|s| !answered.contains(s))
            .filter(|&s| {
                first.is_none_or(|(fs, fms)| {
                    fms.saturating_add((s.saturating_sub(fs)) * interval_ms) >= from_ms
                })
            })
            .collect()
    }
}

/// Sends `probe <seq>` every `interval` from one unconnected socket for `duration` (or until
/// `stop`), recording every reply. `on_first_reply` runs with the backend id of the first
/// reply (the binary prints `first <id>`, so a test knows which backend the flow is on).
///
/// `connect`: the socket is connected to `target` (send/recv instead of sendto/recvfrom); a
/// send or receive that fails connects it again, and the time is recorded.
pub fn run_udp_stream(
    target: SocketAddr,
    interval: Duration,
    duration: Duration,
    connect: bool,
    stop: &AtomicBool,
    on_first_reply: impl FnOnce(&str),
) -> Result<StreamSummary> {
    check_target(target)?;
    check_duration("interval", interval)?;
    check_duration("duration", duration)?;
    let sock = UdpSocket::bind(any_of(target)).context("binding")?;
    if connect {
        sock.connect(target).context("connecting")?;
    }
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut sum = StreamSummary {
        target: target.to_string(),
        local: sock.local_addr()?.to_string(),
        ..StreamSummary::default()
    };
    let started = Instant::now();
    let mut sent_at: Vec<u64> = Vec::new();
    let mut next = started;
    let mut buf = vec![0u8; 65_536];
    let mut on_first = Some(on_first_reply);
    loop {
        if stop.load(Ordering::Relaxed) {
            sum.stopped_early = true;
            break;
        }
        let now = Instant::now();
        if now >= started + duration {
            break;
        }
        if now >= next {
            let seq = sum.sent;
            sent_at.push(unix_ms());
            let msg = format!("probe {seq}\n");
            let sent = if connect {
                sock.send(msg.as_bytes())
            } else {
                sock.send_to(msg.as_bytes(), target)
            };
            if let Err(e) = sent {
                push_err(&mut sum.errors, format!("send: {e}"));
                if connect {
                    reconnect(&sock, target, &mut sum)?;
                }
            }
            sum.sent += 1;
            next += interval;
        }
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let recv_ms = unix_ms();
                let text = String::from_utf8_lossy(&buf[..n]);
                match serde_json::from_str::<Reply>(text.trim()) {
                    Ok(reply) => {
                        let seq = reply
                            .req
                            .strip_prefix("probe ")
                            .and_then(|s| s.parse::<u64>().ok());
                        if let Some(seq) = seq.filter(|&s| (s as usize) < sent_at.len()) {
                            if let Some(f) = on_first.take() {
                                f(&reply.id);
                            }
                            sum.replies.push(StreamReply {
                                seq,
                                sent_ms: sent_at[seq as usize],
                                recv_ms,
                                backend: reply.id,
                                from: from.to_string(),
                            });
                        }
                    }
                    Err(_) => push_err(&mut sum.errors, format!("malformed reply from {from}")),
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                push_err(&mut sum.errors, format!("recv: {e}"));
                if connect {
                    reconnect(&sock, target, &mut sum)?;
                }
            }
        }
    }
    Ok(sum)
}

/// Connects `sock` to `target` again after an error, recording when.
fn reconnect(sock: &UdpSocket, target: SocketAddr, sum: &mut StreamSummary) -> Result<()> {
    sum.reconnects_ms.push(unix_ms());
    sock.connect(target).context("connecting again")
}

fn push_err(v: &mut Vec<String>, e: String) {
    if v.len() < 8 && !v.contains(&e) {
        v.push(e);
    }
}
