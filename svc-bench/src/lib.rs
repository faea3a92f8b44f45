//! svc-lb's benchmarks (`cargo xtask bench`): the binaries under `src/bin` measure the
//! datapath per packet (`bench`), the control plane (`bench_control`) and traffic end to end
//! against kube-proxy's own rules (`bench_e2e`); [`kubeproxy`] generates those rules. They
//! print figures and never assert on time.
// The package's dependencies are its benchmark binaries'; the library is the rule generator.
#![allow(unused_crate_dependencies)]
pub mod kubeproxy;
