//! `cargo xtask fuzz`: the datapath fuzzer (svc-testkit/src/fuzz/) for N packets, release-built.
//!
//! Runs the `#[ignore]`d `fuzz_long` test of tests/tests/fuzz_datapath.rs with
//! `SVC_FUZZ_PACKETS` / `SVC_FUZZ_SEED`; it prints packets/s, per-program counts and the
//! verdict, output-class and reason distribution, and fails on the first oracle failures with
//! the seed and packet index that reproduce them. Needs root (BPF_PROG_TEST_RUN, a netns).
use anyhow::{bail, Result};

use crate::{clean_cargo, run};

/// `100M`, `2.5m`, `1k`, `1000000` → a packet count.
pub(crate) fn parse_count(s: &str) -> Result<u64> {
    let s = s.trim().replace('_', "");
    let (num, mul) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
        Some('g' | 'G') => (&s[..s.len() - 1], 1e9),
        _ => (&s[..], 1.0),
    };
    let n: f64 = num.parse().map_err(|e| anyhow::anyhow!("{s:?}: {e}"))?;
    if n.is_nan() || n <= 0.0 {
        bail!("{s:?}: a packet count must be positive");
    }
    Ok((n * mul).round() as u64)
}

pub(crate) fn fuzz(packets: u64, seed: Option<u64>) -> Result<()> {
    let mut cmd = clean_cargo();
    cmd.args([
        "test",
        "--release",
        "--package",
        "tests",
        "--test",
        "fuzz_datapath",
    ])
    .args(["--", "--ignored", "--exact", "fuzz_long", "--nocapture"])
    .env("SVC_FUZZ_PACKETS", packets.to_string());
    if let Some(seed) = seed {
        cmd.env("SVC_FUZZ_SEED", seed.to_string());
    }
    run(&mut cmd)
}
