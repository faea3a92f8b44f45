//! `cargo xtask test-kernels`: the fixture tier (every `tests/tests/fixtures_*.rs`, the
//! programs verified and run through `BPF_PROG_TEST_RUN`) on this machine's kernel and on
//! Debian 12's Linux 6.1, the oldest kernel svc-lb supports (README, "Kernels").
//!
//! The 6.1 kernel is Debian's own package (`linux-image-6.1.0-N-amd64`, fetched with
//! `apt-get download`, never installed on this machine). It boots under qemu with software
//! emulation (TCG: no KVM is needed, none is assumed) from a small initramfs of
//! `busybox-static` and the kernel's own modules (virtio, 9p, veth, clsact, cls_bpf). The guest
//! mounts this machine's root filesystem read-only over 9p (virtio), so the test binaries,
//! the eBPF object and the tools they call are exactly the ones built here, then gets fresh
//! `tmpfs`, `proc`, `sysfs`, `bpf` and `cgroup2` mounts of its own and runs the binaries as
//! root. Results come back through a second, writable 9p share under `target/test-kernels/`.
//! The guest has no network device: nothing it runs can send a packet off the VM.
//!
//! What is cached under `target/test-kernels/debian-6.1/`: the package, the unpacked kernel and
//! modules, the initramfs. Delete the folder to fetch the newest 6.1 again.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{clean_cargo, run};

/// Modules the guest loads, in order (each with what `modules.dep` says it needs).
const GUEST_MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "veth",
    "sch_ingress",
    "cls_bpf",
];

/// The guest's `/init`. `svc_out=` on the kernel command line names the results folder,
/// which is the same path inside the guest as here.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in MODULES; do modprobe "$m" || echo "svc-vm: modprobe $m failed"; done
out=$(sed 's/.*svc_out=\([^ ]*\).*/\1/' /proc/cmdline)
h=/host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 hostroot $h || echo "svc-vm: no host root"
mount -t proc proc $h/proc
mount -t sysfs sys $h/sys
mount -t devtmpfs dev $h/dev
mount -t tmpfs tmp $h/tmp
mount -t tmpfs run $h/run
mount -t bpf bpf $h/sys/fs/bpf
mount -t cgroup2 cgroup2 $h/sys/fs/cgroup
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 out $h$out || echo "svc-vm: no results share"
chroot $h /bin/sh $out/run.sh
echo "svc-vm: run.sh exited $?"
poweroff -f
"#;

/// One kernel's results: per test binary, (passed, failed, exit code).
type Results = BTreeMap<String, (u32, u32, i32)>;

pub(crate) fn test_kernels(root: &Path, host: bool, vm: bool, filter: &[String]) -> Result<()> {
    crate::setup::apt_install_missing(&[
        ("qemu-system-x86", "qemu-system-x86_64"),
        ("busybox-static", "busybox"),
    ])?;
    run(clean_cargo().args(["build", "--workspace", "--bins"]))?;
    let bins = fixture_binaries()?;
    let mut report = Vec::new();
    if host {
        let uname = uname_r()?;
        eprintln!("xtask test-kernels: the fixture tier on this machine's kernel ({uname})");
        let started = Instant::now();
        let mut results = Results::new();
        for (name, exe) in &bins {
            let out = Command::new(exe)
                .args(filter)
                .current_dir(root.join("tests"))
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("running {}", exe.display()))?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            print!("{text}");
            results.insert(name.clone(), parse(&text, out.status.code().unwrap_or(-1)));
        }
        report.push((
            format!("this machine ({uname})"),
            results,
            started.elapsed(),
        ));
    }
    if vm {
        let kernel = debian_61(root)?;
        eprintln!(
            "xtask test-kernels: the fixture tier on Debian's {} under qemu (TCG)",
            kernel.release
        );
        let started = Instant::now();
        let results = run_in_vm(root, &kernel, &bins, filter)?;
        report.push((
            format!("Debian {} (qemu)", kernel.release),
            results,
            started.elapsed(),
        ));
    }
    let (mut passed, mut failed) = (0, 0);
    let mut bad = Vec::new();
    println!("\nxtask test-kernels: the fixture tier");
    for (kernel, results, took) in &report {
        println!("  {kernel}, {:.0} s:", took.as_secs_f64());
        for (bin, (p, f, code)) in results {
            println!("    {bin:<24} {p:>3} passed {f:>3} failed  exit {code}");
            passed += p;
            failed += f;
            // A binary that ran no test, or died before its summary, counts as failed.
            if *code != 0 || (*p == 0 && filter.is_empty()) {
                bad.push(format!("{kernel}: {bin} (exit {code}, {p} passed)"));
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if !bad.is_empty() {
        bail!("the fixture tier failed on: {}", bad.join("; "));
    }
    Ok(())
}

/// The `tests` crate's fixture binaries, built: name → executable.
fn fixture_binaries() -> Result<BTreeMap<String, PathBuf>> {
    let out = clean_cargo()
        .args([
            "test",
            "--package",
            "tests",
            "--test",
            "fixtures_*",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("building the fixture tests")?;
    if !out.status.success() {
        bail!("building the fixture tests failed: {}", out.status);
    }
    let mut bins = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            if name.starts_with("fixtures_") {
                bins.insert(name.to_owned(), PathBuf::from(exe));
            }
        }
    }
    if bins.is_empty() {
        bail!("no fixture test binaries were built");
    }
    Ok(bins)
}

/// (passed, failed, exit code) from a libtest binary's output.
fn parse(text: &str, code: i32) -> (u32, u32, i32) {
    let (mut p, mut f) = (0, 0);
    for line in text.lines().filter(|l| l.starts_with("test result:")) {
        let n = |word: &str| {
            line.split(';')
                .find(|part| part.trim_end().ends_with(word))
                .and_then(|part| part.split_whitespace().rev().nth(1))
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0)
        };
        p += n("passed");
        f += n("failed");
    }
    (p, f, code)
}

fn uname_r() -> Result<String> {
    let out = Command::new("uname")
        .arg("-r")
        .output()
        .context("uname -r")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// An unpacked Debian kernel with its initramfs.
struct Kernel {
    release: String,
    vmlinuz: PathBuf,
    initrd: PathBuf,
}

/// Debian 12's newest `linux-image-6.1.0-N-amd64`, fetched and unpacked once.
fn debian_61(root: &Path) -> Result<Kernel> {
    let dir = root.join("target/test-kernels/debian-6.1");
    std::fs::create_dir_all(&dir)?;
    let pkg = newest_61_package()?;
    let release = pkg.trim_start_matches("linux-image-").to_owned();
    let unpacked = dir.join("root");
    let vmlinuz = unpacked.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.exists() {
        eprintln!("xtask test-kernels: fetching {pkg}");
        run(Command::new("apt-get")
            .args(["download", &pkg])
            .current_dir(&dir))?;
        let deb = std::fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pkg}_")))
            })
            .with_context(|| format!("apt-get download left no {pkg}_*.deb"))?;
        let _ = std::fs::remove_dir_all(&unpacked);
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        std::fs::remove_file(&deb)?;
    }
    let initrd = dir.join(format!("initrd-{release}.gz"));
    if !initrd.exists() {
        build_initrd(&unpacked, &release, &dir, &initrd)?;
    }
    Ok(Kernel {
        release,
        vmlinuz,
        initrd,
    })
}

/// The newest `linux-image-6.1.0-N-amd64` Debian's package lists know (the unsigned image,
/// which boots without a shim under qemu's default firmware).
fn newest_61_package() -> Result<String> {
    let search = || {
        Command::new("apt-cache")
            .args([
                "search",
                "--names-only",
                r"^linux-image-6\.1\.0-[0-9]+-amd64$",
            ])
            .output()
    };
    let mut out = search().context("apt-cache search")?;
    if out.stdout.is_empty() {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        out = search().context("apt-cache search")?;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .max_by_key(|name| {
            name.trim_start_matches("linux-image-6.1.0-")
                .trim_end_matches("-amd64")
                .parse::<u32>()
                .unwrap_or(0)
        })
        .map(str::to_owned)
        .context("Debian's package lists name no linux-image-6.1.0-N-amd64 (a Debian 12 machine has them)")
}

/// An initramfs of busybox and [`GUEST_MODULES`] with their dependencies.
fn build_initrd(unpacked: &Path, release: &str, dir: &Path, initrd: &Path) -> Result<()> {
    let busybox = which("busybox")?;
    let staging = dir.join("initrd");
    let _ = std::fs::remove_dir_all(&staging);
    for d in ["bin", "dev", "proc", "sys", "host"] {
        std::fs::create_dir_all(staging.join(d))?;
    }
    std::fs::copy(&busybox, staging.join("bin/busybox"))?;
    let modules = unpacked.join("lib/modules").join(release);
    // The package ships no modules.dep (depmod runs when it is installed): make one.
    run(Command::new(&busybox)
        .args(["depmod", "-b"])
        .arg(unpacked)
        .arg(release))?;
    let dep = std::fs::read_to_string(modules.join("modules.dep"))?;
    let guest_modules = staging.join("lib/modules").join(release);
    for name in GUEST_MODULES {
        let line = dep
            .lines()
            .find(|l| {
                l.split(':')
                    .next()
                    .is_some_and(|f| f.ends_with(&format!("/{name}.ko")))
            })
            .with_context(|| format!("module {name} is not in {release}"))?;
        let (module, deps) = line.split_once(':').expect("found by ':'");
        for file in std::iter::once(module).chain(deps.split_whitespace()) {
            let to = guest_modules.join(file);
            std::fs::create_dir_all(to.parent().expect("a module path has a folder"))?;
            std::fs::copy(modules.join(file), &to)?;
        }
    }
    run(Command::new(&busybox)
        .args(["depmod", "-b"])
        .arg(&staging)
        .arg(release))?;
    let init = staging.join("init");
    std::fs::write(&init, INIT.replace("MODULES", &GUEST_MODULES.join(" ")))?;
    run(Command::new("chmod").arg("+x").arg(&init))?;
    // `busybox cpio -o -H newc` of the staging folder, gzipped: the initramfs format.
    let script = format!(
        "cd '{}' && find . | '{}' cpio -o -H newc | gzip -1 > '{}'",
        staging.display(),
        busybox.display(),
        initrd.display()
    );
    run(Command::new("sh").args(["-c", &script]))
}

fn which(bin: &str) -> Result<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .output()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if path.is_empty() {
        bail!("{bin} not found");
    }
    Ok(path.into())
}

/// Boots `kernel` and runs every fixture binary in it; the `fixtures_conntrack*` ones last (they
/// write entries older than the longest timeout they test, so they need minutes of uptime).
fn run_in_vm(
    root: &Path,
    kernel: &Kernel,
    bins: &BTreeMap<String, PathBuf>,
    filter: &[String],
) -> Result<Results> {
    let out = root.join("target/test-kernels/out");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    // Every `fixtures_conntrack*` binary (the conntrack fixtures are split over several) runs
    // after the others; the sort is stable, so each group keeps its name order.
    let is_conntrack = |name: &str| name.starts_with("fixtures_conntrack");
    let mut order: Vec<_> = bins.iter().collect();
    order.sort_by_key(|(name, _)| is_conntrack(name));
    let mut script = format!("cd '{}'\nuname -r\n", root.join("tests").display());
    let args: Vec<String> = filter.iter().map(|a| format!("'{a}'")).collect();
    let mut waited = false;
    for (name, exe) in &order {
        if is_conntrack(name) && !waited {
            // The fixtures_conntrack* binaries assert 260 s of uptime (timeouts_for_this_machine
            // in ct_common); waiting once, before the first of them, covers them all.
            script += "while [ $(cut -d. -f1 /proc/uptime) -lt 270 ]; do sleep 5; done\n";
            waited = true;
        }
        script += &format!(
            "echo \"svc-vm: {name}\"; '{}' --test-threads=2 {} > '{}/{name}.log' 2>&1; echo \"svc-vm-exit {name} $?\" >> '{}/exit'\n",
            exe.display(),
            args.join(" "),
            out.display(),
            out.display()
        );
    }
    std::fs::write(out.join("run.sh"), script)?;
    let console = out.join("console.log");
    let started = Instant::now();
    // A bound on the whole run (it takes 15–30 min on 2 cores): a hung guest stops by itself.
    let limit = Duration::from_secs(90 * 60);
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-m",
            "4096",
            "-smp",
            "2",
        ])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&kernel.initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 quiet svc_out={}",
            out.display()
        ))
        .arg("-virtfs")
        .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=out,security_model=none",
            out.display()
        ))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&console)?)
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("qemu exited with {status}; console: {}", console.display());
            }
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the VM ran longer than {limit:?}; console: {}",
                console.display()
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let exits = std::fs::read_to_string(out.join("exit")).unwrap_or_default();
    let mut results = Results::new();
    for name in bins.keys() {
        let code = exits
            .lines()
            .find_map(|l| l.strip_prefix(&format!("svc-vm-exit {name} ")))
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or(-1);
        let log = std::fs::read_to_string(out.join(format!("{name}.log"))).unwrap_or_default();
        print!("{log}");
        results.insert(name.clone(), parse(&log, code));
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_libtest_summaries() {
        let text = "test a ... ok\ntest result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.0s\n";
        assert_eq!(parse(text, 0), (12, 0, 0));
        let text =
            "test result: FAILED. 9 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out\n";
        assert_eq!(parse(text, 101), (9, 3, 101));
        assert_eq!(parse("thread panicked", -1), (0, 0, -1));
    }
}
