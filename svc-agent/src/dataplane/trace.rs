//! The trace maps (`SVC_TRACE_ON`, `SVC_TRACE_FILTERS`, `SVC_TRACE_RINGS`, `SVC_TRACE_LOST`)
//! and the tracers' ring buffers: opening, claiming and releasing slots under the slot lock.
//! Which slots are free or dead is `crate::trace`'s pure policy (`plan_slots`, `Owner`);
//! this file does the map I/O.
use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use anyhow::{bail, ensure, Context, Result};
use aya::maps::{of_maps::ArrayOfMaps, Array, Map, MapData, PerCpuArray, PerCpuValues, RingBuf};
use svc_common::{
    TraceEvent, TraceEvent6, TraceFilter, MAP_TRACE_FILTERS, MAP_TRACE_LOST, MAP_TRACE_ON,
    MAP_TRACE_RINGS, TRACE_RING_BYTES, TRACE_SLOTS,
};

use crate::trace::{own_pidns, owner_alive, plan_slots, Owner};

/// `flock` on the bpffs directory: every tracer and the agent's sweep change the slots only
/// while holding it, so two tracers never take one slot and a bit is never lost.
pub(crate) struct SlotLock(
    #[expect(dead_code, reason = "held for its descriptor: closing it unlocks")] File,
);

impl SlotLock {
    /// Waits for the lock (a tracer: it holds it for a few map writes at most).
    pub(crate) fn take(bpffs: &Path) -> Result<Self> {
        Self::lock(bpffs, libc::LOCK_EX).map(|l| l.expect("a blocking flock returns locked"))
    }

    /// The lock if it is free now; `None` if another process holds it (the agent's sweep
    /// skips a round rather than wait on a tracer that may be stopped while holding it).
    pub(crate) fn try_take(bpffs: &Path) -> Result<Option<Self>> {
        Self::lock(bpffs, libc::LOCK_EX | libc::LOCK_NB)
    }

    fn lock(bpffs: &Path, how: libc::c_int) -> Result<Option<Self>> {
        let dir = File::open(bpffs).with_context(|| format!("opening {}", bpffs.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(dir.as_raw_fd(), how) } == 0 {
            return Ok(Some(Self(dir)));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        bail!("locking {} for the trace slots: {e}", bpffs.display())
    }
}
// The lock is released when the descriptor closes (drop).

/// The trace maps, opened from their pins (or taken out of a loaded object: fixtures and
/// benchmarks, which have no pins and no slot lock).
pub struct TraceMaps {
    /// Where the slot lock is taken; `None` for maps of an unpinned object.
    bpffs: Option<PathBuf>,
    on: Array<MapData, u32>,
    filters: Array<MapData, TraceFilter>,
    rings: ArrayOfMaps<MapData, MapData>,
    /// The rings map once more, for `BPF_MAP_DELETE_ELEM` (aya 0.14's `ArrayOfMaps` has no
    /// delete and does not lend its descriptor).
    rings_fd: MapData,
    /// Events lost per slot and CPU (the ring was full).
    lost: PerCpuArray<MapData, u64>,
}

fn pinned(bpffs: &Path, name: &str) -> Result<MapData> {
    let path = bpffs.join(name);
    ensure!(
        path.exists(),
        "no map pinned at {}: is the agent running with this --bpffs (and new enough to \
         trace)?",
        path.display()
    );
    MapData::from_pin(&path).with_context(|| {
        format!(
            "opening pinned map {} (needs root or CAP_BPF)",
            path.display()
        )
    })
}

impl TraceMaps {
    pub fn open(bpffs: &Path) -> Result<Self> {
        Self::from_maps(
            Some(bpffs.to_owned()),
            pinned(bpffs, MAP_TRACE_ON)?,
            pinned(bpffs, MAP_TRACE_FILTERS)?,
            pinned(bpffs, MAP_TRACE_RINGS)?,
            pinned(bpffs, MAP_TRACE_LOST)?,
        )
    }

    /// Takes the trace maps out of a loaded object; `None` when it has none (an object built
    /// before tracing).
    pub fn from_loaded(ebpf: &mut aya::Ebpf) -> Result<Option<Self>> {
        let mut take = |name: &str| -> Result<Option<MapData>> {
            Ok(match ebpf.take_map(name) {
                None => None,
                Some(Map::Array(d) | Map::ArrayOfMaps(d) | Map::PerCpuArray(d)) => Some(d),
                Some(other) => bail!("map {name} has an unexpected type: {other:?}"),
            })
        };
        let (Some(on), Some(filters), Some(rings), Some(lost)) = (
            take(MAP_TRACE_ON)?,
            take(MAP_TRACE_FILTERS)?,
            take(MAP_TRACE_RINGS)?,
            take(MAP_TRACE_LOST)?,
        ) else {
            return Ok(None);
        };
        Self::from_maps(None, on, filters, rings, lost).map(Some)
    }

    fn from_maps(
        bpffs: Option<PathBuf>,
        on: MapData,
        filters: MapData,
        rings: MapData,
        lost: MapData,
    ) -> Result<Self> {
        // A second descriptor of the rings map for BPF_MAP_DELETE_ELEM.
        let rings_fd = MapData::from_fd(
            rings
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .context("duplicating the SVC_TRACE_RINGS descriptor")?,
        )?;
        Ok(Self {
            bpffs,
            on: Array::try_from(Map::Array(on))
                .with_context(|| format!("{MAP_TRACE_ON}: unexpected layout"))?,
            filters: Array::try_from(Map::Array(filters))
                .with_context(|| format!("{MAP_TRACE_FILTERS}: unexpected layout"))?,
            rings: ArrayOfMaps::try_from(Map::ArrayOfMaps(rings))
                .with_context(|| format!("{MAP_TRACE_RINGS}: unexpected layout"))?,
            rings_fd,
            lost: PerCpuArray::try_from(Map::PerCpuArray(lost))
                .with_context(|| format!("{MAP_TRACE_LOST}: unexpected layout"))?,
        })
    }

    fn lock(&self) -> Result<SlotLock> {
        let bpffs = self
            .bpffs
            .as_deref()
            .context("the trace maps of an unpinned object have no slot lock")?;
        SlotLock::take(bpffs)
    }

    /// The slot bits and every slot's filter.
    pub fn state(&self) -> Result<(u32, Vec<TraceFilter>)> {
        let on = self.on.get(&0, 0).context("reading SVC_TRACE_ON")?;
        let filters = (0..TRACE_SLOTS)
            .map(|i| self.filters.get(&i, 0))
            .collect::<Result<Vec<_>, _>>()
            .context("reading SVC_TRACE_FILTERS")?;
        Ok((on, filters))
    }

    /// Frees the slots of dead owners (held lock assumed). Returns them.
    pub(crate) fn free_dead(&mut self, on: &mut u32, filters: &[TraceFilter]) -> Result<Vec<u32>> {
        let (_, dead) = plan_slots(*on, filters, own_pidns()?, owner_alive);
        for &slot in &dead {
            self.release_locked(on, slot)?;
        }
        Ok(dead)
    }

    /// Clears `slot`: its bit (so no program writes to it any more), then its ring, then its
    /// filter.
    fn release_locked(&mut self, on: &mut u32, slot: u32) -> Result<()> {
        *on &= !(1 << slot);
        self.set_on(*on)?;
        delete_elem(self.rings_fd.fd().as_fd().as_raw_fd(), slot)
            .with_context(|| format!("removing the ring of trace slot {slot}"))?;
        self.filters
            .set(slot, TraceFilter::zeroed(), 0)
            .context("clearing a trace filter")?;
        Ok(())
    }

    /// Takes a free slot for `filter` and `ring`.
    pub(crate) fn claim(&mut self, filter: &TraceFilter, ring: &MapData) -> Result<u32> {
        let _lock = self.lock()?;
        let (mut on, filters) = self.state()?;
        self.free_dead(&mut on, &filters)?;
        let (on_now, filters) = self.state()?;
        let (free, _) = plan_slots(on_now, &filters, own_pidns()?, |_| true);
        let slot = free.with_context(|| {
            format!("all {TRACE_SLOTS} trace slots are in use by running tracers")
        })?;
        self.install(slot, filter, ring)?;
        self.set_on(on_now | 1 << slot)?;
        Ok(slot)
    }

    /// Puts `filter` and `ring` into `slot` and zeroes its lost counters; the programs use it
    /// once its bit is set ([`TraceMaps::set_on`]). Under the slot lock, unless the maps are
    /// an unpinned object's.
    pub fn install(&mut self, slot: u32, filter: &TraceFilter, ring: &MapData) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        self.lost
            .set(slot, PerCpuValues::try_from(vec![0u64; cpus])?, 0)
            .context("zeroing SVC_TRACE_LOST")?;
        self.set_filter(slot, filter)?;
        self.rings
            .set(slot, ring, 0)
            .context("writing SVC_TRACE_RINGS")
    }

    /// Replaces `slot`'s filter.
    pub fn set_filter(&mut self, slot: u32, filter: &TraceFilter) -> Result<()> {
        self.filters
            .set(slot, *filter, 0)
            .context("writing SVC_TRACE_FILTERS")
    }

    /// Writes the slot bits (`SVC_TRACE_ON`).
    pub fn set_on(&mut self, bits: u32) -> Result<()> {
        self.on.set(0, bits, 0).context("writing SVC_TRACE_ON")
    }

    /// Events the programs could not write into `slot`'s ring, summed over CPUs.
    pub fn lost(&self, slot: u32) -> Result<u64> {
        Ok(self
            .lost
            .get(&slot, 0)
            .context("reading SVC_TRACE_LOST")?
            .iter()
            .sum())
    }

    /// Releases `slot` if `me` still owns it (a slot freed as dead and taken by another
    /// tracer in the meantime is theirs).
    pub(crate) fn release(&mut self, slot: u32, me: Owner) -> Result<()> {
        let _lock = self.lock()?;
        let (mut on, filters) = self.state()?;
        if Owner::of(&filters[slot as usize]) != me {
            return Ok(());
        }
        self.release_locked(&mut on, slot)
    }
}

/// Zeroed filter (bytemuck's, named for readability).
trait Zeroed {
    fn zeroed() -> Self;
}
impl Zeroed for TraceFilter {
    fn zeroed() -> Self {
        bytemuck::Zeroable::zeroed()
    }
}

/// `BPF_MAP_DELETE_ELEM` on an array of maps (aya 0.14 has no delete for it). An empty slot is
/// not an error.
fn delete_elem(map_fd: i32, key: u32) -> Result<()> {
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let attr = Attr {
        map_fd: map_fd as u32,
        _pad: 0,
        key: &key as *const u32 as u64,
        value: 0,
        flags: 0,
    };
    const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
    // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_MAP_DELETE_ELEM (map_fd, key
    // pointer) that lives across the call; `key` outlives it too.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_DELETE_ELEM,
            &attr as *const Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOENT) {
        return Ok(());
    }
    Err(e.into())
}

/// A ring buffer of the template's type and size ([`TRACE_RING_BYTES`]), as `SVC_TRACE_RINGS`
/// accepts (`bpf_map_meta_equal`).
pub fn new_ring() -> Result<MapData> {
    let obj = aya_obj::Map::new_from_params(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32,
        0,
        0,
        TRACE_RING_BYTES,
        0,
    );
    MapData::create(obj, "svc_trace_ring", None).context("creating the trace ring buffer")
}

/// The events of a ring made by [`new_ring`] (after it was put into a slot), read as they
/// arrive.
pub struct TraceRing(tokio::io::unix::AsyncFd<RingBuf<MapData>>);

impl TraceRing {
    pub fn new(ring: MapData) -> Result<Self> {
        let ring = RingBuf::try_from(Map::RingBuf(ring)).context("opening the ring buffer")?;
        // SAFETY: the RingBuf owns its map descriptor and keeps it open, unchanged, until it
        // is dropped, which happens only with the AsyncFd that owns it.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(ring) }
            .map_err(|e| anyhow::anyhow!("polling the ring buffer: {}", e.into_parts().1))?;
        Ok(Self(fd))
    }

    /// Waits for events and returns every one waiting (cancel-safe: nothing is consumed
    /// before the ring is readable, and then everything is taken without awaiting).
    pub async fn events(&mut self) -> Result<Vec<AnyTraceEvent>> {
        let mut guard = self
            .0
            .readable_mut()
            .await
            .context("waiting for trace events")?;
        let events = drain(guard.get_inner_mut());
        guard.clear_ready();
        Ok(events)
    }
}

/// A ring made by [`new_ring`], read without waiting (fixtures and benchmarks).
pub struct RingReader(RingBuf<MapData>);

impl RingReader {
    pub fn new(ring: MapData) -> Result<Self> {
        RingBuf::try_from(Map::RingBuf(ring))
            .map(Self)
            .context("opening the ring buffer")
    }

    /// Every event waiting now.
    pub fn drain(&mut self) -> Vec<AnyTraceEvent> {
        drain(&mut self.0)
    }
}

/// One record of a trace ring: the programs of each family write their own event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnyTraceEvent {
    V4(TraceEvent),
    V6(TraceEvent6),
}

impl AnyTraceEvent {
    /// The event a ring record holds, told by its length (the programs reserve exactly one
    /// event); a record of another length is not ours to decode.
    pub fn decode(record: &[u8]) -> Option<Self> {
        if record.len() == std::mem::size_of::<TraceEvent>() {
            Some(Self::V4(bytemuck::pod_read_unaligned(record)))
        } else if record.len() == std::mem::size_of::<TraceEvent6>() {
            Some(Self::V6(bytemuck::pod_read_unaligned(record)))
        } else {
            None
        }
    }
}

/// Takes every record waiting in `ring`; a record that is no event is skipped.
fn drain(ring: &mut RingBuf<MapData>) -> Vec<AnyTraceEvent> {
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        events.extend(AnyTraceEvent::decode(&item));
    }
    events
}
