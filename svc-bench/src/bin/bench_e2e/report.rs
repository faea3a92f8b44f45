//! Statistics and output: median, min and max of the repetitions, the printed summary of a run,
//! ratios to the floor, report.md, and svc-lb's control-plane figures read from bench_control's
//! JSON.

use super::*;

#[derive(Clone, Copy, Default)]
pub(crate) struct Stats {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) n: usize,
}

/// Median (mean of the middle two for an even count), min and max.
pub(crate) fn stats(v: impl Iterator<Item = f64>) -> Stats {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return Stats::default();
    }
    let m = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    };
    Stats {
        median,
        min: v[0],
        max: v[v.len() - 1],
        n: v.len(),
    }
}

impl Stats {
    pub(crate) fn to_json(self) -> Value {
        json!({"median": self.median, "min": self.min, "max": self.max, "n": self.n})
    }

    /// `median (min–max) unit`, values multiplied by `scale`.
    pub(crate) fn fmt(self, scale: f64, unit: &str) -> String {
        let d = |x: f64| {
            let x = x * scale;
            if x >= 100.0 {
                format!("{x:.0}")
            } else if x >= 10.0 {
                format!("{x:.1}")
            } else {
                format!("{x:.2}")
            }
        };
        let text = format!("{} ({}–{})", d(self.median), d(self.min), d(self.max));
        if unit.is_empty() {
            text
        } else {
            format!("{text} {unit}")
        }
    }
}

pub(crate) fn print_run(r: &Run) {
    println!(
        "   programmed in {:.2} s; XDP on node 1 eth0: {}; check by backend tcp {:?} udp {:?}",
        r.program_s, r.xdp, r.check_tcp, r.check_udp
    );
    println!(
        "   TCP {} conn/s, p50 {} µs, p99 {} µs",
        stats(r.tcp.iter().map(|s| s.rate)).fmt(1.0, ""),
        stats(r.tcp.iter().map(|s| s.p50_us as f64)).fmt(1.0, ""),
        stats(r.tcp.iter().map(|s| s.p99_us as f64)).fmt(1.0, ""),
    );
    println!(
        "   UDP {} exch/s, p50 {} µs, loss {}",
        stats(r.udp.iter().map(|s| s.rate)).fmt(1.0, ""),
        stats(r.udp.iter().map(|s| s.p50_us as f64)).fmt(1.0, ""),
        stats(r.udp.iter().map(|s| s.loss)).fmt(100.0, "%"),
    );
}

pub(crate) fn floor_of(runs: &[Run], n: usize) -> Option<&Run> {
    runs.iter()
        .find(|r| r.mode == Mode::Floor && r.services == n)
}

pub(crate) fn ratio(x: f64, floor: Option<f64>) -> String {
    match floor {
        Some(f) if f > 0.0 => format!("{:.2}×", x / f),
        _ => "–".into(),
    }
}

pub(crate) fn report_md(
    runs: &[Run],
    control: &[ControlRow],
    svc_lb: Option<&Value>,
    machine: &str,
    args: &Args,
) -> String {
    let mut md = String::new();
    writeln!(md, "# svc-lb end-to-end benchmark\n\nMachine: {machine}.\n").unwrap();
    writeln!(
        md,
        "Each cell: median (min–max) of {} repetitions; × = ratio to the floor of the same size. \
         TCP: {} short connections per repetition, {} threads; UDP: {} request/reply exchanges, \
         new socket each, {} threads, 200 ms timeout.\n",
        args.repeats, args.tcp_count, args.parallel, args.udp_count, args.parallel
    )
    .unwrap();
    md.push_str("| Services | mode | TCP conn/s | × floor | TCP p50 µs | TCP p99 µs | UDP exch/s | × floor | UDP p50 µs | UDP loss | load before → after |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in runs {
        let floor = floor_of(runs, r.services);
        let tcp = stats(r.tcp.iter().map(|s| s.rate));
        let udp = stats(r.udp.iter().map(|s| s.rate));
        let ftcp = floor.map(|f| stats(f.tcp.iter().map(|s| s.rate)).median);
        let fudp = floor.map(|f| stats(f.udp.iter().map(|s| s.rate)).median);
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} → {} |",
            r.services,
            r.mode.name(),
            tcp.fmt(1.0, ""),
            ratio(tcp.median, ftcp),
            stats(r.tcp.iter().map(|s| s.p50_us as f64)).fmt(1.0, ""),
            stats(r.tcp.iter().map(|s| s.p99_us as f64)).fmt(1.0, ""),
            udp.fmt(1.0, ""),
            ratio(udp.median, fudp),
            stats(r.udp.iter().map(|s| s.p50_us as f64)).fmt(1.0, ""),
            stats(r.udp.iter().map(|s| s.loss)).fmt(100.0, "%"),
            r.load_before,
            r.load_after,
        )
        .unwrap();
    }
    md.push_str("\nTime to program each mode on both nodes (rules loaded / every frontend in both agents' maps), s:\n\n| Services | iptables | nftables | svc-lb |\n|---|---|---|---|\n");
    let mut sizes: Vec<usize> = runs.iter().map(|r| r.services).collect();
    sizes.dedup();
    for n in sizes {
        let get = |m: Mode| {
            runs.iter()
                .find(|r| r.mode == m && r.services == n)
                .map_or("–".into(), |r| format!("{:.2}", r.program_s))
        };
        writeln!(
            md,
            "| {n} | {} | {} | {} |",
            get(Mode::Iptables),
            get(Mode::Nftables),
            get(Mode::SvcLb)
        )
        .unwrap();
    }
    if !control.is_empty() {
        md.push_str("\n## Control plane: baselines beside svc-lb\n\n10 endpoints per Service. Baselines: one node namespace, only the command timed, median (min–max) ms. svc-lb: `target/bench/control.json` (bench_control: API source, full sync from spawn to maps right; one EndpointSlice change, API commit → map, p50 of 200).\n\n| Services | system | program from nothing | one endpoint change |\n|---|---|---|---|\n");
        let mut sizes: Vec<usize> = control.iter().map(|r| r.services).collect();
        sizes.dedup();
        for n in sizes {
            let cell = |tool: &str, what: &str| {
                control
                    .iter()
                    .find(|r| r.services == n && r.tool == tool && r.what.starts_with(what))
                    .map_or("–".into(), |r| stats(r.secs.iter().copied()).fmt(1e3, ""))
            };
            writeln!(
                md,
                "| {n} | kube-proxy iptables | {} | full restore {}; partial `--noflush` {} |",
                cell("iptables", "program"),
                cell("iptables", "1 endpoint change, full"),
                cell("iptables", "1 endpoint change, partial")
            )
            .unwrap();
            writeln!(
                md,
                "| {n} | kube-proxy nftables | {} | {} |",
                cell("nftables", "program"),
                cell("nftables", "1 endpoint change")
            )
            .unwrap();
            let lb = svc_lb_size(svc_lb, n);
            writeln!(
                md,
                "| {n} | svc-lb | {} | {} |",
                lb.map_or("–".into(), |(full, _)| format!(
                    "{:.0} (one run)",
                    full * 1e3
                )),
                lb.map_or("–".into(), |(_, ch)| format!("{ch:.2} (p50)")),
            )
            .unwrap();
        }
    }
    md
}

/// svc-lb's full sync (s, API source, maps right) and slice-change p50 (ms) at `n` Services,
/// from bench_control's JSON.
pub(crate) fn svc_lb_size(v: Option<&Value>, n: usize) -> Option<(f64, f64)> {
    let size = v?["sizes"]
        .as_array()?
        .iter()
        .find(|s| s["services"].as_u64() == Some(n as u64))?;
    Some((
        size["full_sync_kube"]["maps_right_s"].as_f64()?,
        size["slice_change_ms"]["p50"].as_f64()?,
    ))
}
