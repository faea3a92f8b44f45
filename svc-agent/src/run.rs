//! `svc-agent run`: wires the agent together.
//!
//! It loads the programs and opens the pinned maps, starts the conntrack collector, attaches
//! the socket hooks and the interface programs, and then hands everything that changes to
//! svc-core's [`Engine`]: one event stream (the source's objects or deltas, interface
//! changes), the pinned maps as its [`svc_core::dataplane::Dataplane`], [`AgentHooks`] for
//! what the agent does around a plan (metrics, `/healthz`, health-check servers, the SNAT
//! source, interface attachment, flushing the flows of removed endpoints), and SIGTERM/SIGINT
//! as its shutdown. Map writes are synchronous syscalls of a few microseconds each; they run
//! on the engine's task.
//!
//! The conntrack collector ([`crate::conntrack::Collector`]) runs on threads of its own with
//! its own handles on the pinned maps: a pass over a large `SVC_CT` never delays a plan. After
//! each plan the engine's task deletes the session affinity of what the plan removed and sends
//! the removed UDP (frontend, backend) pairs to the collector, which flushes their flows at once.
use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use svc_common::{CtTimeouts, DoomedPair};

use crate::{
    budget,
    conntrack::{self, Collector, CollectorHandle},
    datapath::Datapath,
    dataplane::{pinned::PinnedMaps, sockreap::Reaper, DataplaneError, MapOp},
    health::{self, HealthServers, ProxyHealth},
    ifwatch::{self, Link, LinkEvent},
    metrics::{self, MapLabel, Metrics},
    model::{HealthCheck, NodeContext, ObjectRef, Problem},
    reconcile::Removals,
    snat,
    source::{kube as kube_source, manifests},
};
use k8s_openapi::api::core::v1::Node;
use svc_core::engine::{Engine, EngineConfig, Event, Hooks, FULL_RESYNC};
use svc_core::store::{self, Delta};
use tokio::sync::mpsc;

/// Where Services and EndpointSlices come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `--manifests DIR`, polled for changes every `poll`.
    Manifests {
        dir: PathBuf,
        options: manifests::Options,
        poll: Duration,
    },
    /// The API server: `--kubeconfig`, else in-cluster config, `$KUBECONFIG`, `~/.kube/config`.
    Kube { kubeconfig: Option<PathBuf> },
}

/// Everything `run` needs, resolved from the command line.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub source: Source,
    pub node_name: String,
    /// `--node-ip`; the Node object's addresses are added when the API server is the source.
    pub node_ips: Vec<Ipv4Addr>,
    /// The IPv6 `--node-ip`s ([`NodeContext::node_ips6`]).
    pub node_ips6: Vec<Ipv6Addr>,
    /// The IPv6 prefixes of `--nodeport-addresses` ([`NodeContext::nodeport_addresses6`]).
    pub nodeport_addresses6: Vec<svc_core::model::Ipv6Net>,
    /// The IPv6 prefixes of `--external-ip-cidrs` ([`NodeContext::external_ip_cidrs6`]).
    pub external_ip_cidrs6: Vec<svc_core::model::Ipv6Net>,
    /// `--nodeport-addresses` ([`NodeContext::nodeport_addresses`]).
    pub nodeport_addresses: Vec<svc_core::model::Ipv4Net>,
    /// `--external-ip-cidrs` ([`NodeContext::external_ip_cidrs`]).
    pub external_ip_cidrs: Option<Vec<svc_core::model::Ipv4Net>>,
    /// `--service-proxy-name` ([`NodeContext::service_proxy_name`]).
    pub service_proxy_name: Option<String>,
    pub bpffs: PathBuf,
    /// Interface-name prefixes of the host side of pod veths.
    pub pod_ifaces: Vec<String>,
    /// Node uplinks for the north-south programs (`--uplink`); empty = the default route's.
    pub uplinks: Vec<String>,
    /// cgroup v2 directory for the socket hooks; `None` = the cgroup v2 root.
    pub cgroup: Option<PathBuf>,
    /// `--pod-socket-lb`.
    pub pod_socket_lb: bool,
    pub xdp: crate::datapath::XdpChoice,
    /// `--tc-attach`.
    pub tc: crate::datapath::TcChoice,
    pub metrics_addr: Option<SocketAddr>,
    /// `--healthz-bind-address`: kube-proxy's `/healthz` and `/livez`; `None` = not served.
    pub healthz_addr: Option<SocketAddr>,
    /// How long a change may wait for the maps before the agent reports itself unhealthy
    /// (kube-proxy: 2 × `--sync-period`).
    pub health_timeout: Duration,
    /// `--cluster-cidr` (kube-proxy's `clusterCIDR`): recorded and logged; the datapath tells
    /// pod traffic by interface (`--pod-ifaces`), not by source range.
    pub cluster_cidrs: Vec<String>,
    /// Test only (`--fault-inject stall-programming`): after the first sync, stop writing the
    /// maps while the loop keeps receiving changes.
    pub stall_programming: bool,
    /// Test only (`--fault-inject no-budget`): plan every Service, fitting or not.
    pub no_budget: bool,
    /// `svc_common::FAULT_*` bits; 0 outside tests.
    pub fault: u32,
    /// `--bpf-debug-log`: the programs' aya-log messages on, and forwarded to this log.
    pub bpf_debug_log: bool,
    /// Source ports for SNAT and clash remapping (`--snat-port-range` or the node's default,
    /// `crate::snat_ports`), passed to the datapath as `svc_common::GLOBAL_SNAT_PORTS`.
    pub snat_ports: svc_common::SnatPorts,
    /// Conntrack timeouts (`--conntrack-*-timeout*`), for the datapath and the collector.
    pub ct_timeouts: CtTimeouts,
    /// `--conntrack-max`: entries of a newly created conntrack map.
    pub ct_max: u32,
    /// `--conntrack-gc-interval`.
    pub ct_gc_interval: Duration,
    /// `--max-frontends`, `--max-slots`, `--max-backends`, `--max-service-share`.
    pub service_maps: crate::cli::ServiceMapArgs,
}

pub async fn run(cfg: RunConfig) -> Result<()> {
    let started_at = SystemTime::now();
    let metrics = Metrics::new(cfg.bpffs.clone());
    if let Some(addr) = cfg.metrics_addr {
        metrics::serve(addr, metrics.clone()).await?;
    }
    // The first sync is pending from now on: a datapath that takes longer than the timeout to
    // load is reported, as kube-proxy reports a first sync that takes too long.
    let proxy_health = ProxyHealth::new(cfg.health_timeout);
    metrics.queued();
    if let Some(addr) = cfg.healthz_addr {
        health::serve_proxy_health(addr, proxy_health.clone(), metrics.clone()).await?;
    }
    if !cfg.cluster_cidrs.is_empty() {
        info!(cluster_cidr = ?cfg.cluster_cidrs, "cluster CIDR recorded (pod traffic is told by interface, --pod-ifaces)");
    }
    let (mut datapath, maps) = Datapath::load(
        &cfg.bpffs,
        crate::datapath::LoadGlobals {
            fault: cfg.fault,
            debug_log: cfg.bpf_debug_log,
            snat_ports: cfg.snat_ports,
        },
        cfg.xdp,
        cfg.tc,
        &cfg.ct_timeouts,
        cfg.ct_max,
        &cfg.service_maps,
    )?;
    // The collector's two threads (passes, flushes) get handles of their own on the pinned maps.
    let open_pins = || {
        PinnedMaps::from_pins(&cfg.bpffs).with_context(|| {
            format!(
                "opening the maps pinned under {} for the conntrack collector",
                cfg.bpffs.display()
            )
        })
    };
    let gc = Collector::new(
        open_pins()?,
        cfg.ct_timeouts,
        cfg.ct_gc_interval,
        metrics.clone(),
    )
    .spawn(open_pins()?)
    .context("starting the conntrack collector threads")?;
    let cgroup = match &cfg.cgroup {
        Some(c) => c.clone(),
        None => crate::datapath::cgroup2_root()?,
    };
    datapath.set_pod_socket_lb(cfg.pod_socket_lb);
    datapath.attach_cgroup(&cgroup)?;
    let reaper = match datapath.sock_reap_link() {
        Some(link) => Some(
            Reaper::start(&cfg.bpffs, link.to_owned(), cgroup.clone())
                .context("starting the socket reaper")?,
        ),
        None => None,
    };
    if let Some(logger) = datapath.take_debug_logger()? {
        // SAFETY: the logger owns the AYA_LOGS ring's descriptor and keeps it open, unchanged,
        // for as long as the AsyncFd that owns it.
        let mut logger = unsafe { tokio::io::unix::AsyncFd::register(logger) }
            .map_err(|e| anyhow::anyhow!("polling the programs' log ring: {}", e.into_parts().1))?;
        tokio::spawn(async move {
            loop {
                match logger.readable_mut().await {
                    Ok(mut guard) => {
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                    Err(e) => {
                        warn!("reading the programs' log ring: {e}");
                        return;
                    }
                }
            }
        });
        info!("kernel debug messages on (--bpf-debug-log)");
    }
    // Trace slots of tracers that died without releasing them (`svc-agent trace`).
    let sweep_bpffs = cfg.bpffs.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::trace::SWEEP_PERIOD);
        loop {
            tick.tick().await;
            // Map and flock syscalls: off the runtime's one thread.
            let path = sweep_bpffs.clone();
            match tokio::task::spawn_blocking(move || crate::trace::sweep(&path)).await {
                Ok(Ok(freed)) if !freed.is_empty() => {
                    info!(slots = ?freed, "freed the trace slots of tracers that exited")
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!("checking the trace slots: {e:#}"),
                Err(e) => warn!("checking the trace slots: {e}"),
            }
        }
    });
    let (links, mut link_events) = ifwatch::start().await?;
    let mut cfg = cfg;
    if cfg.uplinks.is_empty() {
        match ifwatch::default_route_interface(&links).await {
            Ok(Some(name)) => {
                info!(uplink = %name, "no --uplink: using the default route's interface");
                cfg.uplinks.push(name);
            }
            Ok(None) => {
                warn!("no --uplink and no default route: north-south traffic is not served")
            }
            Err(e) => warn!("no --uplink, and the default route could not be read: {e:#}"),
        }
    }
    let cfg = cfg;
    // The SNAT source needs the uplinks (and, with the API server, the Node: again when the
    // engine sees it).
    let mut last_snat = None;
    program_snat_source(&mut datapath, &cfg, None, &mut last_snat).await?;
    let names = links.iter().map(|(i, l)| (*i, l.name.clone())).collect();
    datapath.remove_stale_link_pins(&names);
    for (index, link) in &links {
        attach_link(&mut datapath, &cfg, *index, link);
    }

    // One event stream for the engine: the source's objects, interface changes.
    let (events, event_rx) = mpsc::unbounded_channel::<Event<LinkEvent>>();
    let resync = match &cfg.source {
        Source::Manifests { dir, options, poll } => {
            tokio::spawn(poll_manifests(
                dir.clone(),
                options.clone(),
                *poll,
                events.clone(),
            ));
            None
        }
        Source::Kube { kubeconfig } => {
            let client = kube_client(kubeconfig.as_deref()).await?;
            kube_source::start(client, &cfg.node_name, events.clone());
            Some(FULL_RESYNC)
        }
    };
    tokio::spawn(async move {
        while let Some(event) = link_events.recv().await {
            if events.send(Event::Interface(event)).is_err() {
                return;
            }
        }
    });

    let engine_cfg = EngineConfig {
        node: NodeContext {
            node_name: cfg.node_name.clone(),
            node_ips: cfg.node_ips.clone(),
            nodeport_addresses: cfg.nodeport_addresses.clone(),
            external_ip_cidrs: cfg.external_ip_cidrs.clone(),
            node_ips6: cfg.node_ips6.clone(),
            nodeport_addresses6: cfg.nodeport_addresses6.clone(),
            external_ip_cidrs6: cfg.external_ip_cidrs6.clone(),
            zone: None,
            service_proxy_name: cfg.service_proxy_name.clone(),
        },
        resync,
        heartbeat: proxy_health.heartbeat_period(),
        service_share: cfg.service_maps.max_service_share,
        no_budget: cfg.no_budget,
        stall_programming: cfg.stall_programming,
        started_at,
    };
    let hooks = AgentHooks {
        metrics,
        proxy_health: proxy_health.clone(),
        health: HealthServers::new(proxy_health),
        gc,
        reaper,
        datapath,
        last_snat,
        cfg: cfg.clone(),
    };
    // Adopts whatever an earlier agent left in the pinned maps: the first plan then writes
    // only what differs, and traffic through unchanged services is never disturbed.
    let engine = Engine::new(maps, hooks, engine_cfg).context("reading the pinned service maps")?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
    };
    engine.run(event_rx, shutdown).await;
    info!(
        "stopping; maps and links stay pinned under {} for the next agent",
        cfg.bpffs.display()
    );
    Ok(())
}

/// The manifests source: every `poll`, re-stats `dir` and re-reads only the files that changed
/// ([`manifests::ManifestDir`]); sends the first load whole ([`Event::Objects`]) and then only
/// the objects that changed ([`Event::Changes`]). A directory that cannot be listed keeps what
/// is programmed (logged).
async fn poll_manifests(
    dir: PathBuf,
    options: manifests::Options,
    poll: Duration,
    events: mpsc::UnboundedSender<Event<LinkEvent>>,
) {
    let mut cache = None;
    let mut tick = tokio::time::interval(poll);
    loop {
        tick.tick().await;
        let started = Instant::now();
        // Lost only if a refresh panicked: a new one loads everything again, which the engine
        // applies as a complete set.
        let mut dir_cache = cache
            .take()
            .unwrap_or_else(|| manifests::ManifestDir::new(&dir, options.clone()));
        // Stats, file reads and YAML parsing: off the runtime, which also runs the engine.
        let refreshed = tokio::task::spawn_blocking(move || {
            let update = dir_cache.refresh();
            (dir_cache, update)
        })
        .await;
        let update = match refreshed {
            Ok((dir_cache, update)) => {
                cache = Some(dir_cache);
                update
            }
            Err(e) => {
                warn!("loading the manifest directory: {e}; keeping what is programmed");
                continue;
            }
        };
        let event = match update {
            Ok(Some(manifests::Update::Load(objects))) => Event::Objects(objects, started),
            Ok(Some(manifests::Update::Changes(changes))) => Event::Changes(changes, started),
            Ok(None) => continue,
            Err(e) => {
                warn!("{e}; keeping what is programmed");
                continue;
            }
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

/// Chooses the SNAT source among the node's own addresses (`snat::choose`) and writes it to
/// the datapath config; logs the candidates passed over, and an error when there is none
/// (such flows are then dropped and counted as `snat_no_address`, never sent from 0.0.0.0).
async fn program_snat_source(
    datapath: &mut Datapath,
    cfg: &RunConfig,
    node: Option<&k8s_openapi::api::core::v1::Node>,
    last: &mut Option<(snat::Choice, snat::Choice<Ipv6Addr>)>,
) -> Result<()> {
    let local = ifwatch::ipv4_addresses()
        .await
        .context("listing this node's addresses for the SNAT source")?;
    let local6 = ifwatch::ipv6_addresses()
        .await
        .context("listing this node's IPv6 addresses for the IPv6 SNAT source")?;
    let (internal, external) = node.map(store::node_addresses_by_type).unwrap_or_default();
    let (internal6, external6) = node.map(store::node_addresses_by_type6).unwrap_or_default();
    let choice = snat::choose(&snat::Candidates {
        flag_ips: &cfg.node_ips,
        internal: &internal,
        external: &external,
        local: &local,
        uplinks: &cfg.uplinks,
    });
    // The same rules for IPv6, from the IPv6 candidates.
    let choice6 = snat::choose(&snat::Candidates {
        flag_ips: &cfg.node_ips6,
        internal: &internal6,
        external: &external6,
        local: &local6,
        uplinks: &cfg.uplinks,
    });
    datapath.set_config(choice.addr, choice6.addr)?;
    // Logged when the choice or what was passed over changes (a Node update can add an
    // unusable address without changing the source).
    if last.as_ref().map(|(c, _)| c) != Some(&choice) {
        for (addr, why) in &choice.skipped {
            warn!(%addr, "not used as the SNAT source: {why}");
        }
        match choice.addr {
            Some(addr) => info!(%addr, rule = choice.rule, "SNAT source chosen"),
            None => error!(
                uplinks = ?cfg.uplinks,
                "no SNAT source: none of --node-ip, the Node's addresses and the uplinks' \
                 addresses is on this node; external flows to remote backends are dropped \
                 (snat_no_address)"
            ),
        }
    }
    if last.as_ref().map(|(_, c)| c) != Some(&choice6) {
        for (addr, why) in &choice6.skipped {
            warn!(%addr, "not used as the IPv6 SNAT source: {why}");
        }
        match choice6.addr {
            Some(addr) => info!(%addr, rule = choice6.rule, "IPv6 SNAT source chosen"),
            // A node without IPv6 is normal: only say so, IPv6 frontends then have no SNAT.
            None => info!(
                "no IPv6 SNAT source (no global IPv6 address on this node): external IPv6 \
                 flows to remote backends are dropped (snat_no_address)"
            ),
        }
    }
    *last = Some((choice, choice6));
    Ok(())
}

pub(crate) async fn kube_client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "finding API server credentials (in-cluster, $KUBECONFIG or ~/.kube/config)",
        )?,
    };
    info!(server = %config.cluster_url, "connecting to the API server");
    kube::Client::try_from(config).context("building the API client")
}

fn on_link(datapath: &mut Datapath, cfg: &RunConfig, event: LinkEvent) {
    match event {
        LinkEvent::Present { index, link } => attach_link(datapath, cfg, index, &link),
        LinkEvent::Gone { index } => datapath.forget(index),
    }
}

/// Attaches the uplink programs to `--uplink` interfaces and the pod programs to interfaces
/// named with a `--pod-ifaces` prefix; ignores every other interface.
fn attach_link(datapath: &mut Datapath, cfg: &RunConfig, index: u32, link: &Link) {
    let name = link.name.as_str();
    let result = if cfg.uplinks.iter().any(|u| u == name) {
        datapath.ensure_uplink(index, name, link.veth)
    } else if cfg.pod_ifaces.iter().any(|p| name.starts_with(p.as_str())) {
        datapath.ensure_pod(index, name)
    } else {
        return;
    };
    if let Err(e) = result {
        error!(iface = name, "{e:#}");
    }
}

/// What the agent does around the engine: metrics, `/healthz`, the conntrack collector, the
/// health-check servers, the SNAT source and attaching programs to interfaces.
struct AgentHooks {
    metrics: Arc<Metrics>,
    proxy_health: Arc<ProxyHealth>,
    health: HealthServers,
    /// The conntrack collector, told which UDP flows to flush.
    gc: CollectorHandle,
    /// Destroys connected UDP sockets of removed pairs (kernels with `bpf_sock_destroy`).
    reaper: Option<Reaper>,
    datapath: Datapath,
    last_snat: Option<(snat::Choice, snat::Choice<Ipv6Addr>)>,
    cfg: RunConfig,
}

impl Hooks<PinnedMaps> for AgentHooks {
    type Interface = LinkEvent;

    fn queued(&mut self) {
        self.proxy_health.queued();
        self.metrics.queued();
    }

    fn heartbeat(&mut self) {
        self.proxy_health.heartbeat();
    }

    fn delta(&mut self, delta: &Delta) {
        if let Delta::WatchError { kind, .. } = delta {
            self.metrics
                .watch_errors
                .get_or_create(&metrics::KindLabel {
                    kind: kind.to_string(),
                })
                .inc();
        }
    }

    fn node_seen(&mut self, node: Option<&Node>) {
        self.proxy_health.sync_node(node);
    }

    async fn node_changed(&mut self, node: Option<&Node>) {
        if let Err(e) =
            program_snat_source(&mut self.datapath, &self.cfg, node, &mut self.last_snat).await
        {
            error!("{e:#}");
        }
    }

    async fn interface(&mut self, event: LinkEvent, node: Option<&Node>) {
        on_link(&mut self.datapath, &self.cfg, event);
        // An uplink that appears (or changes) may bring the SNAT source.
        if let Err(e) =
            program_snat_source(&mut self.datapath, &self.cfg, node, &mut self.last_snat).await
        {
            warn!("{e:#}");
        }
    }

    fn problem(&mut self, problem: &Problem) {
        self.metrics.skipped(&problem.object, &problem.field);
    }

    fn refused(&mut self, count: usize) {
        self.metrics.services_refused.set(count as i64);
    }

    fn wrote(&mut self, _op: &MapOp) {
        self.metrics.map_writes.inc();
    }

    fn write_failed(&mut self, _error: &DataplaneError) {
        self.metrics.sync_errors.inc();
    }

    fn programmed(&mut self, latency: Duration) {
        self.metrics
            .programming_latency
            .observe(latency.as_secs_f64());
    }

    fn synced(&mut self, took: Duration, triggers: &[SystemTime]) {
        self.proxy_health.updated();
        self.metrics.synced(took);
        self.metrics.network_programmed(triggers);
    }

    fn fill(&mut self, used: budget::Entries, capacity: budget::Entries) {
        for ((map, entries), (_, cap)) in used.named().into_iter().zip(capacity.named()) {
            self.metrics
                .map_entries
                .get_or_create(&MapLabel { map })
                .set(entries as i64);
            self.metrics
                .map_capacity
                .get_or_create(&MapLabel { map })
                .set(cap as i64);
        }
    }

    /// Session affinity of removed pairs and deleted frontends is deleted here, before the next
    /// plan can hand a freed frontend id to another Service; the UDP conntrack entries of
    /// removed pairs are left to the collector's thread (a scan of the whole table), which
    /// starts on them at once.
    fn removed(&mut self, maps: &mut PinnedMaps, removals: &Removals) {
        match conntrack::flush_affinity(maps, removals) {
            Ok(n) => {
                self.metrics.affinity_flushed.inc_by(n as u64);
            }
            Err(e) => {
                self.metrics.ct_gc_errors.inc();
                error!("deleting session affinity of removed endpoints: {e}");
            }
        }
        let udp = removals.udp_pairs();
        if let Some(reaper) = &self.reaper {
            let pairs = udp
                .iter()
                .map(|&(frontend_id, backend_id)| DoomedPair {
                    frontend_id,
                    backend_id,
                })
                .collect();
            if !reaper.reap(pairs) {
                error!("the socket reaper thread has stopped: connected UDP sockets of removed endpoints keep them");
            }
        }
        if !udp.is_empty() && !self.gc.flush_udp(udp) {
            error!("the conntrack collector thread has stopped: UDP flows of removed endpoints stay until they expire");
        }
    }

    fn serves_health_check(&self, service: &ObjectRef) -> bool {
        self.health.serves(service)
    }

    async fn health_checks(&mut self, checks: Vec<HealthCheck>) {
        self.health.sync(&checks).await;
    }

    fn ready(&mut self) {
        self.metrics.ready.store(true, Ordering::Relaxed);
    }
}
