//! Reading the maps pinned under `--bpffs`, for the tools that run beside (or without) an
//! agent: `inspect`, `explain`, `trace`, the metrics and the tests. Nothing here writes.
//! Every error names the pin and says what to do about it ([`PinError`]).
use std::{
    collections::BTreeMap,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, IterableMap, LpmTrie, Map, MapData, MapError, PerCpuArray};
use svc_common::{
    Affinity, Affinity6, AffinityKey, AffinityKey6, Config, CtEntry, CtEntry6, CtKey, CtKey6,
    CtTimeouts, Frontend, FrontendKey, SnatPorts, MAP_AFFINITY, MAP_AFFINITY6, MAP_BACKENDS,
    MAP_BACKENDS6, MAP_CONFIG, MAP_CONNTRACK, MAP_CONNTRACK6, MAP_FRONTENDS, MAP_FRONTENDS6,
    MAP_SLOTS, MAP_SOURCE_RANGES, MAP_SOURCE_RANGES6, MAP_STATS,
};

use super::pinned::{read_service_maps, FamilyMaps};
use super::{batch, DataplaneError, MapSnapshot};
use crate::cli::DEFAULT_BPFFS;
use crate::datapath::{SNAT_PORTS_PIN, TIMEOUTS_PIN};

/// Reading a pinned map failed. `NotPinned` is the expected one (wrong `--bpffs`, agent
/// never started); the others mean missing privilege or a map of another layout.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "no map pinned at {}: is the agent running with this --bpffs? \
         Pass --bpffs DIR to read the maps of another directory (default {DEFAULT_BPFFS})",
        path.display()
    )]
    NotPinned { path: PathBuf },
    #[error("opening pinned map {} (reading BPF maps needs root or CAP_BPF): {source}", path.display())]
    Open { path: PathBuf, source: MapError },
    #[error("map {} is not the {map} svc-agent pins (another version?): {source}", path.display())]
    Layout {
        map: &'static str,
        path: PathBuf,
        source: MapError,
    },
    #[error("reading map {map}: {source}")]
    Read { map: &'static str, source: MapError },
    #[error(transparent)]
    Snapshot(#[from] DataplaneError),
}

fn open(bpffs: &Path, name: &'static str) -> Result<(MapData, PathBuf), PinError> {
    let path = bpffs.join(name);
    if !path.exists() {
        return Err(PinError::NotPinned { path });
    }
    match MapData::from_pin(&path) {
        Ok(data) => Ok((data, path)),
        Err(source) => Err(PinError::Open { path, source }),
    }
}

/// `data` as the typed map `convert` makes; a wrong kind or size is a layout mismatch.
fn typed<T>(
    name: &'static str,
    path: PathBuf,
    data: MapData,
    convert: impl FnOnce(Map) -> Result<T, MapError>,
) -> Result<T, PinError> {
    Map::from_map_data(data)
        .and_then(convert)
        .map_err(|source| PinError::Layout {
            map: name,
            path,
            source,
        })
}

/// The service maps of both families (`SVC_SOURCE_RANGES` and the IPv6 maps read as empty
/// where an older agent pinned none).
pub fn read_snapshot(bpffs: &Path) -> Result<MapSnapshot, PinError> {
    let (frontends, path) = open(bpffs, MAP_FRONTENDS)?;
    let frontends = typed(MAP_FRONTENDS, path, frontends, HashMap::try_from)?;
    let (slots, path) = open(bpffs, MAP_SLOTS)?;
    let slots = typed(MAP_SLOTS, path, slots, HashMap::try_from)?;
    let (backends, path) = open(bpffs, MAP_BACKENDS)?;
    let backends = typed(MAP_BACKENDS, path, backends, HashMap::try_from)?;
    let ranges = match open(bpffs, MAP_SOURCE_RANGES) {
        Ok((data, path)) => Some(typed(MAP_SOURCE_RANGES, path, data, LpmTrie::try_from)?),
        Err(PinError::NotPinned { .. }) => None,
        Err(e) => return Err(e),
    };
    let frontends6 = optional(bpffs, MAP_FRONTENDS6, HashMap::try_from)?;
    let backends6 = optional(bpffs, MAP_BACKENDS6, HashMap::try_from)?;
    let ranges6 = optional(bpffs, MAP_SOURCE_RANGES6, LpmTrie::try_from)?;
    let v6 = match (&frontends6, &backends6) {
        (Some(frontends), Some(backends)) => Some(FamilyMaps {
            frontends,
            backends,
            source_ranges: ranges6.as_ref(),
        }),
        _ => None,
    };
    Ok(read_service_maps(
        FamilyMaps {
            frontends: &frontends,
            backends: &backends,
            source_ranges: ranges.as_ref(),
        },
        &slots,
        v6,
    )?)
}

/// The map pinned as `name`, `None` when nothing is (an agent that predates it).
fn optional<T>(
    bpffs: &Path,
    name: &'static str,
    convert: impl FnOnce(Map) -> Result<T, MapError>,
) -> Result<Option<T>, PinError> {
    match open(bpffs, name) {
        Ok((data, path)) => typed(name, path, data, convert).map(Some),
        Err(PinError::NotPinned { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `SVC_FRONTENDS` alone (what a test polls while the agent programs).
pub fn read_frontends(bpffs: &Path) -> Result<BTreeMap<FrontendKey, Frontend>, PinError> {
    let (data, path) = open(bpffs, MAP_FRONTENDS)?;
    let map: HashMap<MapData, FrontendKey, Frontend> =
        typed(MAP_FRONTENDS, path, data, HashMap::try_from)?;
    map.iter()
        .collect::<Result<_, _>>()
        .map_err(|source| PinError::Read {
            map: MAP_FRONTENDS,
            source,
        })
}

/// `SVC_FRONTENDS` opened once, for point lookups in a tight loop (the control-plane
/// benchmark's wait for one change).
pub struct FrontendLookup(HashMap<MapData, FrontendKey, Frontend>);

impl FrontendLookup {
    pub fn open(bpffs: &Path) -> Result<Self, PinError> {
        let (data, path) = open(bpffs, MAP_FRONTENDS)?;
        typed(MAP_FRONTENDS, path, data, HashMap::try_from).map(Self)
    }

    /// The entry under `key`, `None` when absent.
    pub fn get(&self, key: &FrontendKey) -> Result<Option<Frontend>, PinError> {
        match self.0.get(key, 0) {
            Ok(f) => Ok(Some(f)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(PinError::Read {
                map: MAP_FRONTENDS,
                source,
            }),
        }
    }

    /// How many entries the map holds (a walk of its keys).
    pub fn len(&self) -> usize {
        self.0.keys().count()
    }

    /// Whether the map holds no entry.
    pub fn is_empty(&self) -> bool {
        self.0.keys().next().is_none()
    }
}

/// `SVC_CONFIG[0]`, `None` when the agent has not written it (all zero).
pub fn read_config(bpffs: &Path) -> Result<Option<Config>, PinError> {
    let (data, path) = open(bpffs, MAP_CONFIG)?;
    let array: Array<MapData, Config> = typed(MAP_CONFIG, path, data, Array::try_from)?;
    let config = array.get(&0, 0).map_err(|source| PinError::Read {
        map: MAP_CONFIG,
        source,
    })?;
    Ok((config.node_addr != [0; 4] || config.netns_cookie != 0).then_some(config))
}

/// The whole conntrack table (entries evicted while it is read are skipped), read with
/// `BPF_MAP_LOOKUP_BATCH`: 5× less CPU than per-entry iteration (docs/BENCHMARKS.md).
pub fn read_conntrack(bpffs: &Path) -> Result<BTreeMap<CtKey, CtEntry>, PinError> {
    read_ct_table(bpffs, MAP_CONNTRACK)
}

/// `SVC_CT6`, the IPv6 conntrack table (see [`read_conntrack`]).
pub fn read_conntrack6(bpffs: &Path) -> Result<BTreeMap<CtKey6, CtEntry6>, PinError> {
    read_ct_table(bpffs, MAP_CONNTRACK6)
}

fn read_ct_table<K, V>(bpffs: &Path, name: &'static str) -> Result<BTreeMap<K, V>, PinError>
where
    K: aya::Pod + Ord,
    V: aya::Pod,
{
    let (data, path) = open(bpffs, name)?;
    let map: HashMap<MapData, K, V> = typed(name, path, data, HashMap::try_from)?;
    let mut table = BTreeMap::new();
    batch::lookup_batch::<K, V>(map.map().fd().as_fd(), &mut |keys, entries| {
        table.extend(keys.iter().copied().zip(entries.iter().copied()));
    })
    .map_err(|e| PinError::Read {
        map: name,
        source: MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_lookup_batch",
            io_error: e,
        }),
    })?;
    Ok(table)
}

/// The conntrack timeouts the agent gave the datapath (its [`TIMEOUTS_PIN`] copy); `None`
/// when an agent that predates it pinned the maps.
pub fn read_timeouts(bpffs: &Path) -> Result<Option<CtTimeouts>, PinError> {
    let (data, path) = match open(bpffs, TIMEOUTS_PIN) {
        Ok(d) => d,
        Err(PinError::NotPinned { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let array: Array<MapData, CtTimeouts> = typed(TIMEOUTS_PIN, path, data, Array::try_from)?;
    array.get(&0, 0).map(Some).map_err(|source| PinError::Read {
        map: TIMEOUTS_PIN,
        source,
    })
}

/// The SNAT ports the agent gave the datapath (its [`SNAT_PORTS_PIN`] copy); `None` when an
/// agent that predates it pinned the maps.
pub fn read_snat_ports(bpffs: &Path) -> Result<Option<SnatPorts>, PinError> {
    let (data, path) = match open(bpffs, SNAT_PORTS_PIN) {
        Ok(d) => d,
        Err(PinError::NotPinned { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let array: Array<MapData, SnatPorts> = typed(SNAT_PORTS_PIN, path, data, Array::try_from)?;
    array.get(&0, 0).map(Some).map_err(|source| PinError::Read {
        map: SNAT_PORTS_PIN,
        source,
    })
}

/// The session-affinity table.
pub fn read_affinity(bpffs: &Path) -> Result<BTreeMap<AffinityKey, Affinity>, PinError> {
    read_hash(bpffs, MAP_AFFINITY)
}

/// `SVC_AFFINITY6` (see [`read_affinity`]).
pub fn read_affinity6(bpffs: &Path) -> Result<BTreeMap<AffinityKey6, Affinity6>, PinError> {
    read_hash(bpffs, MAP_AFFINITY6)
}

fn read_hash<K, V>(bpffs: &Path, name: &'static str) -> Result<BTreeMap<K, V>, PinError>
where
    K: aya::Pod + Ord,
    V: aya::Pod,
{
    let (data, path) = open(bpffs, name)?;
    let map: HashMap<MapData, K, V> = typed(name, path, data, HashMap::try_from)?;
    map.iter()
        .collect::<Result<_, _>>()
        .map_err(|source| PinError::Read { map: name, source })
}

/// Per-CPU values of every counter, indexed like `SVC_STATS`.
pub fn read_stats(bpffs: &Path) -> Result<Vec<Vec<u64>>, PinError> {
    Counters::open(bpffs)?.all()
}

/// Per-CPU values of one counter (`svc_common::stat_index`).
pub fn read_stat(bpffs: &Path, index: u32) -> Result<Vec<u64>, PinError> {
    Counters::open(bpffs)?.per_cpu(index)
}

/// `SVC_STATS`, the per-CPU packet counters (hook × reason), from a pin or a loaded object.
pub struct Counters(PerCpuArray<MapData, u64>);

impl Counters {
    pub fn open(bpffs: &Path) -> Result<Self, PinError> {
        let (data, path) = open(bpffs, MAP_STATS)?;
        typed(MAP_STATS, path, data, PerCpuArray::try_from).map(Self)
    }

    /// Takes the map out of a loaded (unpinned) object: the fixtures and benchmarks.
    pub fn from_loaded(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        use anyhow::Context;
        let map = ebpf
            .take_map(MAP_STATS)
            .with_context(|| format!("map {MAP_STATS} missing from the object"))?;
        PerCpuArray::try_from(map)
            .map(Self)
            .with_context(|| format!("map {MAP_STATS} has an unexpected layout"))
    }

    /// One counter's per-CPU values.
    pub fn per_cpu(&self, index: u32) -> Result<Vec<u64>, PinError> {
        self.0
            .get(&index, 0)
            .map(|v| v.iter().copied().collect())
            .map_err(|source| PinError::Read {
                map: MAP_STATS,
                source,
            })
    }

    /// Every counter's per-CPU values, by index.
    pub fn all(&self) -> Result<Vec<Vec<u64>>, PinError> {
        (0..self.0.len()).map(|i| self.per_cpu(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_pin_names_the_path_and_the_flag() {
        let dir = std::env::temp_dir().join("svc-agent-inspect-no-such-bpffs");
        let err = read_snapshot(&dir).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, PinError::NotPinned { .. }), "{msg}");
        assert!(
            msg.contains(&dir.join(MAP_FRONTENDS).display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("--bpffs"), "{msg}");
    }
}
