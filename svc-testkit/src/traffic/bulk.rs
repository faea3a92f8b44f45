//! Bulk TCP: [`BulkServer`] streams or receives n bytes of [`pattern`] behind a JSON header,
//! and [`run_bulk`] transfers and verifies them by SHA-256 from the client's side.

use std::{
    io::{ErrorKind, Read, Write},
    mem::size_of,
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    check_duration, fill, hex, lock, pattern, read_line, stream_sha256, wait_readable, MAX_BULK,
    SERVER_STALL, STOP_POLL,
};
use crate::probe::{check_target, tcp_listeners};

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
    /// Binds every port (on 0.0.0.0 and `[::]`, one socket each) in the calling thread's
    /// namespace and starts serving.
    pub fn start(id: &str, ports: &[u16]) -> Result<BulkServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::new(Mutex::new(Vec::new()));
        let mut listeners = Vec::new();
        for &port in ports {
            listeners.extend(
                tcp_listeners(Ipv4Addr::UNSPECIFIED.into(), port)
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
    let mut words = line.split_whitespace();
    let (verb, n) = words
        .next()
        .zip(words.next())
        .with_context(|| format!("bad request {line:?}"))?;
    let n: u64 = n.parse().with_context(|| format!("bad size in {line:?}"))?;
    // `raw`: a throughput measurement (benchmarks): zeros, no hashing on either side, so the
    // figure is the path's, not SHA-256's.
    let raw = match words.next() {
        None => false,
        Some("raw") => true,
        Some(w) => bail!("unknown option {w:?} in {line:?}"),
    };
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
            if !raw {
                hdr.sha256 = stream_sha256(n);
            }
            let mut out = serde_json::to_vec(&hdr)?;
            out.push(b'\n');
            w.write_all(&out)?;
            let mut buf = vec![0u8; 128 * 1024];
            let mut off = 0;
            while off < n {
                ensure!(!stop.load(Ordering::Relaxed), "stopped");
                let k = (n - off).min(buf.len() as u64) as usize;
                if !raw {
                    fill(&mut buf[..k], off);
                }
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
                        if !raw {
                            h.update(&buf[..k]);
                        }
                        got += k as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).context(format!("receiving after {got} bytes")),
                }
            }
            hdr.bytes = got;
            if !raw {
                hdr.sha256 = hex(&h.finalize());
            }
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
    /// `IP:PORT` of either family.
    pub target: SocketAddr,
    pub dir: BulkDir,
    pub bytes: u64,
    /// Bound on connect and on any single read or write (a stall).
    pub stall: Duration,
    /// Bound on the whole transfer.
    pub deadline: Duration,
    /// Verify nothing (zeros, no SHA-256 anywhere): for throughput figures, where hashing
    /// would be what is measured. `ok` then means every byte arrived.
    pub raw: bool,
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
    /// `IP_MTU` (`IPV6_MTU`) of the connected socket at the end: the path MTU the client's
    /// kernel learnt.
    pub path_mtu: Option<u32>,
    /// From connect to the last byte (download) or the server's verdict (upload).
    pub elapsed_ms: u64,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// One bulk transfer. Never fails as a whole once the target is valid: failures are in
/// [`BulkResult::error`].
pub fn run_bulk(cfg: &BulkConfig) -> Result<BulkResult> {
    check_target(cfg.target)?;
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
        sha256_expected: if cfg.raw {
            String::new()
        } else {
            stream_sha256(cfg.bytes)
        },
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
    let s = TcpStream::connect_timeout(&cfg.target, cfg.stall)
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
            w.write_all(format!("GET {}{}\n", cfg.bytes, raw_word(cfg.raw)).as_bytes())?;
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
                        if !cfg.raw {
                            h.update(&buf[..k]);
                        }
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
            if !cfg.raw {
                r.sha256_got = hex(&h.finalize());
            }
        }
        BulkDir::Upload => {
            w.write_all(format!("PUT {}{}\n", cfg.bytes, raw_word(cfg.raw)).as_bytes())?;
            let mut buf = vec![0u8; 128 * 1024];
            let mut off = 0u64;
            while off < cfg.bytes {
                let k = (cfg.bytes - off).min(buf.len() as u64) as usize;
                if !cfg.raw {
                    fill(&mut buf[..k], off);
                }
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
    r.path_mtu = ip_mtu(&s, cfg.target.is_ipv6());
    let _ = s.shutdown(Shutdown::Both);
    Ok(())
}

/// The request's option word for a raw transfer.
fn raw_word(raw: bool) -> &'static str {
    if raw {
        " raw"
    } else {
        ""
    }
}

/// `getsockopt(IP_MTU)` (`IPV6_MTU` for IPv6) of a connected socket.
fn ip_mtu(s: &impl AsRawFd, v6: bool) -> Option<u32> {
    let (level, name) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU)
    };
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd; `v` and `len` describe a c_int buffer.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(v as u32)
}
