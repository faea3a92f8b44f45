//! Packet capture in a test namespace and independent checksum verification.
//!
//! The datapath rewrites addresses and ports and must fix IPv4, TCP, UDP and ICMPv6 checksums
//! as it goes; DESIGN §2 ("the checksum trap") explains how that goes wrong silently over veth.
//! Tests capture on the underlay, where every packet has passed a node `eth0` with TX checksum
//! offload off — so every checksum is real — and [`verify_checksums`] recomputes each one, for
//! IPv4 and IPv6 (pseudo-header, extension headers, fragments), with the RFC 1071 code of
//! `verify.rs` and `verify6.rs`, which shares nothing with the kernel or with the eBPF programs
//! under test.
//!
//! Capturing on `br0` in the underlay namespace sees traffic forwarded between ports because
//! tcpdump puts the bridge into promiscuous mode, and a promiscuous bridge also delivers a copy
//! of every forwarded frame to itself.

// What each child owns (see its first lines); capturing (tcpdump in a namespace) stays here.
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests6;
mod verify;
mod verify6;

pub use verify::*;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::topology::{NsChild, Topology};

/// How long tcpdump gets to open the interface and to flush and exit.
const TCPDUMP_TIMEOUT: Duration = Duration::from_secs(10);
/// [`Capture::stop`] waits for the capture file to stop growing for this long…
const QUIET_FOR: Duration = Duration::from_millis(50);
/// …but not longer than this in total (steady background traffic never goes quiet).
const QUIET_MAX: Duration = Duration::from_secs(1);
/// A snap length that holds a whole underlay frame (MTU 1500, Ethernet header, a VLAN tag,
/// with room to spare): for [`Capture::start_snaplen`] on the underlay.
pub const UNDERLAY_SNAPLEN: u32 = 1600;
/// At most this many bad packets are described in a [`Report`] (the counts stay exact).
const MAX_DESCRIBED: usize = 50;

static CAPTURES: AtomicU32 = AtomicU32::new(0);

/// A running `tcpdump -i IFACE -w FILE -U -s 0 -n` in a namespace.
pub struct Capture {
    child: Option<NsChild>,
    file: CaptureFile,
}

impl Capture {
    /// Starts tcpdump in `ns` on `iface` and returns once it is capturing (it has printed
    /// `listening on`, which it does after the capture socket is bound and active).
    pub fn start(topology: &Topology, ns: &str, iface: &str) -> Result<Capture> {
        Self::start_filtered(topology, ns, iface, &[])
    }

    /// Like [`Capture::start`] with a tcpdump filter expression (e.g. `["icmp"]`): for tests
    /// that move megabytes and look only at a few packets, which a full capture would drop.
    pub fn start_filtered(
        topology: &Topology,
        ns: &str,
        iface: &str,
        filter: &[&str],
    ) -> Result<Capture> {
        Self::start_snaplen(topology, ns, iface, 0, filter)
    }

    /// Like [`Capture::start_filtered`] with a snap length (`-s`; 0: the whole packet, up to
    /// 256 KiB for GSO packets). On the underlay, where node `eth0`s have TX offloads off and
    /// every frame is at most one MTU, [`UNDERLAY_SNAPLEN`] keeps every byte while fitting
    /// about 160 times more packets in the capture ring than `-s 0`: a full capture of bulk
    /// transfers then keeps up instead of dropping.
    pub fn start_snaplen(
        topology: &Topology,
        ns: &str,
        iface: &str,
        snaplen: u32,
        filter: &[&str],
    ) -> Result<Capture> {
        let path = std::env::temp_dir().join(format!(
            "{}cap{}-{iface}.pcap",
            topology.prefix(),
            CAPTURES.fetch_add(1, Ordering::Relaxed)
        ));
        let path_s = path.to_string_lossy().into_owned();
        let snaplen = snaplen.to_string();
        // --immediate-mode: without it libpcap's TPACKET_V3 ring hands packets to tcpdump
        //   only when a block fills or its timeout (1 s) expires, and tcpdump exits on SIGINT
        //   without draining the ring: the last second of traffic would be counted by the
        //   kernel ("received by filter") but never written;
        // -B 65536 (KiB): in immediate mode every ring slot holds one packet of up to the
        //   snap length (-s 0 = 256 KiB, needed for GSO packets on pod veths), so the default
        //   2 MiB ring has 8 slots and drops packets under the lightest burst; 64 MiB = 256;
        // -U: write each packet out as it arrives, so stopping loses nothing;
        // -Z root: Debian's tcpdump otherwise drops to user `tcpdump` before creating FILE;
        // -n: no DNS lookups (no packets outside the namespaces).
        let mut argv = vec![
            "tcpdump",
            "--immediate-mode",
            "-i",
            iface,
            "-w",
            &path_s,
            "-U",
            "-B",
            "65536",
            "-s",
            &snaplen,
            "-n",
            "-Z",
            "root",
        ];
        argv.extend_from_slice(filter);
        let mut child = topology.spawn(ns, &argv)?;
        let file = CaptureFile {
            path,
            keep: std::env::var_os("SVCT_KEEP_PCAP").is_some(),
            captured: 0,
        };
        // tcpdump reports on stderr, which NsChild collects; poll it with a deadline.
        let deadline = std::time::Instant::now() + TCPDUMP_TIMEOUT;
        let mut step = Duration::from_millis(2);
        loop {
            let err = child.stderr();
            if err.contains("listening on") {
                break;
            }
            if let Ok(status) = child.wait_timeout(Duration::ZERO) {
                bail!(
                    "tcpdump on {iface} in {ns} exited ({status}): {}",
                    err.trim()
                );
            }
            if std::time::Instant::now() >= deadline {
                bail!("tcpdump on {iface} in {ns} not listening after {TCPDUMP_TIMEOUT:?}: {err}");
            }
            std::thread::sleep(step);
            step = (step * 2).min(Duration::from_millis(50));
        }
        Ok(Capture {
            child: Some(child),
            file,
        })
    }

    /// Stops tcpdump with SIGINT (it then flushes its buffer and writes its statistics) and
    /// waits for it. Fails if the kernel dropped packets: a verification over an incomplete
    /// capture would prove less than it claims.
    pub fn stop(mut self) -> Result<CaptureFile> {
        let child = self.child.take().context("capture already stopped")?;
        wait_until_quiet(&self.file.path);
        child.signal(libc::SIGINT)?;
        let fin = child.finish(TCPDUMP_TIMEOUT)?;
        let stat = |what: &str| {
            fin.stderr
                .lines()
                .find(|l| l.ends_with(what))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
        };
        let captured = stat("packets captured").with_context(|| {
            format!(
                "tcpdump did not report its statistics: {}",
                fin.stderr.trim()
            )
        })?;
        if let Some(dropped @ 1..) = stat("packets dropped by kernel") {
            bail!(
                "tcpdump: {dropped} packets dropped by kernel: {}",
                fin.stderr
            );
        }
        // The file now belongs to the returned CaptureFile; the empty path left behind makes
        // our own field's drop a no-op.
        Ok(CaptureFile {
            path: std::mem::take(&mut self.file.path),
            keep: self.file.keep,
            captured,
        })
    }
}

/// Waits (at most [`QUIET_MAX`]) until the pcap file has not grown for [`QUIET_FOR`]: packets
/// the test's last exchange produced may still be on their way from the kernel to tcpdump, and
/// tcpdump does not drain its socket when it is told to stop.
fn wait_until_quiet(path: &Path) {
    let size = || std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let deadline = std::time::Instant::now() + QUIET_MAX;
    let mut last = (size(), std::time::Instant::now());
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        let now = size();
        if now != last.0 {
            last = (now, std::time::Instant::now());
        } else if last.1.elapsed() >= QUIET_FOR {
            return;
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }
}

/// A pcap written by a [`Capture`]. Deleted on drop, except while a test panics or when
/// `SVCT_KEEP_PCAP` is set (then its path is printed, for Wireshark).
pub struct CaptureFile {
    path: PathBuf,
    keep: bool,
    captured: u64,
}

impl CaptureFile {
    /// Where the pcap is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Packets tcpdump said it wrote (to compare with [`Report::packets`]).
    pub fn captured(&self) -> u64 {
        self.captured
    }
}

impl Drop for CaptureFile {
    fn drop(&mut self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        if self.keep || std::thread::panicking() {
            eprintln!("capture kept at {}", self.path.display());
        } else if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("removing capture {}: {e}", self.path.display());
            }
        }
    }
}
