//! Attaching the tc programs: tcx links (6.6+) and classic `clsact` + `cls_bpf` filters
//! (6.1–6.5), and adopting what an earlier agent attached, in place.
use super::*;

/// Opens the link pinned at `pin` and hands it to `swap`, which puts our program into it.
pub(super) fn adopt(pin: &Path, swap: impl FnOnce(FdLink) -> Result<()>) -> Result<()> {
    let pinned = PinnedLink::from_pin(pin)?;
    // The kernel link object stays pinned; we need not hold its fd afterwards.
    swap(FdLink::from(pinned))
}

/// A tcx link pinned at `pin`: the existing one gets `prog` (atomic `BPF_LINK_UPDATE`), or a
/// new one is created (appended after other tcx programs) and pinned. Returns whether an
/// existing link was taken over.
pub(super) fn attach_tcx(
    prog: &mut SchedClassifier,
    ifname: &str,
    attach_type: TcAttachType,
    pin: &Path,
) -> Result<bool> {
    if pin.exists() {
        match adopt(pin, |fd| {
            let id = prog.attach_to_link(SchedClassifierLink::try_from(fd)?)?;
            drop(prog.take_link(id)?);
            Ok(())
        }) {
            Ok(()) => return Ok(true),
            Err(e) => {
                warn!(pin = %pin.display(), "could not adopt pinned link ({e:#}); re-attaching");
                let _ = std::fs::remove_file(pin);
            }
        }
    }
    let id = prog.attach_with_options(
        ifname,
        attach_type,
        TcAttachOptions::TcxOrder(LinkOrder::default()),
    )?;
    let link = FdLink::try_from(prog.take_link(id)?).context("not a tcx link")?;
    link.pin(pin)
        .with_context(|| format!("pinning link at {}", pin.display()))?;
    Ok(false)
}

/// The classic-tc record pin beside `pin` (the tcx link pin of the same hook).
pub(super) fn classic_record(pin: &Path) -> PathBuf {
    let mut name = pin.as_os_str().to_owned();
    name.push(CLASSIC_SUFFIX);
    PathBuf::from(name)
}

/// `prog` as the direct-action `cls_bpf` filter at [`CLASSIC_PRIORITY`]/[`CLASSIC_HANDLE`] of
/// `ifname`'s `clsact` qdisc (created if missing). An existing filter there gets the new
/// program in place: `RTM_NEWTFILTER` on its priority and handle without `NLM_F_CREATE`
/// reaches `cls_bpf_change` for that filter, which swaps its program under RCU
/// (net/sched/cls_bpf.c); with no filter there the kernel answers ENOENT ("Need both
/// RTM_NEWTFILTER and NLM_F_CREATE to create a new filter", tc_new_tfilter in
/// net/sched/cls_api.c) and a new filter is created. The program is pinned at `record`.
/// Returns whether a filter was taken over.
pub(super) fn attach_classic(
    prog: &mut SchedClassifier,
    ifname: &str,
    attach_type: TcAttachType,
    record: &Path,
) -> Result<bool> {
    if let Err(e) = aya::programs::tc::qdisc_add_clsact(ifname) {
        // EEXIST: the qdisc is there already (ours from an earlier agent, or another tool's).
        let exists = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
            .filter_map(|e| e.downcast_ref::<std::io::Error>())
            .any(|io| io.raw_os_error() == Some(libc::EEXIST));
        if !exists {
            return Err(e).context("adding the clsact qdisc");
        }
    }
    let existing =
        SchedClassifierLink::attached(ifname, attach_type, CLASSIC_PRIORITY, CLASSIC_HANDLE, None)
            .context("looking up the interface")?;
    let (id, adopted) = match prog.attach_to_link(existing) {
        Ok(id) => (id, true),
        // ENOENT: no filter of ours there yet. Any other failure shows again, with its reason,
        // when the filter is created.
        Err(_) => {
            let id = prog.attach_with_options(
                ifname,
                attach_type,
                TcAttachOptions::Netlink(aya::programs::tc::NlOptions {
                    priority: CLASSIC_PRIORITY,
                    handle: CLASSIC_HANDLE,
                    classid: None,
                }),
            )?;
            (id, false)
        }
    };
    // The filter must outlive this agent (a crash or upgrade keeps Services working), but
    // aya detaches a link when it is dropped: keep it attached by never dropping the handle.
    std::mem::forget(prog.take_link(id)?);
    let _ = std::fs::remove_file(record);
    prog.pin(record)
        .with_context(|| format!("pinning the program at {}", record.display()))?;
    Ok(adopted)
}

/// Removes svc-lb's classic filter from `attach_type` of `ifname`, if there is one.
pub(super) fn detach_classic(ifname: &str, attach_type: TcAttachType) {
    use aya::programs::Link as _;
    match SchedClassifierLink::attached(ifname, attach_type, CLASSIC_PRIORITY, CLASSIC_HANDLE, None)
    {
        Ok(link) => match link.detach() {
            Ok(()) => info!(iface = ifname, ?attach_type, "classic tc filter removed"),
            Err(e) => warn!(
                iface = ifname,
                ?attach_type,
                "removing the classic tc filter: {e}"
            ),
        },
        Err(e) => warn!(
            iface = ifname,
            "interface lookup for the classic tc filter: {e}"
        ),
    }
}

/// `(ifindex, ifname, attach point)` of a classic record's file name
/// (`<ifindex>-<ifname>-<hook>_cls`; interface names may hold `-`, hook names hold none).
pub(super) fn parse_classic_record(name: &str) -> Option<(u32, &str, TcAttachType)> {
    let rest = name.strip_suffix(CLASSIC_SUFFIX)?;
    let (index, rest) = rest.split_once('-')?;
    let (ifname, hook) = rest.rsplit_once('-')?;
    Some((index.parse().ok()?, ifname, hook_attach_type(hook)?))
}

/// The name of interface `ifindex` in this network namespace, if it exists.
pub(super) fn ifname_of(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname writes at most.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success if_indextoname wrote a NUL-terminated name into `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// The tc attach point of an interface hook's pin suffix (`None` for XDP).
fn hook_attach_type(hook: &str) -> Option<TcAttachType> {
    match hook {
        "ingress" | "uplink" => Some(TcAttachType::Ingress),
        "egress" | "uplink_egress" => Some(TcAttachType::Egress),
        _ => None,
    }
}
