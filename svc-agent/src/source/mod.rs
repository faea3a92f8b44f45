//! Where Kubernetes objects come from.
//!
//! Every source produces the same [`Objects`] (Services and EndpointSlices keyed by
//! namespace/name, plus the problems it met), so the model never knows which one ran:
//! - [`manifests`] (svc-core): a directory of YAML (`--manifests DIR`), made to look as if an
//!   API server had accepted it (ClusterIPs and NodePorts allocated, hand-written `Endpoints`
//!   mirrored to EndpointSlices), deterministically so that every node reading the same
//!   directory agrees.
//! - [`kube`]: the API server, through kube-rs watchers (Services, EndpointSlices, this Node),
//!   delivered as deltas into svc-core's `Store`, so a change re-plans only the Services it
//!   touches.
pub mod kube;

pub use svc_core::model::Objects;
pub use svc_core::source::manifests;
