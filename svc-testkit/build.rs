//! Tests that cannot run here are reported as ignored, never passed without running.
//!
//! - `cfg(svc_unprivileged)`: this build runs without root. The root-only tests (network
//!   namespaces, `BPF_PROG_TEST_RUN`) carry `#[cfg_attr(svc_unprivileged, ignore = "needs
//!   root (…)")]`, so such a build lists them as ignored. A build made as root and run without
//!   it fails them instead (`svc_testkit::root::require_root`).
//! - `cfg(svc_no_kubectl)`: no `kubectl` on `PATH` (`cargo xtask setup` does not install
//!   it), so the tests that drive it are ignored; they fail if it is gone when they run.
use std::{os::unix::fs::PermissionsExt as _, path::PathBuf};

fn main() {
    println!("cargo:rustc-check-cfg=cfg(svc_unprivileged)");
    println!("cargo:rustc-check-cfg=cfg(svc_no_kubectl)");
    // A build by another user (su, sudo) decides again.
    println!("cargo:rerun-if-env-changed=USER");
    println!("cargo:rerun-if-env-changed=SUDO_USER");
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("cargo:rustc-cfg=svc_unprivileged");
    }
    match kubectl() {
        // Removed or replaced: decide again.
        Some(path) => println!("cargo:rerun-if-changed={}", path.display()),
        None => {
            println!("cargo:rustc-cfg=svc_no_kubectl");
            println!(
                "cargo:warning=no kubectl on PATH: the tests that drive kubectl are reported \
                 as ignored (after installing it: touch svc-testkit/build.rs)"
            );
        }
    }
}

/// The `kubectl` a test's `Command::new("kubectl")` would run.
fn kubectl() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("kubectl"))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
