//! Structure-aware datapath fuzzing through `BPF_PROG_TEST_RUN` (docs/RELIABILITY.md).
//!
//! # Layout
//! - [`Rng`]: a seeded splitmix64; a run is reproducible from its seed and packet count.
//! - [`install_services`]: a realistic Service set (several Services with several backends, one
//!   without, a `loadBalancerSourceRanges` LB IP, a NodePort with `externalTrafficPolicy:
//!   Local`, an external IP behind a narrow path, a hairpin Service), written with the fixture
//!   helpers in the agent's order. Conntrack and fragment entries come from the traffic itself
//!   (flows to the frontends open them) and [`Gen`] re-reads `SVC_CT` so that replies and ICMP
//!   errors match live entries.
//! - [`Gen`]: frames to frontends, to non-frontends, conntrack tuples both ways, ICMP errors
//!   quoting them, fragments, then mutations (VLAN tag, IPv4 options, bad IHL / total length,
//!   fragment bits, TTL 0/1, partial checksums, truncation at any offset, byte flips, garbage).
//! - [`check`]: the oracle, which never consults the program's counters or maps to decide what
//!   is right (see its doc and docs/RELIABILITY.md).
//! - [`run`]: drives every [`Target`] round robin against one datapath and returns a [`Report`].

// What each child owns (see its first lines); the RNG and the targets stay here.
mod generate;
mod oracle;
mod runner;
mod services;

pub use generate::*;
pub use oracle::*;
pub use runner::*;
pub use services::*;

use svc_common::Hook;

use crate::fixtures::*;

// ---------------------------------------------------------------------------------------------
// RNG
// ---------------------------------------------------------------------------------------------

/// splitmix64 (Steele, Lea, Flood 2014): small, seedable, good enough to pick fields.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() >> 32) * n) >> 32
    }
    /// True with probability `percent` %.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

// ---------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------

/// `TC_ACT_REDIRECT`.
pub const TC_ACT_REDIRECT: u32 = 7;

/// A program under fuzzing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    PodIngress,
    PodEgress,
    UplinkIngress,
    UplinkEgress,
    Xdp,
}

/// Every program, in the order the fuzzer cycles through them.
pub const ALL_TARGETS: [Target; 5] = [
    Target::PodIngress,
    Target::PodEgress,
    Target::UplinkIngress,
    Target::UplinkEgress,
    Target::Xdp,
];

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::PodIngress => Program::Ingress.name(),
            Target::PodEgress => Program::Egress.name(),
            Target::UplinkIngress => Program::UplinkIngress.name(),
            Target::UplinkEgress => Program::UplinkEgress.name(),
            Target::Xdp => XDP_PROGRAM,
        }
    }
    pub fn hook(self) -> Hook {
        match self {
            Target::PodIngress => Hook::PodIngress,
            Target::PodEgress => Hook::PodEgress,
            Target::UplinkIngress => Hook::UplinkIngress,
            Target::UplinkEgress => Hook::UplinkEgress,
            Target::Xdp => Hook::Xdp,
        }
    }
    /// The verdict that lets a packet continue untouched.
    pub fn pass(self) -> u32 {
        if self == Target::Xdp {
            XDP_PASS
        } else {
            TC_ACT_UNSPEC
        }
    }
    /// Name of a verdict this program may return; `None` for any other value (a failure).
    pub fn verdict_name(self, v: u32) -> Option<&'static str> {
        if self == Target::Xdp {
            match v {
                XDP_PASS => Some("pass"),
                XDP_DROP => Some("drop"),
                XDP_TX => Some("tx"),
                XDP_REDIRECT => Some("redirect"),
                _ => None,
            }
        } else {
            match v {
                TC_ACT_UNSPEC => Some("pass"),
                TC_ACT_SHOT => Some("drop"),
                TC_ACT_REDIRECT => Some("redirect"),
                _ => None,
            }
        }
    }
    /// Pod programs see pods' frames, uplink programs the wire's.
    fn on_uplink(self) -> bool {
        !matches!(self, Target::PodIngress | Target::PodEgress)
    }
}
