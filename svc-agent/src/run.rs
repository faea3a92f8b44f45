//! `svc-agent run`: the agent's main loop.
//!
//! One task owns the datapath, the objects and the programmed state, and reacts to: object
//! changes (the API-server watchers' deltas, or the manifest directory's fingerprint changing),
//! interfaces appearing or vanishing (rtnetlink), and SIGTERM/SIGINT. Map writes are
//! synchronous syscalls of a few microseconds each; they run on this task.
//!
//! Planning is incremental: a batch of deltas re-plans only the Services it touched
//! ([`model::desired_for`] + [`reconcile::plan_services_in_place`]). A full plan runs on the
//! first sync (after adopting the pinned maps, so a restart writes only what differs), when the
//! Node's addresses change, and after a failed write (when the maps are re-read).
//!
//! The conntrack collector ([`crate::conntrack::Collector`]) runs on threads of its own with
//! its own handles on the pinned maps: a pass over a large `SVC_CT` never delays a plan. After
//! each plan this task deletes the session affinity of what the plan removed and sends the
//! removed UDP (frontend, backend) pairs to the collector, which flushes their flows at once.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use svc_common::CtTimeouts;

use crate::{
    budget,
    conntrack::{self, Collector, CollectorHandle},
    datapath::Datapath,
    dataplane::{pinned::PinnedMaps, Dataplane, MapOp},
    health::{self, HealthServers, ProxyHealth},
    ifwatch::{self, LinkEvent},
    metrics::{self, MapLabel, Metrics},
    model::{self, NodeContext, ObjectRef, Objects},
    reconcile::{self, Programmed, Removals},
    snat,
    source::{kube as kube_source, manifests},
};
use svc_core::store::{self, Delta, Store, Touched};

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
    /// `--nodeport-addresses` ([`NodeContext::nodeport_addresses`]).
    pub nodeport_addresses: Vec<model::Ipv4Cidr>,
    /// `--external-ip-cidrs` ([`NodeContext::external_ip_cidrs`]).
    pub external_ip_cidrs: Option<Vec<model::Ipv4Cidr>>,
    /// `--service-proxy-name` ([`NodeContext::service_proxy_name`]).
    pub service_proxy_name: Option<String>,
    pub bpffs: PathBuf,
    /// Interface-name prefixes of the host side of pod veths.
    pub pod_ifaces: Vec<String>,
    /// Node uplinks for the north-south programs (`--uplink`); empty = the default route's.
    pub uplinks: Vec<String>,
    /// cgroup v2 directory for the socket hooks; `None` = the cgroup v2 root.
    pub cgroup: Option<PathBuf>,
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
    datapath.attach_cgroup(&cgroup)?;
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
    // Adopt whatever an earlier agent left in the pinned maps: the first plan then writes only
    // what differs, and traffic through unchanged services is never disturbed.
    let snapshot = maps.snapshot().context("reading the pinned service maps")?;
    info!(
        frontends = snapshot.frontends.len(),
        backends = snapshot.backends.len(),
        "adopted pinned maps"
    );
    let mut engine = Engine {
        programmed: Programmed::from_snapshot(&snapshot),
        maps,
        metrics: metrics.clone(),
        last_problems: BTreeSet::new(),
        refused: BTreeMap::new(),
        service_share: cfg.service_maps.max_service_share,
        no_budget: cfg.no_budget,
        needs_full: true,
        gc,
        health: proxy_health.clone(),
        triggers: Vec::new(),
        stall_programming: cfg.stall_programming,
        synced_once: false,
    };

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
    // The SNAT source needs the uplinks (and, with the API server, the Node: again below).
    let mut last_snat = None;
    program_snat_source(&mut datapath, &cfg, None, &mut last_snat).await?;
    datapath.remove_stale_link_pins(&links);
    for (index, name) in &links {
        attach_link(&mut datapath, &cfg, *index, name);
    }

    let mut health = HealthServers::new(proxy_health.clone());
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    match &cfg.source {
        Source::Manifests { dir, options, poll } => {
            let node = node_context(&cfg, None);
            let mut last_fingerprint = None;
            let mut tick = tokio::time::interval(*poll);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        proxy_health.heartbeat();
                        let fingerprint = match manifests::dir_fingerprint(dir) {
                            Ok(f) => f,
                            Err(e) => {
                                warn!(dir = %dir.display(), "cannot read manifest directory: {e}; keeping what is programmed");
                                continue;
                            }
                        };
                        if last_fingerprint == Some(fingerprint) {
                            continue;
                        }
                        let started = Instant::now();
                        match manifests::load_dir_with(dir, options) {
                            Ok(objects) => {
                                last_fingerprint = Some(fingerprint);
                                engine.queued();
                                engine.full(&objects, &node, started);
                                health.sync(&model::health_checks(&objects, &node)).await;
                                metrics.ready.store(true, Ordering::Relaxed);
                            }
                            Err(e) => warn!("{e}; keeping what is programmed"),
                        }
                    }
                    Some(event) = link_events.recv() => {
                        on_link(&mut datapath, &cfg, event);
                        // An uplink that appears (or changes) may bring the SNAT source.
                        if let Err(e) = program_snat_source(&mut datapath, &cfg, None, &mut last_snat).await {
                            warn!("{e:#}");
                        }
                    }
                    _ = sigterm.recv() => break,
                    _ = sigint.recv() => break,
                }
            }
        }
        Source::Kube { kubeconfig } => {
            let client = kube_client(kubeconfig.as_deref()).await?;
            let mut deltas = kube_source::start(client, &cfg.node_name);
            let mut store = Store::default();
            // A full plan now and then settles what incremental plans cannot see (a frontend
            // address claimed by two Services, one of them unchanged), as kube-proxy resyncs
            // periodically. With nothing to change it writes nothing.
            let mut resync = tokio::time::interval(FULL_RESYNC);
            resync.tick().await;
            let mut heartbeat = tokio::time::interval(proxy_health.heartbeat_period());
            loop {
                tokio::select! {
                    _ = heartbeat.tick() => proxy_health.heartbeat(),
                    _ = resync.tick() => {
                        if store.ready() && !engine.needs_full {
                            let node = node_context(&cfg, Some(&store));
                            engine.full(&store.objects, &node, Instant::now());
                            health.sync(&model::health_checks(&store.objects, &node)).await;
                        }
                    }
                    Some(delta) = deltas.recv() => {
                        let mut touched = Touched::default();
                        note_delta(&metrics, &delta);
                        store.apply(delta, &mut touched);
                        // Take everything already queued: one plan for a burst of events.
                        while let Ok(delta) = deltas.try_recv() {
                            note_delta(&metrics, &delta);
                            store.apply(delta, &mut touched);
                        }
                        proxy_health.sync_node(store.node.as_ref());
                        if touched.node || !touched.services.is_empty() {
                            engine.queued();
                        }
                        // kube-proxy measures only changes made after it started.
                        engine
                            .triggers
                            .extend(touched.triggers.iter().filter(|t| **t >= started_at));
                        if !store.ready() {
                            continue;
                        }
                        let node = node_context(&cfg, Some(&store));
                        let oldest = touched.oldest.unwrap_or_else(Instant::now);
                        if engine.needs_full || touched.node {
                            // The Node object may have brought (new) addresses.
                            if let Err(e) =
                                program_snat_source(&mut datapath, &cfg, store.node.as_ref(), &mut last_snat).await
                            {
                                error!("{e:#}");
                            }
                            engine.full(&store.objects, &node, oldest);
                            health.sync(&model::health_checks(&store.objects, &node)).await;
                            metrics.ready.store(true, Ordering::Relaxed);
                        } else if !touched.services.is_empty() {
                            engine.incremental(&store, &node, &touched.services, oldest);
                            // Health checks cost a pass over every Service and slice: redo them
                            // only when a touched Service has (or had) a health-check port.
                            let concerned = touched.services.iter().any(|r| {
                                health.serves(r)
                                    || store.objects.services.get(r).is_some_and(|svc| {
                                        svc.spec
                                            .as_ref()
                                            .is_some_and(|s| s.health_check_node_port.is_some())
                                    })
                            });
                            if concerned {
                                health.sync(&model::health_checks(&store.objects, &node)).await;
                            }
                        }
                    }
                    Some(event) = link_events.recv() => {
                        on_link(&mut datapath, &cfg, event);
                        // An uplink that appears (or changes) may bring the SNAT source.
                        if let Err(e) = program_snat_source(&mut datapath, &cfg, store.node.as_ref(), &mut last_snat).await {
                            warn!("{e:#}");
                        }
                    }
                    _ = sigterm.recv() => break,
                    _ = sigint.recv() => break,
                }
            }
        }
    }
    info!(
        "stopping; maps and links stay pinned under {} for the next agent",
        cfg.bpffs.display()
    );
    Ok(())
}

/// Period of the full plan in API-source mode (see where it is used).
const FULL_RESYNC: Duration = Duration::from_secs(60);

fn note_delta(metrics: &Metrics, delta: &Delta) {
    if let Delta::WatchError { kind, .. } = delta {
        metrics
            .watch_errors
            .get_or_create(&metrics::KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }
}

/// Chooses the SNAT source among the node's own addresses (`snat::choose`) and writes it to
/// the datapath config; logs the candidates passed over, and an error when there is none
/// (such flows are then dropped and counted as `snat_no_address`, never sent from 0.0.0.0).
async fn program_snat_source(
    datapath: &mut Datapath,
    cfg: &RunConfig,
    node: Option<&k8s_openapi::api::core::v1::Node>,
    last: &mut Option<snat::Choice>,
) -> Result<()> {
    let local = ifwatch::ipv4_addresses()
        .await
        .context("listing this node's addresses for the SNAT source")?;
    let (internal, external) = node.map(store::node_addresses_by_type).unwrap_or_default();
    let choice = snat::choose(&snat::Candidates {
        flag_ips: &cfg.node_ips,
        internal: &internal,
        external: &external,
        local: &local,
        uplinks: &cfg.uplinks,
    });
    datapath.set_config(choice.addr)?;
    // Logged when the choice or what was passed over changes (a Node update can add an
    // unusable address without changing the source).
    if last.as_ref() != Some(&choice) {
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
        *last = Some(choice);
    }
    Ok(())
}

/// What the model knows of this node: the flags, plus what its Node object says when the API
/// server is the source (`store`): its addresses and its zone. `--manifests` has no Node
/// object, so no zone there (zone hints are then ignored, as on an unlabelled node).
fn node_context(cfg: &RunConfig, store: Option<&Store>) -> NodeContext {
    let node = store.and_then(|s| s.node.as_ref());
    NodeContext {
        node_name: cfg.node_name.clone(),
        node_ips: node_ips(cfg, node),
        nodeport_addresses: cfg.nodeport_addresses.clone(),
        external_ip_cidrs: cfg.external_ip_cidrs.clone(),
        zone: node.and_then(store::node_zone),
        service_proxy_name: cfg.service_proxy_name.clone(),
    }
}

/// `--node-ip` plus the Node object's InternalIP/ExternalIP addresses, de-duplicated.
fn node_ips(cfg: &RunConfig, node: Option<&k8s_openapi::api::core::v1::Node>) -> Vec<Ipv4Addr> {
    let mut ips: BTreeSet<Ipv4Addr> = cfg.node_ips.iter().copied().collect();
    if let Some(node) = node {
        ips.extend(store::node_addresses(node));
    }
    ips.into_iter().collect()
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
        LinkEvent::Present { index, name } => attach_link(datapath, cfg, index, &name),
        LinkEvent::Gone { index } => datapath.forget(index),
    }
}

/// Attaches the uplink programs to `--uplink` interfaces and the pod programs to interfaces
/// named with a `--pod-ifaces` prefix; ignores every other interface.
fn attach_link(datapath: &mut Datapath, cfg: &RunConfig, index: u32, name: &str) {
    let result = if cfg.uplinks.iter().any(|u| u == name) {
        datapath.ensure_uplink(index, name)
    } else if cfg.pod_ifaces.iter().any(|p| name.starts_with(p.as_str())) {
        datapath.ensure_pod(index, name)
    } else {
        return;
    };
    if let Err(e) = result {
        error!(iface = name, "{e:#}");
    }
}

/// The programmed state and the maps it describes.
struct Engine {
    maps: PinnedMaps,
    programmed: Programmed,
    metrics: Arc<Metrics>,
    /// Problems reported by the last full plan, so each is logged once.
    last_problems: BTreeSet<String>,
    /// Services [`budget::admit`] did not let in, with why (logged when it changes). They are
    /// planned again with every change, so they get in as soon as space returns.
    refused: BTreeMap<ObjectRef, String>,
    /// `--max-service-share`.
    service_share: u8,
    /// `--fault-inject no-budget`: let every Service in.
    no_budget: bool,
    /// The next plan must be full: first sync, or `programmed` was re-read from the maps.
    needs_full: bool,
    /// The conntrack collector, told which UDP flows to flush.
    gc: CollectorHandle,
    /// Told when changes arrive and when the maps reflect them (`/healthz`, `/livez`).
    health: Arc<ProxyHealth>,
    /// Trigger times of EndpointSlice changes not yet written to the maps.
    triggers: Vec<SystemTime>,
    /// `--fault-inject stall-programming`: write nothing after the first sync.
    stall_programming: bool,
    /// A plan has been written in full once.
    synced_once: bool,
}

impl Engine {
    /// A change arrived that the maps do not reflect yet.
    fn queued(&self) {
        self.health.queued();
        self.metrics.queued();
    }

    /// Plans every Service.
    fn full(&mut self, objects: &Objects, node: &NodeContext, since: Instant) {
        let started = Instant::now();
        let desired = model::desired(objects, node);
        let problems: Vec<_> = objects.problems.iter().chain(&desired.problems).collect();
        let texts: BTreeSet<String> = problems.iter().map(|p| p.to_string()).collect();
        for p in &problems {
            if !self.last_problems.contains(&p.to_string()) {
                warn!("skipped: {p}");
                self.metrics.skipped(&p.object, &p.field);
            }
        }
        self.last_problems = texts;
        let mut desired = desired;
        let admission = self.admit(&mut desired, None);
        let (ops, removals) =
            reconcile::plan_in_place_holding(&mut self.programmed, &desired, &admission.held);
        if self.apply(&ops, &removals, since, started) {
            self.needs_full = false;
            info!(
                services = objects.services.len(),
                frontends = desired.frontends.len(),
                writes = ops.len(),
                "full sync: maps match the desired state"
            );
        }
    }

    /// Plans only `services`: O(those Services), nothing proportional to the cluster (the
    /// slices come from the store's index, and the plan advances `programmed` in place).
    fn incremental(
        &mut self,
        store: &Store,
        node: &NodeContext,
        services: &BTreeSet<ObjectRef>,
        since: Instant,
    ) {
        let started = Instant::now();
        // Refused Services are planned again with every change: this one may have made room.
        let mut scope = services.clone();
        scope.extend(self.refused.keys().cloned());
        let mut desired =
            model::desired_for_indexed(&store.objects, node, &scope, &store.slice_owners);
        // A key one of them claims that a Service outside the scope holds (an external IP
        // equal to another Service's ClusterIP, say): plan the holder too, so the model settles
        // the claim as a full plan would.
        let holders: BTreeSet<ObjectRef> = desired
            .frontends
            .keys()
            .filter_map(|k| self.programmed.frontends().get(k)?.owner.clone())
            .filter(|owner| !scope.contains(owner))
            .collect();
        if !holders.is_empty() {
            scope.extend(holders);
            desired = model::desired_for_indexed(&store.objects, node, &scope, &store.slice_owners);
        }
        for p in &desired.problems {
            warn!("skipped: {p}");
            self.metrics.skipped(&p.object, &p.field);
        }
        let admission = self.admit(&mut desired, Some(&scope));
        // Held Services keep their frontends: leave them out of the plan altogether.
        for held in &admission.held {
            scope.remove(held);
        }
        let (ops, removals) =
            reconcile::plan_services_in_place(&mut self.programmed, &desired, &scope);
        if self.apply(&ops, &removals, since, started) {
            info!(
                services = services.len(),
                writes = ops.len(),
                "synced changed services"
            );
        }
    }

    /// Lets into `desired` only the Services of `scope` (`None`: all) that fit into the
    /// service maps ([`budget::admit`]), and reports each change in what is refused.
    fn admit(
        &mut self,
        desired: &mut model::Desired,
        scope: Option<&BTreeSet<ObjectRef>>,
    ) -> budget::Admission {
        if self.no_budget {
            warn!("fault injected: every Service planned, fitting the maps or not");
            return budget::Admission::default();
        }
        let capacity = self.maps.service_capacity().unwrap_or_else(|e| {
            error!("{e}; assuming the ABI's map sizes");
            budget::Entries {
                frontends: svc_common::MAX_FRONTENDS.into(),
                slots: svc_common::MAX_SLOTS.into(),
                backends: svc_common::MAX_BACKENDS.into(),
                source_ranges: svc_common::MAX_SOURCE_RANGES.into(),
            }
        });
        let limits = budget::Limits {
            capacity,
            service_share_percent: self.service_share,
        };
        let admission = budget::admit(&self.programmed, desired, scope, &limits);
        let in_scope = |s: &ObjectRef| scope.is_none_or(|set| set.contains(s));
        self.refused.retain(|svc, _| {
            let keep = !in_scope(svc) || admission.problems.contains_key(svc);
            if !keep {
                info!(service = %svc, "Service fits into the service maps now: programmed");
            }
            keep
        });
        for (svc, p) in &admission.problems {
            let text = p.to_string();
            if self.refused.get(svc) != Some(&text) {
                warn!("refused: {text}");
                self.metrics.skipped(&p.object, &p.field);
                self.refused.insert(svc.clone(), text);
            }
        }
        self.metrics.services_refused.set(self.refused.len() as i64);
        admission
    }

    /// Writes `ops`, which the caller has already planned into `programmed` (in place: cloning
    /// the whole state per event cost ~8 ms at 10k Services / 100k backends). On failure
    /// `programmed` is ahead of the maps, so it is re-read from them and the next plan is full.
    /// Then clears the flow state of what the plan removed (see [`Engine::flush`]), also after a
    /// failed write: clearing flows of a pair that is still live only re-balances them.
    /// Returns whether every write succeeded. `started`: when planning began (for kube-proxy's
    /// sync duration).
    fn apply(
        &mut self,
        ops: &[MapOp],
        removals: &Removals,
        since: Instant,
        started: Instant,
    ) -> bool {
        if self.stall_programming && self.synced_once {
            warn!(writes = ops.len(), "fault injected: not writing the maps");
            return false;
        }
        let ok = self.write(ops, since);
        self.flush(removals);
        if ok {
            self.synced_once = true;
            self.health.updated();
            self.metrics.synced(started.elapsed());
            self.metrics.network_programmed(&self.triggers);
            self.triggers.clear();
        }
        ok
    }

    /// Session affinity of removed pairs and deleted frontends is deleted here, before the next
    /// plan can hand a freed frontend id to another Service; the UDP conntrack entries of
    /// removed pairs are left to the collector's thread (a scan of the whole table), which
    /// starts on them at once.
    fn flush(&mut self, removals: &Removals) {
        if removals.is_empty() {
            return;
        }
        match conntrack::flush_affinity(&mut self.maps, removals) {
            Ok(n) => {
                self.metrics.affinity_flushed.inc_by(n as u64);
            }
            Err(e) => {
                self.metrics.ct_gc_errors.inc();
                error!("deleting session affinity of removed endpoints: {e}");
            }
        }
        let udp = removals.udp_pairs();
        if !udp.is_empty() && !self.gc.flush_udp(udp) {
            error!("the conntrack collector thread has stopped: UDP flows of removed endpoints stay until they expire");
        }
    }

    fn write(&mut self, ops: &[MapOp], since: Instant) -> bool {
        for op in ops {
            if let Err(e) = self.maps.apply(op) {
                error!("{e}");
                self.metrics.sync_errors.inc();
                match self.maps.snapshot() {
                    Ok(s) => self.programmed = Programmed::from_snapshot(&s),
                    Err(e) => error!("{e}"),
                }
                self.needs_full = true;
                return false;
            }
            self.metrics.map_writes.inc();
        }
        // Latency of a change reaching the maps: a plan that writes nothing (nothing changed,
        // or a periodic resync) is no such change.
        if !ops.is_empty() {
            self.metrics
                .programming_latency
                .observe(since.elapsed().as_secs_f64());
        }
        self.update_fill();
        true
    }

    /// Entries and capacity of each service map, for the fill metrics.
    fn update_fill(&self) {
        let used = budget::usage(&self.programmed);
        let Ok(cap) = self.maps.service_capacity() else {
            return;
        };
        for ((map, entries), (_, cap)) in used.named().into_iter().zip(cap.named()) {
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
}
