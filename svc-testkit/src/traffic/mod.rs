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

// What each child owns (see its first lines); the pattern, the limits and the helpers the
// runs share stay here.
mod bulk;
mod tcp_rst;
#[cfg(test)]
mod tests;
mod udp;

pub use bulk::*;
pub use tcp_rst::*;
pub use udp::*;

use std::io::{self, ErrorKind, Read};
use std::net::TcpStream;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

use crate::probe::MAX_DURATION;

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
