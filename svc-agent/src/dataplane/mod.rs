//! Map I/O on the pinned maps: [`pinned::PinnedMaps`] implements svc-core's [`Dataplane`]
//! contract (re-exported here with its types), [`batch`] the batched walks aya 0.14 lacks.
pub use svc_core::dataplane::*;

pub mod batch;
pub mod config;
pub mod pinned;
pub mod read;
pub mod sockreap;
pub mod trace;
