//! The IPv6 rows: the same tc paths as the IPv4 rows (miss, conntrack hit, reply, new flow),
//! built the same way (a cycle of two frontends that are each other's backend, a chain of
//! [`CHAIN`] frontends for new flows), run on the IPv6 programs directly and, for the miss and
//! the hit, through the IPv4 program that hands IPv6 frames over by a tail call (what a pod
//! veth runs). Each row is proven by the counters like the IPv4 rows: the claimed counter
//! moved by exactly the iterations and nothing else moved.
//!
//! The XDP rows run IPv6 frames from an external client through `svc_xdp`, which hands them to
//! `svc_xdp6` by a tail call (what an uplink runs): a miss, and a conntrack hit on a cycle of
//! two frontends that are each other's local backend (`XDP_PASS` after the rewrite, no FIB
//! lookup), beside the empty XDP program.

use std::net::{Ipv6Addr, SocketAddrV6};

use svc_common::CtKey6;
use svc_testkit::fixtures::ipv6::{addr6, Datapath6, Pkt6, CLIENT6, EXT_CLIENT6, OTHER6};

use super::*;

const TCP6_SYN: u8 = 0x02;
const TCP6_ACK: u8 = 0x10;

fn svc6(group: u16, i: u16, port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(
        Ipv6Addr::new(0xfd00, 0x10, 0x96, group, 0, 0, 0, i),
        port,
        0,
        0,
    )
}

/// Cycle frontends X and Y (each the other's backend).
fn cycle6() -> (SocketAddrV6, SocketAddrV6) {
    (svc6(0, 0x10, 80), svc6(0, 0x11, 8080))
}

/// The i-th frontend of the chain, ports alternating so every hop rewrites the port too.
fn chain6(i: u32) -> SocketAddrV6 {
    svc6(0x98, i as u16, if i.is_multiple_of(2) { 80 } else { 8080 })
}

fn chain6_next(i: u32) -> SocketAddrV6 {
    if i + 1 < CHAIN {
        chain6(i + 1)
    } else {
        OTHER6
    }
}

fn key6(src: SocketAddrV6, dst: SocketAddrV6) -> CtKey6 {
    CtKey6::new(addr6(&src), addr6(&dst), src.port(), dst.port(), PROTO_TCP)
}

/// One row: `config` frontends asked for, `total` in the map; what was run; its measurement
/// (ns/packet, proof) beside its floor.
fn row6(
    (config, total): (u32, u32),
    (fixture, program, method, iters): (&'static str, &'static str, String, u64),
    (ns, proof): (f64, String),
    floor_ns: f64,
) -> Row {
    Row {
        config_frontends: config,
        frontends: total,
        fixture,
        program,
        method,
        iterations: iters,
        ns_per_packet: ns,
        floor_ns,
        excess_ns: ns - floor_ns,
        ratio: ns / floor_ns,
        proof,
    }
}

/// The conntrack keys (both directions) a run of the chain from `client` creates, `fe(i)`
/// being the i-th frontend and `next(i)` its backend.
fn chain_keys(
    client: SocketAddrV6,
    fe: impl Fn(u32) -> SocketAddrV6,
    next: impl Fn(u32) -> SocketAddrV6,
) -> Vec<CtKey6> {
    (0..CHAIN)
        .flat_map(|i| [key6(client, fe(i)), key6(next(i), client)])
        .collect()
}

/// Counters before/after: `claim` moved by exactly `iters`, nothing else moved.
fn prove6(dp: &Datapath6, before: &[u64], claim: (Hook, Reason), iters: u64) -> Result<String> {
    let after = dp.counters();
    let mut moved = Vec::new();
    for i in 0..STATS_LEN as usize {
        let want = if stat_index(claim.0, claim.1) as usize == i {
            iters
        } else {
            0
        };
        let delta = after[i] - before[i];
        if delta != want {
            moved.push(format!("{} +{delta} (want +{want})", stat_name(i)));
        }
    }
    ensure!(
        moved.is_empty(),
        "iterations did not all take the claimed path: {}",
        moved.join(", ")
    );
    Ok(format!(
        "{} +{iters}",
        stat_name(stat_index(claim.0, claim.1) as usize)
    ))
}

/// Median ns/packet of [`ROUNDS`] calls with `repeat`, each proven (`None`: the floor).
fn median6(
    dp: &Datapath6,
    prog: &str,
    input: &[u8],
    repeat: u32,
    claim: Option<(Hook, Reason)>,
) -> Result<(f64, String)> {
    median6_on(dp, None, prog, input, repeat, claim)
}

/// [`median6`] for an XDP program run on `uplink` (`Some`), which must return `XDP_PASS`.
fn median6_on(
    dp: &Datapath6,
    uplink: Option<XdpUplink>,
    prog: &str,
    input: &[u8],
    repeat: u32,
    claim: Option<(Hook, Reason)>,
) -> Result<(f64, String)> {
    let mut samples = Vec::new();
    let mut proof = "floor: no counter".to_string();
    for _ in 0..ROUNDS {
        let before = dp.counters();
        let (res, want) = match uplink {
            Some(u) => (dp.run_xdp_repeat(prog, input, repeat, u.ifindex)?, XDP_PASS),
            None => (dp.run_repeat(prog, input, repeat)?, TC_ACT_UNSPEC),
        };
        ensure!(res.retval == want, "{prog} returned {}", res.retval as i32);
        if let Some(claim) = claim {
            proof = prove6(dp, &before, claim, u64::from(repeat))?;
        }
        samples.push(res.duration_ns as f64);
    }
    samples.sort_by(f64::total_cmp);
    let (min, max) = (samples[0], samples[ROUNDS - 1]);
    Ok((
        samples[ROUNDS / 2],
        format!("{proof} per run, {ROUNDS} runs, range {min:.0}–{max:.0} ns"),
    ))
}

/// The IPv6 rows for `config` frontends (fillers added to `SVC_FRONTENDS6`).
pub(crate) fn measure_config6(config: u32, repeat: u32, uplink: XdpUplink) -> Result<Vec<Row>> {
    let mut dp = Datapath6::load_with_xdp()?;
    let (x, y) = cycle6();
    dp.add_service(x, PROTO_TCP, 1, &[y])?;
    dp.add_service(y, PROTO_TCP, 2, &[x])?;
    // The XDP cycle: frontends each other's local backend (no SNAT, no FIB lookup).
    let (xx, xy) = (svc6(1, 0x10, 80), svc6(1, 0x11, 8080));
    dp.add_service(xx, PROTO_TCP, 3, &[xy])?;
    dp.add_service(xy, PROTO_TCP, 4, &[xx])?;
    dp.set_backend_flags(301, BACKEND_F_LOCAL)?;
    dp.set_backend_flags(401, BACKEND_F_LOCAL)?;
    for i in 0..CHAIN {
        dp.add_service(chain6(i), PROTO_TCP, 100 + i, &[chain6_next(i)])?;
    }
    let needed = 4 + CHAIN;
    let total = config.max(needed);
    for i in 0..total - needed {
        let fe = SocketAddrV6::new(
            Ipv6Addr::new(0xfd00, 0x10, 0x97, 0, 0, 0, (i >> 16) as u16, i as u16),
            443,
            0,
            0,
        );
        dp.put_frontend(fe, PROTO_TCP, 1_000_000 + i)?;
    }

    // Warm-up: both cycle flows (X → Y, then Y → X).
    let syn_x = Pkt6::tcp(CLIENT6, x, TCP6_SYN).build();
    let first = dp.run_repeat("svc_pod_ingress6", &syn_x, 1)?;
    let second = dp.run_repeat("svc_pod_ingress6", &first.output, 1)?;
    ensure!(
        dp.counter(Hook::PodIngress6, Reason::DnatNew) == 2,
        "IPv6 cycle warm-up did not create two flows"
    );
    ensure!(
        second.output == syn_x,
        "the IPv6 cycle does not return to X"
    );
    let xsyn = Pkt6::tcp(EXT_CLIENT6, xx, TCP6_SYN).build();
    let first = dp.run_xdp_repeat(XDP_PROGRAM, &xsyn, 1, uplink.ifindex)?;
    let second = dp.run_xdp_repeat(XDP_PROGRAM, &first.output, 1, uplink.ifindex)?;
    ensure!(
        dp.counter(Hook::Xdp6, Reason::DnatNew) == 2,
        "IPv6 XDP cycle warm-up did not create two flows"
    );
    ensure!(
        second.output == xsyn,
        "the IPv6 XDP cycle does not return to X"
    );
    let xack = Pkt6::tcp(EXT_CLIENT6, xx, TCP6_ACK).build();
    let xmiss = Pkt6::tcp(EXT_CLIENT6, OTHER6, TCP6_SYN).build();
    let ack_x = Pkt6::tcp(CLIENT6, x, TCP6_ACK).build();
    let reply_y = Pkt6::tcp(y, CLIENT6, TCP6_SYN | TCP6_ACK).build();
    let miss = Pkt6::tcp(CLIENT6, OTHER6, TCP6_SYN).build();

    let floor = median6(&dp, FLOOR_PROGRAM, &ack_x, repeat, None)?;
    let mut rows = Vec::new();
    let mut row = |fixture, program, method, iters, measured, floor_ns| {
        rows.push(row6(
            (config, total),
            (fixture, program, method, iters),
            measured,
            floor_ns,
        ))
    };
    let single = format!("repeat {repeat}");
    let it = u64::from(repeat);
    row(
        "IPv6 floor (empty tc)",
        FLOOR_PROGRAM,
        single.clone(),
        it,
        floor.clone(),
        floor.0,
    );
    let claim = Some((Hook::PodIngress6, Reason::NotService));
    row(
        "IPv6 miss",
        "svc_pod_ingress6",
        single.clone(),
        it,
        median6(&dp, "svc_pod_ingress6", &miss, repeat, claim)?,
        floor.0,
    );
    row(
        "IPv6 miss, via IPv4 program",
        "svc_pod_ingress",
        single.clone(),
        it,
        median6(&dp, "svc_pod_ingress", &miss, repeat, claim)?,
        floor.0,
    );
    let claim = Some((Hook::PodIngress6, Reason::DnatEstablished));
    row(
        "IPv6 conntrack hit",
        "svc_pod_ingress6",
        single.clone(),
        it,
        median6(&dp, "svc_pod_ingress6", &ack_x, repeat, claim)?,
        floor.0,
    );
    row(
        "IPv6 hit, via IPv4 program",
        "svc_pod_ingress",
        single.clone(),
        it,
        median6(&dp, "svc_pod_ingress", &ack_x, repeat, claim)?,
        floor.0,
    );
    row(
        "IPv6 reply (rev NAT)",
        "svc_pod_egress6",
        single.clone(),
        it,
        median6(
            &dp,
            "svc_pod_egress6",
            &reply_y,
            repeat,
            Some((Hook::PodEgress6, Reason::RevNat)),
        )?,
        floor.0,
    );

    let xfloor = median6_on(&dp, Some(uplink), XDP_FLOOR_PROGRAM, &xack, repeat, None)?;
    row(
        "IPv6 XDP floor (empty XDP)",
        XDP_FLOOR_PROGRAM,
        single.clone(),
        it,
        xfloor.clone(),
        xfloor.0,
    );
    row(
        "IPv6 XDP miss, via svc_xdp",
        XDP_PROGRAM,
        single.clone(),
        it,
        median6_on(
            &dp,
            Some(uplink),
            XDP_PROGRAM,
            &xmiss,
            repeat,
            Some((Hook::Xdp6, Reason::NotService)),
        )?,
        xfloor.0,
    );
    row(
        "IPv6 XDP ct hit: ACK to local backend",
        XDP_PROGRAM,
        single.clone(),
        it,
        median6_on(
            &dp,
            Some(uplink),
            XDP_PROGRAM,
            &xack,
            repeat,
            Some((Hook::Xdp6, Reason::DnatEstablished)),
        )?,
        xfloor.0,
    );

    // New flows: the chain, conntrack cleared between calls (outside the timed loop).
    let calls = (repeat / CHAIN / 4).clamp(50, 2_000);
    let syn = Pkt6::tcp(CLIENT6, chain6(0), TCP6_SYN).build();
    let keys = chain_keys(CLIENT6, chain6, chain6_next);
    let claim = (Hook::PodIngress6, Reason::DnatNew);
    let chain_floor = chained6(&mut dp, FLOOR_PROGRAM, &syn, calls, &[], claim)?;
    let new = chained6(&mut dp, "svc_pod_ingress6", &syn, calls, &keys, claim)?;
    let method = format!("repeat {CHAIN} × {calls}");
    let iters = u64::from(calls) * u64::from(CHAIN);
    row(
        "IPv6 new flow",
        "svc_pod_ingress6",
        method,
        iters,
        new,
        chain_floor.0,
    );
    Ok(rows)
}

/// `a.b.c.d` as the IPv4-mapped IPv6 address `::ffff:a.b.c.d`.
fn mapped(a: SocketAddrV4) -> SocketAddrV6 {
    SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0)
}

/// The rows of the design alternative (`svc_bench_wide4`, svc-ebpf/src/wide.rs): IPv4 frames
/// through IPv6-wide keys, the IPv4 cycle and chain written into the IPv6 maps under
/// IPv4-mapped addresses. Same frames, same paths as the IPv4 rows.
pub(crate) fn measure_wide(config: u32, repeat: u32) -> Result<Vec<Row>> {
    const WIDE: &str = "svc_bench_wide4";
    let mut dp = Datapath6::load()?;
    dp.load_program(WIDE)?;
    dp.add_service(mapped(CYCLE_X), PROTO_TCP, 1, &[mapped(CYCLE_Y)])?;
    dp.add_service(mapped(CYCLE_Y), PROTO_TCP, 2, &[mapped(CYCLE_X)])?;
    for i in 0..CHAIN {
        dp.add_service(
            mapped(chain_frontend(i)),
            PROTO_TCP,
            100 + i,
            &[mapped(chain_next(i))],
        )?;
    }
    let needed = 2 + CHAIN;
    let total = config.max(needed);
    for i in 0..total - needed {
        dp.put_frontend(mapped(filler_frontend(i)), PROTO_TCP, 1_000_000 + i)?;
    }
    let syn_x = Pkt::tcp(CLIENT_POD, CYCLE_X, TCP_SYN).build();
    let first = dp.run_repeat(WIDE, &syn_x, 1)?;
    let second = dp.run_repeat(WIDE, &first.output, 1)?;
    ensure!(
        dp.counter(Hook::PodIngress6, Reason::DnatNew) == 2,
        "wide-key cycle warm-up did not create two flows"
    );
    ensure!(
        second.output == syn_x,
        "the wide-key cycle does not return to X"
    );
    let ack_x = Pkt::tcp(CLIENT_POD, CYCLE_X, TCP_ACK).build();
    let miss = Pkt::tcp(CLIENT_POD, SocketAddrV4::new(OTHER_POD, 80), TCP_SYN).build();
    let floor = median6(&dp, FLOOR_PROGRAM, &ack_x, repeat, None)?;
    let mut rows = Vec::new();
    let single = format!("repeat {repeat}");
    let mut push = |fixture, method, iters, measured, floor_ns| {
        rows.push(row6(
            (config, total),
            (fixture, WIDE, method, iters),
            measured,
            floor_ns,
        ))
    };
    push(
        "IPv4 miss, generic keys",
        single.clone(),
        u64::from(repeat),
        median6(
            &dp,
            WIDE,
            &miss,
            repeat,
            Some((Hook::PodIngress6, Reason::NotService)),
        )?,
        floor.0,
    );
    push(
        "IPv4 hit, generic keys",
        single,
        u64::from(repeat),
        median6(
            &dp,
            WIDE,
            &ack_x,
            repeat,
            Some((Hook::PodIngress6, Reason::DnatEstablished)),
        )?,
        floor.0,
    );
    let calls = (repeat / CHAIN / 4).clamp(50, 2_000);
    let syn = Pkt::tcp(CLIENT_POD, chain_frontend(0), TCP_SYN).build();
    let keys = chain_keys(
        mapped(CLIENT_POD),
        |i| mapped(chain_frontend(i)),
        |i| mapped(chain_next(i)),
    );
    let claim = (Hook::PodIngress6, Reason::DnatNew);
    let (floor_ns, _) = chained6(&mut dp, FLOOR_PROGRAM, &syn, calls, &[], claim)?;
    let new = chained6(&mut dp, WIDE, &syn, calls, &keys, claim)?;
    push(
        "IPv4 new flow, generic keys",
        format!("repeat {CHAIN} × {calls}"),
        u64::from(calls) * u64::from(CHAIN),
        new,
        floor_ns,
    );
    Ok(rows)
}

/// `calls` runs of `syn` through a chain (`repeat = CHAIN`), conntrack `keys` deleted between
/// calls; the iteration-weighted mean, proven by `claim` (the floor, with no `keys`, is not).
fn chained6(
    dp: &mut Datapath6,
    prog: &str,
    syn: &[u8],
    calls: u32,
    keys: &[CtKey6],
    claim: (Hook, Reason),
) -> Result<(f64, String)> {
    let before = dp.counters();
    let mut total_ns = 0u128;
    for _ in 0..calls {
        let res = dp.run_repeat(prog, syn, CHAIN)?;
        ensure!(
            res.retval == TC_ACT_UNSPEC,
            "{prog} returned {}",
            res.retval as i32
        );
        total_ns += u128::from(res.duration_ns) * u128::from(CHAIN);
        if !keys.is_empty() {
            let deleted = dp.ct_delete(keys);
            ensure!(
                deleted == keys.len(),
                "the chain left {deleted} of {} entries",
                keys.len()
            );
        }
    }
    let iters = u64::from(calls) * u64::from(CHAIN);
    let proof = if keys.is_empty() {
        "floor: no counter".to_string()
    } else {
        prove6(dp, &before, claim, iters)?
    };
    Ok((total_ns as f64 / iters as f64, proof))
}
