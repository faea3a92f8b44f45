//! [`Dataplane`] on the real (pinned) BPF maps.
use std::{os::fd::AsFd, path::Path};

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    HashMap, IterableMap, Map, MapData, MapError,
};
use svc_common::{
    Affinity, Affinity6, AffinityKey, AffinityKey6, Backend, Backend6, BackendOf, CtEntry,
    CtEntry6, CtKey, CtKey6, FragKey, FragKey6, FragPorts, Frontend, FrontendKey, FrontendKey6,
    FrontendKeyOf, Slot, SlotKey, SockKey, SockKey6, SockRevNat, SockRevNat6, SourceRangeKey,
    SourceRangeKey6, SourceRangeKeyOf, MAP_AFFINITY, MAP_AFFINITY6, MAP_BACKENDS, MAP_BACKENDS6,
    MAP_CONNTRACK, MAP_CONNTRACK6, MAP_FRAGS, MAP_FRAGS6, MAP_FRONTENDS, MAP_FRONTENDS6, MAP_SLOTS,
    MAP_SOCK_REVNAT, MAP_SOCK_REVNAT6, MAP_SOURCE_RANGES, MAP_SOURCE_RANGES6, SOURCE_RANGE_ALLOW,
};
use svc_core::dataplane::SourceRangeOf;
use svc_core::family::Family;

use super::{batch, Dataplane, DataplaneError, MapFill, MapOp, MapSnapshot};

/// The `loadBalancerSourceRanges` trie as the agent sees it.
pub type SourceRangeMap = LpmTrie<MapData, SourceRangeKey, u8>;
/// The IPv6 `loadBalancerSourceRanges` trie.
pub type SourceRangeMap6 = LpmTrie<MapData, SourceRangeKey6, u8>;

/// The service maps and the flow maps of a loaded (or adopted) datapath. `SVC_SLOTS` serves
/// both families; the IPv6 frontends, backends and source ranges have maps of their own.
pub struct PinnedMaps {
    pub frontends: HashMap<MapData, FrontendKey, Frontend>,
    pub slots: HashMap<MapData, SlotKey, Slot>,
    pub backends: HashMap<MapData, u32, Backend>,
    pub source_ranges: SourceRangeMap,
    pub frontends6: HashMap<MapData, FrontendKey6, Frontend>,
    pub backends6: HashMap<MapData, u32, Backend6>,
    pub source_ranges6: SourceRangeMap6,
    pub flows: FlowMaps,
}

/// The LRU maps the datapath writes and the agent prunes, of both families.
pub struct FlowMaps {
    pub ct: HashMap<MapData, CtKey, CtEntry>,
    pub affinity: HashMap<MapData, AffinityKey, Affinity>,
    pub sock_rev: HashMap<MapData, SockKey, SockRevNat>,
    pub frags: HashMap<MapData, FragKey, FragPorts>,
    pub ct6: HashMap<MapData, CtKey6, CtEntry6>,
    pub affinity6: HashMap<MapData, AffinityKey6, Affinity6>,
    pub sock_rev6: HashMap<MapData, SockKey6, SockRevNat6>,
    pub frags6: HashMap<MapData, FragKey6, FragPorts>,
    /// `max_entries` of `ct`, read once (`ct6` is created with the same size).
    ct_capacity: u32,
    /// `max_entries` of `ct6`, read once (differs from `ct`'s only when an earlier agent
    /// pinned them with other sizes).
    ct6_capacity: u32,
}

impl FlowMaps {
    /// Wraps the eight LRU maps `take` hands out by name; fails if one is missing or has
    /// another layout.
    pub fn take<E: From<MapError>>(
        mut take: impl FnMut(&'static str) -> Result<Map, E>,
    ) -> Result<Self, E> {
        let ct: HashMap<MapData, CtKey, CtEntry> = HashMap::try_from(take(MAP_CONNTRACK)?)?;
        let ct_capacity = ct.map().info()?.max_entries();
        let ct6: HashMap<MapData, CtKey6, CtEntry6> = HashMap::try_from(take(MAP_CONNTRACK6)?)?;
        let ct6_capacity = ct6.map().info()?.max_entries();
        Ok(Self {
            ct,
            ct6,
            affinity: HashMap::try_from(take(MAP_AFFINITY)?)?,
            sock_rev: HashMap::try_from(take(MAP_SOCK_REVNAT)?)?,
            frags: HashMap::try_from(take(MAP_FRAGS)?)?,
            affinity6: HashMap::try_from(take(MAP_AFFINITY6)?)?,
            sock_rev6: HashMap::try_from(take(MAP_SOCK_REVNAT6)?)?,
            frags6: HashMap::try_from(take(MAP_FRAGS6)?)?,
            ct_capacity,
            ct6_capacity,
        })
    }

    /// `max_entries` of `SVC_CT6`.
    pub fn ct6_capacity(&self) -> u32 {
        self.ct6_capacity
    }
}

impl PinnedMaps {
    /// Unpinned maps of the datapath's layouts, conntrack (both families) sized `ct_max`,
    /// without programs: for tests and benchmarks of the map I/O (needs `CAP_BPF`).
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
        let mut created = std::collections::HashMap::from([
            (MAP_CONNTRACK, lru::<CtKey, CtEntry>(MAP_CONNTRACK, ct_max)?),
            (
                MAP_AFFINITY,
                lru::<AffinityKey, Affinity>(MAP_AFFINITY, MAX_AFFINITY)?,
            ),
            (
                MAP_SOCK_REVNAT,
                lru::<SockKey, SockRevNat>(MAP_SOCK_REVNAT, MAX_SOCK_REVNAT)?,
            ),
            (MAP_FRAGS, lru::<FragKey, FragPorts>(MAP_FRAGS, MAX_FRAGS)?),
            (
                MAP_CONNTRACK6,
                lru::<CtKey6, CtEntry6>(MAP_CONNTRACK6, ct_max)?,
            ),
            (
                MAP_AFFINITY6,
                lru::<AffinityKey6, Affinity6>(MAP_AFFINITY6, MAX_AFFINITY)?,
            ),
            (
                MAP_SOCK_REVNAT6,
                lru::<SockKey6, SockRevNat6>(MAP_SOCK_REVNAT6, MAX_SOCK_REVNAT)?,
            ),
            (
                MAP_FRAGS6,
                lru::<FragKey6, FragPorts>(MAP_FRAGS6, MAX_FRAGS)?,
            ),
        ]);
        let flows = FlowMaps::take(|name| {
            created
                .remove(name)
                .ok_or(MapError::InvalidName { name: name.into() })
        });
        Ok(Self {
            frontends: HashMap::create(1024, 0).map_err(err)?,
            slots: HashMap::create(1024, 0).map_err(err)?,
            backends: HashMap::create(1024, 0).map_err(err)?,
            // BPF_F_NO_PREALLOC (1): the kernel refuses an LPM trie without it.
            source_ranges: LpmTrie::create(1024, 1).map_err(err)?,
            frontends6: HashMap::create(1024, 0).map_err(err)?,
            backends6: HashMap::create(1024, 0).map_err(err)?,
            source_ranges6: LpmTrie::create(1024, 1).map_err(err)?,
            flows: flows_io(flows)?,
        })
    }

    /// Takes the maps out of a loaded object (whose maps are pinned as they load).
    pub fn from_loaded(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        use anyhow::Context;
        let mut take = |name: &'static str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the object"))
        };
        fn typed<T>(
            name: &'static str,
            map: Map,
            convert: impl FnOnce(Map) -> Result<T, MapError>,
        ) -> anyhow::Result<T> {
            use anyhow::Context;
            convert(map).with_context(|| format!("map {name} has an unexpected layout"))
        }
        Ok(Self {
            frontends: typed(MAP_FRONTENDS, take(MAP_FRONTENDS)?, HashMap::try_from)?,
            slots: typed(MAP_SLOTS, take(MAP_SLOTS)?, HashMap::try_from)?,
            backends: typed(MAP_BACKENDS, take(MAP_BACKENDS)?, HashMap::try_from)?,
            source_ranges: typed(
                MAP_SOURCE_RANGES,
                take(MAP_SOURCE_RANGES)?,
                LpmTrie::try_from,
            )?,
            frontends6: typed(MAP_FRONTENDS6, take(MAP_FRONTENDS6)?, HashMap::try_from)?,
            backends6: typed(MAP_BACKENDS6, take(MAP_BACKENDS6)?, HashMap::try_from)?,
            source_ranges6: typed(
                MAP_SOURCE_RANGES6,
                take(MAP_SOURCE_RANGES6)?,
                LpmTrie::try_from,
            )?,
            flows: FlowMaps::take(|name| -> anyhow::Result<Map> { take(name) }).context(
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
            frontends6: HashMap::try_from(open(MAP_FRONTENDS6)?)?,
            backends6: HashMap::try_from(open(MAP_BACKENDS6)?)?,
            source_ranges6: LpmTrie::try_from(open(MAP_SOURCE_RANGES6)?)?,
            flows: FlowMaps::take(open)?,
        })
    }
}

/// A [`FlowMaps::take`] result with its error as an I/O error.
fn flows_io(flows: Result<FlowMaps, MapError>) -> std::io::Result<FlowMaps> {
    flows.map_err(|e| match e {
        MapError::SyscallError(s) => s.io_error,
        other => std::io::Error::other(other.to_string()),
    })
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

    /// One IPv6 frontend entry, `None` when absent.
    pub fn frontend6(&self, key: &FrontendKey6) -> Result<Option<Frontend>, DataplaneError> {
        get_opt(&self.frontends6, key, MAP_FRONTENDS6)
    }

    /// Writes an IPv6 conntrack entry (fixtures and benchmarks only, as [`Self::ct_insert`]).
    pub fn ct6_insert(&mut self, key: &CtKey6, entry: &CtEntry6) -> Result<(), DataplaneError> {
        self.flows
            .ct6
            .insert(key, entry, 0)
            .map_err(|e| DataplaneError::Put {
                map: MAP_CONNTRACK6,
                source: io(e),
            })
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

/// The service maps of one family, borrowed for a read.
pub struct FamilyMaps<'a, A>
where
    A: Family,
    FrontendKeyOf<A>: aya::Pod,
    BackendOf<A>: aya::Pod,
    SourceRangeKeyOf<A>: aya::Pod,
{
    pub frontends: &'a HashMap<MapData, FrontendKeyOf<A>, Frontend>,
    pub backends: &'a HashMap<MapData, u32, BackendOf<A>>,
    /// `None` when not pinned (an agent that predates it).
    pub source_ranges: Option<&'a LpmTrie<MapData, SourceRangeKeyOf<A>, u8>>,
}

impl<A> FamilyMaps<'_, A>
where
    A: Family,
    FrontendKeyOf<A>: aya::Pod,
    BackendOf<A>: aya::Pod,
    SourceRangeKeyOf<A>: aya::Pod,
{
    /// Adds the family's entries to `snap`.
    fn read_into(&self, snap: &mut MapSnapshot) -> Result<(), DataplaneError> {
        let (fe_name, be_name, r_name) = if A::BITS == 128 {
            (MAP_FRONTENDS6, MAP_BACKENDS6, MAP_SOURCE_RANGES6)
        } else {
            (MAP_FRONTENDS, MAP_BACKENDS, MAP_SOURCE_RANGES)
        };
        let read = |map: &'static str| move |e| DataplaneError::Read { map, source: io(e) };
        *A::snap_frontends_mut(snap) = self
            .frontends
            .iter()
            .collect::<Result<_, _>>()
            .map_err(read(fe_name))?;
        *A::snap_backends_mut(snap) = self
            .backends
            .iter()
            .collect::<Result<_, _>>()
            .map_err(read(be_name))?;
        if let Some(map) = self.source_ranges {
            *A::snap_ranges_mut(snap) = map
                .keys()
                .filter_map(|k| {
                    k.map(|k| SourceRangeOf::from_map_key(k.prefix_len(), k.data()))
                        .transpose()
                })
                .collect::<Result<_, _>>()
                .map_err(read(r_name))?;
        }
        Ok(())
    }
}

/// The contents of the service maps: IPv4 ones with the slots, and the IPv6 ones (`None`
/// when not pinned, as under an agent that predates them: read as empty).
pub fn read_service_maps(
    v4: FamilyMaps<'_, [u8; 4]>,
    slots: &HashMap<MapData, SlotKey, Slot>,
    v6: Option<FamilyMaps<'_, svc_common::Addr6>>,
) -> Result<MapSnapshot, DataplaneError> {
    let mut snap = MapSnapshot {
        slots: slots
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|e| DataplaneError::Read {
                map: MAP_SLOTS,
                source: io(e),
            })?,
        ..MapSnapshot::default()
    };
    v4.read_into(&mut snap)?;
    if let Some(v6) = v6 {
        v6.read_into(&mut snap)?;
    }
    Ok(snap)
}

fn lpm_key<A>(range: &SourceRangeOf<A>) -> Key<SourceRangeKeyOf<A>>
where
    A: svc_common::Addr + AsRef<[u8]> + AsMut<[u8]>,
    SourceRangeKeyOf<A>: aya::Pod,
{
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
            MapOp::PutBackend6 { id, backend } => self.backends6.insert(id, backend, 0),
            MapOp::PutFrontend6 { key, value } => self.frontends6.insert(key, value, 0),
            MapOp::DeleteFrontend6 { key } => self.frontends6.remove(&key),
            MapOp::DeleteBackend6 { id } => self.backends6.remove(&id),
            MapOp::PutSourceRange6 { range } => {
                self.source_ranges6
                    .insert(&lpm_key(&range), SOURCE_RANGE_ALLOW, 0)
            }
            MapOp::DeleteSourceRange6 { range } => self.source_ranges6.remove(&lpm_key(&range)),
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
            FamilyMaps {
                frontends: &self.frontends,
                backends: &self.backends,
                source_ranges: Some(&self.source_ranges),
            },
            &self.slots,
            Some(FamilyMaps {
                frontends: &self.frontends6,
                backends: &self.backends6,
                source_ranges: Some(&self.source_ranges6),
            }),
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
            frontends6: max(MAP_FRONTENDS6, self.frontends6.map())?,
            backends6: max(MAP_BACKENDS6, self.backends6.map())?,
            source_ranges6: max(MAP_SOURCE_RANGES6, self.source_ranges6.map())?,
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

    fn ct6_scan(
        &self,
        each: &mut dyn FnMut(&[CtKey6], &[CtEntry6]),
    ) -> Result<usize, DataplaneError> {
        batch::lookup_batch(self.flows.ct6.map().fd().as_fd(), each).map_err(|source| {
            DataplaneError::Read {
                map: MAP_CONNTRACK6,
                source,
            }
        })
    }

    fn ct6_get(&self, key: &CtKey6) -> Result<Option<CtEntry6>, DataplaneError> {
        get_opt(&self.flows.ct6, key, MAP_CONNTRACK6)
    }

    fn ct6_delete(&mut self, keys: &[CtKey6]) -> Result<usize, DataplaneError> {
        batch::delete_batch(self.flows.ct6.map().fd().as_fd(), keys).map_err(|source| {
            DataplaneError::Delete {
                map: MAP_CONNTRACK6,
                source,
            }
        })
    }

    fn affinity6_scan(
        &self,
        each: &mut dyn FnMut(&[AffinityKey6], &[Affinity6]),
    ) -> Result<usize, DataplaneError> {
        batch::lookup_batch(self.flows.affinity6.map().fd().as_fd(), each).map_err(|source| {
            DataplaneError::Read {
                map: MAP_AFFINITY6,
                source,
            }
        })
    }

    fn affinity6_delete(&mut self, keys: &[AffinityKey6]) -> Result<usize, DataplaneError> {
        batch::delete_batch(self.flows.affinity6.map().fd().as_fd(), keys).map_err(|source| {
            DataplaneError::Delete {
                map: MAP_AFFINITY6,
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
            fill(MAP_AFFINITY6, f.affinity6.map(), &|| {
                batch::lookup_batch::<AffinityKey6, Affinity6>(
                    f.affinity6.map().fd().as_fd(),
                    &mut |_, _| {},
                )
            })?,
            fill(MAP_SOCK_REVNAT6, f.sock_rev6.map(), &|| {
                batch::lookup_batch::<SockKey6, SockRevNat6>(
                    f.sock_rev6.map().fd().as_fd(),
                    &mut |_, _| {},
                )
            })?,
            fill(MAP_FRAGS6, f.frags6.map(), &|| {
                batch::lookup_batch::<FragKey6, FragPorts>(
                    f.frags6.map().fd().as_fd(),
                    &mut |_, _| {},
                )
            })?,
        ])
    }
}
