//! svc-core: svc-lb's decisions, pure. No BPF, no async runtime, no eBPF object: it builds and
//! tests on stable Rust (`cargo test -p svc-core`).
//!
//! The pipeline, stage by stage (docs/ARCHITECTURE.md draws it):
//! - [`source::manifests`]: a directory of YAML → [`model::Objects`] (with the API server's
//!   defaulting and NodePort allocation, and `Endpoints` mirrored to EndpointSlices).
//! - [`store`]: what the API-server watchers report ([`store::Delta`]) kept as
//!   [`model::Objects`], with which Services each delta touched.
//! - [`model`]: Services + EndpointSlices + this node → the desired frontends and their
//!   backends, plus the problems found (object, field, why) for anything refused.
//! - [`budget`]: which Services fit into the service maps; the rest are refused or held as
//!   programmed, and reported.
//! - [`reconcile`]: what is programmed + what is desired → an ordered list of map operations
//!   that never exposes a half-built Service (svc-common's update-order invariant).
//! - [`dataplane`]: the narrow trait map I/O goes through, and [`dataplane::fake`], the
//!   in-memory implementation that checks the invariant after every operation. The pinned-map
//!   implementation lives in `svc-agent` (it needs aya).
// The unit-test build also sees the dev-dependencies only the integration tests use.
#![cfg_attr(test, allow(unused_crate_dependencies))]
pub mod budget;
pub mod dataplane;
pub mod engine;
pub mod explain;
pub mod family;
pub mod model;
pub mod names;
pub mod reconcile;
pub mod source;
pub mod store;
