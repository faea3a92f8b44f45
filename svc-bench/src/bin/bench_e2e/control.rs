//! The control plane of the baselines: `iptables-restore` (full and `--noflush`) and `nft -f`
//! programming 1k and 10k Services × 10 endpoints, then one endpoint change at that size, each
//! command timed from a thread inside a one-node topology.

use super::*;

pub(crate) struct ControlRow {
    pub(crate) tool: &'static str,
    pub(crate) what: &'static str,
    pub(crate) services: usize,
    pub(crate) secs: Vec<f64>,
}

impl ControlRow {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "tool": self.tool, "what": self.what, "services": self.services,
            "samples_s": self.secs, "s": stats(self.secs.iter().copied()).to_json(),
        })
    }
}

/// Endpoints per Service for the control-plane figures (as bench_control).
pub(crate) const CONTROL_ENDPOINTS: usize = 10;

pub(crate) fn control_services(n: usize, endpoints: usize) -> Vec<Service> {
    (0..n)
        .map(|i| Service {
            namespace: "default".into(),
            name: format!("svc-{i:05}"),
            cluster_ip: Ipv4Addr::new(10, 96, (1 + i / 250) as u8, (1 + i % 250) as u8),
            ports: ports()[..1].to_vec(),
            // Distinct for every (Service, endpoint), 16 slots per Service (10.128.0.0/9).
            endpoints: (0..endpoints)
                .map(|j| {
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * 16 + j) as u32)
                })
                .collect(),
            lb_ips: Vec::new(),
        })
        .collect()
}

pub(crate) fn control_baselines(sizes: &[usize], repeats: usize) -> Result<Vec<ControlRow>> {
    let t = Topology::build(&TopologySpec::new().node(&[]))?;
    let ns = t.node(1).ns.clone();
    let tmp = |name: &str| RemoveOnDrop(std::env::temp_dir().join(format!("{}{name}", t.prefix())));
    let flush = || -> Result<()> {
        t.exec_ok(&ns, &["nft", "flush", "ruleset"])?;
        Ok(())
    };
    let mut rows = Vec::new();
    for &n in sizes {
        let base = control_services(n, CONTROL_ENDPOINTS);
        let changed_at = n / 2;
        let mut grown = base.clone();
        let extra =
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (changed_at * 16 + 15) as u32);
        grown[changed_at].endpoints.push(extra);

        let files = [
            tmp("ipt-full"),
            tmp("ipt-grown"),
            tmp("ipt-partial-grow"),
            tmp("ipt-partial-shrink"),
            tmp("nft-full"),
            tmp("nft-grow"),
            tmp("nft-shrink"),
        ];
        write(&files[0].0, &kubeproxy::iptables_restore(&base))?;
        write(&files[1].0, &kubeproxy::iptables_restore(&grown))?;
        write(
            &files[2].0,
            &kubeproxy::iptables_partial(&grown, &grown[changed_at], &[]),
        )?;
        write(
            &files[3].0,
            &kubeproxy::iptables_partial(&base, &base[changed_at], &[extra]),
        )?;
        write(&files[4].0, &kubeproxy::nft_full(&base, &[]))?;
        write(
            &files[5].0,
            &kubeproxy::nft_endpoints_changed(&grown[changed_at], &[]),
        )?;
        write(
            &files[6].0,
            &kubeproxy::nft_endpoints_changed(&base[changed_at], &[extra]),
        )?;
        let mut row = |tool, what, secs| {
            let r = ControlRow {
                tool,
                what,
                services: n,
                secs,
            };
            println!(
                "   {n:>6} Services  {tool:<9} {what:<40} {}",
                stats(r.secs.iter().copied()).fmt(1e3, "ms")
            );
            rows.push(r);
        };
        let restore = &["iptables-restore"][..];
        let noflush = &["iptables-restore", "--noflush"][..];
        let nft = &["nft", "-f"][..];

        // At 10k Services one iptables-nft restore or nft transaction takes tens of seconds:
        // one repetition there keeps `cargo xtask bench` within its time budget.
        let repeats = if n >= 10_000 { 1 } else { repeats };
        let (mut full, mut resync, mut partial) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..repeats {
            flush()?;
            full.push(timed_cmd(&t, &ns, restore, &files[0].0)?);
            // Endpoint change, full table (grow), then back (full table of the base).
            resync.push(timed_cmd(&t, &ns, restore, &files[1].0)?);
            resync.push(timed_cmd(&t, &ns, restore, &files[0].0)?);
            partial.push(timed_cmd(&t, &ns, noflush, &files[2].0)?);
            partial.push(timed_cmd(&t, &ns, noflush, &files[3].0)?);
        }
        flush()?;
        row("iptables", "program from nothing (iptables-restore)", full);
        row("iptables", "1 endpoint change, full restore", resync);
        row(
            "iptables",
            "1 endpoint change, partial --noflush (≥1.28)",
            partial,
        );

        let (mut full, mut change) = (Vec::new(), Vec::new());
        for _ in 0..repeats {
            flush()?;
            full.push(timed_cmd(&t, &ns, nft, &files[4].0)?);
            change.push(timed_cmd(&t, &ns, nft, &files[5].0)?);
            change.push(timed_cmd(&t, &ns, nft, &files[6].0)?);
        }
        flush()?;
        row("nftables", "program from nothing (nft -f)", full);
        row("nftables", "1 endpoint change, incremental", change);
    }
    Ok(rows)
}
