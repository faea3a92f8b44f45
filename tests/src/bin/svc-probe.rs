//! `svc-probe`, the traffic tool the network tests run in pods (svc_testkit::probe_cli). The
//! binary is this package's so the tests get its path from Cargo (`CARGO_BIN_EXE_svc-probe`).
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
fn main() -> anyhow::Result<()> {
    svc_testkit::probe_cli::main()
}
