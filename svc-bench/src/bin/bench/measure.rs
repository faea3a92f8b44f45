//! One frontend configuration measured: the datapath loaded with that many frontends, the
//! chain, the cycles and the fillers written, every tc and XDP path (and its floor) timed and
//! proven to take the path it claims, one [`Row`] each.

use super::*;

pub(crate) fn measure_config(config: u32, repeat: u32, uplink: XdpUplink) -> Result<Vec<Row>> {
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
    let chain_floor = chain_run(
        &mut dp,
        Runner::Tc,
        FLOOR_PROGRAM,
        CLIENT_POD,
        calls,
        None,
        Duration::ZERO,
    )?;
    let n = chain_run(
        &mut dp,
        Runner::Tc,
        Program::Ingress.name(),
        CLIENT_POD,
        calls,
        Some((Hook::PodIngress, Reason::DnatNew)),
        Duration::ZERO,
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
    // The same chain with a pause before each call, as every XDP call has one (the dispatcher
    // swap's RCU grace period): each call then starts with caches other work has evicted. This
    // row is what explains the XDP new flow's figure (BENCHMARKS.md, Per-packet).
    let cold_calls = calls.min(XDP_CHAIN_CALLS);
    let cold = chain_run(
        &mut dp,
        Runner::Tc,
        Program::Ingress.name(),
        CLIENT_POD,
        cold_calls,
        Some((Hook::PodIngress, Reason::DnatNew)),
        COLD_PAUSE,
    )?;
    row(
        "new flow, cache-cold (5 ms pauses)",
        Program::Ingress.name(),
        cold,
        chain_floor.0,
        &format!("repeat {CHAIN} x {cold_calls} calls"),
        u64::from(cold_calls * CHAIN),
    );
    // Each XDP BPF_PROG_TEST_RUN call swaps the program into and out of the kernel's XDP
    // dispatcher, and each swap waits for an RCU grace period (milliseconds): tens of thousands
    // of calls take minutes. The XDP chain rows use at most XDP_CHAIN_CALLS calls.
    let xcalls = calls.min(XDP_CHAIN_CALLS);
    let xchain_method = format!("repeat {CHAIN} x {xcalls} calls");
    let xchain_floor = chain_run(
        &mut dp,
        xdp,
        XDP_FLOOR_PROGRAM,
        EXT_CLIENT,
        xcalls,
        None,
        Duration::ZERO,
    )?;
    let xn = chain_run(
        &mut dp,
        xdp,
        XDP_PROGRAM,
        EXT_CLIENT,
        xcalls,
        Some((Hook::Xdp, Reason::DnatNew)),
        Duration::ZERO,
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
