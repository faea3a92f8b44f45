//! [`Dataplane`] on the real (pinned) BPF maps.
use aya::maps::{HashMap, MapData};
use svc_common::{
    Backend, Frontend, FrontendKey, Slot, SlotKey, MAP_BACKENDS, MAP_FRONTENDS, MAP_SLOTS,
};

use super::{Dataplane, DataplaneError, MapOp, MapSnapshot};

/// The three service maps of a loaded (or adopted) datapath.
pub struct PinnedMaps {
    pub frontends: HashMap<MapData, FrontendKey, Frontend>,
    pub slots: HashMap<MapData, SlotKey, Slot>,
    pub backends: HashMap<MapData, u32, Backend>,
}

fn io(e: aya::maps::MapError) -> std::io::Error {
    match e {
        aya::maps::MapError::SyscallError(s) => s.io_error,
        aya::maps::MapError::KeyNotFound => std::io::Error::from(std::io::ErrorKind::NotFound),
        other => std::io::Error::other(other.to_string()),
    }
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
        let read = |map: &'static str| move |e| DataplaneError::Read { map, source: io(e) };
        Ok(MapSnapshot {
            frontends: self
                .frontends
                .iter()
                .collect::<Result<_, _>>()
                .map_err(read(MAP_FRONTENDS))?,
            slots: self
                .slots
                .iter()
                .collect::<Result<_, _>>()
                .map_err(read(MAP_SLOTS))?,
            backends: self
                .backends
                .iter()
                .collect::<Result<_, _>>()
                .map_err(read(MAP_BACKENDS))?,
        })
    }
}
