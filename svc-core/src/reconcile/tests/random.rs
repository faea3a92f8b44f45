//! Random sequences of desired states (the invariant holds and plans converge), and scale.

use super::*;
use crate::family::AnyFrontendKey;

/// Deterministic xorshift64* PRNG: reproducible random-ish sequences without a crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_desired(rng: &mut Rng) -> Desired {
    let mut items = Vec::new();
    let mut items6 = Vec::new();
    for f in 0..rng.below(12) {
        let key = FrontendKey {
            addr: [10, 96, 0, rng.below(6) as u8],
            port: 80 + rng.below(3) as u16,
            proto: if rng.below(4) == 0 {
                PROTO_UDP
            } else {
                PROTO_TCP
            },
            scope: SCOPE_ANY,
        };
        let mut backends: Vec<Backend> = (0..rng.below(7))
            .map(|_| Backend {
                addr: [10, 244, 0, rng.below(10) as u8],
                port: 8080,
                proto: key.proto,
                flags: if rng.below(8) == 0 {
                    BACKEND_F_TERMINATING
                } else {
                    0
                },
            })
            .collect();
        backends.sort();
        backends.dedup();
        let service = svc(&format!("s{}", f % 4));
        // Half the frontends filter sources, over a few overlapping prefixes.
        let source_ranges: Vec<Ipv4Net> = if rng.below(2) == 0 {
            Vec::new()
        } else {
            let mut r: Vec<Ipv4Net> = (0..1 + rng.below(3))
                .filter_map(|_| cidr([198, 51, 100, rng.below(4) as u8 * 64].into(), 26))
                .collect();
            r.sort();
            r.dedup();
            r
        };
        let flags = if source_ranges.is_empty() {
            0
        } else {
            FRONTEND_F_SOURCE_RANGES
        };
        let affinity_timeout_s = rng.below(2) as u32 * 60;
        // Half the frontends are dual-stack: an IPv6 twin in the same id space, its backends
        // and prefixes mapped into fd00::/8, so ids of both families interleave.
        if rng.below(2) == 0 {
            let six = |a: [u8; 4]| {
                let mut o = [0u8; 16];
                o[0] = 0xfd;
                o[12..].copy_from_slice(&a);
                o
            };
            let key6 = svc_common::FrontendKey6 {
                addr: six(key.addr).into(),
                port: key.port,
                proto: key.proto,
                scope: key.scope,
            };
            let backends6 = backends
                .iter()
                .map(|b| svc_common::Backend6 {
                    addr: six(b.addr).into(),
                    port: b.port,
                    proto: b.proto,
                    flags: b.flags,
                })
                .collect();
            let ranges6 = source_ranges
                .iter()
                .filter_map(|n| {
                    crate::model::Ipv6Net::new(
                        six(n.network().octets()).into(),
                        96 + n.prefix_len(),
                    )
                    .ok()
                })
                .collect();
            items6.push((
                key6,
                crate::model::DesiredFrontend6 {
                    service: service.clone(),
                    port_name: String::new(),
                    backends: backends6,
                    affinity_timeout_s,
                    flags,
                    source_ranges: ranges6,
                },
            ));
        }
        items.push((
            key,
            DesiredFrontend {
                service,
                port_name: String::new(),
                backends,
                affinity_timeout_s,
                flags,
                source_ranges,
            },
        ));
    }
    let mut d = desired(items);
    d.frontends6 = items6.into_iter().collect();
    d
}

/// What [`Programmed::held`] keeps count of, summed the long way.
fn summed(state: &Programmed) -> (u64, (u64, u64)) {
    state
        .frontends()
        .iter()
        .fold((0, (0, 0)), |(slots, (r4, r6)), (key, fe)| {
            let ranges = fe.source_ranges.len() as u64;
            let (r4, r6) = match key {
                AnyFrontendKey::V4(_) => (r4 + ranges, r6),
                AnyFrontendKey::V6(_) => (r4, r6 + ranges),
            };
            (slots + fe.slots.iter().flatten().count() as u64, (r4, r6))
        })
}

#[test]
fn random_sequences_keep_the_invariant_and_converge() {
    let mut ipv6_frontends_seen = 0;
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut fake = FakeDataplane::default();
        let mut state = Programmed::default();
        let mut last = Desired::default();
        for step in 0..30 {
            let d = random_desired(&mut rng);
            let p = if step % 3 == 2 {
                // Incremental for every service (the same as a full plan, by another path).
                let all: BTreeSet<_> = (0..4).map(|i| svc(&format!("s{i}"))).collect();
                plan_services(&state, &d, &all)
            } else {
                plan(&state, &d)
            };
            apply(&mut fake, &p);
            ipv6_frontends_seen += fake.snapshot.frontends6.len();
            state = p.next;
            assert_eq!(state.held(), summed(&state), "seed {seed} step {step}");
            let snap = state.to_snapshot();
            assert_eq!(
                state.backend_counts(),
                (snap.backends.len() as u64, snap.backends6.len() as u64),
                "seed {seed} step {step}"
            );
            if step % 7 == 6 {
                // Restart: adopt the maps, nothing to write.
                state = Programmed::from_snapshot(&fake.snapshot);
                assert_eq!(state.held(), summed(&state), "seed {seed} step {step}");
                let again = plan(&state, &d);
                assert!(
                    again.ops.is_empty(),
                    "seed {seed} step {step}: {:?}",
                    again.ops
                );
                state = again.next;
            }
            last = d;
        }
        let fresh = plan(&Programmed::default(), &last).next.to_snapshot();
        assert_eq!(canonical(&fake.snapshot), canonical(&fresh), "seed {seed}");
        assert_eq!(
            crate::dataplane::fake::canonical6(&fake.snapshot),
            crate::dataplane::fake::canonical6(&fresh),
            "seed {seed}"
        );
        assert!(plan(&state, &last).ops.is_empty());
    }
    assert!(
        ipv6_frontends_seen > 0,
        "the sequences exercise both families"
    );
}

#[test]
fn scales_to_10k_services_and_100k_backends() {
    let mut items = Vec::new();
    for s in 0..10_000u32 {
        let key = FrontendKey {
            addr: [10, 96, (s >> 8) as u8, s as u8],
            port: 80,
            proto: PROTO_TCP,
            scope: SCOPE_ANY,
        };
        let backends = (0..10u32)
            .map(|b| {
                let n = s * 10 + b;
                Backend {
                    addr: [10, 244, (n >> 8) as u8, n as u8],
                    port: 8080 + (n >> 16) as u16,
                    proto: PROTO_TCP,
                    flags: 0,
                }
            })
            .collect();
        items.push((
            key,
            DesiredFrontend {
                service: ObjectRef::new("ns", format!("s{s}")),
                port_name: String::new(),
                backends,
                affinity_timeout_s: 0,
                flags: 0,
                source_ranges: vec![],
            },
        ));
    }
    let d = desired(items);
    let p = plan(&Programmed::default(), &d);
    assert_eq!(p.ops.len(), 100_000 + 100_000 + 10_000);
    assert_eq!(p.next.backend_count(), 100_000);
    let mut fake = FakeDataplane::default();
    apply(&mut fake, &p);
    let adopted = Programmed::from_snapshot(&fake.snapshot);
    assert!(plan(&adopted, &d).ops.is_empty());
    let p2 = plan(&p.next, &Desired::default());
    apply(&mut fake, &p2);
    assert_eq!(fake.snapshot, MapSnapshot::default());
}
