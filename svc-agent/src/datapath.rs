//! Loading the kernel programs, pinning their maps and links, and attaching to pod veths.
//!
//! # What lives where under `--bpffs DIR`
//! - `DIR/<MAP>` for each `svc_common::ALL_MAPS`: the maps. A restarted agent reuses them
//!   (`EbpfLoader::map_pin_path` opens an existing pin), so programmed services and conntrack
//!   survive restarts and upgrades.
//! - `DIR/links/<ifindex>-<ifname>-<ingress|egress>`: one tcx link per hook per interface. The
//!   pin keeps the program attached while no agent runs (crash, upgrade). A restarted agent
//!   swaps its freshly loaded program into the existing link with `BPF_LINK_UPDATE`
//!   (`attach_to_link`), which is atomic: there is no instant without a program.
use std::{
    collections::BTreeMap,
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::HashMap,
    programs::{
        links::{FdLink, LinkOrder, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        SchedClassifier, TcAttachType,
    },
    Ebpf, EbpfLoader,
};
use svc_common::{ALL_MAPS, GLOBAL_FAULT_INJECT, MAP_BACKENDS, MAP_FRONTENDS, MAP_SLOTS};
use tracing::{info, warn};

use crate::dataplane::pinned::PinnedMaps;

/// The kernel object built by `cargo xtask build-ebpf`, embedded at compile time (build.rs).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SVC_EBPF_OBJECT"));

/// Program names in the object, and the tc hook each one runs at.
pub const PROGRAMS: [(&str, TcAttachType, &str); 2] = [
    ("svc_pod_ingress", TcAttachType::Ingress, "ingress"),
    ("svc_pod_egress", TcAttachType::Egress, "egress"),
];

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Loaded programs plus the pinned maps, and the links this agent manages.
pub struct Datapath {
    ebpf: Ebpf,
    bpffs: PathBuf,
    /// Interfaces we have attached to, by ifindex → name.
    attached: BTreeMap<u32, String>,
}

impl Datapath {
    /// Mounts bpffs if needed, loads the programs, and opens (or creates and pins) the maps under
    /// `bpffs`. `fault` is `svc_common::FAULT_*` bits; 0 except in tests.
    pub fn load(bpffs: &Path, fault: u32) -> Result<(Self, PinnedMaps)> {
        ensure_bpffs(bpffs)?;
        std::fs::create_dir_all(bpffs.join("links"))
            .with_context(|| format!("creating {}", bpffs.join("links").display()))?;
        let mut loader = EbpfLoader::new();
        let pins: Vec<(&str, PathBuf)> = ALL_MAPS.iter().map(|m| (*m, bpffs.join(m))).collect();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        if fault != 0 {
            warn!(
                fault,
                "fault injection enabled: this datapath is deliberately broken (tests only)"
            );
            loader.override_global(GLOBAL_FAULT_INJECT, &fault, true);
        }
        let mut ebpf = loader.load(EBPF_OBJECT).with_context(|| {
            format!(
                "loading the eBPF object with maps pinned under {}",
                bpffs.display()
            )
        })?;
        for (name, _, _) in PROGRAMS {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()
                .with_context(|| format!("program {name} is not a tc classifier"))?;
            prog.load()
                .with_context(|| format!("verifying and loading program {name}"))?;
        }
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the object"))
        };
        let maps = PinnedMaps {
            frontends: HashMap::try_from(take(&mut ebpf, MAP_FRONTENDS)?)
                .with_context(|| format!("map {MAP_FRONTENDS} has an unexpected layout"))?,
            slots: HashMap::try_from(take(&mut ebpf, MAP_SLOTS)?)
                .with_context(|| format!("map {MAP_SLOTS} has an unexpected layout"))?,
            backends: HashMap::try_from(take(&mut ebpf, MAP_BACKENDS)?)
                .with_context(|| format!("map {MAP_BACKENDS} has an unexpected layout"))?,
        };
        info!(bpffs = %bpffs.display(), "programs loaded, maps pinned");
        Ok((
            Self {
                ebpf,
                bpffs: bpffs.to_owned(),
                attached: BTreeMap::new(),
            },
            maps,
        ))
    }

    fn link_pin(&self, ifindex: u32, ifname: &str, hook: &str) -> PathBuf {
        self.bpffs
            .join("links")
            .join(format!("{ifindex}-{ifname}-{hook}"))
    }

    /// Attaches both programs to `ifname` unless already done. Reuses a pinned link left by an
    /// earlier agent (atomic program swap), else creates and pins a new tcx link.
    pub fn ensure_attached(&mut self, ifindex: u32, ifname: &str) -> Result<()> {
        if self.attached.get(&ifindex).map(String::as_str) == Some(ifname) {
            return Ok(());
        }
        for (prog_name, attach_type, hook) in PROGRAMS {
            let pin = self.link_pin(ifindex, ifname, hook);
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(prog_name)
                .expect("loaded in Datapath::load")
                .try_into()?;
            let adopted = if pin.exists() {
                match adopt_link(prog, &pin) {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(pin = %pin.display(), "could not adopt pinned link ({e:#}); re-attaching");
                        let _ = std::fs::remove_file(&pin);
                        false
                    }
                }
            } else {
                false
            };
            if !adopted {
                let id = prog
                    .attach_with_options(
                        ifname,
                        attach_type,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .with_context(|| format!("attaching {prog_name} to {ifname} ({hook})"))?;
                let link = prog.take_link(id)?;
                let fd_link = FdLink::try_from(link)
                    .with_context(|| format!("{prog_name} on {ifname} is not a tcx link"))?;
                fd_link
                    .pin(&pin)
                    .with_context(|| format!("pinning link at {}", pin.display()))?;
            }
            info!(iface = ifname, ifindex, hook, adopted, "attached");
        }
        self.attached.insert(ifindex, ifname.to_owned());
        Ok(())
    }

    /// Forgets an interface that disappeared; its links died with it, the pins go too.
    pub fn forget(&mut self, ifindex: u32) {
        if let Some(name) = self.attached.remove(&ifindex) {
            for (_, _, hook) in PROGRAMS {
                let _ = std::fs::remove_file(self.link_pin(ifindex, &name, hook));
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
                None => true,
            };
            if stale {
                info!(pin = %entry.path().display(), "removing stale link pin");
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

fn adopt_link(prog: &mut SchedClassifier, pin: &Path) -> Result<()> {
    let pinned = PinnedLink::from_pin(pin)?;
    let link = SchedClassifierLink::try_from(FdLink::from(pinned))?;
    let id = prog.attach_to_link(link)?;
    // The kernel link object stays pinned; we need not hold its fd.
    drop(prog.take_link(id)?);
    Ok(())
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
/// programs), then the maps. For uninstalling, and for tests and the demo to leave nothing
/// behind.
pub fn uninstall(bpffs: &Path) -> Result<()> {
    let links = bpffs.join("links");
    if let Ok(dir) = std::fs::read_dir(&links) {
        for entry in dir.flatten() {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
        std::fs::remove_dir(&links).with_context(|| format!("removing {}", links.display()))?;
    }
    for map in ALL_MAPS {
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
