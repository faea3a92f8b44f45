//! Destroying connected UDP sockets whose backend left their frontend: the agent's half of the
//! socket iterator (svc-ebpf `sockreap.rs`).
//!
//! After a plan removed UDP (frontend, backend) pairs, [`Reaper::reap`] hands them to a thread
//! of its own, which writes them into `SVC_SOCK_DOOMED`, runs the iterator once in every
//! network namespace of the socket hooks' cgroup (an iterator sees the sockets of the
//! namespace it is created in: `bpf_iter_init_seq_net` takes `current->nsproxy->net_ns`,
//! net/core/bpf_sk_storage.c / net/ipv4/udp.c), and empties the map again. The engine never
//! waits for it: the pairs are gone from the service maps already, so no new socket can be
//! sent to them, and the sockets that were are destroyed within one pass over the namespaces.
//!
//! Namespaces are those of the processes in the cgroup tree (`cgroup.procs`, recursively),
//! each once (by the inode of `/proc/PID/ns/net`): the sockets a hook translated belong to
//! processes of that cgroup. A socket whose process left the cgroup, or passed it to one
//! outside, is not found; it keeps its backend until it is closed, as before.
use std::{
    collections::BTreeSet,
    fs::File,
    io::Read,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::mpsc,
};

use anyhow::{Context, Result};
use aya::{
    maps::{HashMap, Map, MapData},
    programs::{
        iter::IterLink,
        links::{FdLink, PinnedLink},
    },
};
use svc_common::{DoomedPair, MAP_SOCK_DOOMED, MAX_SOCK_DOOMED};
use tracing::{debug, info, warn};

/// Sends removed pairs to the reaper thread.
pub struct Reaper {
    tx: mpsc::Sender<Vec<DoomedPair>>,
}

impl Reaper {
    /// Starts the thread. `link` is the pinned iterator link (`Datapath`), `cgroup` the socket
    /// hooks' cgroup; `SVC_SOCK_DOOMED` is opened from its pin under `bpffs`.
    pub fn start(bpffs: &Path, link: PathBuf, cgroup: PathBuf) -> Result<Self> {
        let pin = bpffs.join(MAP_SOCK_DOOMED);
        let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
        let mut doomed: HashMap<MapData, DoomedPair, u8> = HashMap::try_from(Map::HashMap(data))
            .with_context(|| format!("{MAP_SOCK_DOOMED} has an unexpected layout"))?;
        // Pairs an agent that died mid-pass left behind: their ids may name other pairs by
        // now, whose sockets the next pass must not destroy.
        let stale: Vec<DoomedPair> = doomed.keys().filter_map(Result::ok).collect();
        for pair in &stale {
            let _ = doomed.remove(pair);
        }
        let (tx, rx) = mpsc::channel::<Vec<DoomedPair>>();
        std::thread::Builder::new()
            .name("sock-reaper".into())
            .spawn(move || {
                let mut worker = Worker {
                    link,
                    cgroup,
                    doomed,
                };
                while let Ok(mut pairs) = rx.recv() {
                    // Whatever else is queued goes into the same pass.
                    while let Ok(more) = rx.try_recv() {
                        pairs.extend(more);
                    }
                    worker.pass(pairs);
                }
            })
            .context("starting the socket reaper thread")?;
        Ok(Self { tx })
    }

    /// Queues `pairs` for destruction of their connected UDP sockets; false if the thread has
    /// stopped.
    pub fn reap(&self, pairs: Vec<DoomedPair>) -> bool {
        pairs.is_empty() || self.tx.send(pairs).is_ok()
    }
}

struct Worker {
    link: PathBuf,
    cgroup: PathBuf,
    doomed: HashMap<MapData, DoomedPair, u8>,
}

impl Worker {
    fn pass(&mut self, pairs: Vec<DoomedPair>) {
        let pairs: Vec<DoomedPair> = pairs
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let namespaces = cgroup_namespaces(&self.cgroup);
        for chunk in pairs.chunks(MAX_SOCK_DOOMED as usize) {
            for pair in chunk {
                if let Err(e) = self.doomed.insert(pair, 1, 0) {
                    warn!(?pair, "writing SVC_SOCK_DOOMED: {e}");
                }
            }
            let mut ran = 0;
            for ns in &namespaces {
                match run_in(ns, || run_iterator(&self.link)) {
                    Ok(()) => ran += 1,
                    // A namespace can vanish between listing and entering it.
                    Err(e) => debug!(netns = %ns.display(), "socket iterator: {e:#}"),
                }
            }
            for pair in chunk {
                let _ = self.doomed.remove(pair);
            }
            info!(
                pairs = chunk.len(),
                namespaces = ran,
                "destroyed the connected UDP sockets of removed backends"
            );
        }
    }
}

/// Reads the iterator to its end: each read runs the program over a batch of sockets.
fn run_iterator(link: &Path) -> Result<()> {
    let pinned = PinnedLink::from_pin(link)
        .with_context(|| format!("opening the iterator link {}", link.display()))?;
    let iter = IterLink::try_from(FdLink::from(pinned)).context("not an iterator link")?;
    let mut file = iter.into_file().context("creating the iterator")?;
    let mut sink = Vec::new();
    file.read_to_end(&mut sink)
        .context("running the iterator")?;
    Ok(())
}

/// Runs `f` with this thread in the network namespace `ns` (a `/proc/PID/ns/net` path), and
/// back in its own afterwards.
fn run_in<R>(ns: &Path, f: impl FnOnce() -> Result<R>) -> Result<R> {
    let own = File::open("/proc/thread-self/ns/net").context("opening this thread's netns")?;
    let target = File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
    setns(&target).with_context(|| format!("entering {}", ns.display()))?;
    let out = f();
    // Without the way back this thread would run every later pass in a pod's namespace.
    setns(&own).expect("returning to the reaper thread's own network namespace");
    out
}

fn setns(ns: &File) -> std::io::Result<()> {
    // SAFETY: setns(2) on a namespace fd we hold open; it affects only the calling thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// One `/proc/PID/ns/net` per network namespace of the processes in `cgroup` and below.
fn cgroup_namespaces(cgroup: &Path) -> Vec<PathBuf> {
    let mut pids = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let procs = dir.join("cgroup.procs");
        // A cgroup removed while we walk is simply gone.
        if let Ok(text) = std::fs::read_to_string(&procs) {
            pids.extend(parse_pids(&text));
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            }
        }
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for pid in pids {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        // Processes exit while we look: skip them.
        if let Ok(meta) = std::fs::metadata(&path) {
            if seen.insert((meta.dev(), meta.ino())) {
                out.push(path);
            }
        }
    }
    out
}

/// The pids of a `cgroup.procs` file (one per line).
fn parse_pids(text: &str) -> impl Iterator<Item = u32> + '_ {
    text.lines().filter_map(|l| l.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_procs_lines_are_pids() {
        let pids: Vec<u32> = parse_pids("12\n345\n\n 7 \nnot-a-pid\n").collect();
        assert_eq!(pids, vec![12, 345, 7]);
    }

    #[test]
    fn a_missing_cgroup_has_no_namespaces() {
        assert!(cgroup_namespaces(Path::new("/nonexistent/svc-lb-cgroup")).is_empty());
    }
}
