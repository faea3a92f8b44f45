//! How a row is timed and proven: the counters checked after a run (`prove`), the traced rows
//! (trace filter off-target and on-target, events drained between calls), and batched, median
//! and chained `BPF_PROG_TEST_RUN` runs.

use super::*;

/// Counters before/after, checked: `claim` moved by exactly `iters` and nothing else moved.
pub(crate) fn prove(
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
pub(crate) const TRACE_BATCH: u32 = 4_000;

/// The conntrack-hit ACK with one trace slot in use (a ring of `svc_agent::dataplane::trace::new_ring`,
/// as `svc-agent trace` makes): first with a filter for an address no packet has (the cost
/// of tracing for everyone else; [`ROUNDS`] calls of `repeat`, the ring proven empty), then
/// with one for the client (every packet writes an event; calls of [`TRACE_BATCH`], each
/// call's events drained and counted: exactly one per iteration). Tracing is switched off
/// again after. `None` for an object without trace maps (`SVC_EBPF_OBJECT` naming an older
/// build, to compare the other rows with and without the tracing code).
#[allow(clippy::type_complexity)]
pub(crate) fn traced_runs(
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
pub(crate) const XDP_REPLY_BATCH: u32 = 60;

/// `calls` runs of `input` with `repeat = batch` (each from the same input), `between` after
/// each (outside the timed loop); the iteration-weighted mean ns/packet, proven.
#[allow(clippy::too_many_arguments)]
pub(crate) fn batched_run(
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
pub(crate) fn median_run(
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
/// as a frame from the external client's MAC. `pause` sleeps before each call: every XDP call
/// sleeps anyway (the dispatcher swap waits for an RCU grace period), and a tc chain with
/// pauses shows what that does to the caches (the cache-cold row).
pub(crate) fn chain_run(
    dp: &mut Datapath,
    runner: Runner,
    prog: &str,
    client: SocketAddrV4,
    calls: u32,
    claim: Option<(Hook, Reason)>,
    pause: std::time::Duration,
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
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
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
