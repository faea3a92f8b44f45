//! What is read back from the agent: its programming-latency histogram, timestamps in its log,
//! its memory in `/proc`, its pid, the tail of its log; and the kernel release.

use super::*;

/// Cumulative `svc_programming_latency_seconds` buckets: (upper bound, count).
pub(crate) struct HistogramDelta {
    pub(crate) buckets: Vec<(f64, u64)>,
    pub(crate) count: u64,
}

impl HistogramDelta {
    pub(crate) fn minus(&self, earlier: &HistogramDelta) -> HistogramDelta {
        HistogramDelta {
            buckets: self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .map(|(&(le, a), &(_, b))| (le, a.saturating_sub(b)))
                .collect(),
            count: self.count.saturating_sub(earlier.count),
        }
    }

    /// Prometheus' `histogram_quantile`: linear within the bucket holding the rank.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let mut lower = (0.0, 0u64);
        for &(le, cum) in &self.buckets {
            if cum as f64 >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let in_bucket = (cum - lower.1) as f64;
                let frac = if in_bucket > 0.0 {
                    (rank - lower.1 as f64) / in_bucket
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * frac);
            }
            lower = (le, cum);
        }
        None
    }
}

pub(crate) fn histogram(t: &Topology, agent: &Agent) -> Result<HistogramDelta> {
    let (code, body) = agent.http_get(t, "/metrics")?;
    ensure!(code == 200, "/metrics answered {code}");
    let name = "svc_programming_latency_seconds";
    let mut buckets = Vec::new();
    let mut count = 0;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(le) = rest
            .strip_prefix("_bucket{le=\"")
            .and_then(|r| r.split('"').next())
        {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse()?
            };
            buckets.push((le, value.unwrap_or_default() as u64));
        } else if rest.starts_with("_count") {
            count = value.unwrap_or_default() as u64;
        }
    }
    ensure!(!buckets.is_empty(), "{name} not in /metrics");
    Ok(HistogramDelta { buckets, count })
}

/// Seconds from `spawned` to the timestamp of the first log line containing `needle`.
/// tracing-subscriber's default timer prints UTC RFC 3339 (`2025-11-26T05:28:19.123456Z`).
pub(crate) fn log_time(log: &str, needle: &str, spawned: SystemTime) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(needle))?;
    let stamp = line.split_whitespace().next()?;
    let time = stamp.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    let of_day = h * 3600.0 + m * 60.0 + s;
    let start = spawned.duration_since(UNIX_EPOCH).ok()?.as_secs_f64() % 86_400.0;
    Some((of_day - start).rem_euclid(86_400.0))
}

/// `key=123` in a log line.
pub(crate) fn field(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

pub(crate) fn proc_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The agent's pid: the process whose command line names its (topology-unique) bpffs directory.
pub(crate) fn agent_pid(bpffs: &Path) -> Option<u32> {
    let want = bpffs.to_str()?;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_agent = args.first().is_some_and(|a| a.ends_with(b"svc-agent"))
            && args.contains(&want.as_bytes());
        is_agent.then_some(pid)
    })
}

pub(crate) fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(crate) fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
