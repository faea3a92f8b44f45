//! Traffic that real applications send, for the network tests: bulk TCP transfers verified by
//! SHA-256, UDP request/reply with large (fragmented) datagrams verified byte for byte, a
//! connected UDP socket that must see ECONNREFUSED, TCP clients that reuse one source port and
//! close with RST, and a long-lived UDP sender that records which backend answered when.
//!
//! # Layout
//! - [`BulkServer`] / [`run_bulk`]: `GET n` streams n bytes of [`pattern`] after a JSON header
//!   line naming the backend and the SHA-256 of what follows; `PUT n` receives n bytes and
//!   answers with their SHA-256. The client hashes independently and compares.
//! - [`SizedUdpServer`] / [`run_sized_udp`]: a request of any size (header line + pattern
//!   padding) gets a reply of the size it asks for; the reply carries the request's SHA-256
//!   and pattern padding, so corruption in either direction is found.
//! - [`run_udp_connected`]: one datagram on a connected socket, outcome `refused` / `reply` /
//!   `timeout`, with the time it took.
//! - [`run_tcp_rst`]: connections from one fixed source port, each closed with RST
//!   (`SO_LINGER` 0), so the next one reuses the 4-tuple at once.
//! - [`run_udp_stream`]: one UDP socket sending every interval; every reply is recorded with
//!   its wall-clock time, backend and source, so a test can say what happened after a change
//!   it made at a known time.
//!
//! Every run is bounded in size, count and time, and targets pass [`check_target`] (the
//! address plan of DESIGN §3), like the rest of `svc-probe`.

use std::io::{self, ErrorKind, Read, Write};
use std::mem::size_of;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::probe::{check_target, Reply, MAX_COUNT, MAX_DURATION};

/// Largest bulk transfer.
pub const MAX_BULK: u64 = 1 << 30;
/// Largest UDP request or reply of [`run_sized_udp`] (an IPv4 UDP payload's limit).
pub const MAX_UDP_PAYLOAD: usize = 65_507;
/// Length of the repeating [`pattern`]: a prime, so its seams never line up with segment or
/// fragment boundaries and a dropped, repeated or reordered piece changes the stream.
pub const PATTERN_LEN: usize = 1_048_573;
/// How long a blocked server thread waits in the kernel before re-checking its stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);
/// A bulk server gives up on a connection that sends nothing for this long.
const SERVER_STALL: Duration = Duration::from_secs(30);
/// Largest header line either side accepts.
const MAX_HEADER: usize = 4096;

/// The repeating content of every bulk stream and UDP padding: xorshift64* output, the same in
/// every process.
pub fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut v = Vec::with_capacity(PATTERN_LEN + 8);
        while v.len() < PATTERN_LEN {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        v.truncate(PATTERN_LEN);
        v
    })
}

/// Fills `buf` with the stream's bytes from `offset` on.
pub fn fill(buf: &mut [u8], offset: u64) {
    let p = pattern();
    let mut at = (offset % PATTERN_LEN as u64) as usize;
    let mut done = 0;
    while done < buf.len() {
        let n = (buf.len() - done).min(PATTERN_LEN - at);
        buf[done..done + n].copy_from_slice(&p[at..at + n]);
        done += n;
        at = 0;
    }
}

/// SHA-256 (hex) of the first `len` bytes of the stream.
pub fn stream_sha256(len: u64) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        fill(&mut buf[..n], off);
        h.update(&buf[..n]);
        off += n as u64;
    }
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Wall-clock time in ms since the epoch: comparable across processes of one machine (the test
/// notes when it changed a manifest; [`run_udp_stream`] stamps replies).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn check_duration(what: &str, d: Duration) -> Result<()> {
    ensure!(
        !d.is_zero() && d <= MAX_DURATION,
        "{what} {d:?} is outside (0, {MAX_DURATION:?}]"
    );
    Ok(())
}

fn wait_readable(fd: i32, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `pfd` is one valid pollfd for the whole call.
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

/// Reads one `\n`-terminated line byte by byte (nothing after it is consumed).
fn read_line(mut s: &TcpStream) -> Result<String> {
    let mut line = Vec::with_capacity(128);
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => bail!("connection closed after {} header bytes", line.len()),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!(
                    "timed out reading a header line ({} bytes so far)",
                    line.len()
                )
            }
            Err(e) => return Err(e).context("reading a header line"),
        }
        ensure!(line.len() <= MAX_HEADER, "header line too long");
    }
    String::from_utf8(line).context("header line is not UTF-8")
}

// ---------------------------------------------------------------------------------------------
// Bulk TCP
// ---------------------------------------------------------------------------------------------

/// The JSON header line of a bulk server: before the data of a `GET`, after the data of a `PUT`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkHeader {
    /// Backend id.
    pub id: String,
    /// The client as the backend saw it.
    pub peer: String,
    /// The address the connection arrived on.
    pub local: String,
    /// Bytes sent (`GET`) or received (`PUT`) by the server.
    pub bytes: u64,
    /// SHA-256 (hex) of those bytes.
    pub sha256: String,
    /// Set when the server failed (e.g. a `PUT` ended early).
    #[serde(default)]
    pub error: Option<String>,
}

/// TCP servers for `GET n` / `PUT n` (see the module docs), one thread per connection.
pub struct BulkServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl BulkServer {
    /// Binds every port (on 0.0.0.0) in the calling thread's namespace and starts serving.
    pub fn start(id: &str, ports: &[u16]) -> Result<BulkServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::new(Mutex::new(Vec::new()));
        let mut listeners = Vec::new();
        for &port in ports {
            listeners.push(
                TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                    .with_context(|| format!("binding bulk TCP port {port}"))?,
            );
        }
        pattern(); // built once, before the first client waits for it
        let mut threads = Vec::new();
        for l in listeners {
            let (id, stop, conns) = (id.to_owned(), stop.clone(), conns.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match wait_readable(l.as_raw_fd(), STOP_POLL) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => {
                            eprintln!("bulk {id}: poll: {e}");
                            return;
                        }
                    }
                    let Ok((s, peer)) = l.accept() else { continue };
                    let (id, stop) = (id.clone(), stop.clone());
                    let t = std::thread::spawn(move || {
                        if let Err(e) = bulk_conn(s, peer, &id, &stop) {
                            eprintln!("bulk {id}: {peer}: {e:#}");
                        }
                    });
                    let mut g = lock(&conns);
                    g.retain(|h| !h.is_finished());
                    g.push(t);
                }
            }));
        }
        Ok(BulkServer {
            stop,
            threads,
            conns,
        })
    }

    /// Stops every thread and closes every socket.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for t in std::mem::take(&mut *lock(&self.conns)) {
            let _ = t.join();
        }
    }
}

impl Drop for BulkServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn bulk_conn(s: TcpStream, peer: SocketAddr, id: &str, stop: &AtomicBool) -> Result<()> {
    s.set_read_timeout(Some(SERVER_STALL))?;
    s.set_write_timeout(Some(SERVER_STALL))?;
    let local = s.local_addr()?;
    let line = read_line(&s)?;
    let (verb, n) = line
        .split_once(' ')
        .with_context(|| format!("bad request {line:?}"))?;
    let n: u64 = n
        .trim()
        .parse()
        .with_context(|| format!("bad size in {line:?}"))?;
    ensure!(n <= MAX_BULK, "size {n} exceeds {MAX_BULK}");
    let mut hdr = BulkHeader {
        id: id.to_owned(),
        peer: peer.to_string(),
        local: local.to_string(),
        bytes: n,
        ..BulkHeader::default()
    };
    let mut w = &s;
    match verb {
        "GET" => {
            hdr.sha256 = stream_sha256(n);
            let mut out = serde_json::to_vec(&hdr)?;
            out.push(b'\n');
            w.write_all(&out)?;
            let mut buf = vec![0u8; 128 * 1024];
            let mut off = 0;
            while off < n {
                ensure!(!stop.load(Ordering::Relaxed), "stopped");
                let k = (n - off).min(buf.len() as u64) as usize;
                fill(&mut buf[..k], off);
                w.write_all(&buf[..k]).context("sending")?;
                off += k as u64;
            }
            s.shutdown(Shutdown::Write)?;
            // Wait for the client to close first so the server never sends a RST on unread data.
            let mut sink = [0u8; 64];
            let _ = (&s).read(&mut sink);
        }
        "PUT" => {
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 128 * 1024];
            let mut got = 0u64;
            let mut r = &s;
            while got < n {
                ensure!(!stop.load(Ordering::Relaxed), "stopped");
                let want = (n - got).min(buf.len() as u64) as usize;
                match r.read(&mut buf[..want]) {
                    Ok(0) => {
                        hdr.error = Some(format!("EOF after {got} of {n} bytes"));
                        break;
                    }
                    Ok(k) => {
                        h.update(&buf[..k]);
                        got += k as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).context(format!("receiving after {got} bytes")),
                }
            }
            hdr.bytes = got;
            hdr.sha256 = hex(&h.finalize());
            let mut out = serde_json::to_vec(&hdr)?;
            out.push(b'\n');
            w.write_all(&out)?;
            s.shutdown(Shutdown::Write)?;
            let mut sink = [0u8; 64];
            let _ = (&s).read(&mut sink);
        }
        _ => bail!("unknown verb in {line:?}"),
    }
    Ok(())
}

/// Direction of a bulk transfer, seen from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BulkDir {
    /// The server sends (`GET`).
    Download,
    /// The client sends (`PUT`).
    Upload,
}

/// Parameters of [`run_bulk`].
#[derive(Debug, Clone)]
pub struct BulkConfig {
    pub target: SocketAddrV4,
    pub dir: BulkDir,
    pub bytes: u64,
    /// Bound on connect and on any single read or write (a stall).
    pub stall: Duration,
    /// Bound on the whole transfer.
    pub deadline: Duration,
}

/// Result of [`run_bulk`], printed by `svc-probe bulk` as one JSON line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkResult {
    pub target: String,
    pub dir: String,
    /// The transfer completed and both hashes agree.
    pub ok: bool,
    /// Bytes the client received (download) or the server said it received (upload).
    pub bytes: u64,
    pub expected_bytes: u64,
    /// The client's SHA-256 of what it sent / expected.
    pub sha256_expected: String,
    /// The SHA-256 of what arrived (computed by the receiver).
    pub sha256_got: String,
    /// Backend id and the addresses it reported.
    pub backend: String,
    pub peer_seen_by_backend: String,
    /// `getpeername` on the client socket (reverse NAT: should be the target).
    pub reply_from: String,
    /// `IP_MTU` of the connected socket at the end: the path MTU the client's kernel learnt.
    pub path_mtu: Option<u32>,
    /// From connect to the last byte (download) or the server's verdict (upload).
    pub elapsed_ms: u64,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// One bulk transfer. Never fails as a whole once the target is valid: failures are in
/// [`BulkResult::error`].
pub fn run_bulk(cfg: &BulkConfig) -> Result<BulkResult> {
    check_target(cfg.target.into())?;
    check_duration("stall", cfg.stall)?;
    check_duration("deadline", cfg.deadline)?;
    ensure!(
        cfg.bytes <= MAX_BULK,
        "size {} exceeds {MAX_BULK}",
        cfg.bytes
    );
    let mut r = BulkResult {
        target: cfg.target.to_string(),
        dir: format!("{:?}", cfg.dir).to_lowercase(),
        expected_bytes: cfg.bytes,
        sha256_expected: stream_sha256(cfg.bytes),
        ..BulkResult::default()
    };
    let started = Instant::now();
    if let Err(e) = bulk_inner(cfg, &mut r, started) {
        r.error = Some(format!("{e:#}"));
    }
    r.elapsed_ms = started.elapsed().as_millis() as u64;
    r.ok = r.error.is_none()
        && r.bytes == cfg.bytes
        && r.sha256_got == r.sha256_expected
        && r.elapsed_ms <= cfg.deadline.as_millis() as u64;
    if r.error.is_none() && !r.ok {
        r.error = Some(if r.bytes != cfg.bytes {
            format!("{} bytes arrived, {} expected", r.bytes, cfg.bytes)
        } else if r.sha256_got != r.sha256_expected {
            "SHA-256 mismatch: the data arrived corrupted".to_owned()
        } else {
            format!("took {} ms, deadline {:?}", r.elapsed_ms, cfg.deadline)
        });
    }
    Ok(r)
}

fn bulk_inner(cfg: &BulkConfig, r: &mut BulkResult, started: Instant) -> Result<()> {
    let s = TcpStream::connect_timeout(&cfg.target.into(), cfg.stall)
        .with_context(|| format!("connect {}", cfg.target))?;
    s.set_read_timeout(Some(cfg.stall))?;
    s.set_write_timeout(Some(cfg.stall))?;
    r.reply_from = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let over = |what: &str, done: u64| -> Result<()> {
        ensure!(
            started.elapsed() <= cfg.deadline,
            "deadline {:?} passed while {what} ({done} of {} bytes)",
            cfg.deadline,
            cfg.bytes
        );
        Ok(())
    };
    let mut w = &s;
    match cfg.dir {
        BulkDir::Download => {
            w.write_all(format!("GET {}\n", cfg.bytes).as_bytes())?;
            let hdr: BulkHeader =
                serde_json::from_str(&read_line(&s)?).context("server header (GET)")?;
            r.backend = hdr.id.clone();
            r.peer_seen_by_backend = hdr.peer.clone();
            ensure!(
                hdr.sha256 == r.sha256_expected,
                "server {} announced SHA-256 {} for {} bytes, expected {}",
                hdr.id,
                hdr.sha256,
                hdr.bytes,
                r.sha256_expected
            );
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut rd = &s;
            loop {
                match rd.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => {
                        h.update(&buf[..k]);
                        r.bytes += k as u64;
                        ensure!(
                            r.bytes <= cfg.bytes,
                            "more than {} bytes arrived",
                            cfg.bytes
                        );
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        bail!(
                            "stalled for {:?} after {} of {} bytes",
                            cfg.stall,
                            r.bytes,
                            cfg.bytes
                        )
                    }
                    Err(e) => return Err(e).context(format!("receiving after {} bytes", r.bytes)),
                }
                over("receiving", r.bytes)?;
            }
            r.sha256_got = hex(&h.finalize());
        }
        BulkDir::Upload => {
            w.write_all(format!("PUT {}\n", cfg.bytes).as_bytes())?;
            let mut buf = vec![0u8; 128 * 1024];
            let mut off = 0u64;
            while off < cfg.bytes {
                let k = (cfg.bytes - off).min(buf.len() as u64) as usize;
                fill(&mut buf[..k], off);
                match w.write_all(&buf[..k]) {
                    Ok(()) => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        bail!("stalled for {:?} after sending {off} bytes", cfg.stall)
                    }
                    Err(e) => return Err(e).context(format!("sending after {off} bytes")),
                }
                off += k as u64;
                over("sending", off)?;
            }
            let hdr: BulkHeader =
                serde_json::from_str(&read_line(&s).context("waiting for the server's verdict")?)
                    .context("server verdict (PUT)")?;
            r.backend = hdr.id.clone();
            r.peer_seen_by_backend = hdr.peer.clone();
            r.bytes = hdr.bytes;
            r.sha256_got = hdr.sha256.clone();
            if let Some(e) = hdr.error {
                bail!("server {}: {e}", hdr.id);
            }
        }
    }
    r.path_mtu = ip_mtu(&s);
    let _ = s.shutdown(Shutdown::Both);
    Ok(())
}

/// `getsockopt(IP_MTU)` of a connected socket.
fn ip_mtu(s: &impl AsRawFd) -> Option<u32> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd; `v` and `len` describe a c_int buffer.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(v as u32)
}

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
    pub fn start(id: &str, ports: &[u16]) -> Result<SizedUdpServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut socks = Vec::new();
        for &port in ports {
            socks.push(
                UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
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
    pub target: SocketAddrV4,
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
    check_target(cfg.target.into())?;
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
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("binding UDP socket")?;
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
}

/// Connects a UDP socket to `target`, sends a request every `resend` and waits for the first
/// outcome until `timeout`.
pub fn run_udp_connected(
    target: SocketAddrV4,
    timeout: Duration,
    resend: Duration,
) -> Result<ConnectedUdpResult> {
    check_target(target.into())?;
    check_duration("timeout", timeout)?;
    check_duration("resend", resend)?;
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("binding")?;
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
    r.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// TCP from a fixed source port, closed with RST
// ---------------------------------------------------------------------------------------------

/// One connection of [`run_tcp_rst`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RstAttempt {
    pub ok: bool,
    pub backend: String,
    pub local: String,
    pub elapsed_ms: u64,
    pub error: Option<String>,
}

/// Result of [`run_tcp_rst`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RstSummary {
    pub target: String,
    pub src_port: u16,
    pub attempts: Vec<RstAttempt>,
}

fn tcp_socket_bound(port: u16) -> Result<TcpStreamBuilder> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket");
    }
    // SAFETY: fd is a fresh socket we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: valid fd, option value is a c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("SO_REUSEADDR");
    }
    let sa = sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    // SAFETY: `sa` is a valid sockaddr_in of the given size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("bind to port {port}"));
    }
    Ok(TcpStreamBuilder(fd))
}

struct TcpStreamBuilder(OwnedFd);

impl TcpStreamBuilder {
    /// Non-blocking connect bounded by `timeout`, then back to blocking.
    fn connect(self, target: SocketAddrV4, timeout: Duration) -> Result<TcpStream> {
        let fd = self.0.as_raw_fd();
        // SAFETY: fcntl on our fd.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        let sa = sockaddr(target);
        // SAFETY: `sa` is a valid sockaddr_in.
        let rc = unsafe {
            libc::connect(
                fd,
                (&sa as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e).with_context(|| format!("connect {target}"));
            }
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
            ensure!(n > 0, "connect {target}: timed out after {timeout:?}");
            let mut err: libc::c_int = 0;
            let mut len = size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: reads SO_ERROR into a c_int.
            unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    (&mut err as *mut libc::c_int).cast(),
                    &mut len,
                );
            }
            if err != 0 {
                return Err(io::Error::from_raw_os_error(err))
                    .with_context(|| format!("connect {target}"));
            }
        }
        // SAFETY: fcntl on our fd.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
        Ok(TcpStream::from(self.0))
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Closes with RST: `SO_LINGER {on, 0}` then close.
fn close_with_rst(s: TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd; the option value is a linger struct of the given size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

/// Sends `probe <seq>\n` and reads the JSON [`Reply`] line.
pub fn line_exchange(s: &TcpStream, seq: u64) -> Result<Reply> {
    let mut w = s;
    w.write_all(format!("probe {seq}\n").as_bytes())
        .context("send")?;
    let line = read_line(s)?;
    serde_json::from_str(&line).with_context(|| format!("malformed reply {line:?}"))
}

/// `count` connections one after another, each bound to `src_port`, one exchange, closed with
/// RST; `interval` apart.
pub fn run_tcp_rst(
    target: SocketAddrV4,
    src_port: u16,
    count: u64,
    interval: Duration,
    timeout: Duration,
) -> Result<RstSummary> {
    check_target(target.into())?;
    check_duration("timeout", timeout)?;
    ensure!(count <= 10_000, "count {count} exceeds 10000");
    ensure!(src_port != 0, "a fixed source port is required");
    let mut sum = RstSummary {
        target: target.to_string(),
        src_port,
        attempts: Vec::new(),
    };
    for seq in 0..count {
        if seq > 0 {
            std::thread::sleep(interval);
        }
        let began = Instant::now();
        let mut a = RstAttempt::default();
        let res = tcp_socket_bound(src_port)
            .and_then(|b| b.connect(target, timeout))
            .and_then(|s| {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                a.local = s.local_addr().map(|l| l.to_string()).unwrap_or_default();
                let reply = line_exchange(&s, seq);
                close_with_rst(s);
                reply
            });
        match res {
            Ok(reply) => {
                a.ok = true;
                a.backend = reply.id;
            }
            Err(e) => a.error = Some(format!("{e:#}")),
        }
        a.elapsed_ms = began.elapsed().as_millis() as u64;
        sum.attempts.push(a);
    }
    Ok(sum)
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
pub fn run_udp_stream(
    target: SocketAddrV4,
    interval: Duration,
    duration: Duration,
    stop: &AtomicBool,
    on_first_reply: impl FnOnce(&str),
) -> Result<StreamSummary> {
    check_target(target.into())?;
    check_duration("interval", interval)?;
    check_duration("duration", duration)?;
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("binding")?;
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
            if let Err(e) = sock.send_to(format!("probe {seq}\n").as_bytes(), target) {
                push_err(&mut sum.errors, format!("sendto: {e}"));
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
            Err(e) => push_err(&mut sum.errors, format!("recvfrom: {e}")),
        }
    }
    Ok(sum)
}

fn push_err(v: &mut Vec<String>, e: String) {
    if v.len() < 8 && !v.contains(&e) {
        v.push(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_deterministic_and_fill_wraps() {
        let p = pattern();
        assert_eq!(p.len(), PATTERN_LEN);
        let mut a = vec![0u8; 10];
        fill(&mut a, PATTERN_LEN as u64 - 5);
        assert_eq!(&a[..5], &p[PATTERN_LEN - 5..]);
        assert_eq!(&a[5..], &p[..5]);
        assert_ne!(stream_sha256(1000), stream_sha256(1001));
    }

    #[test]
    fn sized_request_layout() {
        let r = sized_request(7, 3000, 100);
        assert_eq!(r.len(), 100);
        assert!(r.starts_with(b"sized 7 3000\n"));
        let short = sized_request(7, 3000, 3);
        assert_eq!(short, b"sized 7 3000\n");
    }
}
