//! [`Dataplane`] on the real (pinned) BPF maps.
use std::{os::fd::AsFd, path::Path};

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    HashMap, IterableMap, Map, MapData, MapError,
};
use svc_common::{
    Affinity, AffinityKey, Backend, CtEntry, CtKey, FragKey, FragPorts, Frontend, FrontendKey,
    Slot, SlotKey, SockKey, SockRevNat, SourceRangeKey, MAP_AFFINITY, MAP_BACKENDS, MAP_CONNTRACK,
    MAP_FRAGS, MAP_FRONTENDS, MAP_SLOTS, MAP_SOCK_REVNAT, MAP_SOURCE_RANGES, SOURCE_RANGE_ALLOW,
};

use super::{batch, Dataplane, DataplaneError, MapFill, MapOp, MapSnapshot, SourceRange};

/// The `loadBalancerSourceRanges` trie as the agent sees it.
pub type SourceRangeMap = LpmTrie<MapData, SourceRangeKey, u8>;

/// The service maps and the flow maps of a loaded (or adopted) datapath.
pub struct PinnedMaps {
    pub frontends: HashMap<MapData, FrontendKey, Frontend>,
    pub slots: HashMap<MapData, SlotKey, Slot>,
    pub backends: HashMap<MapData, u32, Backend>,
    pub source_ranges: SourceRangeMap,
    pub flows: FlowMaps,
}

/// The LRU maps the datapath writes and the agent prunes.
pub struct FlowMaps {
    pub ct: HashMap<MapData, CtKey, CtEntry>,
    pub affinity: HashMap<MapData, AffinityKey, Affinity>,
    pub sock_rev: HashMap<MapData, SockKey, SockRevNat>,
    pub frags: HashMap<MapData, FragKey, FragPorts>,
    /// `max_entries` of `ct`, read once.
    ct_capacity: u32,
}

impl FlowMaps {
    /// Wraps the four LRU maps; fails if one has another layout.
    pub fn new(ct: Map, affinity: Map, sock_rev: Map, frags: Map) -> Result<Self, MapError> {
        let ct: HashMap<MapData, CtKey, CtEntry> = HashMap::try_from(ct)?;
        let ct_capacity = ct.map().info()?.max_entries();
        Ok(Self {
            ct,
            affinity: HashMap::try_from(affinity)?,
            sock_rev: HashMap::try_from(sock_rev)?,
            frags: HashMap::try_from(frags)?,
            ct_capacity,
        })
    }
}

impl PinnedMaps {
    /// Unpinned maps of the datapath's layouts, conntrack sized `ct_max`, without programs:
    /// for tests and benchmarks of the map I/O (needs `CAP_BPF`).
    pub fn standalone(ct_max: u32) -> std::io::Result<Self> {
        use std::mem::size_of;
        use svc_common::{MAX_AFFINITY, MAX_FRAGS, MAX_SOCK_REVNAT};
        fn lru<K, V>(name: &str, max: u32) -> std::io::Result<Map> {
            let fd =
                batch::create_lru_hash(name, size_of::<K>() as u32, size_of::<V>() as u32, max)?;
            let data = MapData::from_fd(fd).map_err(std::io::Error::other)?;
            Map::from_map_data(data).map_err(std::io::Error::other)
        }
        let err = std::io::Error::other;
        Ok(Self {
            frontends: HashMap::create(1024, 0).map_err(err)?,
            slots: HashMap::create(1024, 0).map_err(err)?,
            backends: HashMap::create(1024, 0).map_err(err)?,
            // BPF_F_NO_PREALLOC (1): the kernel refuses an LPM trie without it.
            source_ranges: LpmTrie::create(1024, 1).map_err(err)?,
            flows: FlowMaps::new(
                lru::<CtKey, CtEntry>(MAP_CONNTRACK, ct_max)?,
                lru::<AffinityKey, Affinity>(MAP_AFFINITY, MAX_AFFINITY)?,
                lru::<SockKey, SockRevNat>(MAP_SOCK_REVNAT, MAX_SOCK_REVNAT)?,
                lru::<FragKey, FragPorts>(MAP_FRAGS, MAX_FRAGS)?,
            )
            .map_err(err)?,
        })
    }

    /// Takes the maps out of a loaded object (whose maps are pinned as they load).
    pub fn from_loaded(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        use anyhow::Context;
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the object"))
        };
        let frontends = take(MAP_FRONTENDS)?;
        let slots = take(MAP_SLOTS)?;
        let backends = take(MAP_BACKENDS)?;
        let source_ranges = take(MAP_SOURCE_RANGES)?;
        let (ct, affinity, sock_rev, frags) = (
            take(MAP_CONNTRACK)?,
            take(MAP_AFFINITY)?,
            take(MAP_SOCK_REVNAT)?,
            take(MAP_FRAGS)?,
        );
        Ok(Self {
            frontends: HashMap::try_from(frontends)
                .with_context(|| format!("map {MAP_FRONTENDS} has an unexpected layout"))?,
            slots: HashMap::try_from(slots)
                .with_context(|| format!("map {MAP_SLOTS} has an unexpected layout"))?,
            backends: HashMap::try_from(backends)
                .with_context(|| format!("map {MAP_BACKENDS} has an unexpected layout"))?,
            source_ranges: LpmTrie::try_from(source_ranges)
                .with_context(|| format!("map {MAP_SOURCE_RANGES} has an unexpected layout"))?,
            flows: FlowMaps::new(ct, affinity, sock_rev, frags).context(
                "a flow map (conntrack, affinity, socket, fragments) has an unexpected layout",
            )?,
        })
    }

    /// Opens every map pinned under `bpffs` (a second handle beside the loader's, for the
    /// conntrack garbage collector's thread).
    pub fn from_pins(bpffs: &Path) -> Result<Self, MapError> {
        let open = |name: &str| Map::from_map_data(MapData::from_pin(bpffs.join(name))?);
        Ok(Self {
            frontends: HashMap::try_from(open(MAP_FRONTENDS)?)?,
            slots: HashMap::try_from(open(MAP_SLOTS)?)?,
            backends: HashMap::try_from(open(MAP_BACKENDS)?)?,
            source_ranges: LpmTrie::try_from(open(MAP_SOURCE_RANGES)?)?,
            flows: FlowMaps::new(
                open(MAP_CONNTRACK)?,
                open(MAP_AFFINITY)?,
                open(MAP_SOCK_REVNAT)?,
                open(MAP_FRAGS)?,
            )?,
        })
    }
}

impl PinnedMaps {
    /// Writes a conntrack entry. The agent never does (the datapath owns the flows): this is
    /// for fixtures and benchmarks that start from a given flow table.
    pub fn ct_insert(&mut self, key: &CtKey, entry: &CtEntry) -> Result<(), DataplaneError> {
        self.flows
            .ct
            .insert(key, entry, 0)
            .map_err(|e| DataplaneError::Put {
                map: MAP_CONNTRACK,
                source: io(e),
            })
    }

    /// Every conntrack key (entries evicted meanwhile may be missed).
    pub fn ct_keys(&self) -> Result<Vec<CtKey>, DataplaneError> {
        let mut keys = Vec::new();
        self.ct_scan(&mut |k, _| keys.extend_from_slice(k))?;
        Ok(keys)
    }

    /// The `SVC_FRAGS` entry under `key`, `None` when absent.
    pub fn frag_get(&self, key: &FragKey) -> Result<Option<FragPorts>, DataplaneError> {
        get_opt(&self.flows.frags, key, MAP_FRAGS)
    }

    /// Writes a `SVC_FRAGS` entry (as a first fragment would: fixtures only).
    pub fn frag_insert(&mut self, key: &FragKey, ports: &FragPorts) -> Result<(), DataplaneError> {
        self.flows
            .frags
            .insert(key, ports, 0)
            .map_err(|e| DataplaneError::Put {
                map: MAP_FRAGS,
                source: io(e),
            })
    }

    /// How many datagrams `SVC_FRAGS` remembers.
    pub fn frag_count(&self) -> Result<usize, DataplaneError> {
        batch::lookup_batch::<FragKey, FragPorts>(
            self.flows.frags.map().fd().as_fd(),
            &mut |_, _| {},
        )
        .map_err(|source| DataplaneError::Read {
            map: MAP_FRAGS,
            source,
        })
    }

    /// One frontend entry, `None` when absent.
    pub fn frontend(&self, key: &FrontendKey) -> Result<Option<Frontend>, DataplaneError> {
        get_opt(&self.frontends, key, MAP_FRONTENDS)
    }
}

/// The entry under `key`, `None` when absent; other errors name `map`.
fn get_opt<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    key: &K,
    name: &'static str,
) -> Result<Option<V>, DataplaneError> {
    match map.get(key, 0) {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(DataplaneError::Read {
            map: name,
            source: io(e),
        }),
    }
}

fn io(e: aya::maps::MapError) -> std::io::Error {
    match e {
        aya::maps::MapError::SyscallError(s) => s.io_error,
        aya::maps::MapError::KeyNotFound => std::io::Error::from(std::io::ErrorKind::NotFound),
        other => std::io::Error::other(other.to_string()),
    }
}

/// The contents of the service maps (`source_ranges`: `None` when not pinned, as under an
/// agent that predates it).
pub fn read_service_maps(
    frontends: &HashMap<MapData, FrontendKey, Frontend>,
    slots: &HashMap<MapData, SlotKey, Slot>,
    backends: &HashMap<MapData, u32, Backend>,
    source_ranges: Option<&SourceRangeMap>,
) -> Result<MapSnapshot, DataplaneError> {
    let read = |map: &'static str| move |e| DataplaneError::Read { map, source: io(e) };
    Ok(MapSnapshot {
        frontends: frontends
            .iter()
            .collect::<Result<_, _>>()
            .map_err(read(MAP_FRONTENDS))?,
        slots: slots
            .iter()
            .collect::<Result<_, _>>()
            .map_err(read(MAP_SLOTS))?,
        backends: backends
            .iter()
            .collect::<Result<_, _>>()
            .map_err(read(MAP_BACKENDS))?,
        source_ranges: match source_ranges {
            None => Default::default(),
            Some(map) => map
                .keys()
                .filter_map(|k| {
                    k.map(|k| SourceRange::from_map_key(k.prefix_len(), k.data()))
                        .transpose()
                })
                .collect::<Result<_, _>>()
                .map_err(read(MAP_SOURCE_RANGES))?,
        },
    })
}

fn lpm_key(range: &SourceRange) -> Key<SourceRangeKey> {
    let (prefix_len, data) = range.map_key();
    Key::new(prefix_len, data)
}

impl Dataplane for PinnedMaps {
    fn apply(&mut self, op: &MapOp) -> Result<(), DataplaneError> {
        let result = match *op {
            MapOp::PutBackend { id, backend } => self.backends.insert(id, backend, 0),
            MapOp::PutSlot { key, slot } => self.slots.insert(key, slot, 0),
            MapOp::PutFrontend { key, value } => self.frontends.insert(key, value, 0),
            MapOp::DeleteFrontend { key } => self.frontends.remove(&key),
            MapOp::DeleteSlot { key } => self.slots.remove(&key),
            MapOp::DeleteBackend { id } => self.backends.remove(&id),
            MapOp::PutSourceRange { range } => {
                self.source_ranges
                    .insert(&lpm_key(&range), SOURCE_RANGE_ALLOW, 0)
            }
            MapOp::DeleteSourceRange { range } => self.source_ranges.remove(&lpm_key(&range)),
        };
        match result {
            // Deleting what is already gone is the state we wanted.
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(DataplaneError::Write {
                op: op.clone(),
                source: io(e),
            }),
            Ok(()) => Ok(()),
        }
    }

    fn snapshot(&self) -> Result<MapSnapshot, DataplaneError> {
        read_service_maps(
            &self.frontends,
            &self.slots,
            &self.backends,
            Some(&self.source_ranges),
        )
    }

    fn ct_scan(&self, each: &mut dyn FnMut(&[CtKey], &[CtEntry])) -> Result<usize, DataplaneError> {
        batch::lookup_batch(self.flows.ct.map().fd().as_fd(), each).map_err(|source| {
            DataplaneError::Read {
                map: MAP_CONNTRACK,
                source,
            }
        })
    }

    fn ct_get(&self, key: &CtKey) -> Result<Option<CtEntry>, DataplaneError> {
        get_opt(&self.flows.ct, key, MAP_CONNTRACK)
    }

    fn ct_delete(&mut self, keys: &[CtKey]) -> Result<usize, DataplaneError> {
        batch::delete_batch(self.flows.ct.map().fd().as_fd(), keys).map_err(|source| {
            DataplaneError::Delete {
                map: MAP_CONNTRACK,
                source,
            }
        })
    }

    fn ct_capacity(&self) -> u32 {
        self.flows.ct_capacity
    }

    fn service_capacity(&self) -> Result<crate::budget::Entries, DataplaneError> {
        let max = |map: &'static str, data: &MapData| {
            data.info()
                .map(|i| u64::from(i.max_entries()))
                .map_err(|e| DataplaneError::Read {
                    map,
                    source: std::io::Error::other(e),
                })
        };
        Ok(crate::budget::Entries {
            frontends: max(MAP_FRONTENDS, self.frontends.map())?,
            slots: max(MAP_SLOTS, self.slots.map())?,
            backends: max(MAP_BACKENDS, self.backends.map())?,
            source_ranges: max(MAP_SOURCE_RANGES, self.source_ranges.map())?,
        })
    }

    fn affinity_scan(
        &self,
        each: &mut dyn FnMut(&[AffinityKey], &[Affinity]),
    ) -> Result<usize, DataplaneError> {
        batch::lookup_batch(self.flows.affinity.map().fd().as_fd(), each).map_err(|source| {
            DataplaneError::Read {
                map: MAP_AFFINITY,
                source,
            }
        })
    }

    fn affinity_delete(&mut self, keys: &[AffinityKey]) -> Result<usize, DataplaneError> {
        batch::delete_batch(self.flows.affinity.map().fd().as_fd(), keys).map_err(|source| {
            DataplaneError::Delete {
                map: MAP_AFFINITY,
                source,
            }
        })
    }

    fn lru_fill(&self) -> Result<Vec<MapFill>, DataplaneError> {
        let f = &self.flows;
        let fill =
            |map: &'static str, data: &MapData, count: &dyn Fn() -> std::io::Result<usize>| {
                let read = |source| DataplaneError::Read { map, source };
                let capacity = data.info().map_err(|e| read(io(e)))?.max_entries();
                Ok(MapFill {
                    map,
                    entries: count().map_err(read)?,
                    capacity,
                })
            };
        Ok(vec![
            fill(MAP_AFFINITY, f.affinity.map(), &|| {
                batch::lookup_batch::<AffinityKey, Affinity>(
                    f.affinity.map().fd().as_fd(),
                    &mut |_, _| {},
                )
            })?,
            fill(MAP_SOCK_REVNAT, f.sock_rev.map(), &|| {
                batch::lookup_batch::<SockKey, SockRevNat>(
                    f.sock_rev.map().fd().as_fd(),
                    &mut |_, _| {},
                )
            })?,
            fill(MAP_FRAGS, f.frags.map(), &|| {
                batch::lookup_batch::<FragKey, FragPorts>(
                    f.frags.map().fd().as_fd(),
                    &mut |_, _| {},
                )
            })?,
        ])
    }
}
