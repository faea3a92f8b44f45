//! Restart: adopting pinned maps (even broken ones) and planning from them.

use super::*;

#[test]
fn restart_adoption_plans_no_ops() {
    let d = desired(vec![
        (fk(10, 80), fe("web", &[1, 2, 3])),
        (fk(10, 443), fe("web", &[1, 2, 3])),
        (fk(11, 53), fe("dns", &[4])),
        (fk(12, 80), fe("empty", &[])),
    ]);
    let mut fake = FakeDataplane::default();
    let p = plan(&Programmed::default(), &d);
    apply(&mut fake, &p);
    let adopted = Programmed::from_snapshot(&fake.snapshot().expect("snapshot"));
    let after = plan(&adopted, &d);
    assert!(after.ops.is_empty(), "{:?}", after.ops);
    assert_eq!(after.next.to_snapshot(), fake.snapshot);
    // Owners are learnt by that first plan, so incremental plans work afterwards.
    assert_eq!(after.next.frontends_of(&svc("web")).count(), 2);
}

#[test]
fn from_snapshot_then_to_snapshot_round_trips_even_junk() {
    let mut snap = MapSnapshot::default();
    snap.frontends.insert(
        fk(1, 80),
        Frontend {
            id: 5,
            backend_count: 2,
            flags: 0,
            affinity_timeout_s: 0,
        },
    );
    snap.frontends.insert(
        fk(2, 80),
        Frontend {
            id: 5,
            backend_count: 1,
            flags: 0,
            affinity_timeout_s: 0,
        },
    );
    snap.frontends.insert(
        fk(3, 80),
        Frontend {
            id: 0,
            backend_count: 0,
            flags: 7,
            affinity_timeout_s: 0,
        },
    );
    snap.slots.insert(
        SlotKey {
            frontend_id: 5,
            slot: 1,
        },
        Slot { backend_id: 9 },
    );
    snap.slots.insert(
        SlotKey {
            frontend_id: 5,
            slot: 3,
        },
        Slot { backend_id: 9 },
    );
    snap.slots.insert(
        SlotKey {
            frontend_id: 77,
            slot: 1,
        },
        Slot { backend_id: 1234 },
    );
    snap.backends.insert(9, be(9));
    snap.backends.insert(10, be(9));
    snap.backends.insert(u32::MAX, be(200));
    assert_eq!(Programmed::from_snapshot(&snap).to_snapshot(), snap);
}

#[test]
fn adoption_cleans_strays_and_unreferenced_backends() {
    let mut snap = MapSnapshot::default();
    snap.frontends.insert(
        fk(1, 80),
        Frontend {
            id: 1,
            backend_count: 1,
            flags: 0,
            affinity_timeout_s: 0,
        },
    );
    snap.slots.insert(
        SlotKey {
            frontend_id: 1,
            slot: 1,
        },
        Slot { backend_id: 1 },
    );
    snap.slots.insert(
        SlotKey {
            frontend_id: 1,
            slot: 2,
        },
        Slot { backend_id: 2 },
    ); // beyond count
    snap.slots.insert(
        SlotKey {
            frontend_id: 40,
            slot: 1,
        },
        Slot { backend_id: 99 },
    ); // no frontend
    snap.backends.insert(1, be(1));
    snap.backends.insert(2, be(2)); // named only by a stray
    snap.backends.insert(3, be(3)); // named by nothing
    let mut fake = FakeDataplane::with_snapshot(snap.clone());
    let adopted = Programmed::from_snapshot(&snap);
    let d = desired(vec![(fk(1, 80), fe("a", &[1]))]);
    let p = plan(&adopted, &d);
    assert_eq!(
        op_kinds(&p.ops),
        ["DeleteSlot", "DeleteSlot", "DeleteBackend", "DeleteBackend"]
    );
    apply(&mut fake, &p);
    assert_eq!(
        fake.snapshot,
        plan(&Programmed::default(), &d).next.to_snapshot()
    );
}

#[test]
fn adoption_rewrites_dangling_and_missing_slots_and_conflicting_ids() {
    let mut snap = MapSnapshot::default();
    // fk1: slot 1 names a missing backend, slot 2 is missing.
    snap.frontends.insert(
        fk(1, 80),
        Frontend {
            id: 1,
            backend_count: 2,
            flags: 0,
            affinity_timeout_s: 0,
        },
    );
    snap.slots.insert(
        SlotKey {
            frontend_id: 1,
            slot: 1,
        },
        Slot { backend_id: 50 },
    );
    // fk2 reuses id 1: it must get its own id.
    snap.frontends.insert(
        fk(2, 80),
        Frontend {
            id: 1,
            backend_count: 2,
            flags: 0,
            affinity_timeout_s: 0,
        },
    );
    snap.backends.insert(7, be(1));
    let d = desired(vec![
        (fk(1, 80), fe("a", &[1, 2])),
        (fk(2, 80), fe("b", &[1])),
    ]);
    let p = plan(&Programmed::from_snapshot(&snap), &d);
    let next = p.next.to_snapshot();
    assert_eq!(
        canonical(&next),
        canonical(&plan(&Programmed::default(), &d).next.to_snapshot())
    );
    assert_ne!(
        p.next.frontend(fk(1, 80)).expect("programmed").id,
        p.next.frontend(fk(2, 80)).expect("programmed").id
    );
    assert_eq!(
        p.next.backend_id(&be(1)),
        Some(7),
        "adopted backend id reused"
    );
    // Applying it on top of the (already broken) maps leaves them exactly as planned.
    let mut dp = MapApply(snap);
    for op in &p.ops {
        dp.apply(op);
    }
    assert_eq!(dp.0, next);
    assert!(plan(&p.next, &d).ops.is_empty());
}

/// Applies ops without checks, for starting states that already break the invariant.
struct MapApply(MapSnapshot);

impl MapApply {
    fn apply(&mut self, op: &MapOp) {
        let s = &mut self.0;
        match op {
            MapOp::PutBackend { id, backend } => drop(s.backends.insert(*id, *backend)),
            MapOp::PutSlot { key, slot } => drop(s.slots.insert(*key, *slot)),
            MapOp::PutFrontend { key, value } => drop(s.frontends.insert(*key, *value)),
            MapOp::DeleteFrontend { key } => assert!(s.frontends.remove(key).is_some()),
            MapOp::DeleteSlot { key } => assert!(s.slots.remove(key).is_some(), "{key:?}"),
            MapOp::DeleteBackend { id } => assert!(s.backends.remove(id).is_some()),
            MapOp::PutSourceRange { range } => drop(s.source_ranges.insert(*range)),
            MapOp::DeleteSourceRange { range } => assert!(s.source_ranges.remove(range)),
            MapOp::PutBackend6 { id, backend } => drop(s.backends6.insert(*id, *backend)),
            MapOp::PutFrontend6 { key, value } => drop(s.frontends6.insert(*key, *value)),
            MapOp::DeleteFrontend6 { key } => assert!(s.frontends6.remove(key).is_some()),
            MapOp::DeleteBackend6 { id } => assert!(s.backends6.remove(id).is_some()),
            MapOp::PutSourceRange6 { range } => drop(s.source_ranges6.insert(*range)),
            MapOp::DeleteSourceRange6 { range } => assert!(s.source_ranges6.remove(range)),
        }
    }
}
