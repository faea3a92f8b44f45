//! An agent upgraded over pins an older release left (needs root): a pinned map whose layout
//! differs from this release's (here `SVC_CONFIG` with the 16-byte value `Config` had before
//! IPv6) is re-created instead of stopping the agent at the verifier, and a pinned map whose
//! layout matches keeps its entries. `SVC_STATS` of another length (one hook fewer, as before
//! the IPv6 XDP program's `xdp6`) is re-created too: its length is one counter per (hook,
//! reason), so the shorter map would drop the new hook's counters.
#![allow(unused_crate_dependencies)]
use std::{path::Path, time::Duration};

use aya::maps::{HashMap, MapData, MapInfo};
use svc_common::{
    CtEntry, CtKey, MAP_CONFIG, MAP_CONNTRACK, MAP_STATS, MAX_CONNTRACK, PROTO_TCP, REASON_COUNT,
    STATS_LEN,
};
use svc_testkit::{
    agent::{Agent, ManifestDir},
    topology::{require_root, Topology, TopologySpec},
};

/// `BPF_MAP_TYPE_ARRAY`, `BPF_MAP_TYPE_PERCPU_ARRAY`, `BPF_MAP_TYPE_LRU_HASH`.
const ARRAY: u32 = 2;
const PERCPU_ARRAY: u32 = 6;
const LRU_HASH: u32 = 9;
/// `BPF_F_NO_COMMON_LRU`, as `SVC_CT` is created.
const NO_COMMON_LRU: u32 = 2;

fn pin_map(dir: &Path, name: &str, (ty, key, value, max, flags): (u32, u32, u32, u32, u32)) {
    let obj = aya_obj::Map::new_from_params(ty, key, value, max, flags);
    let map = MapData::create(obj, name, None).unwrap_or_else(|e| panic!("creating {name}: {e}"));
    map.pin(dir.join(name))
        .unwrap_or_else(|e| panic!("pinning {name}: {e}"));
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn pins_of_another_layout_are_recreated_and_matching_ones_kept() {
    require_root();
    let t = Topology::build(&TopologySpec::new().node(&["p1"])).expect("topology");
    // Where Agent::start puts node 1's pins.
    let dir = Path::new("/sys/fs/bpf").join(format!("{}n1", t.prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let ct_layout = (
        LRU_HASH,
        size_of::<CtKey>() as u32,
        size_of::<CtEntry>() as u32,
        MAX_CONNTRACK,
        NO_COMMON_LRU,
    );
    pin_map(&dir, MAP_CONFIG, (ARRAY, 4, 16, 1, 0));
    pin_map(&dir, MAP_CONNTRACK, ct_layout);
    let old_stats_len = STATS_LEN - REASON_COUNT;
    pin_map(&dir, MAP_STATS, (PERCPU_ARRAY, 4, 8, old_stats_len, 0));
    let key = CtKey::new([10, 244, 1, 2], [10, 96, 0, 10], 40000, 80, PROTO_TCP);
    {
        let data = MapData::from_pin(dir.join(MAP_CONNTRACK)).unwrap();
        let mut ct: HashMap<MapData, CtKey, CtEntry> =
            HashMap::try_from(aya::maps::Map::LruHashMap(data)).unwrap();
        let entry: CtEntry = bytemuck::Zeroable::zeroed();
        ct.insert(key, entry, 0).unwrap();
    }

    let m = ManifestDir::new(&t).unwrap();
    let mut agent = Agent::start(&t, 1, m.path(), &[]).expect("starting the agent");
    agent
        .wait_healthy(&t, Duration::from_secs(60))
        .expect("an agent upgraded over pins of another layout must start");
    let config = MapInfo::from_pin(dir.join(MAP_CONFIG)).unwrap();
    assert_eq!(
        config.value_size(),
        size_of::<svc_common::Config>() as u32,
        "SVC_CONFIG re-created with this release's layout"
    );
    let stats = MapInfo::from_pin(dir.join(MAP_STATS)).unwrap();
    assert_eq!(
        stats.max_entries(),
        STATS_LEN,
        "SVC_STATS pinned with {old_stats_len} counters (one hook fewer) must be re-created \
         with this release's {STATS_LEN}"
    );
    let data = MapData::from_pin(dir.join(MAP_CONNTRACK)).unwrap();
    let ct: HashMap<MapData, CtKey, CtEntry> =
        HashMap::try_from(aya::maps::Map::LruHashMap(data)).unwrap();
    assert!(
        ct.get(&key, 0).is_ok(),
        "SVC_CT had this release's layout: its entries must be kept"
    );
}
