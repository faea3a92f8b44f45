//! `SVC_CONFIG` (the node settings the programs read) and the pinned copy of the conntrack
//! timeouts (`SVC_CT_TIMEOUTS`, for the tools that judge expiry as the datapath does) and of the
//! SNAT ports (`SVC_SNAT_PORTS`, for `explain`).
use std::path::Path;

use anyhow::{Context, Result};
use aya::{
    maps::{Array, Map, MapData},
    Ebpf,
};
use svc_common::{Config, CtTimeouts, SnatPorts, MAP_CONFIG};

use crate::datapath::{SNAT_PORTS_PIN, TIMEOUTS_PIN};

/// `SVC_CONFIG`, one entry.
pub struct ConfigMap(Array<MapData, Config>);

impl ConfigMap {
    /// Takes the map out of a loaded object.
    pub fn from_loaded(ebpf: &mut Ebpf) -> Result<Self> {
        let map = ebpf
            .take_map(MAP_CONFIG)
            .with_context(|| format!("map {MAP_CONFIG} missing from the object"))?;
        Array::try_from(map)
            .map(Self)
            .with_context(|| format!("map {MAP_CONFIG} has an unexpected layout"))
    }

    /// Writes `config` unless the map holds it already; returns whether it changed.
    pub fn write(&mut self, config: Config) -> Result<bool> {
        if self.0.get(&0, 0).ok() == Some(config) {
            return Ok(false);
        }
        self.0
            .set(0, config, 0)
            .with_context(|| format!("writing {MAP_CONFIG}"))?;
        Ok(true)
    }
}

/// Writes `timeouts` to the [`TIMEOUTS_PIN`] array, creating (or, if it has another layout,
/// replacing) it.
pub fn pin_timeouts(bpffs: &Path, timeouts: &CtTimeouts) -> Result<()> {
    pin_value(
        bpffs,
        TIMEOUTS_PIN,
        timeouts,
        "the conntrack timeouts array",
    )
}

/// Writes `ports` to the [`SNAT_PORTS_PIN`] array, as [`pin_timeouts`].
pub fn pin_snat_ports(bpffs: &Path, ports: &SnatPorts) -> Result<()> {
    pin_value(bpffs, SNAT_PORTS_PIN, ports, "the SNAT ports array")
}

/// Writes `value` to the one-entry array pinned as `name`, creating (or, if it has another
/// layout, replacing) it.
fn pin_value<T: aya::Pod>(bpffs: &Path, name: &str, value: &T, what: &str) -> Result<()> {
    let path = bpffs.join(name);
    let existing = MapData::from_pin(&path)
        .ok()
        .and_then(|d| Map::from_map_data(d).ok())
        .and_then(|m| Array::<MapData, T>::try_from(m).ok());
    let write = |array: &mut Array<MapData, T>| {
        array
            .set(0, value, 0)
            .with_context(|| format!("writing {}", path.display()))
    };
    match existing {
        Some(mut array) => write(&mut array),
        None => {
            let _ = std::fs::remove_file(&path);
            let mut array =
                Array::<MapData, T>::create(1, 0).with_context(|| format!("creating {what}"))?;
            write(&mut array)?;
            array
                .pin(&path)
                .with_context(|| format!("pinning {}", path.display()))
        }
    }
}
