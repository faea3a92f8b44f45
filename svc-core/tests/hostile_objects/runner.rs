//! The proptest runner every target uses: cases from `PROPTEST_CASES`, failures printed as the
//! shrunk objects.
use super::*;

/// Cases per target: `PROPTEST_CASES`, else 10 000 (the acceptance: at least that many
/// in CI, which runs `cargo test --workspace`).
pub(crate) fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
}

pub(crate) fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        // A failure shrinks for a bounded time, then reports what it has.
        max_shrink_iters: 4_096,
        max_shrink_time: 60_000,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Runs one target and prints its case count and runtime (`--nocapture` shows them).
pub(crate) fn run<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: fmt::Debug,
{
    let mut runner = runner();
    let start = Instant::now();
    let result = runner.run(&strategy, test);
    eprintln!("{name}: {} cases in {:.1?}", cases(), start.elapsed());
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}
