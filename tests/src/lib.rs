//! svc-lb's integration tests live in `tests/` beside this file: fixtures
//! (`BPF_PROG_TEST_RUN`), network tests in namespaces, the fuzzer, torn updates, the verifier
//! budget, the fake API server's protocol and the deploy manifests. What they are built from
//! — topology, processes, capture, the fake API server, the fixture vocabulary — is the
//! `svc-testkit` crate; the benchmarks are `svc-bench`. This library is empty: a package
//! needs a target of its own besides its tests.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
