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
    time::Instant,
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

/// Length of the new-flow chain: iterations per call of the new-flow row. Long enough that the
/// kernel's two clock reads per call cost well under 1 ns per iteration.
const CHAIN: u32 = 64;
/// Calls of the XDP new-flow chain (and its floor) per configuration; see where it is used.
const XDP_CHAIN_CALLS: u32 = 300;

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

fn measure_config(config: u32, repeat: u32, uplink: XdpUplink) -> Result<Vec<Row>> {
    let needed = 4 + CHAIN;
    let total = config.max(needed);
    let mut loader = EbpfLoader::new();
    if total > MAX_FRONTENDS {
        let cap = total.next_power_of_two();
        println!("note: {MAP_FRONTENDS} capacity raised from {MAX_FRONTENDS} (ABI) to {cap} for {total} frontends");
        loader.map_max_entries(MAP_FRONTENDS, cap);
    }
    let mut dp = Datapath::load_xdp_with(&mut loader)?;
    dp.set_config(NODE_IP)?;

    // The cycle: X → Y → X (backends written before the frontends that use them).
    dp.put_backend(1, CYCLE_Y, PROTO_TCP)?;
    dp.put_backend(2, CYCLE_X, PROTO_TCP)?;
    dp.add_service(CYCLE_X, PROTO_TCP, 1, &[(1, CYCLE_Y)])?;
    dp.add_service(CYCLE_Y, PROTO_TCP, 2, &[(2, CYCLE_X)])?;
    // The XDP cycle: X → Y → X, both backends node-local.
    dp.put_backend_flags(3, XDP_CYCLE_Y, PROTO_TCP, BACKEND_F_LOCAL)?;
    dp.put_backend_flags(4, XDP_CYCLE_X, PROTO_TCP, BACKEND_F_LOCAL)?;
    dp.put_slot(3, 1, 3)?;
    dp.put_frontend(XDP_CYCLE_X, PROTO_TCP, 3, 1)?;
    dp.put_slot(4, 1, 4)?;
    dp.put_frontend(XDP_CYCLE_Y, PROTO_TCP, 4, 1)?;
    // The chain: C_i → C_{i+1}; the last one's backend is a plain pod. Node-local backends,
    // so that XDP translates the chain without SNAT (the pod hooks ignore the flag).
    for i in 0..CHAIN {
        dp.put_backend_flags(100 + i, chain_next(i), PROTO_TCP, BACKEND_F_LOCAL)?;
        dp.put_slot(100 + i, 1, 100 + i)?;
        dp.put_frontend(chain_frontend(i), PROTO_TCP, 100 + i, 1)?;
    }
    // The XDP reply pair: R1 → R2 → R1 (see the module doc).
    for (key, to) in [(XDP_REPLY_1, XDP_REPLY_2), (XDP_REPLY_2, XDP_REPLY_1)] {
        dp.ct_put(&ct_key(key.0, key.1, PROTO_TCP), xdp_reply_entry(to));
    }
    let t = Instant::now();
    for i in 0..total - needed {
        dp.put_frontend(filler_frontend(i), PROTO_TCP, 1_000_000 + i, 1)?;
    }
    let count = svc_agent::dataplane::Dataplane::snapshot(&dp.maps)?
        .frontends
        .len() as u32;
    ensure!(
        count == total,
        "expected {total} frontends in the map, found {count}"
    );
    println!(
        "{config:>6} frontends: map holds {count} (filled in {:.2} s)",
        t.elapsed().as_secs_f64()
    );

    // Warm-up: let the datapath create both cycle flows (X→Y, then Y→X).
    let syn_x = Pkt::tcp(CLIENT_POD, CYCLE_X, TCP_SYN).build();
    let first = dp.run(Program::Ingress.name(), &syn_x, 1)?;
    let second = dp.run(Program::Ingress.name(), &first.output, 1)?;
    ensure!(
        dp.counter(Hook::PodIngress, Reason::DnatNew) == 2,
        "cycle warm-up did not create two flows"
    );
    ensure!(second.output == syn_x, "the cycle does not return to X");

    let ack_x = Pkt::tcp(CLIENT_POD, CYCLE_X, TCP_ACK).build();
    let reply_y = Pkt::tcp(CYCLE_Y, CLIENT_POD, TCP_SYN | TCP_ACK).build();
    let miss = Pkt::tcp(CLIENT_POD, SocketAddrV4::new(OTHER_POD, 80), TCP_SYN).build();

    // XDP warm-up: the same for the XDP cycle, with frames from the external client.
    let eth = |p: Pkt| p.build_eth(EXT_CLIENT_MAC, NODE_MAC);
    let xdp = Runner::Xdp(uplink);
    let xsyn = eth(Pkt::tcp(EXT_CLIENT, XDP_CYCLE_X, TCP_SYN));
    let first = xdp.run(&dp, XDP_PROGRAM, &xsyn, 1)?;
    let second = xdp.run(&dp, XDP_PROGRAM, &first.output, 1)?;
    ensure!(
        dp.counter(Hook::Xdp, Reason::DnatNew) == 2,
        "XDP cycle warm-up did not create two flows"
    );
    ensure!(second.output == xsyn, "the XDP cycle does not return to X");
    let xack = eth(Pkt::tcp(EXT_CLIENT, XDP_CYCLE_X, TCP_ACK));
    let xmiss = eth(Pkt::tcp(
        EXT_CLIENT,
        SocketAddrV4::new(OTHER_POD, 80),
        TCP_SYN,
    ));
    // The reply pair, checked frame by frame: R1 → R2 (towards PEER_NODE) → R1 (towards the
    // client), so R1 as it leaves the node is the input of the reply row.
    // Each hop decrements the TTL, as ip_forward would (`XDP_TX` bypasses it).
    let reply_frame = |(src, dst): (SocketAddrV4, SocketAddrV4), mac, ttl| {
        Pkt::tcp(src, dst, TCP_SYN | TCP_ACK)
            .with_ttl(ttl)
            .build_eth(NODE_MAC, mac)
    };
    let xreply = reply_frame(XDP_REPLY_1, EXT_CLIENT_MAC, 64);
    for (hop, input, want) in [
        (
            1,
            xreply.clone(),
            reply_frame(XDP_REPLY_2, PEER_NODE_MAC, 63),
        ),
        (
            2,
            reply_frame(XDP_REPLY_2, PEER_NODE_MAC, 63),
            reply_frame(XDP_REPLY_1, EXT_CLIENT_MAC, 62),
        ),
    ] {
        let out = xdp.run(&dp, XDP_PROGRAM, &input, 1)?;
        ensure!(
            out.retval == XDP_TX && out.output == want,
            "the XDP reply pair's hop {hop} (R1 → R2 → R1) is not as expected (verdict {}):\n{}",
            out.retval,
            svc_testkit::fixtures::diff_frames(&want, &out.output).join("\n")
        );
    }
    ensure!(
        dp.counter(Hook::Xdp, Reason::RevNat) == 2,
        "XDP reply warm-up did not take the reverse-NAT path twice"
    );

    let floor = median_run(
        &dp,
        Runner::Tc,
        FLOOR_PROGRAM,
        &syn_x,
        repeat,
        TC_ACT_UNSPEC,
        None,
    )?;
    let method = format!("repeat {repeat}");
    let mut rows = Vec::new();
    let mut row = |fixture,
                   prog: &'static str,
                   (ns, proof): (f64, String),
                   floor: f64,
                   method: &str,
                   iters: u64| {
        rows.push(Row {
            config_frontends: config,
            frontends: total,
            fixture,
            program: prog,
            method: method.to_string(),
            iterations: iters,
            ns_per_packet: ns,
            floor_ns: floor,
            excess_ns: ns - floor,
            ratio: ns / floor,
            proof,
        });
    };
    let it = u64::from(repeat) * ROUNDS as u64;
    row(
        "floor: empty tc program",
        FLOOR_PROGRAM,
        floor.clone(),
        floor.0,
        &method,
        it,
    );
    let m = median_run(
        &dp,
        Runner::Tc,
        Program::Ingress.name(),
        &miss,
        repeat,
        TC_ACT_UNSPEC,
        Some((Hook::PodIngress, Reason::NotService)),
    )?;
    row(
        "miss: SYN to a non-service pod",
        Program::Ingress.name(),
        m,
        floor.0,
        &method,
        it,
    );
    let e = median_run(
        &dp,
        Runner::Tc,
        Program::Ingress.name(),
        &ack_x,
        repeat,
        TC_ACT_UNSPEC,
        Some((Hook::PodIngress, Reason::DnatEstablished)),
    )?;
    row(
        "conntrack hit: established ACK",
        Program::Ingress.name(),
        e,
        floor.0,
        &method,
        it,
    );
    if let Some((off, traced)) = traced_runs(&mut dp, &ack_x, repeat)? {
        row(
            "conntrack hit, tracing on, filter not matching",
            Program::Ingress.name(),
            off,
            floor.0,
            &method,
            it,
        );
        let calls = (repeat / TRACE_BATCH).max(1);
        row(
            "conntrack hit, tracing on, every packet traced",
            Program::Ingress.name(),
            traced,
            floor.0,
            &format!("repeat {TRACE_BATCH} × {calls}"),
            u64::from(TRACE_BATCH) * u64::from(calls),
        );
    }
    let r = median_run(
        &dp,
        Runner::Tc,
        Program::Egress.name(),
        &reply_y,
        repeat,
        TC_ACT_UNSPEC,
        Some((Hook::PodEgress, Reason::RevNat)),
    )?;
    row(
        "reply: reverse NAT",
        Program::Egress.name(),
        r,
        floor.0,
        &method,
        it,
    );

    let xfloor = median_run(&dp, xdp, XDP_FLOOR_PROGRAM, &xack, repeat, XDP_PASS, None)?;
    row(
        "floor: empty XDP program",
        XDP_FLOOR_PROGRAM,
        xfloor.clone(),
        xfloor.0,
        &method,
        it,
    );
    let xm = median_run(
        &dp,
        xdp,
        XDP_PROGRAM,
        &xmiss,
        repeat,
        XDP_PASS,
        Some((Hook::Xdp, Reason::NotService)),
    )?;
    row(
        "XDP miss: SYN to non-service pod",
        XDP_PROGRAM,
        xm,
        xfloor.0,
        &method,
        it,
    );
    let xe = median_run(
        &dp,
        xdp,
        XDP_PROGRAM,
        &xack,
        repeat,
        XDP_PASS,
        Some((Hook::Xdp, Reason::DnatEstablished)),
    )?;
    row(
        "XDP ct hit: ACK to local backend",
        XDP_PROGRAM,
        xe,
        xfloor.0,
        &method,
        it,
    );

    let reply_calls = (repeat / XDP_REPLY_BATCH).max(1);
    let xr = batched_run(
        &dp,
        xdp,
        XDP_PROGRAM,
        &xreply,
        (XDP_REPLY_BATCH, reply_calls),
        XDP_TX,
        Some((Hook::Xdp, Reason::RevNat)),
        || Ok(()),
    )?;
    row(
        "XDP reply translation (XDP_TX)",
        XDP_PROGRAM,
        xr,
        xfloor.0,
        &format!("repeat {XDP_REPLY_BATCH} × {reply_calls}"),
        u64::from(XDP_REPLY_BATCH) * u64::from(reply_calls),
    );

    let calls = repeat / CHAIN;
    let chain_method = format!("repeat {CHAIN} x {calls} calls");
    let chain_floor = chain_run(&mut dp, Runner::Tc, FLOOR_PROGRAM, CLIENT_POD, calls, None)?;
    let n = chain_run(
        &mut dp,
        Runner::Tc,
        Program::Ingress.name(),
        CLIENT_POD,
        calls,
        Some((Hook::PodIngress, Reason::DnatNew)),
    )?;
    row(
        "floor: empty tc program",
        FLOOR_PROGRAM,
        chain_floor.clone(),
        chain_floor.0,
        &chain_method,
        u64::from(calls * CHAIN),
    );
    row(
        "new flow: SYN to a frontend",
        Program::Ingress.name(),
        n,
        chain_floor.0,
        &chain_method,
        u64::from(calls * CHAIN),
    );
    // Each XDP BPF_PROG_TEST_RUN call swaps the program into and out of the kernel's XDP
    // dispatcher, and each swap waits for an RCU grace period (milliseconds): tens of thousands
    // of calls take minutes. The XDP chain rows use at most XDP_CHAIN_CALLS calls.
    let xcalls = calls.min(XDP_CHAIN_CALLS);
    let xchain_method = format!("repeat {CHAIN} x {xcalls} calls");
    let xchain_floor = chain_run(&mut dp, xdp, XDP_FLOOR_PROGRAM, EXT_CLIENT, xcalls, None)?;
    let xn = chain_run(
        &mut dp,
        xdp,
        XDP_PROGRAM,
        EXT_CLIENT,
        xcalls,
        Some((Hook::Xdp, Reason::DnatNew)),
    )?;
    row(
        "floor: empty XDP program",
        XDP_FLOOR_PROGRAM,
        xchain_floor.clone(),
        xchain_floor.0,
        &xchain_method,
        u64::from(xcalls * CHAIN),
    );
    row(
        "XDP new flow: SYN, local backend",
        XDP_PROGRAM,
        xn,
        xchain_floor.0,
        &xchain_method,
        u64::from(xcalls * CHAIN),
    );
    Ok(rows)
}

/// Counters before/after, checked: `claim` moved by exactly `iters` and nothing else moved.
fn prove(
    dp: &Datapath,
    before: &[u64],
    claim: Option<(Hook, Reason)>,
    iters: u64,
) -> Result<String> {
    let after = dp.counters();
    let mut moved = Vec::new();
    for i in 0..STATS_LEN as usize {
        let delta = after[i] - before[i];
        let want = match claim {
            Some((h, r)) if stat_index(h, r) as usize == i => iters,
            _ => 0,
        };
        if delta != want {
            moved.push(format!("{} +{delta} (want +{want})", stat_name(i)));
        }
    }
    if !moved.is_empty() {
        bail!(
            "iterations did not all take the claimed path: {}",
            moved.join(", ")
        );
    }
    Ok(match claim {
        Some((h, r)) => format!("{} +{iters}", stat_name(stat_index(h, r) as usize)),
        None => "floor: no counter".to_string(),
    })
}

/// Iterations per call of the traced row: each writes one event, and the ring
/// (`TRACE_RING_BYTES`, 72 bytes an event with its header) must hold a call's events until
/// they are drained between calls, outside the timed loop.
const TRACE_BATCH: u32 = 4_000;

/// The conntrack-hit ACK with one trace slot in use (a ring of `svc_agent::dataplane::trace::new_ring`,
/// as `svc-agent trace` makes): first with a filter for an address no packet has (the cost
/// of tracing for everyone else; [`ROUNDS`] calls of `repeat`, the ring proven empty), then
/// with one for the client (every packet writes an event; calls of [`TRACE_BATCH`], each
/// call's events drained and counted: exactly one per iteration). Tracing is switched off
/// again after. `None` for an object without trace maps (`SVC_EBPF_OBJECT` naming an older
/// build, to compare the other rows with and without the tracing code).
#[allow(clippy::type_complexity)]
fn traced_runs(
    dp: &mut Datapath,
    ack: &[u8],
    repeat: u32,
) -> Result<Option<((f64, String), (f64, String))>> {
    use svc_agent::dataplane::trace::{new_ring, RingReader};
    use svc_common::{TraceFilter, MAP_TRACE_ON};
    let Some(mut trace) = dp.trace_maps()? else {
        println!("note: the object has no {MAP_TRACE_ON}: tracing rows skipped");
        return Ok(None);
    };
    let ring = new_ring()?;
    let zeroed: TraceFilter = bytemuck::Zeroable::zeroed();
    trace.install(0, &zeroed, &ring)?;
    let mut ring = RingReader::new(ring)?;
    let mut drain = || ring.drain().len() as u64;
    let filter = |addr: Ipv4Addr| TraceFilter {
        src_addr: addr.octets(),
        ..bytemuck::Zeroable::zeroed()
    };
    let claim = Some((Hook::PodIngress, Reason::DnatEstablished));

    trace.set_filter(0, &filter(Ipv4Addr::new(192, 0, 2, 99)))?;
    trace.set_on(1)?;
    let miss = median_run(
        dp,
        Runner::Tc,
        Program::Ingress.name(),
        ack,
        repeat,
        TC_ACT_UNSPEC,
        claim,
    )?;
    ensure!(drain() == 0, "a filter for another address produced events");

    trace.set_filter(0, &filter(*CLIENT_POD.ip()))?;
    let calls = (repeat / TRACE_BATCH).max(1);
    let (ns, proof) = batched_run(
        dp,
        Runner::Tc,
        Program::Ingress.name(),
        ack,
        (TRACE_BATCH, calls),
        TC_ACT_UNSPEC,
        claim,
        || {
            let events = drain();
            ensure!(
                events == u64::from(TRACE_BATCH),
                "{events} trace events for {TRACE_BATCH} packets"
            );
            Ok(())
        },
    )?;
    trace.set_on(0)?;
    let iters = u64::from(calls) * u64::from(TRACE_BATCH);
    Ok(Some((miss, (ns, format!("{proof}, {iters} events read")))))
}

/// Iterations per call of the XDP reply row: each `XDP_TX` hop decrements the TTL as
/// ip_forward would, so a frame sent with TTL 64 takes this many hops before the datapath
/// leaves it to tc (TTL 1 would expire).
const XDP_REPLY_BATCH: u32 = 60;

/// `calls` runs of `input` with `repeat = batch` (each from the same input), `between` after
/// each (outside the timed loop); the iteration-weighted mean ns/packet, proven.
#[allow(clippy::too_many_arguments)]
fn batched_run(
    dp: &Datapath,
    runner: Runner,
    prog: &str,
    input: &[u8],
    (batch, calls): (u32, u32),
    verdict: u32,
    claim: Option<(Hook, Reason)>,
    mut between: impl FnMut() -> Result<()>,
) -> Result<(f64, String)> {
    let before = dp.counters();
    let mut total_ns = 0u128;
    for _ in 0..calls {
        let res = runner.run(dp, prog, input, batch)?;
        ensure!(
            res.retval == verdict,
            "{prog} returned {}",
            res.retval as i32
        );
        total_ns += u128::from(res.duration_ns) * u128::from(batch);
        between()?;
    }
    let iters = u64::from(calls) * u64::from(batch);
    let proof = prove(dp, &before, claim, iters)?;
    Ok((total_ns as f64 / iters as f64, proof))
}

/// Median ns/packet of [`ROUNDS`] single calls with `repeat`, each proven.
fn median_run(
    dp: &Datapath,
    runner: Runner,
    prog: &str,
    input: &[u8],
    repeat: u32,
    verdict: u32,
    claim: Option<(Hook, Reason)>,
) -> Result<(f64, String)> {
    let mut samples = Vec::new();
    let mut proof = String::new();
    for _ in 0..ROUNDS {
        let before = dp.counters();
        let res = runner.run(dp, prog, input, repeat)?;
        ensure!(
            res.retval == verdict,
            "{prog} returned {}",
            res.retval as i32
        );
        proof = prove(dp, &before, claim, u64::from(repeat))?;
        samples.push(res.duration_ns as f64);
    }
    samples.sort_by(f64::total_cmp);
    // `duration` is the kernel's per-iteration mean, already divided by `repeat`.
    let per = samples[ROUNDS / 2];
    let (min, max) = (samples[0], samples[ROUNDS - 1]);
    Ok((
        per,
        format!("{proof} per run, {ROUNDS} runs, range {min:.0}–{max:.0} ns"),
    ))
}

/// `calls` runs of `client`'s SYN through the chain (`repeat = CHAIN`), conntrack cleared
/// between calls; returns the iteration-weighted mean ns/packet, proven. XDP runs get the SYN
/// as a frame from the external client's MAC.
fn chain_run(
    dp: &mut Datapath,
    runner: Runner,
    prog: &str,
    client: SocketAddrV4,
    calls: u32,
    claim: Option<(Hook, Reason)>,
) -> Result<(f64, String)> {
    let pkt = Pkt::tcp(client, chain_frontend(0), TCP_SYN);
    let syn = match runner {
        Runner::Tc => pkt.build(),
        Runner::Xdp(_) => pkt.build_eth(EXT_CLIENT_MAC, NODE_MAC),
    };
    let mut fwd_keys = Vec::new();
    let mut reply_keys = Vec::new();
    for i in 0..CHAIN {
        fwd_keys.push(ct_forward(client, chain_frontend(i), PROTO_TCP));
        reply_keys.push(ct_reply(chain_next(i), client, PROTO_TCP));
    }
    let before = dp.counters();
    let mut total_ns = 0u128;
    for _ in 0..calls {
        let res = runner.run(dp, prog, &syn, CHAIN)?;
        ensure!(
            res.retval == runner.pass(),
            "{prog} returned {}",
            res.retval as i32
        );
        total_ns += u128::from(res.duration_ns) * u128::from(CHAIN);
        if claim.is_some() {
            let keys: Vec<_> = fwd_keys.iter().chain(&reply_keys).copied().collect();
            let deleted = dp
                .ct_delete(&keys)
                .context("clearing the chain's conntrack entries")?;
            ensure!(
                deleted == keys.len(),
                "the chain left {deleted} of its {} conntrack entries",
                keys.len()
            );
        }
    }
    let iters = u64::from(calls) * u64::from(CHAIN);
    let proof = prove(dp, &before, claim, iters)?;
    Ok((total_ns as f64 / iters as f64, proof))
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
