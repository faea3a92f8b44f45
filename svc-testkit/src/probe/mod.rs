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

// What each child owns (see its first lines); the limits, the reply and summary types and
// the target checks stay here.
mod client;
mod server;
mod sock;
#[cfg(test)]
mod tests;

pub use client::*;
pub use server::*;
pub use sock::*;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

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
/// documentation ranges used for "public" addresses; over IPv6 the dual-stack plan's pod
/// (fd00:10:244::/48), service (fd00:10:96::/48) and underlay (fd00:18::/64) networks,
/// loopback `::1` and the documentation range 2001:db8::/32. Both families are accepted
/// (`IP:PORT` or `[IPv6]:PORT`).
pub fn check_target(target: SocketAddr) -> Result<SocketAddr> {
    if !in_plan(target.ip()) {
        bail!(
            "target {target} is outside the test address plan (10.244/16, 10.96/16, \
             10.0.171.239, 172.18/16, 127/8, 192.0.2/24, 198.51.100/24, 203.0.113/24; \
             fd00:10:244::/48, fd00:10:96::/48, fd00:18::/64, ::1, 2001:db8::/32; \
             IPv4-mapped addresses of the IPv4 plan)"
        );
    }
    if target.port() == 0 {
        bail!("target {target}: port 0");
    }
    Ok(target)
}

/// Whether `ip` is in the test address plan of [`check_target`].
pub fn in_plan(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => matches!(
            v4.octets(),
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
        ),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            // An IPv4-mapped address (`::ffff:a.b.c.d`): a dual-stack socket's way to an IPv4
            // address of the plan (the IPv6 socket hooks' IPv4-mapped path).
            v6.is_loopback()
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| in_plan(IpAddr::V4(v4)))
                || matches!(
                    s,
                    [0xfd00, 0x10, 0x244, ..] | [0xfd00, 0x10, 0x96, ..] | [0xfd00, 0x18, 0, 0, ..]
                )
                || s[..2] == [0x2001, 0xdb8]
        }
    }
}

/// Parses `IP:PORT` or `[IPv6]:PORT` and applies [`check_target`].
pub fn parse_target(s: &str) -> Result<SocketAddr> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return check_target(addr);
    }
    // `fd00::2:80` is itself an IPv6 address: without brackets the port is a guess.
    if s.matches(':').count() > 1 {
        bail!("target {s:?}: an IPv6 target needs brackets, [ADDR]:PORT");
    }
    let addr = s
        .to_socket_addrs()
        .with_context(|| format!("parsing target {s:?} (want IP:PORT or [IPv6]:PORT)"))?
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
