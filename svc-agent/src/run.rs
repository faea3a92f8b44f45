//! `svc-agent run`: the agent's main loop.
//!
//! One task owns the datapath and the programmed state and reacts to three things: the
//! manifest directory changing (polled by fingerprint), interfaces appearing or vanishing
//! (rtnetlink), and SIGTERM/SIGINT. Map writes are synchronous syscalls of a few microseconds;
//! they run on this task without blocking anything else that matters.
use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::{
    datapath::Datapath,
    dataplane::{pinned::PinnedMaps, Dataplane},
    ifwatch::{self, LinkEvent},
    model::{self, Ipv4Cidr, NodeContext},
    reconcile::{self, Programmed},
    source::manifests,
};

/// Everything `run` needs, resolved from the command line.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub manifests: PathBuf,
    pub node_name: String,
    pub node_ips: Vec<Ipv4Addr>,
    pub bpffs: PathBuf,
    /// Interface-name prefixes of the host side of pod veths.
    pub pod_ifaces: Vec<String>,
    pub service_cidr: Ipv4Cidr,
    /// How often the manifest directory is checked for changes.
    pub poll: Duration,
    /// `svc_common::FAULT_*` bits; 0 outside tests.
    pub fault: u32,
}

pub async fn run(cfg: RunConfig) -> Result<()> {
    let (mut datapath, mut maps) = Datapath::load(&cfg.bpffs, cfg.fault)?;
    // Adopt whatever an earlier agent left in the pinned maps: the first plan then writes only
    // what differs, and traffic through unchanged services is never disturbed.
    let snapshot = maps.snapshot().context("reading the pinned service maps")?;
    let mut programmed = Programmed::from_snapshot(&snapshot);
    info!(
        frontends = snapshot.frontends.len(),
        backends = snapshot.backends.len(),
        "adopted pinned maps"
    );

    let (links, mut link_events) = ifwatch::start().await?;
    datapath.remove_stale_link_pins(&links);
    for (index, name) in &links {
        attach_if_pod(&mut datapath, &cfg, *index, name);
    }

    let node = NodeContext {
        node_name: cfg.node_name.clone(),
        node_ips: cfg.node_ips.clone(),
    };
    let mut last_fingerprint = None;
    let mut last_problems = BTreeSet::new();
    let mut tick = tokio::time::interval(cfg.poll);
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let fingerprint = match manifests::dir_fingerprint(&cfg.manifests) {
                    Ok(f) => f,
                    Err(e) => {
                        warn!(dir = %cfg.manifests.display(), "cannot read manifest directory: {e}; keeping what is programmed");
                        continue;
                    }
                };
                if last_fingerprint == Some(fingerprint) {
                    continue;
                }
                last_fingerprint = Some(fingerprint);
                sync(&cfg, &node, &mut maps, &mut programmed, &mut last_problems);
            }
            Some(event) = link_events.recv() => match event {
                LinkEvent::Present { index, name } => attach_if_pod(&mut datapath, &cfg, index, &name),
                LinkEvent::Gone { index } => datapath.forget(index),
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    info!(
        "stopping; maps and links stay pinned under {} for the next agent",
        cfg.bpffs.display()
    );
    Ok(())
}

fn attach_if_pod(datapath: &mut Datapath, cfg: &RunConfig, index: u32, name: &str) {
    if !cfg.pod_ifaces.iter().any(|p| name.starts_with(p.as_str())) {
        return;
    }
    if let Err(e) = datapath.ensure_attached(index, name) {
        error!(iface = name, "{e:#}");
    }
}

/// Reads the manifests and brings the maps to the state they ask for.
fn sync(
    cfg: &RunConfig,
    node: &NodeContext,
    maps: &mut PinnedMaps,
    programmed: &mut Programmed,
    last_problems: &mut BTreeSet<String>,
) {
    let started = Instant::now();
    let objects = match manifests::load_dir_with(
        &cfg.manifests,
        &manifests::Options {
            service_cidr: cfg.service_cidr,
            ..Default::default()
        },
    ) {
        Ok(o) => o,
        Err(e) => {
            warn!("{e}; keeping what is programmed");
            return;
        }
    };
    let desired = model::desired(&objects, node);
    let problems: BTreeSet<String> = objects
        .problems
        .iter()
        .chain(&desired.problems)
        .map(|p| p.to_string())
        .collect();
    for p in problems.difference(last_problems) {
        warn!("skipped: {p}");
    }
    *last_problems = problems;

    let plan = reconcile::plan(programmed, &desired);
    let writes = plan.ops.len();
    for op in &plan.ops {
        if let Err(e) = maps.apply(op) {
            // Re-read what the maps really hold; the next change retries from there.
            error!("{e}");
            match maps.snapshot() {
                Ok(s) => *programmed = Programmed::from_snapshot(&s),
                Err(e) => error!("{e}"),
            }
            return;
        }
    }
    *programmed = plan.next;
    for (key, fe) in &desired.frontends {
        tracing::debug!(service = %fe.service, addr = ?key.addr, port = key.port, backends = fe.backends.len(), "frontend");
    }
    info!(
        services = objects.services.len(),
        frontends = desired.frontends.len(),
        writes,
        elapsed_us = started.elapsed().as_micros() as u64,
        "maps in sync with manifests"
    );
}
