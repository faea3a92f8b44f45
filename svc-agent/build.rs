//! Embeds the eBPF object that `cargo xtask build-ebpf` leaves at `target/svc-ebpf.o`.
//! There is one way the object is built (the xtask) and one place it is taken from (here).
use std::path::Path;

fn main() {
    let object = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/svc-ebpf.o");
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.exists() {
        panic!(
            "{} is missing: run `cargo xtask build-ebpf` first (it builds the kernel programs \
             the agent embeds)",
            object.display()
        );
    }
    let object = object
        .canonicalize()
        .expect("canonical path of the eBPF object");
    println!("cargo:rustc-env=SVC_EBPF_OBJECT={}", object.display());
}
