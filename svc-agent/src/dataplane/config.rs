//! `SVC_CONFIG` (the node settings the programs read) and the pinned copy of the conntrack
//! timeouts (`SVC_CT_TIMEOUTS`, for the tools that judge expiry as the datapath does).
use std::path::Path;

use anyhow::{Context, Result};
use aya::{
    maps::{Array, Map, MapData},
    Ebpf,
};
use svc_common::{Config, CtTimeouts, MAP_CONFIG};

use crate::datapath::TIMEOUTS_PIN;

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
    let path = bpffs.join(TIMEOUTS_PIN);
    let existing = MapData::from_pin(&path)
        .ok()
        .and_then(|d| Map::from_map_data(d).ok())
        .and_then(|m| Array::<MapData, CtTimeouts>::try_from(m).ok());
    let write = |array: &mut Array<MapData, CtTimeouts>| {
        array
            .set(0, timeouts, 0)
            .with_context(|| format!("writing {}", path.display()))
    };
    match existing {
        Some(mut array) => write(&mut array),
        None => {
            let _ = std::fs::remove_file(&path);
            let mut array = Array::<MapData, CtTimeouts>::create(1, 0)
                .context("creating the conntrack timeouts array")?;
            write(&mut array)?;
            array
                .pin(&path)
                .with_context(|| format!("pinning {}", path.display()))
        }
    }
}
