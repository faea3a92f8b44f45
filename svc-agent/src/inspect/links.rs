//! `svc-agent inspect links`: where the programs are attached, from the link pins under
//! `--bpffs` (see `datapath`'s module docs for their names), with each link's kernel ids and,
//! for XDP, the attach mode the kernel reports for the interface (native or generic: the
//! agent picks per driver, see `--xdp-mode`).
//!
//! Run it in the node's network namespace (the DaemonSet is hostNetwork): interfaces are
//! looked up there.
use std::path::Path;

use aya::programs::links::{FdLink, PinnedLink};
use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkXdp, XdpAttached};
use serde::Serialize;

use super::{InspectError, PinError, Table};

/// One pinned link.
#[derive(Clone, Debug, Serialize)]
pub struct LinkView {
    /// Pin file name under `<bpffs>/links`.
    pub pin: String,
    /// Interface name (interface links) or `cgroup` (socket hooks).
    pub target: String,
    /// Interface index, when attached to an interface.
    pub ifindex: Option<u32>,
    /// `ingress`, `egress` (pod veth), `uplink` (tc ingress on an uplink), `uplink_egress` (tc
    /// egress on an uplink), `xdp`, or the socket-hook program's name.
    pub hook: String,
    /// Kernel link id, program id and link type; `None` when the pin could not be opened.
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
    pub link_type: Option<String>,
    /// For XDP: `native`, `generic`, `offload`, `multiple` or `none`, as the kernel reports it.
    pub xdp_mode: Option<String>,
    /// Why the link could not be read, if so (e.g. its interface is gone).
    pub error: Option<String>,
}

/// Reads every link pin under `<bpffs>/links`.
pub fn link_views(bpffs: &Path) -> Result<Vec<LinkView>, InspectError> {
    let dir = bpffs.join("links");
    let entries = std::fs::read_dir(&dir)
        .map_err(|_| InspectError::Pin(PinError::NotPinned { path: dir.clone() }))?;
    let mut views = Vec::new();
    for entry in entries.flatten() {
        let pin = entry.file_name().to_string_lossy().into_owned();
        let (target, ifindex, hook) = match pin.strip_prefix("cgroup-") {
            Some(program) => ("cgroup".to_string(), None, program.to_string()),
            None => {
                let mut parts = pin.splitn(2, '-');
                let index = parts.next().and_then(|i| i.parse::<u32>().ok());
                let rest = parts.next().unwrap_or_default();
                match rest.rsplit_once('-') {
                    Some((ifname, hook)) => (ifname.to_string(), index, hook.to_string()),
                    None => (rest.to_string(), index, String::new()),
                }
            }
        };
        let mut view = LinkView {
            pin,
            target,
            ifindex,
            hook,
            link_id: None,
            program_id: None,
            link_type: None,
            xdp_mode: None,
            error: None,
        };
        match PinnedLink::from_pin(entry.path())
            .map(FdLink::from)
            .and_then(|l| l.info())
        {
            Ok(info) => {
                view.link_id = Some(info.id());
                view.program_id = Some(info.program_id());
                view.link_type = info
                    .link_type()
                    .ok()
                    .map(|t| format!("{t:?}").to_lowercase());
            }
            Err(e) => view.error = Some(e.to_string()),
        }
        views.push(view);
    }
    views.sort_by(|a, b| (a.ifindex, &a.hook).cmp(&(b.ifindex, &b.hook)));
    let xdp: Vec<u32> = views
        .iter()
        .filter(|v| v.hook == "xdp")
        .filter_map(|v| v.ifindex)
        .collect();
    if !xdp.is_empty() {
        let modes = xdp_modes(&xdp);
        for v in views.iter_mut().filter(|v| v.hook == "xdp") {
            v.xdp_mode = v
                .ifindex
                .and_then(|i| modes.iter().find(|(idx, _)| *idx == i))
                .map(|(_, m)| m.clone());
        }
    }
    Ok(views)
}

/// The XDP attach mode of each interface index, from rtnetlink (`IFLA_XDP_ATTACHED`).
fn xdp_modes(indices: &[u32]) -> Vec<(u32, String)> {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    rt.block_on(async {
        let Ok((conn, handle, _)) = rtnetlink::new_connection() else {
            return Vec::new();
        };
        tokio::spawn(conn);
        let mut out = Vec::new();
        for &index in indices {
            let mut links = handle.link().get().match_index(index).execute();
            while let Ok(Some(msg)) = links.try_next().await {
                let mode = msg.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Xdp(xdp) => xdp.iter().find_map(|x| match x {
                        LinkXdp::Attached(XdpAttached::Driver) => Some("native"),
                        LinkXdp::Attached(XdpAttached::SocketBuffer) => Some("generic"),
                        LinkXdp::Attached(XdpAttached::Hardware) => Some("offload"),
                        LinkXdp::Attached(XdpAttached::Multiple) => Some("multiple"),
                        LinkXdp::Attached(XdpAttached::None) => Some("none"),
                        _ => None,
                    }),
                    _ => None,
                });
                out.push((index, mode.unwrap_or("none").to_string()));
            }
        }
        out
    })
}

/// The table people read.
pub fn render_links(links: &Vec<LinkView>) -> String {
    let mut t = Table::new(&[
        "TARGET", "IFINDEX", "HOOK", "XDP-MODE", "LINK-ID", "PROG-ID", "TYPE", "PIN",
    ]);
    let opt = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    for l in links {
        t.row(vec![
            l.target.clone(),
            opt(l.ifindex),
            l.hook.clone(),
            l.xdp_mode.clone().unwrap_or_else(|| "-".into()),
            opt(l.link_id),
            opt(l.program_id),
            l.link_type
                .clone()
                .or_else(|| l.error.as_ref().map(|e| format!("error: {e}")))
                .unwrap_or_else(|| "-".into()),
            l.pin.clone(),
        ]);
    }
    t.render()
}
