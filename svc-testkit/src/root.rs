//! Root-only tests: reported as ignored where the tests are built without root (`tests/build.rs`
//! sets `cfg(svc_unprivileged)`; each such test carries
//! `#[cfg_attr(svc_unprivileged, ignore = "needs root (…)")]`), and failed, never passed, when
//! they run without root anyway.

/// True when running as root (namespaces, veths, tcpdump and BPF program loads need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Panics unless running as root; `needs` says what for ("network namespaces").
///
/// Reached without root only by a test built as root and run as another user, or run with
/// `--ignored` as non-root: either way the test must fail, not pass having checked nothing.
#[track_caller]
pub fn require_root(needs: &str) {
    if is_root() {
        return;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if cfg!(svc_unprivileged) {
        panic!(
            "this test needs root ({needs}) and runs as uid {uid}: run it as root (built \
             without root, it is reported as ignored unless run with --ignored)"
        );
    }
    panic!(
        "this test needs root ({needs}) and runs as uid {uid}: run it as root, or build the \
         tests as this user, which reports the root-only tests as ignored (tests/build.rs)"
    );
}
