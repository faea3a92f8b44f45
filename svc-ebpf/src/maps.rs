//! Map definitions. Names, types and capacities all come from `svc-common`; the agent pins each
//! map under its name (`svc_common::MAP_*`).
use aya_ebpf::{
    btf_maps::{
        Array, ArrayOfMaps, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf,
    },
    macros::btf_map,
};
use svc_common::{
    Affinity, Affinity6, AffinityKey, AffinityKey6, Backend, Backend6, Config, CtEntry, CtEntry6,
    CtKey, CtKey6, DoomedPair, FragKey, FragKey6, FragPorts, Frontend, FrontendKey, FrontendKey6,
    RateWindow, Scratch, Slot, SlotKey, SockKey, SockKey6, SockRevNat, SockRevNat6, SourceRangeKey,
    SourceRangeKey6, TraceEvent, TraceFilter, MAX_AFFINITY, MAX_BACKENDS, MAX_CONNTRACK, MAX_FRAGS,
    MAX_FRONTENDS, MAX_SLOTS, MAX_SOCK_DOOMED, MAX_SOCK_REVNAT, MAX_SOURCE_RANGES, STATS_LEN,
    TRACE_RING_BYTES, TRACE_SLOTS,
};

// The ELF symbol names must equal `svc_common::MAP_*`; `tests` checks this against the object.
#[btf_map]
pub(crate) static SVC_FRONTENDS: HashMap<FrontendKey, Frontend, { MAX_FRONTENDS as usize }> =
    HashMap::new();

#[btf_map]
pub(crate) static SVC_SLOTS: HashMap<SlotKey, Slot, { MAX_SLOTS as usize }> = HashMap::new();

#[btf_map]
pub(crate) static SVC_BACKENDS: HashMap<u32, Backend, { MAX_BACKENDS as usize }> = HashMap::new();

/// `BPF_F_NO_COMMON_LRU`: per-CPU LRU lists. With the common list a new entry waits on its
/// CPU's pending list with the reference bit clear, and a shrink that finds only referenced
/// nodes evicts the tail regardless (kernel/bpf/bpf_lru_list.c: `__local_list_pop_pending`,
/// `__bpf_lru_list_shrink`); under churn a reply entry was seen evicted between a connection's
/// request and its answer. A per-CPU list puts a new entry at the head of its inactive list
/// (`bpf_percpu_lru_pop_free`). Each CPU then evicts within its own share of the capacity.
pub(crate) const BPF_F_NO_COMMON_LRU: usize = 2;

#[btf_map]
pub(crate) static SVC_CT: LruHashMap<
    CtKey,
    CtEntry,
    { MAX_CONNTRACK as usize },
    BPF_F_NO_COMMON_LRU,
> = LruHashMap::new();

#[btf_map]
pub(crate) static SVC_STATS: PerCpuArray<u64, { STATS_LEN as usize }> = PerCpuArray::new();

#[btf_map]
pub(crate) static SVC_CONFIG: Array<Config, 1> = Array::new();

#[btf_map]
pub(crate) static SVC_SOCK_REV: LruHashMap<SockKey, SockRevNat, { MAX_SOCK_REVNAT as usize }> =
    LruHashMap::new();

/// Removed (frontend, backend) UDP pairs for the socket iterator (`sockreap.rs`); empty
/// between the agent's runs.
#[btf_map]
pub(crate) static SVC_SOCK_DOOMED: HashMap<DoomedPair, u8, { MAX_SOCK_DOOMED as usize }> =
    HashMap::new();

#[btf_map]
pub(crate) static SVC_AFFINITY: LruHashMap<AffinityKey, Affinity, { MAX_AFFINITY as usize }> =
    LruHashMap::new();

#[btf_map]
pub(crate) static SVC_FRAGS: LruHashMap<FragKey, FragPorts, { MAX_FRAGS as usize }> =
    LruHashMap::new();

#[btf_map]
pub(crate) static SVC_RATELIMIT: PerCpuArray<RateWindow, 1> = PerCpuArray::new();

#[btf_map]
pub(crate) static SVC_SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// `loadBalancerSourceRanges`: (frontend id, client prefix) → `SOURCE_RANGE_ALLOW`. Written by
/// the agent, read only for new flows to frontends with `FRONTEND_F_SOURCE_RANGES`.
#[btf_map]
pub(crate) static SVC_SOURCE_RANGES: LpmTrie<SourceRangeKey, u8, { MAX_SOURCE_RANGES as usize }> =
    LpmTrie::new();

/// Bit `i` of entry 0: trace slot `i` is in use (`svc_common::MAP_TRACE_ON`).
#[btf_map]
pub(crate) static SVC_TRACE_ON: Array<u32, 1> = Array::new();

/// One filter per trace slot (`svc_common::TraceFilter`).
#[btf_map]
pub(crate) static SVC_TRACE_FILTERS: Array<TraceFilter, { TRACE_SLOTS as usize }> = Array::new();

/// Events lost per trace slot (per CPU) because the slot's ring was full.
#[btf_map]
pub(crate) static SVC_TRACE_LOST: PerCpuArray<u64, { TRACE_SLOTS as usize }> = PerCpuArray::new();

/// One ring per trace slot, created and read by its tracer; it holds `TraceEvent`s and
/// `TraceEvent6`s (`reserve_untyped`). The inner definition is the
/// template every ring must match (type and size: `bpf_map_meta_equal`).
#[btf_map]
pub(crate) static SVC_TRACE_RINGS: ArrayOfMaps<
    RingBuf<TraceEvent, { TRACE_RING_BYTES as usize }>,
    { TRACE_SLOTS as usize },
> = ArrayOfMaps::new();

// IPv6: one map per IPv4 map whose keys or values hold addresses, same capacities. The slots
// (`SVC_SLOTS`) are shared: frontend and backend ids are one space over both families.

#[btf_map]
pub(crate) static SVC_FRONTENDS6: HashMap<FrontendKey6, Frontend, { MAX_FRONTENDS as usize }> =
    HashMap::new();

#[btf_map]
pub(crate) static SVC_BACKENDS6: HashMap<u32, Backend6, { MAX_BACKENDS as usize }> = HashMap::new();

/// Per-CPU LRU lists for the reason given at [`SVC_CT`].
#[btf_map]
pub(crate) static SVC_CT6: LruHashMap<
    CtKey6,
    CtEntry6,
    { MAX_CONNTRACK as usize },
    BPF_F_NO_COMMON_LRU,
> = LruHashMap::new();

#[btf_map]
pub(crate) static SVC_AFFINITY6: LruHashMap<AffinityKey6, Affinity6, { MAX_AFFINITY as usize }> =
    LruHashMap::new();

#[btf_map]
pub(crate) static SVC_FRAGS6: LruHashMap<FragKey6, FragPorts, { MAX_FRAGS as usize }> =
    LruHashMap::new();

#[btf_map]
pub(crate) static SVC_SOURCE_RANGES6: LpmTrie<SourceRangeKey6, u8, { MAX_SOURCE_RANGES as usize }> =
    LpmTrie::new();

#[btf_map]
pub(crate) static SVC_SOCK_REV6: LruHashMap<SockKey6, SockRevNat6, { MAX_SOCK_REVNAT as usize }> =
    LruHashMap::new();

/// The IPv6 tc programs, by `programs6::PROG6_*`: the IPv4 program of each tc hook tail-calls
/// its IPv6 sibling for IPv6 frames. Filled by the agent after it loads the programs.
#[btf_map]
pub(crate) static SVC_PROGS6: ProgramArray<{ svc_common::PROGS6_LEN as usize }> =
    ProgramArray::new();

/// The IPv6 XDP program (`xdp6::svc_xdp6`, index 0): `svc_xdp` tail-calls it for IPv6 frames.
/// A program array takes programs of one type only (the first one put in fixes it,
/// `bpf_prog_map_compatible`), so the XDP program has an array of its own. Filled by the agent
/// after it loads the program.
#[btf_map]
pub(crate) static SVC_XDP_PROGS6: ProgramArray<{ svc_common::XDP_PROGS6_LEN as usize }> =
    ProgramArray::new();
