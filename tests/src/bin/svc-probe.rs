//! `svc-probe`, the traffic tool the network tests run in pods (svc_testkit::probe_cli). The
//! binary is this package's so the tests get its path from Cargo (`CARGO_BIN_EXE_svc-probe`).
fn main() -> anyhow::Result<()> {
    svc_testkit::probe_cli::main()
}
