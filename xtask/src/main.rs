//! Project tasks: `cargo xtask <task>`.
//!
//! # Layout
//! - `setup`: installs what builds and tests need (Debian packages, nightly `rust-src`,
//!   `bpf-linker` against nightly's LLVM), each step only when missing.
//! - `build-ebpf`: the one way the kernel object is built; writes [`EBPF_OBJECT`].
//! - `test`: every test tier (unit, `BPF_PROG_TEST_RUN` fixtures, network namespaces).
//! - `demo`: the seed's Services in a two-node topology, traffic, a map dump, cleanup.
//! - `soak`: restart under load at full size (20 restarts, 1 000 long-lived connections,
//!   500 new connections/s); the test tier runs the same test smaller.
//! - `bench`: per-packet cost of the programs beside an empty program, the control plane's
//!   programming latency, full sync time and memory, and end to end beside kube-proxy's
//!   iptables and nftables modes (`--only perpacket|control|e2e`).
//! - `test-kernels`: the fixture tier on this machine's kernel and on Debian 12's 6.1 under
//!   qemu (`kernels.rs`).
//! - `fuzz`: the datapath fuzzer for `--packets N` (svc-testkit/src/fuzz/, docs/RELIABILITY.md).
//! - `kind-up`, `manifests`: svc-lb as a DaemonSet in kind (deploy/; `deploy.rs`).
mod deploy;
mod fuzz;
mod kernels;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

/// Where `build-ebpf` leaves the kernel object, relative to the workspace root. The agent embeds
/// it from here (svc-agent/build.rs); nothing else builds or looks for it elsewhere.
pub const EBPF_OBJECT: &str = "target/svc-ebpf.o";

#[derive(Parser)]
#[command(about = "svc-lb project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install build and test prerequisites that are missing (idempotent).
    Setup,
    /// Build the eBPF object (nightly, build-std, bpf-linker, BTF) into target/svc-ebpf.o.
    BuildEbpf,
    /// Run every test tier. Needs root for the fixture and network tiers.
    Test {
        /// Extra arguments passed to the test binaries (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build everything and run the demo in network namespaces (needs root).
    Demo,
    /// Restart under load at full size (needs root): the agent restarted `--restarts` times
    /// (kill -9 and SIGTERM alternately, every other one loading a changed program) while
    /// `--conns` long-lived connections exchange data and `--rate` new connections/s arrive
    /// (tests/tests/network_restart_load.rs; `cargo xtask test` runs it smaller).
    Soak {
        #[arg(long, default_value_t = 20)]
        restarts: u32,
        #[arg(long, default_value_t = 1000)]
        conns: u32,
        #[arg(long, default_value_t = 500)]
        rate: u32,
    },
    /// Per-packet cost of the datapath (BPF_PROG_TEST_RUN) beside an empty program, then the
    /// control plane: programming latency, full sync, agent memory (needs root).
    Bench {
        /// Repeat count per measurement.
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
        /// Run only one benchmark (default: all).
        #[arg(long, value_enum)]
        only: Option<BenchKind>,
    },
    /// The fixture tier (BPF_PROG_TEST_RUN) on this machine's kernel and on Debian 12's Linux
    /// 6.1, the oldest supported, booted under qemu with software emulation (needs root;
    /// 15–30 min on 2 cores).
    TestKernels {
        /// Only this machine's kernel.
        #[arg(long, conflicts_with = "vm_only")]
        host_only: bool,
        /// Only Debian's 6.1 in the VM.
        #[arg(long)]
        vm_only: bool,
        /// Arguments for the test binaries (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Fuzz every datapath program through BPF_PROG_TEST_RUN (release build, needs root):
    /// packets/s, per-program counts, verdict distribution (docs/RELIABILITY.md).
    Fuzz {
        /// Frames to send over all programs (`100M`, `1m`, `50k`, `1000000`).
        #[arg(long, default_value = "100M", value_parser = fuzz::parse_count)]
        packets: u64,
        /// Generator seed (default: the tests' fixed seed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Create the kind cluster of deploy/, build and load the image, apply, wait for rollout.
    KindUp {
        #[arg(long)]
        least_privilege: bool,
    },
    /// Print deploy/svc-lb.yaml with the image tag filled in, ready for `kubectl apply -f -`.
    Manifests {
        /// Image to use (default: the tag kind-up builds for this tree).
        #[arg(long)]
        image: Option<String>,
        /// Use the least-privilege DaemonSet (deploy/svc-lb-least-privilege.yaml).
        #[arg(long)]
        least_privilege: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.task {
        Task::Setup => setup::all(),
        Task::BuildEbpf => {
            setup::ebpf_toolchain()?;
            build_ebpf(&root)
        }
        Task::Test { args } => {
            setup::all()?;
            build_ebpf(&root)?;
            test(&args)
        }
        Task::Soak {
            restarts,
            conns,
            rate,
        } => {
            setup::all()?;
            build_ebpf(&root)?;
            run(clean_cargo().args(["build", "--workspace", "--bins"]))?;
            run(clean_cargo()
                .args([
                    "test",
                    "--package",
                    "tests",
                    "--test",
                    "network_restart_load",
                    "--",
                    "--nocapture",
                ])
                .env("SVC_SOAK_RESTARTS", restarts.to_string())
                .env("SVC_SOAK_CONNS", conns.to_string())
                .env("SVC_SOAK_RATE", rate.to_string()))
        }
        Task::Demo => {
            setup::all()?;
            build_ebpf(&root)?;
            run(clean_cargo().args(["build", "--workspace", "--bins"]))?;
            run(clean_cargo().args([
                "run",
                "--quiet",
                "--package",
                "svc-testkit",
                "--example",
                "demo",
            ]))
        }
        Task::Bench { repeat, only } => {
            setup::all()?;
            build_ebpf(&root)?;
            if only.is_none() || only == Some(BenchKind::Perpacket) {
                run_bench_bin("bench", &["--repeat".into(), repeat.to_string()])?;
            }
            if only.is_none() || only == Some(BenchKind::Control) {
                bench_control(&root)?;
            }
            if only.is_none() || only == Some(BenchKind::E2e) {
                bench_e2e(&root)?;
            }
            Ok(())
        }
        Task::TestKernels {
            host_only,
            vm_only,
            args,
        } => {
            setup::all()?;
            build_ebpf(&root)?;
            kernels::test_kernels(&root, !vm_only, !host_only, &args)
        }
        Task::Fuzz { packets, seed } => {
            setup::all()?;
            build_ebpf(&root)?;
            fuzz::fuzz(packets, seed)
        }
        Task::KindUp { least_privilege } => deploy::kind_up(&root, least_privilege),
        Task::Manifests {
            image,
            least_privilege,
        } => {
            let image = image.map_or_else(|| deploy::default_image(&root), Ok)?;
            print!("{}", deploy::render(&root, &image, least_privilege)?);
            Ok(())
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .into()
}

/// A `cargo` command with the environment of the outer cargo removed, so the inner build picks
/// its own toolchain and flags (DESIGN §4).
pub fn clean_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key == "RUSTUP_TOOLCHAIN"
            || key.starts_with("RUSTC")
            || key == "CARGO_ENCODED_RUSTFLAGS"
            || key == "RUSTFLAGS"
            || key == "CARGO_TARGET_DIR"
            || key == "CARGO_BUILD_RUSTC"
        {
            cmd.env_remove(&*key);
        }
    }
    cmd
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn build_ebpf(root: &Path) -> Result<()> {
    eprintln!("xtask: building the eBPF object");
    let target_dir = root.join("target/ebpf");
    run(clean_cargo()
        .args(["+nightly", "build", "--release", "--package", "svc-ebpf"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        // BTF makes `bpftool map dump` print field names; debuginfo is what BTF is made from.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f"),
        ))
    .context("building svc-ebpf")?;
    let built = target_dir.join("bpfel-unknown-none/release/svc-ebpf");
    let dest = root.join(EBPF_OBJECT);
    // Replace only when changed, so the agent's build script does not rebuild needlessly.
    let new = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    if std::fs::read(&dest).ok().as_deref() != Some(&new[..]) {
        std::fs::write(&dest, &new).with_context(|| format!("writing {}", dest.display()))?;
    }
    eprintln!("xtask: eBPF object at {}", dest.display());
    Ok(())
}

/// Builds every test binary, then runs them. Fixture and network tests need root: we run as
/// root in CI; built without root they are reported as ignored, with the reason
/// (tests/build.rs).
fn test(args: &[String]) -> Result<()> {
    run(clean_cargo().args(["build", "--workspace", "--bins"]))?;
    let mut cmd = clean_cargo();
    cmd.args(["test", "--workspace", "--no-fail-fast", "--"])
        .args(args);
    // Network tests share nothing but the machine; keep them sequential so one's traffic
    // figures are not another's noise, and so namespace prefixes stay easy to follow.
    cmd.arg("--test-threads=1");
    let all = run(&mut cmd);
    // The ClusterIP network tests again with the pods' processes in their node's cgroup, so
    // their sockets take socket-level load balancing (svc-testkit topology,
    // POD_SOCKET_LB_ENV): the same tests must pass with it on and off.
    let mut cmd = clean_cargo();
    cmd.args(["test", "--no-fail-fast", "--package", "tests"]);
    for t in SOCKET_LB_TESTS {
        cmd.args(["--test", t]);
    }
    cmd.arg("--").args(args).arg("--test-threads=1");
    cmd.env("SVC_TEST_POD_SOCKET_LB", "1");
    eprintln!(
        "xtask: the ClusterIP network tests again, with socket-level load balancing for pods"
    );
    let socket_lb = run(&mut cmd);
    all.and(socket_lb)
}

/// The network tests of pods reaching ClusterIPs, run a second time by `cargo xtask test`
/// with socket-level load balancing.
const SOCKET_LB_TESTS: [&str; 6] = [
    "network_clusterip",
    "network_conntrack",
    "network_ipv6",
    "network_northsouth",
    "network_traffic",
    "network_traffic_udp_mtu",
];

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchKind {
    /// BPF_PROG_TEST_RUN cost per packet (svc-bench/src/bin/bench/main.rs).
    Perpacket,
    /// Programming latency, full sync, agent memory (svc-bench/src/bin/bench_control/main.rs).
    Control,
    /// svc-lb beside kube-proxy iptables/nftables and no translation, in the DESIGN §3
    /// topology (svc-bench/src/bin/bench_e2e/main.rs).
    E2e,
}

/// The control-plane benchmark against a release-built agent: a debug agent is several times
/// slower at 10k Services and would measure the build profile, not the design.
fn bench_control(root: &Path) -> Result<()> {
    run(clean_cargo().args(["build", "--release", "--package", "svc-agent"]))?;
    let agent = root.join("target/release/svc-agent");
    run(clean_cargo()
        .args([
            "run",
            "--quiet",
            "--package",
            "svc-bench",
            "--bin",
            "bench_control",
        ])
        .env("SVC_AGENT_BIN", &agent))
}

/// The end-to-end benchmark, with the agent, the traffic tool and the benchmark itself
/// release-built: a debug `svc-probe` would measure its own overhead, not the datapath.
fn bench_e2e(root: &Path) -> Result<()> {
    run(clean_cargo().args(["build", "--release", "--package", "svc-agent"]))?;
    // The benchmark, and svc-probe (the tests package's binary) for the client pod.
    run(clean_cargo().args(["build", "--release", "--package", "svc-bench", "--bins"]))?;
    run(clean_cargo().args(["build", "--release", "--package", "tests", "--bins"]))?;
    let release = root.join("target/release");
    run(Command::new(release.join("bench_e2e"))
        .env("SVC_AGENT_BIN", release.join("svc-agent"))
        .env("SVC_PROBE_BIN", release.join("svc-probe")))
}

/// Runs one of svc-bench's binaries as built by cargo.
fn run_bench_bin(name: &str, args: &[String]) -> Result<()> {
    run(clean_cargo().args(["build", "--workspace", "--bins"]))?;
    run(clean_cargo()
        .args([
            "run",
            "--quiet",
            "--package",
            "svc-bench",
            "--bin",
            name,
            "--",
        ])
        .args(args))
}
