//! Map definitions. Names, types and capacities all come from `svc-common`; the agent pins each
//! map under its name (`svc_common::MAP_*`).
use aya_ebpf::{
    btf_maps::{HashMap, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use svc_common::{
    Backend, CtEntry, CtKey, Frontend, FrontendKey, Slot, SlotKey, MAX_BACKENDS, MAX_CONNTRACK,
    MAX_FRONTENDS, MAX_SLOTS, STATS_LEN,
};

// The ELF symbol names must equal `svc_common::MAP_*`; `tests` checks this against the object.
#[btf_map]
pub static SVC_FRONTENDS: HashMap<FrontendKey, Frontend, { MAX_FRONTENDS as usize }> =
    HashMap::new();

#[btf_map]
pub static SVC_SLOTS: HashMap<SlotKey, Slot, { MAX_SLOTS as usize }> = HashMap::new();

#[btf_map]
pub static SVC_BACKENDS: HashMap<u32, Backend, { MAX_BACKENDS as usize }> = HashMap::new();

#[btf_map]
pub static SVC_CT: LruHashMap<CtKey, CtEntry, { MAX_CONNTRACK as usize }> = LruHashMap::new();

#[btf_map]
pub static SVC_STATS: PerCpuArray<u64, { STATS_LEN as usize }> = PerCpuArray::new();
