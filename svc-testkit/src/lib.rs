//! What svc-lb's tests and benchmarks are built from: [`topology`] (network namespaces,
//! veths, the two-node underlay), [`agent`] (agent processes and their pins), [`probe`] and
//! [`traffic`] (the `svc-probe` tool's semantics; [`probe_cli`] its command line), [`capture`] (underlay captures with every
//! checksum verified), [`apiserver`] (the fake Kubernetes API server), [`fixtures`] (the
//! `BPF_PROG_TEST_RUN` vocabulary: packets, expected outputs, a private datapath), [`fuzz`]
//! (the datapath fuzzer) and [`root`] (root-only tests reported, never passed silently).
pub mod agent;
pub mod apiserver;
pub mod capture;
pub mod fixtures;
pub mod fuzz;
pub mod probe;
pub mod probe_cli;
pub mod root;
pub mod topology;
pub mod traffic;
