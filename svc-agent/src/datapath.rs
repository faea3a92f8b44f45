//! Loading the kernel programs, pinning their maps and links, and attaching them: tc to pod
//! veths, XDP and tc to node uplinks, socket hooks to a cgroup.
//!
//! # What lives where under `--bpffs DIR`
//! - `DIR/<MAP>` for each `svc_common::ALL_MAPS`: the maps. A restarted agent reuses them
//!   (`EbpfLoader::map_pin_path` opens an existing pin), so programmed services and conntrack
//!   survive restarts and upgrades. `SVC_CT` gets `--conntrack-max` entries when created.
//! - `DIR/SVC_CT_TIMEOUTS` ([`TIMEOUTS_PIN`]): a copy of the conntrack timeouts the programs
//!   were loaded with, rewritten at every start, for `inspect` and `explain`.
//! - `DIR/SVC_SNAT_PORTS` ([`SNAT_PORTS_PIN`]): likewise, the SNAT ports, for `explain`.
//! - `DIR/links/<ifindex>-<ifname>-<ingress|egress|uplink|uplink_egress|xdp>`: one link per
//!   hook per interface (`ingress`/`egress` on pod veths; `uplink` (tc ingress),
//!   `uplink_egress` (tc egress) and `xdp` on uplinks). The pin keeps the program attached
//!   while no agent runs (crash, upgrade). A restarted agent swaps its freshly loaded program
//!   into the existing link with `BPF_LINK_UPDATE` (`attach_to_link`), which is atomic: there
//!   is no instant without one.
//! - `DIR/links/<ifindex>-<ifname>-<hook>_cls`: on kernels without tcx (before 6.6,
//!   `--tc-attach classic`), the tc programs are classic `cls_bpf` filters under a `clsact`
//!   qdisc at [`CLASSIC_PRIORITY`]/[`CLASSIC_HANDLE`]. Such a filter holds its program and
//!   outlives the agent as a tcx link does, but it cannot be pinned; the pin is then the
//!   attached *program*, as the record that this agent attached there (stale-pin removal,
//!   `uninstall`). A restarted agent replaces the filter's program in place (`cls_bpf_change`
//!   on an existing handle swaps `prog` under RCU: no instant without one).
//! - `DIR/svc_sock_reap_udp_link` ([`sockreap::SOCK_REAP_PIN`]): the UDP socket iterator's
//!   link, opened by the reaper thread in each namespace it runs the iterator in.
//! - `DIR/links/cgroup-<program>`: the socket hooks' links on `--cgroup`. Replaced
//!   make-before-break (the new link is attached and pinned before the old one goes; two
//!   translating hooks in a row are harmless, the second finds a backend, not a frontend).
use std::{
    collections::BTreeMap,
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{MapData, ProgramArray},
    programs::{
        links::{CgroupAttachMode, FdLink, LinkOrder, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
        CgroupSockAddr, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use aya::{programs::tc::TcHandle, util::KernelVersion};
use svc_common::{
    Config, CtTimeouts, SnatPorts, ALL_MAPS, CONFIG_F_SOCK_DESTROY, CONFIG_F_SOCK_PODS,
    GLOBAL_CT_TIMEOUTS, GLOBAL_DEBUG_LOG, GLOBAL_FAULT_INJECT, GLOBAL_SNAT_PORTS, MAP_BACKENDS,
    MAP_BACKENDS6, MAP_CONNTRACK, MAP_CONNTRACK6, MAP_FRONTENDS, MAP_FRONTENDS6, MAP_PROGS6,
    MAP_SLOTS, MAP_STATS, MAP_XDP_PROGS6, PROGS6, XDP_PROGS6,
};
use tracing::{info, warn};

use crate::dataplane::{
    config::{self, ConfigMap},
    pinned::PinnedMaps,
    Dataplane,
};

pub mod sockreap;
mod tc;
use tc::{
    adopt, attach_classic, attach_tcx, classic_record, detach_classic, ifname_of,
    parse_classic_record,
};

/// The kernel object built by `cargo xtask build-ebpf`, embedded at compile time (build.rs).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SVC_EBPF_OBJECT"));

/// The pod-veth programs, the tc hook each one runs at, and its link-pin suffix.
pub const PROGRAMS: [(&str, TcAttachType, &str); 2] = [
    ("svc_pod_ingress", TcAttachType::Ingress, "ingress"),
    ("svc_pod_egress", TcAttachType::Egress, "egress"),
];
/// The uplink tc program (complete north-south path).
pub const UPLINK_TC: (&str, TcAttachType, &str) =
    ("svc_uplink_ingress", TcAttachType::Ingress, "uplink");
/// The uplink tc egress program: replies of this node's own processes (hostNetwork endpoints)
/// to external clients leave through the uplink's egress and nowhere else, so the frontend is
/// restored there. (Replies to pods leave through the pod veth, whose egress hook does it.)
pub const UPLINK_TC_EGRESS: (&str, TcAttachType, &str) =
    ("svc_uplink_egress", TcAttachType::Egress, "uplink_egress");
/// Every link-pin suffix of an interface hook (pod veth or uplink).
const IFACE_HOOKS: [&str; 5] = ["ingress", "egress", "uplink", "uplink_egress", "xdp"];
/// The uplink XDP program (north-south fast path).
pub const UPLINK_XDP: &str = "svc_xdp";
/// The cgroup socket hooks, both families (the attach type of each is its ELF section's,
/// `cgroup/connect6` etc.). The IPv6 ones serve IPv6 Services and dual-stack sockets reaching
/// IPv4 Services through IPv4-mapped addresses.
pub const SOCK_PROGRAMS: [&str; 8] = [
    "svc_sock_connect4",
    "svc_sock_sendmsg4",
    "svc_sock_recvmsg4",
    "svc_sock_getpeername4",
    "svc_sock_connect6",
    "svc_sock_sendmsg6",
    "svc_sock_recvmsg6",
    "svc_sock_getpeername6",
];

/// Unpins the maps an agent of another release pinned with another layout (map type, key or
/// value size) than this object's, so that the loader creates them afresh. aya reuses a pinned
/// map as it finds it (`MapData::create_pinned_by_name`), and the verifier then refuses every
/// program whose accesses do not fit it (a `Config` read past a shorter value), which stopped
/// the upgraded agent at start; a layout whose sizes happened to fit would be misread. What an
/// unpinned map held is lost: the service maps are programmed again from the API within the
/// first sync, conntrack entries are (flows are picked up or rebalanced as after a flush).
/// Running programs keep their references to the old maps until their links are updated. A
/// different length of `SVC_STATS` counts as another layout (its counters are lost). A
/// different capacity alone is kept (`--conntrack-max` documents that a pinned map keeps its
/// size).
fn drop_incompatible_pins(pins: &[(&str, PathBuf)]) -> Result<()> {
    let obj = aya_obj::Object::parse(EBPF_OBJECT).context("parsing the embedded eBPF object")?;
    for (name, path) in pins {
        let Some(def) = obj.maps.get(*name) else {
            continue;
        };
        if !path.exists() {
            continue;
        }
        let info = match aya::maps::MapInfo::from_pin(path) {
            Ok(info) => info,
            Err(e) => {
                warn!(pin = %path.display(), "reading the pinned map: {e}; re-creating it");
                std::fs::remove_file(path)
                    .with_context(|| format!("unpinning {}", path.display()))?;
                continue;
            }
        };
        let pinned_type = info.map_type().ok().map(|t| t as u32);
        // `SVC_STATS`' length is layout, not capacity: one counter per (hook, reason), so a
        // release with a new hook (`xdp6`) or reason needs the longer map, or its new
        // counters would be lost silently (`get_ptr_mut` past the end).
        let same = pinned_type == Some(def.map_type())
            && info.key_size() == def.key_size()
            && info.value_size() == def.value_size()
            && (*name != MAP_STATS || info.max_entries() == def.max_entries());
        if !same {
            warn!(
                map = name,
                pinned_key_size = info.key_size(),
                pinned_value_size = info.value_size(),
                key_size = def.key_size(),
                value_size = def.value_size(),
                "a pinned map has another layout than this release's (an upgrade): re-creating \
                 it, its entries are lost"
            );
            std::fs::remove_file(path).with_context(|| format!("unpinning {}", path.display()))?;
        }
    }
    Ok(())
}

/// Loads the IPv6 tc programs and puts each into `SVC_PROGS6` at its index, where the IPv4
/// program of the same hook tail-calls it for IPv6 frames (`svc_common::PROGS6`). The array
/// is pinned with the other maps, so an agent that restarts replaces the entries with its own
/// programs while the links (still running the earlier agent's IPv4 programs until they are
/// updated) keep handing IPv6 over.
fn load_progs6(ebpf: &mut Ebpf) -> Result<()> {
    for (name, index, _) in PROGS6 {
        let prog: &mut SchedClassifier = program_of(ebpf, name, "a tc classifier")?;
        prog.load()
            .with_context(|| format!("verifying and loading program {name}"))?;
        let fd = prog
            .fd()
            .with_context(|| format!("program {name} has no fd"))?
            .try_clone()
            .with_context(|| format!("duplicating the fd of program {name}"))?;
        put_in_prog_array(ebpf, MAP_PROGS6, index, name, &fd)?;
    }
    Ok(())
}

/// Program `name` of the object as its type `P` (`kind` names it for the error).
fn program_of<'a, P>(ebpf: &'a mut Ebpf, name: &str, kind: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} is not {kind}"))
}

/// Puts the loaded program `name` (`fd`) into the program array `map` at `index`.
fn put_in_prog_array(
    ebpf: &mut Ebpf,
    map: &str,
    index: u32,
    name: &str,
    fd: &aya::programs::ProgramFd,
) -> Result<()> {
    let mut array: ProgramArray<&mut MapData> = ebpf
        .map_mut(map)
        .with_context(|| format!("map {map} missing from the object"))?
        .try_into()
        .with_context(|| format!("map {map} is not a program array"))?;
    array
        .set(index, fd, 0)
        .with_context(|| format!("putting {name} into {map}[{index}]"))
}

/// Loads the IPv6 XDP program and puts it into `SVC_XDP_PROGS6` at its index, where `svc_xdp`
/// tail-calls it for IPv6 frames (`svc_common::XDP_PROGS6`), as [`load_progs6`] does for the
/// tc programs (a program array holds programs of one type, so XDP has its own).
fn load_xdp_progs6(ebpf: &mut Ebpf) -> Result<()> {
    for (name, index, _) in XDP_PROGS6 {
        let prog: &mut Xdp = program_of(ebpf, name, "an XDP program")?;
        prog.load()
            .with_context(|| format!("verifying and loading program {name}"))?;
        let fd = prog
            .fd()
            .with_context(|| format!("program {name} has no fd"))?
            .try_clone()
            .with_context(|| format!("duplicating the fd of program {name}"))?;
        put_in_prog_array(ebpf, MAP_XDP_PROGS6, index, name, &fd)?;
    }
    Ok(())
}

/// How to attach XDP to uplinks (`--xdp-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpChoice {
    /// Native (driver) mode where the driver supports it; otherwise no XDP, the tc uplink
    /// program alone (never generic: see [`xdp_modes`]).
    Auto,
    /// Native mode only; fail if the driver lacks it.
    Native,
    /// Generic (skb) mode: works on every device, slower.
    Generic,
    /// No XDP: the tc uplink program alone handles north-south traffic.
    Off,
}

/// How tc programs are attached (`--tc-attach`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TcChoice {
    /// tcx links where the kernel has them (Linux ≥ 6.6), classic tc filters otherwise.
    Auto,
    /// tcx links (bpf_mprog, Linux ≥ 6.6): pinned, atomically replaceable, ordered.
    Tcx,
    /// Classic tc: a `clsact` qdisc and a direct-action `cls_bpf` filter (any kernel svc-lb
    /// supports).
    Classic,
}

/// The XDP modes to try on an uplink, in order; empty: no XDP, the tc uplink program alone.
///
/// `auto` never picks generic mode: generic XDP runs on the skb after the stack built it (the
/// frame is linearised for the program), so it costs every packet crossing the uplink more than
/// the tc program that does the same translation there; measured end to end on veth uplinks,
/// traffic not even for a Service ran at 0.92–0.93× the floor with it and at the floor without
/// (docs/BENCHMARKS.md). Cilium likewise accelerates only with native XDP. On a veth (a kind
/// node's `eth0`) native mode is not usable either: a veth passes native `XDP_TX` frames to its
/// peer only while the peer runs XDP itself, which this node does not control (frames were lost
/// or 180 ms late in our topology). `generic` stays available on request (the network tests use
/// it to exercise the XDP path that a native driver runs).
pub fn xdp_modes(choice: XdpChoice, veth: bool) -> &'static [(XdpMode, &'static str)] {
    match choice {
        XdpChoice::Auto if veth => &[],
        XdpChoice::Auto | XdpChoice::Native => &[(XdpMode::Driver, "native")],
        XdpChoice::Generic => &[(XdpMode::Skb, "generic")],
        XdpChoice::Off => &[],
    }
}

/// The oldest kernel svc-lb runs on (Debian 12's 6.1). What older kernels lack is not cheap to
/// do without: `bpf_set_retval` (5.18) for the socket hooks' ECONNREFUSED, and the verifier of
/// 6.1 is the oldest one the programs are proven on (`cargo xtask test-kernels`).
pub const MIN_KERNEL: (u8, u8) = (6, 1);
/// tcx (`BPF_LINK_TYPE_TCX`) arrived in Linux 6.6.
const TCX_KERNEL: (u8, u8) = (6, 6);

/// Classic-tc filter priority of every svc-lb filter: fixed, so a restarted agent finds and
/// replaces its own filter instead of adding a second one. ("SV"; lower runs first. svc-lb
/// returns `TC_ACT_UNSPEC` for what it leaves alone, and `cls_bpf` then goes on to the next
/// filter, so it composes with filters behind it as with tcx programs.)
pub const CLASSIC_PRIORITY: u16 = 0x5356;
/// Classic-tc filter handle of every svc-lb filter (one filter per priority and hook).
pub const CLASSIC_HANDLE: TcHandle = TcHandle::new(0, 1);
/// Suffix of a classic-tc record pin (see the module docs).
/// (bpffs refuses names with a `.`: `bpf_lookup` in kernel/bpf/inode.c.)
const CLASSIC_SUFFIX: &str = "_cls";

/// Fails with a message naming the kernel when it is older than [`MIN_KERNEL`].
pub fn check_kernel() -> Result<KernelVersion> {
    let v =
        KernelVersion::current().map_err(|e| anyhow::anyhow!("reading the kernel version: {e}"))?;
    if v < KernelVersion::new(MIN_KERNEL.0, MIN_KERNEL.1, 0) {
        bail!(
            "svc-lb needs Linux {}.{} or newer; this kernel is {v}. Older kernels lack \
             bpf_set_retval (5.18) for the socket hooks, and 6.1 is the oldest verifier the \
             programs are tested on (README, \"Kernels\")",
            MIN_KERNEL.0,
            MIN_KERNEL.1
        );
    }
    Ok(v)
}

/// What an attached interface is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Pod,
    Uplink,
}

/// Pin (under `--bpffs`) of a one-entry array holding the [`CtTimeouts`] this agent passed to
/// the programs as `GLOBAL_CT_TIMEOUTS`, so `svc-agent inspect` and `explain` (which read pins
/// only) judge expiry as the datapath does. The datapath never reads it: `.rodata` is frozen.
pub const TIMEOUTS_PIN: &str = GLOBAL_CT_TIMEOUTS;

/// Pin (under `--bpffs`) of a one-entry array holding the [`SnatPorts`] this agent passed to
/// the programs as `GLOBAL_SNAT_PORTS`, so that `explain` reports the ports a new SNAT flow
/// can get. The datapath never reads it: `.rodata` is frozen.
pub const SNAT_PORTS_PIN: &str = GLOBAL_SNAT_PORTS;

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Loaded programs plus the pinned maps, and the links this agent manages.
pub struct Datapath {
    ebpf: Ebpf,
    bpffs: PathBuf,
    /// Interfaces we have attached to, by ifindex → (name, role).
    attached: BTreeMap<u32, (String, Role)>,
    config: ConfigMap,
    xdp: XdpChoice,
    /// [`TcChoice::Tcx`] or [`TcChoice::Classic`] (`Auto` resolved at load).
    tc: TcChoice,
    /// Loaded with [`LoadGlobals::debug_log`].
    debug_log: bool,
    /// The pinned link of the UDP socket iterator ([`sockreap`]); `None` on kernels without
    /// `bpf_sock_destroy`.
    sock_reap: Option<PathBuf>,
    /// `--pod-socket-lb`: [`svc_common::CONFIG_F_SOCK_PODS`].
    pod_socket_lb: bool,
}

/// The load-time globals (`.rodata`) the agent sets.
#[derive(Clone, Copy, Debug)]
pub struct LoadGlobals {
    /// `svc_common::FAULT_*` bits; 0 except in tests.
    pub fault: u32,
    /// `svc_common::GLOBAL_DEBUG_LOG`: the programs' aya-log messages.
    pub debug_log: bool,
    /// `svc_common::GLOBAL_SNAT_PORTS`: the source ports SNAT allocates from.
    pub snat_ports: SnatPorts,
}

impl Datapath {
    /// Mounts bpffs if needed, loads the programs, and opens (or creates and pins) the maps under
    /// `bpffs`. `globals` are the load-time switches ([`LoadGlobals`]: fault bits, debug
    /// messages). The programs read `timeouts` as the load-time global `GLOBAL_CT_TIMEOUTS`;
    /// `ct_max` sizes the conntrack map when it is created (a pinned one keeps its size).
    pub fn load(
        bpffs: &Path,
        globals: LoadGlobals,
        xdp: XdpChoice,
        tc: TcChoice,
        timeouts: &CtTimeouts,
        ct_max: u32,
        service_maps: &crate::cli::ServiceMapArgs,
    ) -> Result<(Self, PinnedMaps)> {
        let kernel = check_kernel()?;
        let has_tcx = kernel >= KernelVersion::new(TCX_KERNEL.0, TCX_KERNEL.1, 0);
        let tc = match tc {
            TcChoice::Auto if has_tcx => TcChoice::Tcx,
            TcChoice::Auto => TcChoice::Classic,
            TcChoice::Tcx if !has_tcx => bail!(
                "--tc-attach tcx needs Linux {}.{} or newer; this kernel is {kernel}: use \
                 --tc-attach classic (or auto)",
                TCX_KERNEL.0,
                TCX_KERNEL.1
            ),
            other => other,
        };
        info!(%kernel, tc_attach = ?tc, "kernel checked");
        ensure_bpffs(bpffs)?;
        std::fs::create_dir_all(bpffs.join("links"))
            .with_context(|| format!("creating {}", bpffs.join("links").display()))?;
        let mut loader = EbpfLoader::new();
        let pins: Vec<(&str, PathBuf)> = ALL_MAPS.iter().map(|m| (*m, bpffs.join(m))).collect();
        drop_incompatible_pins(&pins)?;
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let fault = globals.fault;
        if globals.debug_log {
            loader.override_global(GLOBAL_DEBUG_LOG, &1u32, true);
        }
        if fault != 0 {
            warn!(
                fault,
                "fault injection enabled: this datapath is deliberately broken (tests only)"
            );
            loader.override_global(GLOBAL_FAULT_INJECT, &fault, true);
        }
        // `must_exist`: an object without the global would silently ignore the flags.
        loader.override_global(GLOBAL_CT_TIMEOUTS, timeouts, true);
        loader.override_global(GLOBAL_SNAT_PORTS, &globals.snat_ports, true);
        // Each IPv6 map is sized as its IPv4 twin (the ABI's rule), so one flag sizes both.
        loader.map_max_entries(MAP_CONNTRACK, ct_max);
        loader.map_max_entries(MAP_CONNTRACK6, ct_max);
        loader.map_max_entries(MAP_FRONTENDS, service_maps.max_frontends);
        loader.map_max_entries(MAP_FRONTENDS6, service_maps.max_frontends);
        loader.map_max_entries(MAP_SLOTS, service_maps.max_slots);
        loader.map_max_entries(MAP_BACKENDS, service_maps.max_backends);
        loader.map_max_entries(MAP_BACKENDS6, service_maps.max_backends);
        let btf = match aya::Btf::from_sys_fs() {
            Ok(btf) => Some(btf),
            Err(e) => {
                warn!("reading the kernel's BTF: {e}; no socket destruction");
                None
            }
        };
        // A patch that cannot be made costs socket destruction, not the datapath.
        let patched = match btf.as_ref().map(|btf| sockreap::patch(EBPF_OBJECT, btf)) {
            Some(Ok(patched)) => patched,
            Some(Err(e)) => {
                warn!("patching the socket iterator's kfunc call: {e:#}");
                None
            }
            None => None,
        };
        let object: &[u8] = match &patched {
            Some(words) => &bytemuck::cast_slice(words)[..EBPF_OBJECT.len()],
            None => EBPF_OBJECT,
        };
        let mut ebpf = loader.load(object).with_context(|| {
            format!(
                "loading the eBPF object with maps pinned under {}",
                bpffs.display()
            )
        })?;
        for name in PROGRAMS
            .iter()
            .map(|p| p.0)
            .chain([UPLINK_TC.0, UPLINK_TC_EGRESS.0])
        {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()
                .with_context(|| format!("program {name} is not a tc classifier"))?;
            prog.load()
                .with_context(|| format!("verifying and loading program {name}"))?;
        }
        if let Err(e) = load_progs6(&mut ebpf) {
            // IPv4 must not depend on IPv6: a kernel whose verifier refuses an IPv6 program
            // still gets the whole IPv4 datapath. SVC_PROGS6 slots left empty make the IPv4
            // programs pass IPv6 frames untouched (counted not_ipv4).
            warn!("the IPv6 programs did not load: {e:#}; IPv6 traffic passes untranslated");
        }
        let prog: &mut Xdp = ebpf
            .program_mut(UPLINK_XDP)
            .with_context(|| format!("program {UPLINK_XDP} missing from the object"))?
            .try_into()?;
        prog.load()
            .with_context(|| format!("verifying and loading program {UPLINK_XDP}"))?;
        if let Err(e) = load_xdp_progs6(&mut ebpf) {
            // As for the tc programs: an empty slot makes `svc_xdp` pass IPv6 frames to tc
            // (counted not_ipv4), whose IPv6 program translates them.
            warn!(
                "the IPv6 XDP program did not load: {e:#}; IPv6 frames take the tc path on \
                 uplinks"
            );
        }
        for name in SOCK_PROGRAMS {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("verifying and loading program {name}"))?;
        }
        let sock_reap = match (&btf, &patched) {
            (Some(btf), Some(_)) => match sockreap::load(&mut ebpf, btf, bpffs) {
                Ok(pin) => Some(pin),
                Err(e) => {
                    warn!(
                        "the UDP socket iterator did not load: {e:#}; pods' UDP connect() \
                           stays on the per-packet path"
                    );
                    None
                }
            },
            _ => {
                info!(
                    "this kernel has no bpf_sock_destroy (Linux 6.5): pods' UDP connect() \
                       stays on the per-packet path"
                );
                None
            }
        };
        if sock_reap.is_none() {
            let _ = std::fs::remove_file(bpffs.join(sockreap::SOCK_REAP_PIN));
        }
        let maps = PinnedMaps::from_loaded(&mut ebpf)?;
        let capacity = maps
            .service_capacity()
            .context("reading the service maps' capacity")?;
        for (map, pinned, requested) in [
            (
                MAP_FRONTENDS,
                capacity.frontends,
                service_maps.max_frontends,
            ),
            (MAP_SLOTS, capacity.slots, service_maps.max_slots),
            (MAP_BACKENDS, capacity.backends, service_maps.max_backends),
            (
                MAP_FRONTENDS6,
                capacity.frontends6,
                service_maps.max_frontends,
            ),
            (MAP_BACKENDS6, capacity.backends6, service_maps.max_backends),
        ] {
            if pinned != u64::from(requested) {
                warn!(
                    pinned,
                    requested,
                    "{map} was pinned by an earlier agent with another size and keeps it: \
                     --max-frontends/--max-slots/--max-backends apply when the map is created \
                     (`svc-agent uninstall` removes it)"
                );
            }
        }
        let ct6_capacity = maps.flows.ct6_capacity();
        for (map, pinned) in [
            (MAP_CONNTRACK, maps.ct_capacity()),
            (MAP_CONNTRACK6, ct6_capacity),
        ] {
            if pinned != ct_max {
                warn!(
                    pinned,
                    requested = ct_max,
                    "{map} was pinned by an earlier agent with another size and keeps it: \
                     --conntrack-max applies when the map is created (`svc-agent uninstall` \
                     removes it, and every tracked flow with it)"
                );
            }
        }
        config::pin_timeouts(bpffs, timeouts)?;
        config::pin_snat_ports(bpffs, &globals.snat_ports)?;
        let config = ConfigMap::from_loaded(&mut ebpf)?;
        info!(
            bpffs = %bpffs.display(),
            conntrack_max = maps.ct_capacity(),
            ?timeouts,
            "programs loaded, maps pinned"
        );
        let datapath = Self {
            ebpf,
            bpffs: bpffs.to_owned(),
            attached: BTreeMap::new(),
            config,
            xdp,
            tc,
            debug_log: globals.debug_log,
            sock_reap,
            pod_socket_lb: false,
        };
        Ok((datapath, maps))
    }

    /// With `--bpf-debug-log`, the reader of the programs' aya-log ring (records go to the
    /// `log` facade, which the agent's tracing subscriber receives); `None` without it.
    pub fn take_debug_logger(
        &mut self,
    ) -> Result<Option<aya_log::EbpfLogger<&'static dyn log::Log>>> {
        if !self.debug_log {
            return Ok(None);
        }
        aya_log::EbpfLogger::init(&mut self.ebpf)
            .map(Some)
            .context("reading the programs' aya-log ring (AYA_LOGS)")
    }

    /// Writes the node settings the datapath reads: the SNAT sources `node_addr` (0.0.0.0 for
    /// none) and `node_addr6` (`::` for none: IPv6 flows that need SNAT are then dropped), this
    /// network namespace's cookie (the socket hooks tell the node's sockets from pods' by it)
    /// and the socket-LB flags; returns whether they changed.
    pub fn set_config(
        &mut self,
        node_addr: Option<std::net::Ipv4Addr>,
        node_addr6: Option<std::net::Ipv6Addr>,
    ) -> Result<bool> {
        let mut flags = 0;
        if self.pod_socket_lb {
            flags |= CONFIG_F_SOCK_PODS;
        }
        if self.sock_reap.is_some() {
            flags |= CONFIG_F_SOCK_DESTROY;
        }
        let config = Config {
            node_addr: node_addr.map(|a| a.octets()).unwrap_or_default(),
            flags,
            netns_cookie: netns_cookie().context("reading this network namespace's cookie")?,
            node_addr6: node_addr6.map(svc_common::Addr6::from).unwrap_or_default(),
        };
        let changed = self.config.write(config)?;
        if changed {
            info!(node_addr = ?node_addr, node_addr6 = ?node_addr6, netns_cookie = config.netns_cookie, flags, "node config written");
        }
        Ok(changed)
    }

    /// `--pod-socket-lb`: the socket hooks serve pods' sockets too (from the next
    /// [`Datapath::set_config`]).
    pub fn set_pod_socket_lb(&mut self, on: bool) {
        self.pod_socket_lb = on;
    }

    /// The pinned link of the UDP socket iterator, if this kernel can destroy sockets.
    pub fn sock_reap_link(&self) -> Option<&Path> {
        self.sock_reap.as_deref()
    }

    fn link_pin(&self, ifindex: u32, ifname: &str, hook: &str) -> PathBuf {
        self.bpffs
            .join("links")
            .join(format!("{ifindex}-{ifname}-{hook}"))
    }

    /// Attaches the pod programs to a pod veth unless already done.
    pub fn ensure_pod(&mut self, ifindex: u32, ifname: &str) -> Result<()> {
        if self.attached.get(&ifindex) == Some(&(ifname.to_owned(), Role::Pod)) {
            return Ok(());
        }
        for (prog, attach_type, hook) in PROGRAMS {
            self.attach_tc(ifindex, ifname, prog, attach_type, hook)?;
        }
        self.attached
            .insert(ifindex, (ifname.to_owned(), Role::Pod));
        Ok(())
    }

    /// Attaches the uplink programs (tc egress, tc ingress, and XDP unless `--xdp-mode off`)
    /// unless already done. Egress first: the hook that translates replies is in place before
    /// the hooks that open the flows whose replies it translates.
    /// `veth`: the link's rtnetlink kind is `veth` (see [`XdpChoice::Auto`]).
    pub fn ensure_uplink(&mut self, ifindex: u32, ifname: &str, veth: bool) -> Result<()> {
        if self.attached.get(&ifindex) == Some(&(ifname.to_owned(), Role::Uplink)) {
            return Ok(());
        }
        for (prog, attach_type, hook) in [UPLINK_TC_EGRESS, UPLINK_TC] {
            self.attach_tc(ifindex, ifname, prog, attach_type, hook)?;
        }
        let modes = xdp_modes(self.xdp, veth);
        if modes.is_empty() {
            self.drop_xdp(ifindex, ifname, veth);
        } else {
            self.attach_xdp(ifindex, ifname, modes)?;
        }
        self.attached
            .insert(ifindex, (ifname.to_owned(), Role::Uplink));
        Ok(())
    }

    /// Attaches tc program `prog_name` at `attach_type` of `ifname`, as a tcx link or a classic
    /// filter (`--tc-attach`), taking over what an earlier agent attached there; a record of
    /// the other kind left there (the kernel or the flag changed) is removed afterwards.
    fn attach_tc(
        &mut self,
        ifindex: u32,
        ifname: &str,
        prog_name: &str,
        attach_type: TcAttachType,
        hook: &str,
    ) -> Result<()> {
        let pin = self.link_pin(ifindex, ifname, hook);
        let record = classic_record(&pin);
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(prog_name)
            .expect("loaded in Datapath::load")
            .try_into()?;
        let adopted = match self.tc {
            TcChoice::Classic => {
                let adopted =
                    attach_classic(prog, ifname, attach_type, &record).with_context(|| {
                        format!("attaching {prog_name} to {ifname} ({hook}, classic tc)")
                    })?;
                if pin.exists() {
                    // A tcx link of an earlier agent: the filter now does its work.
                    let _ = std::fs::remove_file(&pin);
                }
                adopted
            }
            _ => {
                let adopted = attach_tcx(prog, ifname, attach_type, &pin)
                    .with_context(|| format!("attaching {prog_name} to {ifname} ({hook})"))?;
                if record.exists() {
                    detach_classic(ifname, attach_type);
                    let _ = std::fs::remove_file(&record);
                }
                adopted
            }
        };
        info!(iface = ifname, ifindex, hook, adopted, tc_attach = ?self.tc, "attached");
        Ok(())
    }

    /// No XDP on this uplink (`--xdp-mode off`, or `auto` on a veth): a link an earlier agent
    /// pinned there is unpinned, which detaches it (the pin holds the link's last reference),
    /// so the choice of this agent is what runs.
    fn drop_xdp(&mut self, ifindex: u32, ifname: &str, veth: bool) {
        if self.xdp == XdpChoice::Auto && veth {
            info!(
                iface = ifname,
                "veth: no XDP (generic mode costs more than the tc path, native XDP_TX needs XDP \
                 on the peer); the tc uplink program serves north-south traffic"
            );
        }
        let pin = self.link_pin(ifindex, ifname, "xdp");
        if pin.exists() {
            match std::fs::remove_file(&pin) {
                Ok(()) => {
                    info!(iface = ifname, pin = %pin.display(), "detached the XDP link of an earlier agent")
                }
                Err(e) => {
                    warn!(iface = ifname, pin = %pin.display(), "could not unpin an earlier XDP link: {e}")
                }
            }
        }
    }

    /// Attaches XDP to an uplink in the first of `modes` the driver accepts ([`xdp_modes`]);
    /// says which. A pinned link from an earlier agent keeps its mode. Under `auto`, a driver
    /// without native XDP leaves the uplink to tc (not an error).
    fn attach_xdp(
        &mut self,
        ifindex: u32,
        ifname: &str,
        modes: &[(XdpMode, &'static str)],
    ) -> Result<()> {
        let pin = self.link_pin(ifindex, ifname, "xdp");
        let choice = self.xdp;
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(UPLINK_XDP)
            .expect("loaded in Datapath::load")
            .try_into()?;
        if pin.exists() {
            match adopt(&pin, |fd| {
                let id = prog.attach_to_link(XdpLink::try_from(fd)?)?;
                drop(prog.take_link(id)?);
                Ok(())
            }) {
                Ok(()) => {
                    info!(
                        iface = ifname,
                        ifindex,
                        hook = "xdp",
                        adopted = true,
                        "attached"
                    );
                    return Ok(());
                }
                Err(e) => {
                    warn!(pin = %pin.display(), "could not adopt pinned XDP link ({e:#}); re-attaching");
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let mut last = None;
        for (mode, name) in modes {
            match prog.attach(ifname, *mode) {
                Ok(id) => {
                    let link = FdLink::try_from(prog.take_link(id)?)
                        .with_context(|| format!("XDP on {ifname} is not a bpf_link"))?;
                    link.pin(&pin)
                        .with_context(|| format!("pinning link at {}", pin.display()))?;
                    info!(
                        iface = ifname,
                        ifindex,
                        hook = "xdp",
                        xdp_mode = name,
                        adopted = false,
                        "attached"
                    );
                    return Ok(());
                }
                Err(e) => {
                    if choice == XdpChoice::Auto {
                        info!(
                            iface = ifname,
                            "XDP {name} mode unavailable ({e}); the tc uplink program serves \
                             north-south traffic"
                        );
                        return Ok(());
                    }
                    last = Some(e);
                }
            }
        }
        Err(last
            .map(anyhow::Error::from)
            .unwrap_or_else(|| anyhow::anyhow!("no XDP mode")))
        .with_context(|| format!("attaching XDP to {ifname}"))
    }

    /// Attaches the socket hooks to the cgroup v2 directory `cgroup`, replacing links an
    /// earlier agent pinned make-before-break.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<()> {
        let dir = std::fs::File::open(cgroup)
            .with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        for name in SOCK_PROGRAMS {
            let pin = self.bpffs.join("links").join(format!("cgroup-{name}"));
            // bpffs refuses names with a dot (reserved), hence "-new".
            let fresh = self.bpffs.join("links").join(format!("cgroup-{name}-new"));
            let prog: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .expect("loaded in Datapath::load")
                .try_into()?;
            // bpf_link attachments to a cgroup always coexist with others; the link API takes
            // no ALLOW_MULTI flag (it is BPF_PROG_ATTACH's) and rejects it, so "Single" (0).
            let id = prog
                .attach(&dir, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to cgroup {}", cgroup.display()))?;
            let link = FdLink::try_from(prog.take_link(id)?)
                .with_context(|| format!("{name} on {} is not a bpf_link", cgroup.display()))?;
            let _ = std::fs::remove_file(&fresh);
            link.pin(&fresh)
                .with_context(|| format!("pinning link at {}", fresh.display()))?;
            // The old link (if any) detaches when its pin goes and no fd holds it.
            std::fs::rename(&fresh, &pin)
                .with_context(|| format!("replacing {} with the new link", pin.display()))?;
            info!(cgroup = %cgroup.display(), program = name, "attached socket hook");
        }
        Ok(())
    }

    /// Forgets an interface that disappeared; its links died with it, the pins go too.
    pub fn forget(&mut self, ifindex: u32) {
        if let Some((name, _)) = self.attached.remove(&ifindex) {
            for hook in IFACE_HOOKS {
                let pin = self.link_pin(ifindex, &name, hook);
                let _ = std::fs::remove_file(classic_record(&pin));
                let _ = std::fs::remove_file(pin);
            }
            info!(iface = %name, ifindex, "interface gone, links removed");
        }
    }

    /// Removes link pins whose interface no longer exists (left by a stopped agent).
    pub fn remove_stale_link_pins(&self, live: &BTreeMap<u32, String>) {
        let Ok(dir) = std::fs::read_dir(self.bpffs.join("links")) else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let mut parts = name.splitn(2, '-');
            let index = parts.next().and_then(|i| i.parse::<u32>().ok());
            let stale = match index {
                Some(i) => !live.get(&i).is_some_and(|n| {
                    parts
                        .next()
                        .is_some_and(|rest| rest.starts_with(&format!("{n}-")))
                }),
                // Socket-hook links belong to a cgroup, not an interface (a "-new" one is left
                // over from an interrupted replacement).
                None => !name.starts_with("cgroup-") || name.ends_with("-new"),
            };
            if stale {
                info!(pin = %entry.path().display(), "removing stale link pin");
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// The cookie of the network namespace this process runs in (`SO_NETNS_COOKIE`).
fn netns_cookie() -> Result<u64> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").context("opening a probe socket")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which we own.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("getsockopt(SO_NETNS_COOKIE)");
    }
    Ok(cookie)
}

/// The cgroup v2 root (the default `--cgroup`): where the cgroup2 filesystem is mounted.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
        .context("no cgroup2 filesystem is mounted")
}

/// Makes sure `path` is on a bpf filesystem, mounting one at /sys/fs/bpf when that is where it
/// should be and nothing is mounted there yet.
fn ensure_bpffs(path: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if is_bpffs(root) || !path.starts_with(root) {
        if !path.starts_with(root) && !is_bpffs(existing_ancestor(path)) {
            bail!("{} is not on a bpf filesystem", path.display());
        }
        return Ok(());
    }
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let target = CString::new(root.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("mounting bpffs at /sys/fs/bpf");
    }
    info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Removes everything under `bpffs` that an agent pinned: link pins first (detaching the
/// programs; classic tc filters recorded there are removed from their interface), then the
/// maps. For uninstalling, and for tests and the demo to leave nothing
/// behind.
pub fn uninstall(bpffs: &Path) -> Result<()> {
    let links = bpffs.join("links");
    if let Ok(dir) = std::fs::read_dir(&links) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((ifindex, ifname, attach_type)) = parse_classic_record(&name) {
                // Only while the interface is still the one recorded (an ifindex is reused).
                if ifname_of(ifindex).as_deref() == Some(ifname) {
                    detach_classic(ifname, attach_type);
                }
            }
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
        std::fs::remove_dir(&links).with_context(|| format!("removing {}", links.display()))?;
    }
    for map in ALL_MAPS
        .iter()
        .chain([&TIMEOUTS_PIN, &SNAT_PORTS_PIN, &sockreap::SOCK_REAP_PIN])
    {
        let path = bpffs.join(map);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    if bpffs.exists() {
        std::fs::remove_dir(bpffs).with_context(|| format!("removing {}", bpffs.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
