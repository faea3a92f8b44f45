//! `svc-agent trace`: what the datapath did with the packets of the flows one asks about, one
//! event per packet and program, as it happens (in the spirit of `cilium-dbg monitor`).
//!
//! # How it works
//! The programs end in `svc-ebpf/src/trace.rs`: while a bit of `SVC_TRACE_ON` is set they
//! check the packet against that slot's [`TraceFilter`] and write a [`TraceEvent`] into the
//! slot's ring. A tracer (this command; no agent needed, like `inspect`):
//! 1. resolves `--service NS/NAME` to frontend ids ([`service_frontend_ids`], pure) from the
//!    pinned frontend map and the Service (from `--manifests` or the API server);
//! 2. creates a ring buffer of its own and, holding the slot lock ([`SlotLock`]: `flock` on
//!    the bpffs directory), frees the slots of tracers that died ([`plan_slots`], pure), takes
//!    a free slot and writes its filter, then its ring, then its bit: a program that sees the
//!    bit sees the rest;
//! 3. prints each event ([`EventView`]) until `--count` events, Ctrl-C or SIGTERM;
//! 4. says how many events it printed and how many the programs lost because its ring was
//!    full (`SVC_TRACE_LOST`, zeroed when the slot was claimed), and releases the slot in the
//!    reverse order (bit, ring, filter).
//!
//! Several tracers run at once, each with its own slot and ring (a ring buffer has one
//! consumer position, so a shared ring would hand each event to one tracer only). A tracer
//! killed with SIGKILL cannot release its slot: the next tracer or the agent ([`sweep`], every
//! [`SWEEP_PERIOD`]) frees a slot whose owner process is gone (pid and start time, judged only
//! from the owner's pid namespace).
//!
//! # Output
//! - table (default): one line per event, decoded as `inspect` decodes maps.
//! - `-o json`: one JSON object per line ([`EventView`]), flushed per event.
use std::{
    collections::BTreeMap,
    io::Write as _,
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::core::v1::Service;
use serde::Serialize;
use svc_common::{
    Frontend, FrontendKeyOf, Hook, TraceEventOf, TraceFilter, AF_INET, AF_INET6, ALL_HOOKS,
    ALL_REASONS, CT_DIR_FORWARD, CT_DIR_REPLY, FRONTEND_F_NODEPORT, MAP_TRACE_ON, PROTO_TCP,
    PROTO_UDP, TRACE_FRONTENDS, TRACE_SLOTS,
};
use svc_core::family::{host_port, AnyBackend, AnyFrontendKey, Family};

use crate::{
    dataplane::{
        trace::{new_ring, AnyTraceEvent, SlotLock, TraceMaps, TraceRing},
        MapSnapshot,
    },
    inspect::{
        ct_flag_words, ct_state_name, proto_name, read_snapshot, tcp_flag_words, Common, Format,
        Proto,
    },
    model::ObjectRef,
};

/// How often the agent frees the slots of dead tracers.
pub const SWEEP_PERIOD: Duration = Duration::from_secs(2);

/// `svc-agent trace`.
#[derive(Clone, Debug, clap::Args)]
pub struct TraceArgs {
    /// One end of the flow (a client, or a pod), IPv4 or IPv6. Matches either direction,
    /// before or after translation.
    #[arg(long)]
    pub src: Option<IpAddr>,
    /// The other end (a frontend, a backend, a client), of the same family as --src.
    #[arg(long)]
    pub dst: Option<IpAddr>,
    /// Either port, before or after translation.
    #[arg(long)]
    pub port: Option<u16>,
    #[arg(long, value_enum)]
    pub proto: Option<Proto>,
    /// Only flows to this Service's frontends (NAMESPACE/NAME), resolved from the pinned
    /// frontend map and the Service (from --manifests, else the API server).
    #[arg(long, value_name = "NS/NAME")]
    pub service: Option<String>,
    /// Read --service from this manifest directory (the agent's --manifests) instead of the
    /// API server.
    #[arg(long, requires = "service")]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig for --service (default: in-cluster, $KUBECONFIG, ~/.kube/config).
    #[arg(long, requires = "service", conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    #[command(flatten)]
    pub common: Common,
}

// ---------------------------------------------------------------------------------------------
// Pure decisions.

/// The Service's frontends among the pinned frontend maps of both families (`snap`): entries
/// for its ClusterIPs, external IPs and load-balancer ingress IPs on its ports, and NodePort
/// entries on its node ports (NodePort numbers are unique in a cluster), each protocol
/// matched. With `port`, only the frontends on that port (service port or node port). Sorted,
/// without duplicates.
pub fn service_frontend_ids(svc: &Service, snap: &MapSnapshot, port: Option<u16>) -> Vec<u32> {
    let spec = svc.spec.clone().unwrap_or_default();
    let addrs: Vec<IpAddr> = spec
        .cluster_ips
        .clone()
        .unwrap_or_default()
        .into_iter()
        .chain(spec.cluster_ip.clone())
        .chain(spec.external_ips.clone().unwrap_or_default())
        .chain(
            svc.status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.clone())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|i| i.ip),
        )
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let ports = spec.ports.unwrap_or_default();
    let mut ids = family_frontend_ids(&snap.frontends, &addrs, &ports, port);
    ids.extend(family_frontend_ids(&snap.frontends6, &addrs, &ports, port));
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// [`service_frontend_ids`] in one family's frontend map.
fn family_frontend_ids<A: Family>(
    frontends: &BTreeMap<FrontendKeyOf<A>, Frontend>,
    addrs: &[IpAddr],
    ports: &[k8s_openapi::api::core::v1::ServicePort],
    port: Option<u16>,
) -> Vec<u32> {
    let proto_of = |p: &Option<String>| match p.as_deref().unwrap_or("TCP") {
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        _ => None,
    };
    frontends
        .iter()
        .filter(|(k, fe)| {
            let wanted = |p: u16| port.is_none_or(|want| want == p);
            ports.iter().any(|sp| {
                if proto_of(&sp.protocol) != Some(k.proto) {
                    return false;
                }
                if fe.flags & FRONTEND_F_NODEPORT != 0 {
                    sp.node_port == Some(i32::from(k.port)) && wanted(k.port)
                } else {
                    sp.port == i32::from(k.port)
                        && addrs.contains(&k.addr.to_ip().into())
                        && wanted(k.port)
                }
            })
        })
        .map(|(_, fe)| fe.id)
        .collect()
}

/// Who owns a slot: pid, its start time, its pid namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub start: u64,
    pub pidns: u64,
}

impl Owner {
    pub(crate) fn of(f: &TraceFilter) -> Self {
        Self {
            pid: f.owner_pid,
            start: f.owner_start,
            pidns: f.owner_pidns,
        }
    }
}

/// The filter the programs get for `args` (and the frontend ids of `--service`).
pub fn filter_of(args: &TraceArgs, frontend_ids: &[u32], owner: Owner) -> Result<TraceFilter> {
    ensure!(
        frontend_ids.len() <= TRACE_FRONTENDS,
        "--service has {} frontends here, a trace filter holds {TRACE_FRONTENDS}: narrow it \
         with --port",
        frontend_ids.len()
    );
    let mut f = TraceFilter {
        src_addr: [0; 4],
        dst_addr: [0; 4],
        port: args.port.unwrap_or(0),
        proto: args.proto.map(Proto::number).unwrap_or(0),
        frontend_count: frontend_ids.len() as u8,
        frontend_ids: [0; TRACE_FRONTENDS],
        owner_pid: owner.pid,
        owner_start: owner.start,
        owner_pidns: owner.pidns,
        src_addr6: Default::default(),
        dst_addr6: Default::default(),
        addr_family: 0,
        _pad: [0; 7],
    };
    f.frontend_ids[..frontend_ids.len()].copy_from_slice(frontend_ids);
    // The programs compare one family's addresses: a filter names ends of one family.
    if let (Some(src), Some(dst)) = (args.src, args.dst) {
        ensure!(
            src.is_ipv4() == dst.is_ipv4(),
            "--src {src} and --dst {dst} are of different families: a flow's two ends are of \
             one family"
        );
    }
    for end in [args.src, args.dst].into_iter().flatten() {
        f.addr_family = if end.is_ipv4() { AF_INET } else { AF_INET6 };
    }
    match args.src {
        Some(IpAddr::V4(a)) => f.src_addr = a.octets(),
        Some(IpAddr::V6(a)) => f.src_addr6 = a.into(),
        None => {}
    }
    match args.dst {
        Some(IpAddr::V4(a)) => f.dst_addr = a.octets(),
        Some(IpAddr::V6(a)) => f.dst_addr6 = a.into(),
        None => {}
    }
    Ok(f)
}

/// What to do with the slots: the first free one (bit clear in `on`, or held by a dead
/// owner), and the slots of dead owners to free. `alive` answers for owners in `my_pidns`
/// only; an owner in another pid namespace is never judged dead from here.
pub fn plan_slots(
    on: u32,
    filters: &[TraceFilter],
    my_pidns: u64,
    alive: impl Fn(Owner) -> bool,
) -> (Option<u32>, Vec<u32>) {
    let mut dead = Vec::new();
    let mut free = None;
    for (slot, f) in filters.iter().enumerate().take(TRACE_SLOTS as usize) {
        let slot = slot as u32;
        let in_use = on & (1 << slot) != 0;
        let owner = Owner::of(f);
        if in_use && owner.pidns == my_pidns && !alive(owner) {
            dead.push(slot);
        }
        if free.is_none() && (!in_use || dead.last() == Some(&slot)) {
            free = Some(slot);
        }
    }
    (free, dead)
}

/// Field 22 of `/proc/PID/stat` (start time in clock ticks since boot). The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn start_time_of(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A tc verdict or XDP action by name (XDP actions for both XDP hooks, ready for when
/// `svc_xdp6` writes trace events).
pub fn verdict_name(hook: Option<Hook>, v: i32) -> String {
    let name = if matches!(hook, Some(Hook::Xdp | Hook::Xdp6)) {
        match v {
            0 => "aborted",
            1 => "drop",
            2 => "pass",
            3 => "tx",
            4 => "redirect",
            _ => "",
        }
    } else {
        match v {
            -1 => "next",
            0 => "ok",
            2 => "drop",
            7 => "redirect",
            _ => "",
        }
    };
    if name.is_empty() {
        v.to_string()
    } else {
        name.to_string()
    }
}

/// One event as `trace` prints it (`-o json`: one object per line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventView {
    /// `CLOCK_MONOTONIC` of the event, ns.
    pub time_ns: u64,
    pub hook: String,
    /// tc verdict (`next`, `ok`, `drop`, `redirect`) or XDP action (`pass`, `tx`, `drop`).
    pub verdict: String,
    /// The datapath's reason (the `reason` of `inspect stats`).
    pub reason: String,
    pub proto: String,
    pub tcp_flags: Vec<String>,
    pub len: u32,
    pub ifindex: u32,
    /// The packet as received (an ICMP error: the flow it reports).
    pub src: String,
    pub dst: String,
    /// What the conntrack entry rewrites it to; `None` when no entry was used.
    pub new_src: Option<String>,
    pub new_dst: Option<String>,
    pub frontend_id: u32,
    /// `ADDR:PORT/PROTO` of the frontend, when the pinned map still has it.
    pub frontend: Option<String>,
    pub backend_id: u32,
    /// `ADDR:PORT` of the backend, when the pinned map still has it.
    pub backend: Option<String>,
    /// `forward` or `reply` (`None` without an entry).
    pub ct_dir: Option<String>,
    pub ct_flags: Vec<String>,
    pub ct_state: Option<String>,
}

fn endpoint<A: Family>(addr: A, port: u16) -> String {
    host_port(addr.to_ip().into(), port)
}

/// What events name by id (frontends, backends of both families: one id space), indexed from
/// a snapshot of the pinned maps.
#[derive(Clone, Debug, Default)]
pub struct Names {
    frontends: BTreeMap<u32, AnyFrontendKey>,
    backends: BTreeMap<u32, AnyBackend>,
}

impl Names {
    pub fn of(snap: &MapSnapshot) -> Self {
        let frontends = snap.frontends.iter().map(|(k, fe)| (fe.id, (*k).into()));
        let frontends6 = snap.frontends6.iter().map(|(k, fe)| (fe.id, (*k).into()));
        let backends = snap.backends.iter().map(|(id, b)| (*id, (*b).into()));
        let backends6 = snap.backends6.iter().map(|(id, b)| (*id, (*b).into()));
        Self {
            frontends: frontends.chain(frontends6).collect(),
            backends: backends.chain(backends6).collect(),
        }
    }

    /// Whether every id `e` names is known (else the maps changed since the snapshot).
    fn knows(&self, e: &AnyTraceEvent) -> bool {
        let (fe, be) = match e {
            AnyTraceEvent::V4(e) => (e.frontend_id, e.backend_id),
            AnyTraceEvent::V6(e) => (e.frontend_id, e.backend_id),
        };
        (fe == 0 || self.frontends.contains_key(&fe))
            && (be == 0 || self.backends.contains_key(&be))
    }
}

impl EventView {
    /// The view of a ring record of either family.
    pub fn of(e: &AnyTraceEvent, names: &Names) -> Self {
        match e {
            AnyTraceEvent::V4(e) => Self::new(e, names),
            AnyTraceEvent::V6(e) => Self::new(e, names),
        }
    }

    pub fn new<A: Family>(e: &TraceEventOf<A>, names: &Names) -> Self {
        let hook = ALL_HOOKS.get(e.hook as usize).copied();
        let entry = e.to_src_addr != A::UNSPECIFIED || e.to_dst_addr != A::UNSPECIFIED;
        let frontend = names
            .frontends
            .get(&e.frontend_id)
            .filter(|_| e.frontend_id != 0)
            .map(|k| {
                format!(
                    "{}/{}",
                    host_port(k.ip(), k.port()),
                    proto_name(k.proto()).to_uppercase()
                )
            });
        let backend = names
            .backends
            .get(&e.backend_id)
            .filter(|_| e.backend_id != 0)
            .map(|b| host_port(b.ip(), b.port()));
        Self {
            time_ns: e.ts_ns,
            hook: hook
                .map(|h| h.name().to_string())
                .unwrap_or_else(|| e.hook.to_string()),
            verdict: verdict_name(hook, e.verdict),
            reason: ALL_REASONS
                .get(e.reason as usize)
                .map(|(_, n)| n.to_string())
                .unwrap_or_else(|| e.reason.to_string()),
            proto: proto_name(e.proto),
            tcp_flags: if e.proto == PROTO_TCP {
                tcp_flag_words(e.tcp_flags)
            } else {
                Vec::new()
            },
            len: e.len,
            ifindex: e.ifindex,
            src: endpoint(e.src_addr, e.src_port),
            dst: endpoint(e.dst_addr, e.dst_port),
            new_src: entry.then(|| endpoint(e.to_src_addr, e.to_src_port)),
            new_dst: entry.then(|| endpoint(e.to_dst_addr, e.to_dst_port)),
            frontend_id: e.frontend_id,
            frontend,
            backend_id: e.backend_id,
            backend,
            ct_dir: entry.then(|| {
                match e.ct_dir {
                    CT_DIR_FORWARD => "forward",
                    CT_DIR_REPLY => "reply",
                    _ => "?",
                }
                .to_string()
            }),
            ct_flags: if entry {
                ct_flag_words(e.ct_flags)
            } else {
                Vec::new()
            },
            ct_state: entry.then(|| ct_state_name(e.ct_state)),
        }
    }

    /// One line for people.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{:>6}.{:06} {:<14} {:<3} {} -> {}",
            self.time_ns / 1_000_000_000,
            self.time_ns % 1_000_000_000 / 1_000,
            self.hook,
            self.proto,
            self.src,
            self.dst
        );
        if !self.tcp_flags.is_empty() {
            s.push_str(&format!(" [{}]", self.tcp_flags.join(",")));
        }
        if let (Some(ns), Some(nd)) = (&self.new_src, &self.new_dst) {
            if *ns != self.src || *nd != self.dst {
                s.push_str(&format!(" => {ns} -> {nd}"));
            }
        }
        s.push_str(&format!(" {} {}", self.reason, self.verdict));
        if self.frontend_id != 0 {
            s.push_str(&format!(
                " fe={}({})",
                self.frontend_id,
                self.frontend.as_deref().unwrap_or("gone")
            ));
        }
        if self.backend_id != 0 {
            s.push_str(&format!(
                " be={}({})",
                self.backend_id,
                self.backend.as_deref().unwrap_or("gone")
            ));
        }
        if let (Some(dir), Some(state)) = (&self.ct_dir, &self.ct_state) {
            s.push_str(&format!(" ct={dir}/{state}"));
            if !self.ct_flags.is_empty() {
                s.push_str(&format!(",{}", self.ct_flags.join(",")));
            }
        }
        s.push_str(&format!(" if={} len={}", self.ifindex, self.len));
        s
    }
}

pub(crate) fn own_pidns() -> Result<u64> {
    Ok(std::fs::metadata("/proc/self/ns/pid")
        .context("reading /proc/self/ns/pid")?
        .ino())
}

pub(crate) fn owner_alive(o: Owner) -> bool {
    match std::fs::read_to_string(format!("/proc/{}/stat", o.pid)) {
        Ok(stat) => start_time_of(&stat) == Some(o.start),
        Err(_) => false,
    }
}

fn this_owner() -> Result<Owner> {
    let pid = std::process::id();
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    Ok(Owner {
        pid,
        start: start_time_of(&stat).context("parsing /proc/self/stat")?,
        pidns: own_pidns()?,
    })
}

/// The agent's part: frees the slots of tracers that died without releasing them. Pins of an
/// agent without trace maps are not an error; a lock held by a tracer skips the round. Blocking
/// syscalls: the agent runs it with `spawn_blocking`.
pub fn sweep(bpffs: &Path) -> Result<Vec<u32>> {
    if !bpffs.join(MAP_TRACE_ON).exists() {
        return Ok(Vec::new());
    }
    let mut maps = TraceMaps::open(bpffs)?;
    let Some(_lock) = SlotLock::try_take(bpffs)? else {
        return Ok(Vec::new());
    };
    let (mut on, filters) = maps.state()?;
    if on == 0 {
        return Ok(Vec::new());
    }
    maps.free_dead(&mut on, &filters)
}

// ---------------------------------------------------------------------------------------------
// The command.

async fn resolve_service(args: &TraceArgs, snap: &MapSnapshot) -> Result<Vec<u32>> {
    let Some(name) = &args.service else {
        return Ok(Vec::new());
    };
    let (ns, n) = name
        .split_once('/')
        .with_context(|| format!("--service {name:?}: expected NAMESPACE/NAME"))?;
    let svc = match &args.manifests {
        Some(dir) => {
            let objects = crate::source::manifests::load_dir(dir)?;
            objects
                .services
                .get(&ObjectRef::new(ns, n))
                .cloned()
                .with_context(|| format!("no Service {name} in {}", dir.display()))?
        }
        None => {
            // A list by field selector, not a get: the agent's ClusterRole (deploy/, that of
            // kube-proxy's system:node-proxier) grants list and watch on Services, not get.
            let client = crate::run::kube_client(args.kubeconfig.as_deref()).await?;
            let params = kube::api::ListParams::default().fields(&format!("metadata.name={n}"));
            kube::Api::<Service>::namespaced(client, ns)
                .list(&params)
                .await
                .with_context(|| format!("listing Service {name} from the API server"))?
                .items
                .into_iter()
                .find(|s| s.metadata.name.as_deref() == Some(n))
                .with_context(|| format!("no Service {name} in the API server"))?
        }
    };
    let ids = service_frontend_ids(&svc, snap, args.port);
    ensure!(
        !ids.is_empty(),
        "Service {name} has no frontend in the pinned maps{}: is it programmed (see \
         `svc-agent inspect services`)?",
        args.port
            .map(|p| format!(" on port {p}"))
            .unwrap_or_default()
    );
    Ok(ids)
}

/// Runs `svc-agent trace` until `--count` events, Ctrl-C or SIGTERM.
pub async fn run_trace(args: TraceArgs) -> Result<()> {
    let bpffs = args.common.bpffs.clone();
    let mut maps = TraceMaps::open(&bpffs)?;
    let snap = read_snapshot(&bpffs)?;
    let ids = resolve_service(&args, &snap).await?;
    let me = this_owner()?;
    let filter = filter_of(&args, &ids, me)?;
    let ring_data = new_ring()?;
    let slot = maps.claim(&filter, &ring_data)?;
    let ring = TraceRing::new(ring_data)?;
    eprintln!(
        "tracing in slot {slot}{} (Ctrl-C to stop)",
        if ids.is_empty() {
            String::new()
        } else {
            format!(", frontends {ids:?}")
        }
    );
    let result = pump(ring, &args, &bpffs, Names::of(&snap)).await;
    // Read before the release: the next tracer of this slot zeroes them.
    let lost = maps.lost(slot);
    let released = maps.release(slot, me);
    match (&result, lost) {
        (Ok(shown), Ok(0)) => eprintln!("{shown} events"),
        (Ok(shown), Ok(lost)) => eprintln!(
            "{shown} events; {lost} more were lost because the ring was full (the output was              read too slowly: narrow the filter, or write to a file)"
        ),
        (_, Err(e)) => eprintln!("lost events unknown: {e:#}"),
        (Err(_), _) => {}
    }
    result.map(|_| ()).and(released)
}

async fn pump(
    mut ring: TraceRing,
    args: &TraceArgs,
    bpffs: &Path,
    mut names: Names,
) -> Result<u64> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let mut seen = 0u64;
    let mut last_refresh = Instant::now();
    let mut out = std::io::stdout().lock();
    loop {
        if args.count.is_some_and(|c| seen >= c) {
            return Ok(seen);
        }
        let events = tokio::select! {
            events = ring.events() => events?,
            _ = term.recv() => return Ok(seen),
            _ = int.recv() => return Ok(seen),
        };
        for e in events {
            // New frontends or backends since the snapshot: read the maps again, at most once a
            // second.
            if !names.knows(&e) && last_refresh.elapsed() > Duration::from_secs(1) {
                if let Ok(s) = read_snapshot(bpffs) {
                    names = Names::of(&s);
                }
                last_refresh = Instant::now();
            }
            let view = EventView::of(&e, &names);
            let text = match args.common.output {
                Format::Table => view.line(),
                Format::Json => serde_json::to_string(&view)?,
            };
            match writeln!(out, "{text}").and_then(|_| out.flush()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(seen),
                r => r.context("writing to stdout")?,
            }
            seen += 1;
            if args.count.is_some_and(|c| seen >= c) {
                return Ok(seen);
            }
        }
    }
}

#[cfg(test)]
mod tests;
