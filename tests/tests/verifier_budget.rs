//! Verifier budget: every program of `target/svc-ebpf.o` measured against the committed
//! `svc-ebpf/verifier-budget.txt`, so that verifier growth is a decision, not an accident.
//!
//! For each program the test measures
//! - **verified instructions**: `bpf_prog_info.verified_insns` of the program as aya loads it
//!   (the agent's loader; the object's own `.rodata`, which holds the agent's default
//!   conntrack timeouts and no fault injection), against the verifier's limit of 1 000 000;
//! - **stack**: bytes of the deepest bpf-to-bpf call chain, the sum of the verifier's
//!   per-frame depths along it, against the verifier's limit of 512.
//!
//! aya keeps no verifier log when a load succeeds, so the stack is read from a second load of
//! the same instructions: the object is relocated with `aya-obj` exactly as `EbpfLoader` does
//! (same sanitized BTF, same maps: the ones aya created, found through the program's map ids)
//! and loaded with `BPF_PROG_LOAD` at log level `BPF_LOG_STATS`, whose last lines are
//! `stack depth A+B+…` (one figure per subprogram) and `processed N insns`. N must equal the
//! `verified_insns` of aya's load, which proves both loads verified the same program.
//!
//! It prints a table (program, budget, measured, % of budget, for both figures) and fails when
//! a program needs more than 110 % of a budgeted figure, or when the object and the budget
//! file do not name the same programs (checked without root too, from the ELF alone).
//!
//! Regenerate the budget (root, after `cargo xtask build-ebpf`):
//! `SVC_VERIFIER_BUDGET_WRITE=1 cargo test -p tests --test verifier_budget -- --nocapture`
//! rewrites the file with the measured figures; commit it saying what grew and why.
//!
//! Run as root: `cargo test -p tests --test verifier_budget -- --nocapture`. Built without
//! root, only the program names are checked and the measuring tests are reported as ignored
//! (tests/build.rs); run without root anyway, they fail. Without the object every test fails
//! and says to run `cargo xtask build-ebpf`.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    ffi::CString,
    fmt::Write as _,
    io,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use aya::{maps::MapData, programs::Program, EbpfLoader};
use aya_obj::{
    btf::{Btf, BtfFeatures},
    generated::{
        bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_type, BPF_CALL, BPF_DW, BPF_IMM,
        BPF_JMP, BPF_LD, BPF_PSEUDO_CALL, BPF_PSEUDO_FUNC,
    },
    Features, Object, ProgramSection,
};
use svc_testkit::fixtures::{ebpf_object, read_object, require_root, workspace_root};

/// Setting this to `1` rewrites the budget file with the measured figures instead of checking.
const WRITE_ENV: &str = "SVC_VERIFIER_BUDGET_WRITE";
/// The budget file, relative to the workspace root.
const BUDGET_FILE: &str = "svc-ebpf/verifier-budget.txt";
/// A measured figure may exceed its budget by this many percent before the test fails.
const TOLERANCE_PCT: u64 = 10;
/// The verifier's limits: processed instructions per program, and stack per call chain.
const INSN_LIMIT: u64 = 1_000_000;
const STACK_LIMIT: u64 = 512;
/// `BPF_LOG_STATS`: only the statistics lines, whatever the program's size.
const BPF_LOG_STATS: u32 = 4;
/// `BPF_OBJ_NAME_LEN` - 1: the kernel keeps this many bytes of a map's name.
const MAP_NAME_LEN: usize = 15;

const HEADER: &str = "\
# Verifier budget of target/svc-ebpf.o, checked by tests/tests/verifier_budget.rs.
#
# One line per program of the object: the instructions the kernel's verifier processed to load
# it (bpf_prog_info.verified_insns; the verifier allows 1 000 000) and the bytes of stack of its
# deepest bpf-to-bpf call chain (the sum of the verifier's frame depths along it; the verifier
# allows 512). The test fails when a program needs more than 110 % of either figure, or when a
# program is missing from or extra to this file.
#
# Raising a figure is a reviewed decision, not a chore: commit the new file with the change
# that needs it, saying in the commit message what grew and why it is worth it
# (docs/ARCHITECTURE.md, \"Verifier budget\"). Regenerate it, as root and after
# `cargo xtask build-ebpf`, with
#   SVC_VERIFIER_BUDGET_WRITE=1 cargo test -p tests --test verifier_budget -- --nocapture
# The count depends on the kernel's verifier; the release measured on is recorded below.
#
";

/// What the budget file or one measurement says about a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Figures {
    verified_insns: u64,
    stack: u64,
}

/// One program measured.
struct Measured {
    figures: Figures,
    /// The verifier's per-subprogram stack depths, as it prints them (`24+0+48`).
    frames: String,
}

/// The object as the agent loads it: its socket iterator's placeholder call patched into the
/// `bpf_sock_destroy` kfunc call (svc-agent `datapath/sockreap.rs`), and the kernel's BTF the
/// iterator is loaded against. The budget is measured on kernels with the kfunc (6.5+).
fn loadable_object() -> Result<(Vec<u8>, Btf)> {
    let object = read_object()?;
    let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
    let words = svc_agent::datapath::sockreap::patch(&object, &btf)?.context(
        "this kernel has no bpf_sock_destroy (Linux 6.5): the socket iterator cannot load, and \
         the budget is measured with every program",
    )?;
    let bytes: &[u8] = bytemuck::cast_slice(&words);
    Ok((bytes[..object.len()].to_vec(), btf))
}

fn budget_path() -> PathBuf {
    workspace_root().join(BUDGET_FILE)
}

fn write_mode() -> bool {
    std::env::var(WRITE_ENV).is_ok_and(|v| v == "1")
}

fn regenerate_hint() -> String {
    format!(
        "if the change is intended, regenerate {BUDGET_FILE} as root with \
         `{WRITE_ENV}=1 cargo test -p tests --test verifier_budget -- --nocapture` and commit it, \
         saying in the commit message why"
    )
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn every_program_stays_within_its_verifier_budget() {
    if let Err(e) = run() {
        panic!("{e:#}");
    }
}

/// The object and the budget file name the same programs: from the ELF alone, so checked
/// where the measuring test is ignored too. (Not while the file is being rewritten.)
#[test]
fn the_budget_file_names_the_objects_programs() {
    let check = || -> Result<()> {
        let names = program_names(&read_object()?)?;
        if write_mode() {
            return Ok(());
        }
        check_names(&names, &read_budget()?)
    };
    if let Err(e) = check() {
        panic!("{e:#}");
    }
}

/// `svc-agent run --bpf-debug-log` loads the object with `SVC_DEBUG_LOG` = 1, which brings the
/// aya-log messages' code back to the verifier: every program must still load that way. The
/// counts are printed, not budgeted (a debugging mode, not the production datapath).
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn every_program_loads_with_debug_messages_on() {
    load_every_program(
        EbpfLoader::new().override_global(svc_common::GLOBAL_DEBUG_LOG, &1u32, true),
        "debug messages on",
    );
}

/// The agent's default SNAT ports on a node with Linux's default ephemeral range are two
/// ranges (svc-agent `snat_ports`), where the object's built-in default (the budgeted load) is
/// one: the index-to-port mapping is branch-free, so both must cost the same; printed, and
/// every program must load that way, with and without debug messages.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn every_program_loads_with_two_snat_ranges() {
    let two = svc_common::SnatPorts {
        first: [1024, 61_000],
        count: [28_976, 4536],
    };
    load_every_program(
        EbpfLoader::new().override_global(svc_common::GLOBAL_SNAT_PORTS, &two, true),
        "two SNAT ranges",
    );
    load_every_program(
        EbpfLoader::new()
            .override_global(svc_common::GLOBAL_SNAT_PORTS, &two, true)
            .override_global(svc_common::GLOBAL_DEBUG_LOG, &1u32, true),
        "two SNAT ranges, debug messages on",
    );
}

fn load_every_program(loader: &mut EbpfLoader<'_>, what: &str) {
    require_root();
    let (object, btf) = loadable_object().unwrap_or_else(|e| panic!("{e:#}"));
    let mut ebpf = loader
        .load(&object)
        .unwrap_or_else(|e| panic!("loading with {what}: {e:#}"));
    for (name, prog) in ebpf.programs_mut() {
        let loaded = match prog {
            Program::SchedClassifier(p) => p.load(),
            Program::Xdp(p) => p.load(),
            Program::CgroupSockAddr(p) => p.load(),
            Program::Iter(p) => p.load("udp", &btf),
            other => panic!("{name}: unexpected program type {:?}", other.prog_type()),
        };
        loaded.unwrap_or_else(|e| panic!("{name} with {what}: {e:#}"));
        let count = prog
            .info()
            .unwrap()
            .verified_instruction_count()
            .unwrap_or(0);
        println!("{name:<24} {count:>8} verified instructions with {what}");
    }
}

fn run() -> Result<()> {
    let object = read_object()?;
    let names = program_names(&object)?;
    let budget = if write_mode() {
        read_budget().unwrap_or_default()
    } else {
        let budget = read_budget()?;
        check_names(&names, &budget)?;
        budget
    };
    require_root();
    let (object, btf) = loadable_object()?;
    let measured = measure(&object, &btf)?;
    ensure!(
        measured.keys().eq(names.iter()),
        "measured {:?}, but the object names {names:?}",
        measured.keys().collect::<Vec<_>>()
    );
    println!("{}", table(&budget, &measured));
    let release = kernel_release();
    if write_mode() {
        write_budget(&measured, &release)?;
        println!(
            "wrote {} (measured on Linux {release})",
            budget_path().display()
        );
        return Ok(());
    }
    if let Some(recorded) = recorded_release()? {
        if recorded != release {
            println!(
                "note: the budget was measured on Linux {recorded}, this is Linux {release}; \
                 another verifier may count differently"
            );
        }
    }
    let failures = over_budget(&budget, &measured);
    if !failures.is_empty() {
        bail!(
            "over the verifier budget in {} (limit: budget + {TOLERANCE_PCT} %):\n  {}\n{}",
            budget_path().display(),
            failures.join("\n  "),
            regenerate_hint()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The budget file
// ---------------------------------------------------------------------------------------------

/// Program names of the object, from the ELF alone (no privilege needed).
fn program_names(object: &[u8]) -> Result<BTreeSet<String>> {
    let obj = Object::parse(object).context("parsing the eBPF object")?;
    Ok(obj.programs.keys().cloned().collect())
}

/// Parses [`BUDGET_FILE`]: `#` comments, blank lines, and `program verified_insns stack` lines.
fn read_budget() -> Result<BTreeMap<String, Figures>> {
    let path = budget_path();
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (create it as root with `{WRITE_ENV}=1 cargo test -p tests --test \
             verifier_budget`)",
            path.display()
        )
    })?;
    let mut budget = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, insns, stack] = fields[..] else {
            bail!(
                "{}:{}: expected `program verified_insns stack`, found {line:?}",
                path.display(),
                i + 1
            );
        };
        let number = |s: &str| {
            s.parse::<u64>()
                .with_context(|| format!("{}:{}: {s:?} is not a number", path.display(), i + 1))
        };
        let figures = Figures {
            verified_insns: number(insns)?,
            stack: number(stack)?,
        };
        ensure!(
            budget.insert(name.to_string(), figures).is_none(),
            "{}:{}: {name} is listed twice",
            path.display(),
            i + 1
        );
    }
    Ok(budget)
}

/// The kernel release the budget file says it was measured on, if it says.
fn recorded_release() -> Result<Option<String>> {
    let text = std::fs::read_to_string(budget_path())?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("# Measured on Linux "))
        .map(|r| r.trim().to_string()))
}

fn write_budget(measured: &BTreeMap<String, Measured>, release: &str) -> Result<()> {
    let mut text = String::from(HEADER);
    writeln!(text, "# Measured on Linux {release}").unwrap();
    writeln!(text, "#").unwrap();
    writeln!(
        text,
        "# {:<28} {:>14} {:>6}",
        "program", "verified_insns", "stack"
    )
    .unwrap();
    for (name, m) in measured {
        writeln!(
            text,
            "{name:<30} {:>14} {:>6}",
            m.figures.verified_insns, m.figures.stack
        )
        .unwrap();
    }
    std::fs::write(budget_path(), text)
        .with_context(|| format!("writing {}", budget_path().display()))
}

/// Fails when the object and the budget file do not name the same programs.
fn check_names(names: &BTreeSet<String>, budget: &BTreeMap<String, Figures>) -> Result<()> {
    let missing: Vec<&String> = names.iter().filter(|n| !budget.contains_key(*n)).collect();
    let extra: Vec<&String> = budget.keys().filter(|n| !names.contains(*n)).collect();
    let mut problems = Vec::new();
    for name in missing {
        problems.push(format!(
            "{name} is a program of {} but has no budget in {BUDGET_FILE}",
            ebpf_object().display()
        ));
    }
    for name in extra {
        problems.push(format!(
            "{name} has a budget in {BUDGET_FILE} but is no program of {}",
            ebpf_object().display()
        ));
    }
    if !problems.is_empty() {
        bail!("{}\n{}", problems.join("\n"), regenerate_hint());
    }
    Ok(())
}

/// True when `measured` exceeds `budget` by more than [`TOLERANCE_PCT`].
fn exceeds(measured: u64, budget: u64) -> bool {
    measured * 100 > budget * (100 + TOLERANCE_PCT)
}

fn over_budget(
    budget: &BTreeMap<String, Figures>,
    measured: &BTreeMap<String, Measured>,
) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, m) in measured {
        let Some(b) = budget.get(name) else { continue };
        if exceeds(m.figures.verified_insns, b.verified_insns) {
            failures.push(format!(
                "{name}: {} verified instructions, {} of its budget of {}",
                m.figures.verified_insns,
                pct(m.figures.verified_insns, b.verified_insns),
                b.verified_insns
            ));
        }
        if exceeds(m.figures.stack, b.stack) {
            failures.push(format!(
                "{name}: {} bytes of stack ({}), {} of its budget of {}",
                m.figures.stack,
                m.frames,
                pct(m.figures.stack, b.stack),
                b.stack
            ));
        }
    }
    failures
}

fn pct(measured: u64, budget: u64) -> String {
    if budget == 0 {
        return if measured == 0 {
            "-".into()
        } else {
            "new".into()
        };
    }
    format!("{:.1} %", measured as f64 * 100.0 / budget as f64)
}

fn table(budget: &BTreeMap<String, Figures>, measured: &BTreeMap<String, Measured>) -> String {
    let mut out = String::new();
    writeln!(
        out,
        "{:<22} {:>11} {:>9} {:>8} {:>12} {:>6} {:>8}  frames",
        "program", "insn budget", "verified", "%", "stack budget", "stack", "%"
    )
    .unwrap();
    let mut order: Vec<(&String, &Measured)> = measured.iter().collect();
    order.sort_by_key(|(_, m)| std::cmp::Reverse(m.figures.verified_insns));
    for (name, m) in order {
        let b = budget.get(name);
        let show = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        writeln!(
            out,
            "{name:<22} {:>11} {:>9} {:>8} {:>12} {:>6} {:>8}  {}",
            show(b.map(|b| b.verified_insns)),
            m.figures.verified_insns,
            b.map_or_else(
                || "new".into(),
                |b| pct(m.figures.verified_insns, b.verified_insns)
            ),
            show(b.map(|b| b.stack)),
            m.figures.stack,
            b.map_or_else(|| "new".into(), |b| pct(m.figures.stack, b.stack)),
            m.frames,
        )
        .unwrap();
    }
    write!(
        out,
        "(verifier limits: {INSN_LIMIT} instructions per program, {STACK_LIMIT} bytes of stack \
         per call chain; fails above budget + {TOLERANCE_PCT} %)"
    )
    .unwrap();
    out
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "(unknown)".into())
}

// ---------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------

/// Loads every program with aya (verified instructions), then each again with a verifier log
/// (stack), and checks both loads processed the same number of instructions.
fn measure(object: &[u8], btf: &Btf) -> Result<BTreeMap<String, Measured>> {
    let mut ebpf = EbpfLoader::new()
        .load(object)
        .context("loading target/svc-ebpf.o")?;
    let mut insns = BTreeMap::new();
    let mut map_ids = BTreeSet::new();
    for (name, prog) in ebpf.programs_mut() {
        match prog {
            Program::SchedClassifier(p) => p.load(),
            Program::Xdp(p) => p.load(),
            Program::CgroupSockAddr(p) => p.load(),
            Program::Iter(p) => p.load("udp", btf),
            other => bail!(
                "{name} is a {:?} program, which this test does not load yet: add it to measure()",
                other.prog_type()
            ),
        }
        .with_context(|| format!("loading (verifying) {name}"))?;
        let info = prog
            .info()
            .with_context(|| format!("bpf_prog_info of {name}"))?;
        let count = info
            .verified_instruction_count()
            .with_context(|| format!("the kernel reports no verified_insns for {name}"))?;
        insns.insert(name.to_string(), u64::from(count));
        map_ids.extend(
            info.map_ids()
                .with_context(|| format!("map ids of {name}"))?
                .unwrap_or_default(),
        );
    }
    // The maps aya created, by the name the kernel keeps for them; `ebpf` stays alive (and
    // with it the maps) until the second loads are done.
    let mut maps = HashMap::new();
    for id in map_ids {
        let map = MapData::from_id(id).with_context(|| format!("opening map id {id}"))?;
        let name = map
            .info()
            .with_context(|| format!("bpf_map_info of map id {id}"))?
            .name_as_str()
            .with_context(|| format!("map id {id} has no name"))?
            .to_string();
        maps.insert(name, map);
    }
    let logs = load_with_stats(object, &maps, btf)?;
    drop(ebpf);

    let mut measured = BTreeMap::new();
    for (name, verified) in insns {
        let stats = logs
            .get(&name)
            .with_context(|| format!("{name} was not loaded a second time"))?;
        ensure!(
            stats.processed == verified,
            "{name}: aya's load verified {verified} instructions but the logged load processed \
             {}: the two loads differ, so the stack figure cannot be trusted (has aya's loader \
             changed? compare measure() and load_with_stats() with aya's EbpfLoader::load)",
            stats.processed
        );
        measured.insert(
            name,
            Measured {
                figures: Figures {
                    verified_insns: verified,
                    stack: stats.deepest_chain,
                },
                frames: stats
                    .frames
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join("+"),
            },
        );
    }
    Ok(measured)
}

/// What the verifier's statistics say about one load.
struct Stats {
    processed: u64,
    /// Stack depth of each subprogram, in instruction order (the main program first).
    frames: Vec<u64>,
    /// Sum of the frames along the deepest call chain.
    deepest_chain: u64,
}

/// Relocates the object as aya 0.14's `EbpfLoader::load` does, against aya's `maps` (by kernel
/// map name), and loads every program with `BPF_LOG_STATS`.
fn load_with_stats(
    object: &[u8],
    maps: &HashMap<String, MapData>,
    kernel_btf: &Btf,
) -> Result<BTreeMap<String, Stats>> {
    let mut obj = Object::parse(object).context("parsing the eBPF object")?;
    // Every BTF feature a kernel new enough for this datapath has (aya probes them).
    let btf_features = BtfFeatures::new(true, true, true, true, true, true, true, true);
    let btf_fd = match obj.fixup_and_sanitize_btf(&btf_features)? {
        Some(btf) => Some(load_btf(&btf.to_bytes()).context("BPF_BTF_LOAD of the object's BTF")?),
        None => None,
    };
    if obj.has_btf_relocations() {
        obj.relocate_btf(kernel_btf)?;
    }
    let obj_maps: Vec<(String, aya_obj::Map)> = obj.maps.drain().collect();
    let mut relocs = Vec::new();
    for (name, map) in &obj_maps {
        let kernel_name = &name[..name.len().min(MAP_NAME_LEN)];
        if let Some(data) = maps.get(kernel_name) {
            relocs.push((name.as_str(), data.fd().as_fd().as_raw_fd(), map));
        }
    }
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_maps(relocs.into_iter(), &text_sections)?;
    obj.relocate_calls(&text_sections)?;
    obj.sanitize_functions(&Features::new(
        true,
        true,
        true,
        true,
        true,
        true,
        true,
        Some(btf_features),
    ));

    let mut out = BTreeMap::new();
    for (name, prog) in &obj.programs {
        let mut attach_btf_id = None;
        let (prog_type, attach_type, flags) = match &prog.section {
            ProgramSection::SchedClassifier => (bpf_prog_type::BPF_PROG_TYPE_SCHED_CLS, None, 0),
            // As aya's `Iter::load("udp", …)`: the iterator's target is a kernel function.
            ProgramSection::Iter { .. } => {
                attach_btf_id = Some(
                    kernel_btf
                        .id_by_type_name_kind("bpf_iter_udp", aya_obj::btf::BtfKind::Func)
                        .context("bpf_iter_udp in the kernel's BTF")?,
                );
                (
                    bpf_prog_type::BPF_PROG_TYPE_TRACING,
                    Some(bpf_attach_type::BPF_TRACE_ITER),
                    0,
                )
            }
            ProgramSection::Xdp { frags, attach_type } => (
                bpf_prog_type::BPF_PROG_TYPE_XDP,
                Some(bpf_attach_type::from(*attach_type)),
                if *frags {
                    aya_obj::generated::BPF_F_XDP_HAS_FRAGS
                } else {
                    0
                },
            ),
            ProgramSection::CgroupSockAddr { attach_type } => (
                bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
                Some(bpf_attach_type::from(*attach_type)),
                0,
            ),
            other => bail!("{name}: section {other:?} is not loaded by this test: add it"),
        };
        let function = obj
            .functions
            .get(&prog.function_key())
            .with_context(|| format!("{name}: no function at its address"))?;
        let attrs = LoadAttrs {
            prog_type,
            attach_type,
            flags,
            attach_btf_id,
        };
        let log = load_program(name, &attrs, &prog.license, function, btf_fd.as_ref())
            .with_context(|| format!("loading {name} with a verifier log"))?;
        let stats = parse_stats(&log, &function.instructions)
            .with_context(|| format!("{name}: reading the verifier's statistics:\n{log}"))?;
        out.insert(name.clone(), stats);
    }
    Ok(out)
}

/// `bpf(cmd, attr)` for commands that return a new file descriptor.
fn bpf_fd(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid, initialised `bpf_attr` for `cmd`, every pointer in it refers to
    // memory that outlives the call, and the size passed is the size of the union.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success these commands return a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

fn load_btf(raw: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: `bpf_attr` is plain data; all zeroes is its documented empty value.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the `BPF_BTF_LOAD` member of the union; `attr` is zeroed plain data.
    let u = unsafe { &mut attr.__bindgen_anon_7 };
    u.btf = raw.as_ptr() as u64;
    u.btf_size = raw.len() as u32;
    bpf_fd(bpf_cmd::BPF_BTF_LOAD, &mut attr)
}

/// `BPF_PROG_LOAD` of `function` with the attributes aya gives it, plus a statistics log;
/// returns the log (the program is closed again at once).
/// What `BPF_PROG_LOAD` is told about a program besides its code, as aya tells it.
struct LoadAttrs {
    prog_type: bpf_prog_type,
    attach_type: Option<bpf_attach_type>,
    flags: u32,
    /// The kernel function a tracing program (the socket iterator) attaches to.
    attach_btf_id: Option<u32>,
}

fn load_program(
    name: &str,
    attrs: &LoadAttrs,
    license: &CString,
    function: &aya_obj::Function,
    btf_fd: Option<&OwnedFd>,
) -> Result<String> {
    let insns: &[bpf_insn] = &function.instructions;
    let func_info = function.func_info.func_info_bytes();
    let line_info = function.line_info.line_info_bytes();
    let mut log = vec![0u8; 64 * 1024];
    // SAFETY: as in `load_btf`.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the `BPF_PROG_LOAD` member of the union; `attr` is zeroed plain data.
    let u = unsafe { &mut attr.__bindgen_anon_3 };
    for (dst, src) in u.prog_name[..15].iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    u.prog_type = attrs.prog_type as u32;
    if let Some(t) = attrs.attach_type {
        u.expected_attach_type = t as u32;
    }
    u.prog_flags = attrs.flags;
    if let Some(id) = attrs.attach_btf_id {
        u.attach_btf_id = id;
    }
    u.insns = insns.as_ptr() as u64;
    u.insn_cnt = insns.len() as u32;
    u.license = license.as_ptr() as u64;
    if let Some(fd) = btf_fd {
        u.prog_btf_fd = fd.as_raw_fd() as u32;
        if function.line_info_rec_size > 0 {
            u.line_info = line_info.as_ptr() as u64;
            u.line_info_cnt = function.line_info.len() as u32;
            u.line_info_rec_size = function.line_info_rec_size as u32;
        }
        if function.func_info_rec_size > 0 {
            u.func_info = func_info.as_ptr() as u64;
            u.func_info_cnt = function.func_info.len() as u32;
            u.func_info_rec_size = function.func_info_rec_size as u32;
        }
    }
    u.log_level = BPF_LOG_STATS;
    u.log_buf = log.as_mut_ptr() as u64;
    u.log_size = log.len() as u32;
    let result = bpf_fd(bpf_cmd::BPF_PROG_LOAD, &mut attr);
    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]).into_owned();
    match result {
        Ok(_fd) => Ok(text),
        Err(e) => Err(anyhow!("BPF_PROG_LOAD: {e}; verifier log:\n{text}")),
    }
}

/// Reads `stack depth A+B+…` and `processed N insns` from a `BPF_LOG_STATS` log, and finds the
/// deepest call chain of `insns` (the program as loaded) with those frames.
fn parse_stats(log: &str, insns: &[bpf_insn]) -> Result<Stats> {
    let frames: Vec<u64> = log
        .lines()
        .find_map(|l| l.strip_prefix("stack depth "))
        .context("no `stack depth` line")?
        .trim()
        .split('+')
        .map(|f| f.parse::<u64>().with_context(|| format!("bad frame {f:?}")))
        .collect::<Result<_>>()?;
    let processed = log
        .lines()
        .find_map(|l| l.strip_prefix("processed "))
        .and_then(|rest| rest.split_whitespace().next())
        .context("no `processed N insns` line")?
        .parse::<u64>()
        .context("bad instruction count")?;
    let deepest_chain = deepest_chain(insns, &frames)?;
    Ok(Stats {
        processed,
        frames,
        deepest_chain,
    })
}

/// The verifier's subprograms are the main program and every target of a bpf-to-bpf call or
/// of a function pointer (`ld_imm64` with `BPF_PSEUDO_FUNC`), in instruction order; its
/// `stack depth` line lists their frames in that order. Returns the largest sum of frames
/// along a call chain from the main program, the figure the verifier holds to 512 bytes.
fn deepest_chain(insns: &[bpf_insn], frames: &[u64]) -> Result<u64> {
    const CALL: u8 = (BPF_JMP | BPF_CALL) as u8;
    const LD_IMM64: u8 = (BPF_LD | BPF_IMM | BPF_DW) as u8;
    let target = |i: usize, ins: &bpf_insn| (i as i64 + i64::from(ins.imm) + 1) as usize;
    let mut starts = BTreeSet::from([0usize]);
    let mut calls = Vec::new();
    for (i, ins) in insns.iter().enumerate() {
        let src = u32::from(ins.src_reg());
        if ins.code == CALL && src == BPF_PSEUDO_CALL {
            starts.insert(target(i, ins));
            calls.push((i, target(i, ins)));
        } else if ins.code == LD_IMM64 && src == BPF_PSEUDO_FUNC {
            starts.insert(target(i, ins));
        }
    }
    let starts: Vec<usize> = starts.into_iter().collect();
    ensure!(
        starts.len() == frames.len(),
        "the verifier lists {} frames but the program has {} subprograms (did it remove dead \
         ones?): the call chains cannot be matched to the frames",
        frames.len(),
        starts.len()
    );
    let subprog = |insn: usize| starts.partition_point(|s| *s <= insn) - 1;
    let mut callees = vec![BTreeSet::new(); starts.len()];
    for (at, to) in calls {
        callees[subprog(at)].insert(subprog(to));
    }
    // The verifier rejects recursion, so the call graph is acyclic; memoised depth-first search.
    fn depth(
        s: usize,
        frames: &[u64],
        callees: &[BTreeSet<usize>],
        memo: &mut [Option<u64>],
    ) -> u64 {
        if let Some(d) = memo[s] {
            return d;
        }
        let below = callees[s]
            .iter()
            .map(|c| depth(*c, frames, callees, memo))
            .max()
            .unwrap_or(0);
        let d = frames[s] + below;
        memo[s] = Some(d);
        d
    }
    Ok(depth(0, frames, &callees, &mut vec![None; starts.len()]))
}

#[test]
fn tolerance_is_ten_percent_above_the_budget() {
    assert!(!exceeds(110, 100));
    assert!(exceeds(111, 100));
    assert!(!exceeds(0, 0));
    assert!(exceeds(1, 0));
    assert!(!exceeds(758_681, 689_710));
    assert!(exceeds(758_682, 689_710));
}
