//! svc-agent: keeps svc-lb's BPF maps equal to what the cluster's Services ask for.
//!
//! # Layout
//! - [`source`]: where objects come from. `manifests`: a directory of YAML (`--manifests`),
//!   re-read when it changes, with hand-written `Endpoints` mirrored to EndpointSlices.
//! - [`model`]: pure. Services + EndpointSlices + this node → the desired frontends and their
//!   backends, plus the problems found (object, field, why) for anything refused.
//! - [`budget`]: pure. Which Services fit into the service maps (a budget per Service, what
//!   is free); the rest are refused or held as programmed, and reported.
//! - [`reconcile`]: pure. What is programmed + what is desired → an ordered list of map
//!   operations that never exposes a half-built service (svc-common's update-order invariant).
//! - [`dataplane`]: the narrow trait map I/O goes through; `aya` implements it on the pinned
//!   maps, `fake` in memory (checking the invariant after every operation) for tests.
//! - [`cli`]: the command line (`svc-agent run …`), shared by the binary and the checks of
//!   the deploy manifests.
//! - [`conntrack`]: the conntrack garbage collector (its own thread) and the flushes that
//!   follow endpoint removal; the decisions are pure and table-tested.
//! - [`kpconfig`]: `--config FILE`, kube-proxy's `KubeProxyConfiguration` applied to the
//!   command line (pure, table-tested against kubeadm's and kind's ConfigMaps).
//! - [`health`]: kube-proxy's `/healthz` and `/livez` (whether changes reach the maps in time)
//!   and the `healthCheckNodePort` servers.
//! - [`inspect`]: `svc-agent inspect …` / `explain`: the pinned maps read back for people and
//!   tools, and what the datapath would do with a flow (a pure mirror of its decision).
//! - `loader` / `attach` (binary side): load and pin the programs and maps, attach them to pod
//!   veths as they appear (netlink).
pub mod cli;
pub mod conntrack;
pub mod datapath;
pub mod dataplane;
pub mod health;
pub mod ifwatch;
pub mod inspect;
pub mod kpconfig;
pub mod metrics;
pub mod run;
pub mod snat;
pub mod snat_ports;
pub mod source;
pub mod trace;

// The pure core, under the names the agent's modules have always used.
pub use svc_core::{budget, model, reconcile};

// The binary (main.rs) sets up logging with it; Cargo has no binary-only dependencies.
use tracing_subscriber as _;
