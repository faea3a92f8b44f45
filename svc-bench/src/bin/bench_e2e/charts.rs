//! The SVG charts: hand-written grouped bar charts with min–max whiskers (a few charts need no
//! plotting dependency), for the traffic figures and the control plane.

use super::*;

/// One bar: label, median, min, max.
pub(crate) type Bar = (String, f64, f64, f64);

pub(crate) const COLOURS: [&str; 4] = ["#9e9e9e", "#e07b39", "#3b7dd8", "#2e9e5b"];

/// A grouped bar chart with min–max whiskers and the median printed on each bar. `log` uses a
/// log10 axis (for control-plane times spanning milliseconds to seconds).
pub(crate) fn bar_chart(
    title: &str,
    unit: &str,
    groups: &[(String, Vec<Bar>)],
    log: bool,
) -> String {
    let (w, h, left, top, bottom) = (820.0, 420.0, 70.0, 50.0, 90.0);
    let plot_h = h - top - bottom;
    let max = groups
        .iter()
        .flat_map(|(_, b)| b.iter().map(|x| x.3.max(x.1)))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let min_pos = groups
        .iter()
        .flat_map(|(_, b)| b.iter().map(|x| x.1.min(x.2)))
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let (lo, hi) = if log {
        (
            min_pos.log10().floor(),
            max.log10().ceil().max(min_pos.log10().floor() + 1.0),
        )
    } else {
        (0.0, max * 1.15)
    };
    let y = |v: f64| {
        let f = if log {
            (v.max(10f64.powf(lo)).log10() - lo) / (hi - lo)
        } else {
            v / hi
        };
        top + plot_h * (1.0 - f)
    };
    let mut s = String::new();
    writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        w / 2.0,
        esc(title)
    )
    .unwrap();
    // Axis and grid.
    let ticks: Vec<f64> = if log {
        (lo as i32..=hi as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..=5).map(|i| hi / 5.0 * i as f64).collect()
    };
    for t in ticks {
        let ty = y(t);
        writeln!(
            s,
            r##"<line x1="{left}" y1="{ty:.1}" x2="{}" y2="{ty:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            w - 10.0,
            left - 6.0,
            ty + 4.0,
            short(t)
        )
        .unwrap();
    }
    writeln!(
        s,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">{}</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        esc(unit)
    )
    .unwrap();
    let group_w = (w - left - 10.0) / groups.len().max(1) as f64;
    let mut legend: Vec<String> = Vec::new();
    for (gi, (gname, bars)) in groups.iter().enumerate() {
        let gx = left + group_w * gi as f64;
        let bw = (group_w * 0.8) / bars.len().max(1) as f64;
        for (bi, (label, med, mn, mx)) in bars.iter().enumerate() {
            if !legend.contains(label) {
                legend.push(label.clone());
            }
            let colour =
                COLOURS[legend.iter().position(|l| l == label).unwrap_or(0) % COLOURS.len()];
            let x = gx + group_w * 0.1 + bw * bi as f64;
            let (top_y, base) = (y(*med), y(if log { 10f64.powf(lo) } else { 0.0 }));
            writeln!(
                s,
                r#"<rect x="{x:.1}" y="{top_y:.1}" width="{:.1}" height="{:.1}" fill="{colour}"><title>{}: {}</title></rect>"#,
                bw * 0.9,
                (base - top_y).max(0.0),
                esc(label),
                short(*med)
            )
            .unwrap();
            let cx = x + bw * 0.45;
            writeln!(
                s,
                r#"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="black"/><text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                y(*mn),
                y(*mx),
                y(mx.max(*med)) - 4.0,
                short(*med)
            )
            .unwrap();
        }
        writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            gx + group_w / 2.0,
            top + plot_h + 18.0,
            esc(gname)
        )
        .unwrap();
    }
    for (i, label) in legend.iter().enumerate() {
        let lx = left + 190.0 * i as f64;
        let ly = h - 30.0;
        writeln!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
            ly - 10.0,
            COLOURS[i % COLOURS.len()],
            lx + 16.0,
            esc(label)
        )
        .unwrap();
    }
    s.push_str("</svg>\n");
    s
}

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A compact number: 12.3k, 450, 3.2, 0.041.
pub(crate) fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

pub(crate) fn charts(
    runs: &[Run],
    control: &[ControlRow],
    svc_lb: Option<&Value>,
) -> Vec<(String, String)> {
    let mut sizes: Vec<usize> = runs.iter().map(|r| r.services).collect();
    sizes.dedup();
    let by_size = |f: &dyn Fn(&Run) -> Stats| -> Vec<(String, Vec<Bar>)> {
        sizes
            .iter()
            .map(|&n| {
                let bars = runs
                    .iter()
                    .filter(|r| r.services == n)
                    .map(|r| {
                        let s = f(r);
                        (r.mode.name().to_owned(), s.median, s.min, s.max)
                    })
                    .collect();
                (format!("{n} Services"), bars)
            })
            .collect()
    };
    let mut out = vec![
        (
            "e2e-tcp-rate.svg".to_owned(),
            bar_chart(
                "Short TCP connections through the ClusterIP (higher is better)",
                "connections/s",
                &by_size(&|r| stats(r.tcp.iter().map(|s| s.rate))),
                false,
            ),
        ),
        (
            "e2e-tcp-p99.svg".to_owned(),
            bar_chart(
                "TCP connect→reply latency p99 (lower is better)",
                "µs",
                &by_size(&|r| stats(r.tcp.iter().map(|s| s.p99_us as f64))),
                false,
            ),
        ),
        (
            "e2e-udp-rate.svg".to_owned(),
            bar_chart(
                "UDP request/reply, new flow each (higher is better)",
                "exchanges/s",
                &by_size(&|r| stats(r.udp.iter().map(|s| s.rate))),
                false,
            ),
        ),
    ];
    if !control.is_empty() {
        let mut sizes: Vec<usize> = control.iter().map(|r| r.services).collect();
        sizes.dedup();
        let groups = |change: bool| -> Vec<(String, Vec<Bar>)> {
            sizes
                .iter()
                .map(|&n| {
                    let mut bars: Vec<Bar> = control
                        .iter()
                        .filter(|r| r.services == n && r.what.starts_with("1 endpoint") == change)
                        .map(|r| {
                            let s = stats(r.secs.iter().copied());
                            let label = match (r.tool, r.what.contains("partial")) {
                                ("iptables", true) => "iptables partial",
                                (t, _) => t,
                            };
                            (label.to_owned(), s.median * 1e3, s.min * 1e3, s.max * 1e3)
                        })
                        .collect();
                    if let Some((full, ch)) = svc_lb_size(svc_lb, n) {
                        let v = if change { ch } else { full * 1e3 };
                        bars.push(("svc-lb".to_owned(), v, v, v));
                    }
                    (format!("{n} Services × 10 endpoints"), bars)
                })
                .collect()
        };
        out.push((
            "control-program.svg".to_owned(),
            bar_chart(
                "Program every Service from nothing (log scale, lower is better)",
                "ms",
                &groups(false),
                true,
            ),
        ));
        out.push((
            "control-change.svg".to_owned(),
            bar_chart(
                "One endpoint change (log scale, lower is better)",
                "ms",
                &groups(true),
                true,
            ),
        ));
    }
    out
}
