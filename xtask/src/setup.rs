//! Idempotent installation of prerequisites. Each step checks first and says what it does.
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::run;

/// Debian packages the tests, demo and benchmarks use, with the command that proves each.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("ethtool", "ethtool"),
    ("tcpdump", "tcpdump"),
    ("bpftool", "bpftool"),
    ("iptables", "iptables"),
    ("nftables", "nft"),
];

pub(crate) fn all() -> Result<()> {
    ebpf_toolchain()?;
    apt_install_missing(PACKAGES)
}

/// Installs those of `pkgs` (package, command that proves it) whose command is missing.
pub(crate) fn apt_install_missing(pkgs: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .filter(|(_, bin)| !have(bin))
        .map(|(pkg, _)| *pkg)
        .collect();
    apt_install(&missing)
}

fn have(bin: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            &format!("command -v {bin} || test -x /usr/sbin/{bin}"),
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    if pkgs.is_empty() {
        return Ok(());
    }
    eprintln!("xtask setup: installing Debian packages {pkgs:?}");
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Nightly with `rust-src`, and a `bpf-linker` linked against nightly's LLVM major version.
pub(crate) fn ebpf_toolchain() -> Result<()> {
    let out = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()?;
    if !String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("nightly"))
    {
        eprintln!("xtask setup: installing the nightly toolchain");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()?;
    if !String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        eprintln!("xtask setup: adding rust-src to nightly (needed for -Z build-std=core)");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let llvm = nightly_llvm_major()?;
    let llvm_pkg = format!("llvm-{llvm}-dev");
    let dpkg = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", &llvm_pkg])
        .output()?;
    if !String::from_utf8_lossy(&dpkg.stdout).contains("install ok installed") {
        apt_install(&[&llvm_pkg])?;
    }
    if !bpf_linker_matches(llvm) {
        eprintln!("xtask setup: building bpf-linker against LLVM {llvm} (about 90 s)");
        let path = format!(
            "/usr/lib/llvm-{llvm}/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run(crate::clean_cargo()
            .args([
                "install",
                "--locked",
                "--force",
                "bpf-linker",
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{llvm}")])
            .env("PATH", path))
        .context("installing bpf-linker")?;
        if !bpf_linker_matches(llvm) {
            bail!("bpf-linker was installed but is not linked against LLVM {llvm}");
        }
    }
    Ok(())
}

fn nightly_llvm_major() -> Result<u32> {
    let out = Command::new("rustc")
        .args(["+nightly", "-vV"])
        .output()
        .context("rustc +nightly")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc +nightly -vV printed no LLVM version")?;
    version
        .split('.')
        .next()
        .unwrap_or_default()
        .parse()
        .context("parsing the LLVM major version")
}

/// bpf-linker links LLVM dynamically; its libLLVM must be the nightly's major version.
fn bpf_linker_matches(llvm: u32) -> bool {
    let Ok(path) = Command::new("sh")
        .args(["-c", "command -v bpf-linker"])
        .output()
    else {
        return false;
    };
    let path = String::from_utf8_lossy(&path.stdout).trim().to_string();
    if path.is_empty() {
        return false;
    }
    Command::new("ldd")
        .arg(&path)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("libLLVM.so.{llvm}")))
        .unwrap_or(false)
}
