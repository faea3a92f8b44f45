//! Per-packet cost of the tc and XDP programs, measured with `BPF_PROG_TEST_RUN` (DESIGN §5).
//!
//! `cargo xtask bench [--repeat N]` runs this as root. For 1, 10k and 100k frontends in
//! `SVC_FRONTENDS` it times four tc paths beside `svc_floor`, an empty tc program run the same
//! way, and four XDP paths beside `svc_floor_xdp`, an empty XDP program; it prints ns/packet,
//! the excess over the floor of the same program type and the ratio to it; the same rows go to
//! `target/bench/perpacket.json`.
//!
//! # Every iteration takes the path it claims
//! For skb programs the kernel builds **one** skb from `data_in` and runs the program `repeat`
//! times on it (net/bpf/test_run.c, `bpf_prog_test_run_skb` → `bpf_test_run`), so iteration
//! k+1 sees iteration k's rewrite. A naive SYN with repeat 1M would time one DNAT and 999 999
//! misses. The setups below make the rewritten packet take the same path again, with real
//! rewrites (address *and* port change on every iteration, so every checksum helper runs), and
//! every measurement is proven afterwards: the claimed `SVC_STATS` counter must have grown by
//! exactly the number of iterations, and no other counter at all.
//! - **miss** (ingress, `NotService`): a SYN to [`OTHER_POD`]; nothing is rewritten.
//! - **established** (ingress, `DnatEstablished`): two frontends that are each other's backend,
//!   X = `10.96.0.10:80` → Y = `10.96.0.11:8080` → X. Two warm-up SYNs let the datapath create
//!   both flows; then an ACK to X alternates X→Y→X…, each iteration a conntrack hit.
//! - **tracing** (ingress, `DnatEstablished`): the established ACK again with one
//!   `svc-agent trace` slot in use, its filter for an address no packet has (what tracing
//!   costs everyone else), then for the client (every packet writes an event into the slot's
//!   ring; runs of 4 000, drained and counted between calls). The plain established row is
//!   the cost with tracing off.
//! - **reply** (egress, `RevNat`): the same two flows' reply entries form the same cycle:
//!   Y:8080→client is restored to X:80, X:80→client to Y:8080, …
//! - **new flow** (ingress, `DnatNew`): a conntrack miss needs a tuple never seen before, and
//!   the ingress rewrite changes only the destination, which is also the frontend key, so a
//!   repeat of R new flows needs R distinct frontends. A chain of [`CHAIN`] frontends, each the
//!   next one's backend (ports alternating 80/8080), is run with `repeat = CHAIN`; the 2×CHAIN
//!   conntrack entries it created are deleted between calls (outside the timed loop). The
//!   floor for this row is measured the same way (`repeat = CHAIN`, same number of calls).
//!   The chain's backends carry `BACKEND_F_LOCAL`, which only the uplink hook reads: the
//!   XDP new-flow row below reuses the chain.
//!
//! XDP (`svc_xdp`, counters under `Hook::Xdp`) re-runs the same buffer too, so it gets the
//! same treatment, with frames from the external client on the uplink:
//! - **XDP miss** (`NotService`): a SYN to [`OTHER_POD`]; nothing is rewritten.
//! - **XDP conntrack hit** (`DnatEstablished`): a NodePort X = `172.18.0.2:30080` whose only
//!   backend, flagged node-local, is Y = `10.96.0.12:8081`, a frontend whose local backend is
//!   X. Two warm-up SYNs create both flows; then an ACK to X alternates X→Y→X…, each iteration
//!   a conntrack hit that rewrites address, port and both checksums and returns `XDP_PASS` (a
//!   local backend: no FIB lookup, no MAC rewrite).
//! - **XDP new flow** (`DnatNew`): the tc new-flow chain, entered by a SYN from [`EXT_CLIENT`].
//!   Every backend is node-local, so each hop creates both conntrack entries without SNAT,
//!   rewrites the destination and returns `XDP_PASS` without a FIB lookup. Run and cleared
//!   like the tc row (`repeat = CHAIN` × calls), beside an XDP floor run the same way.
//! - **new flow, cache-cold**: the tc new-flow chain again, 300 calls with a 5 ms pause before
//!   each. Every XDP test-run call sleeps for the dispatcher swap's RCU grace period, so each
//!   starts with caches that other work has evicted; this row shows what that alone costs the
//!   same work on tc (it explains most of the XDP new flow's figure).
//! - **XDP reply** (`RevNat`): a reply of an external flow is translated and sent back out of
//!   the uplink (`bpf_fib_lookup`, MAC rewrite, `XDP_TX`). No flow the datapath creates has a
//!   reply whose translation is again such a reply (an SNAT'd reply is addressed to this node,
//!   which the FIB does not forward to), so the benchmark writes two reply entries, flagged
//!   `CT_F_EXTERNAL | CT_F_SNAT`, that map onto each other: R1 = [`NODEPORT`] → [`EXT_CLIENT`]
//!   is restored to R2 = `10.96.0.13:8082` → [`PEER_NODE`]`:40001` and R2 to R1. Both
//!   destinations are on the uplink's subnet with a permanent neighbour, so every iteration
//!   rewrites both addresses, both ports, both checksums and both MACs, decrements the TTL (as
//!   ip_forward would) and returns `XDP_TX`; the TTL limits a call to 60 hops, so the row runs
//!   calls of `repeat 60` from the TTL-64 frame.
//!
//! The XDP program calls `bpf_fib_lookup` on other paths, which reads the routing tables of
//! the calling thread's namespace, so every measurement runs on a thread inside an `XdpNode`
//! (a namespace of the benchmark's own, deleted at exit) with `ingress_ifindex` = its uplink.
//!
//! The chain and the cycles are part of the frontend count, so the "1 frontend" configuration
//! holds 4 + CHAIN frontends: the table prints the actual count. `SVC_FRONTENDS` holds at most
//! `MAX_FRONTENDS` (65 536) in the ABI; for 100k the benchmark raises that map's capacity at load
//! time and says so.
//!
//! The kernel's `duration` is the mean time per iteration inside its loop (the skb setup and the
//! syscall are outside it). Each single-call row is the median of [`ROUNDS`] runs.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use aya::EbpfLoader;
use clap::Parser;
use serde::Serialize;
use svc_common::{
    stat_index, CtEntry, Hook, Reason, BACKEND_F_LOCAL, CT_DIR_REPLY, CT_F_EXTERNAL, CT_F_SNAT,
    MAP_FRONTENDS, MAX_FRONTENDS, PROTO_TCP, REASON_COUNT, STATS_LEN,
};
use svc_testkit::fixtures::{
    ct_forward, ct_key, ct_reply, is_root, stat_name, Datapath, Pkt, Program, RunResult, XdpNode,
    XdpUplink, CLIENT_POD, EXT_CLIENT, EXT_CLIENT_MAC, FLOOR_PROGRAM, NODEPORT, NODE_IP, NODE_MAC,
    OTHER_POD, PEER_NODE, PEER_NODE_MAC, TCP_ACK, TCP_SYN, TC_ACT_UNSPEC, XDP_FLOOR_PROGRAM,
    XDP_PASS, XDP_PROGRAM, XDP_TX,
};

// What each module owns (see its first lines): measure.rs one frontend configuration timed,
// row by row; runs.rs how a row is run and proven (counters, traced, batched, median, chained).
mod ipv6;
mod measure;
mod runs;

use measure::*;
use runs::*;

/// Length of the new-flow chain: iterations per call of the new-flow row. Long enough that the
/// kernel's two clock reads per call cost well under 1 ns per iteration.
const CHAIN: u32 = 64;
/// Calls of the XDP new-flow chain (and its floor) per configuration; see where it is used.
const XDP_CHAIN_CALLS: u32 = 300;
/// The pause before each call of the cache-cold tc new-flow row: about an RCU grace period,
/// what every XDP test-run call waits for.
const COLD_PAUSE: Duration = Duration::from_millis(5);

/// Runs per single-call row; the median is reported.
const ROUNDS: usize = 5;

#[derive(Parser)]
#[command(about = "Per-packet cost of svc_pod_ingress/egress with BPF_PROG_TEST_RUN")]
struct Args {
    /// Iterations per measurement (the kernel's `repeat`).
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Frontend counts to measure at.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 10_000, 100_000])]
    frontends: Vec<u32>,
}

/// One line of the table (and of the JSON).
#[derive(Serialize, Clone)]
struct Row {
    /// Configuration asked for (1 / 10k / 100k).
    config_frontends: u32,
    /// Entries actually in `SVC_FRONTENDS` during the measurement.
    frontends: u32,
    fixture: &'static str,
    program: &'static str,
    /// How iterations were issued: `repeat R` in one call, or `repeat 64 × calls`.
    method: String,
    iterations: u64,
    ns_per_packet: f64,
    floor_ns: f64,
    excess_ns: f64,
    ratio: f64,
    /// The counter that proves the path, and how much it moved (== iterations).
    proof: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        is_root(),
        "needs root (BPF_PROG_TEST_RUN): run the benchmark as root"
    );
    ensure!(
        args.repeat >= 2 * CHAIN,
        "--repeat must be at least {}",
        2 * CHAIN
    );
    let started = Instant::now();
    // Everything runs on a thread inside the node namespace (see the module doc); the
    // namespace is deleted when `node` drops, also on error.
    let node = XdpNode::create().context("creating the XDP node namespace")?;
    let rows = node.run(|uplink| -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        for &n in &args.frontends {
            rows.extend(
                measure_config(n, args.repeat, uplink).with_context(|| format!("{n} frontends"))?,
            );
            rows.extend(
                ipv6::measure_config6(n, args.repeat, uplink)
                    .with_context(|| format!("IPv6, {n} frontends"))?,
            );
            rows.extend(
                ipv6::measure_wide(n, args.repeat)
                    .with_context(|| format!("generic keys, {n} frontends"))?,
            );
        }
        Ok(rows)
    })?;
    drop(node);
    print_table(&rows);
    let path = svc_testkit::fixtures::workspace_root().join("target/bench/perpacket.json");
    std::fs::create_dir_all(path.parent().unwrap())?;
    let json = serde_json::json!({
        "kernel": kernel_release(),
        "repeat": args.repeat,
        "chain": CHAIN,
        "rounds": ROUNDS,
        "rows": rows,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "wrote {} in {:.1} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Frontend X of the established/reply cycle (the Service's ClusterIP).
const CYCLE_X: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
/// Frontend Y of the cycle: X's backend, whose own backend is X.
const CYCLE_Y: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 11), 8080);

/// XDP cycle: frontend X, a NodePort on this node.
const XDP_CYCLE_X: SocketAddrV4 = SocketAddrV4::new(NODE_IP, 30080);
/// XDP cycle: frontend Y, X's node-local backend, whose own node-local backend is X.
const XDP_CYCLE_Y: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 12), 8081);

/// XDP reply pair: R1, the reply an external client sees (restored to R2).
const XDP_REPLY_1: (SocketAddrV4, SocketAddrV4) = (NODEPORT, EXT_CLIENT);
/// XDP reply pair: R2, restored to R1; another source, and a destination with another MAC.
const XDP_REPLY_2: (SocketAddrV4, SocketAddrV4) = (
    SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 13), 8082),
    SocketAddrV4::new(PEER_NODE, 40001),
);

/// A reply entry of an external SNAT'd flow that rewrites a packet to `to` (source, destination).
fn xdp_reply_entry(to: (SocketAddrV4, SocketAddrV4)) -> CtEntry {
    CtEntry {
        src_addr: to.0.ip().octets(),
        dst_addr: to.1.ip().octets(),
        src_port: to.0.port(),
        dst_port: to.1.port(),
        dir: CT_DIR_REPLY,
        flags: CT_F_EXTERNAL | CT_F_SNAT,
        tcp_flags: 0,
        state: svc_common::CT_STATE_ESTABLISHED,
        backend_id: 0,
        frontend_id: 0,
        created_ns: 0,
        last_seen_ns: 0,
        packets: 0,
        bytes: 0,
    }
}

/// How a row's program is run: a tc program on an skb, or XDP on the node's uplink.
#[derive(Clone, Copy)]
enum Runner {
    Tc,
    Xdp(XdpUplink),
}

impl Runner {
    fn run(self, dp: &Datapath, prog: &str, input: &[u8], repeat: u32) -> Result<RunResult> {
        match self {
            Runner::Tc => dp.run(prog, input, repeat),
            Runner::Xdp(uplink) => dp.run_xdp(prog, input, repeat, uplink.ifindex),
        }
    }

    /// The verdict every measured path (and the floor) returns.
    fn pass(self) -> u32 {
        match self {
            Runner::Tc => TC_ACT_UNSPEC,
            Runner::Xdp(_) => XDP_PASS,
        }
    }
}

/// The i-th frontend of the new-flow chain; ports alternate so every hop rewrites the port too.
fn chain_frontend(i: u32) -> SocketAddrV4 {
    let port = if i.is_multiple_of(2) { 80 } else { 8080 };
    SocketAddrV4::new(Ipv4Addr::new(10, 98, (i >> 8) as u8, i as u8), port)
}

/// The backend of chain frontend `i`: the next frontend, or a plain pod after the last.
fn chain_next(i: u32) -> SocketAddrV4 {
    if i + 1 < CHAIN {
        chain_frontend(i + 1)
    } else {
        SocketAddrV4::new(OTHER_POD, 8080)
    }
}

/// Filler frontend `i`, in a range no fixture packet is addressed to.
fn filler_frontend(i: u32) -> SocketAddrV4 {
    let [_, b, c, d] = i.to_be_bytes();
    SocketAddrV4::new(Ipv4Addr::new(10, 100 + b, c, d), 443)
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:>9}  {:<32} {:<16} {:<22} {:>9} {:>9} {:>10} {:>7}  proven by",
        "frontends", "fixture", "program", "method", "ns/pkt", "floor ns", "excess ns", "ratio"
    );
    for r in rows {
        println!(
            "{:>9}  {:<32} {:<16} {:<22} {:>9.1} {:>9.1} {:>10.1} {:>7.2}  {}",
            r.frontends,
            r.fixture,
            r.program,
            r.method,
            r.ns_per_packet,
            r.floor_ns,
            r.excess_ns,
            r.ratio,
            r.proof
        );
    }
    println!(
        "\nfloor = svc_floor (empty tc program) for tc rows, svc_floor_xdp (empty XDP program) \
         for XDP rows, run the same way; excess = ns/pkt - floor; ratio = ns/pkt / floor. \
         Counter names: hook/reason ({REASON_COUNT} reasons per hook)."
    );
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
