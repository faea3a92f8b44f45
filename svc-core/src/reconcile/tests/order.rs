//! The update order, op by op: puts before the count that exposes them, deletes after it,
//! nothing written when nothing changed, surviving backends kept in their slots.

use super::*;

#[test]
fn plan_from_empty_writes_backends_then_slots_then_frontend() {
    let d = desired(vec![(fk(10, 80), fe("web", &[2, 1]))]);
    let p = plan(&Programmed::default(), &d);
    assert_eq!(
        p.ops,
        vec![
            MapOp::PutBackend {
                id: 1,
                backend: be(1)
            },
            MapOp::PutBackend {
                id: 2,
                backend: be(2)
            },
            MapOp::PutSlot {
                key: SlotKey {
                    frontend_id: 1,
                    slot: 1
                },
                slot: Slot { backend_id: 1 }
            },
            MapOp::PutSlot {
                key: SlotKey {
                    frontend_id: 1,
                    slot: 2
                },
                slot: Slot { backend_id: 2 }
            },
            MapOp::PutFrontend {
                key: fk(10, 80),
                value: Frontend {
                    id: 1,
                    backend_count: 2,
                    flags: 0,
                    affinity_timeout_s: 0
                }
            },
        ]
    );
    let mut fake = FakeDataplane::default();
    apply(&mut fake, &p);
    assert_eq!(fake.writes, 5);
}

#[test]
fn frontend_without_backends_is_programmed_with_count_zero() {
    let p = plan(
        &Programmed::default(),
        &desired(vec![(fk(10, 80), fe("web", &[]))]),
    );
    assert_eq!(op_kinds(&p.ops), ["PutFrontend"]);
    apply(&mut FakeDataplane::default(), &p);
}

#[test]
fn unchanged_desired_state_plans_no_ops() {
    let d = desired(vec![
        (fk(10, 80), fe("web", &[1, 2, 3])),
        (fk(11, 53), fe("dns", &[4])),
    ]);
    let first = plan(&Programmed::default(), &d);
    let again = plan(&first.next, &d);
    assert!(again.ops.is_empty(), "{:?}", again.ops);
    assert_eq!(again.next, first.next);
}

#[test]
fn shrink_writes_the_count_before_deleting_slots() {
    let p1 = plan(
        &Programmed::default(),
        &desired(vec![(fk(1, 80), fe("a", &[1, 2, 3]))]),
    );
    let p2 = plan(&p1.next, &desired(vec![(fk(1, 80), fe("a", &[1]))]));
    assert_eq!(
        op_kinds(&p2.ops),
        [
            "PutFrontend",
            "DeleteSlot",
            "DeleteSlot",
            "DeleteBackend",
            "DeleteBackend"
        ]
    );
    let mut fake = FakeDataplane::default();
    apply(&mut fake, &p1);
    apply(&mut fake, &p2);
}

#[test]
fn grow_writes_slots_before_the_count() {
    let p1 = plan(
        &Programmed::default(),
        &desired(vec![(fk(1, 80), fe("a", &[1]))]),
    );
    let p2 = plan(&p1.next, &desired(vec![(fk(1, 80), fe("a", &[1, 2]))]));
    assert_eq!(op_kinds(&p2.ops), ["PutBackend", "PutSlot", "PutFrontend"]);
}

#[test]
fn removed_frontend_is_deleted_before_its_slots_and_before_anything_is_put() {
    let p1 = plan(
        &Programmed::default(),
        &desired(vec![
            (fk(1, 80), fe("a", &[1, 2])),
            (fk(2, 80), fe("b", &[3])),
        ]),
    );
    let p2 = plan(&p1.next, &desired(vec![(fk(2, 80), fe("b", &[3, 4]))]));
    // Removals first, so a full map gets room before the puts; a's backends are named by
    // no wanted frontend, so they go at once too.
    assert_eq!(
        op_kinds(&p2.ops),
        [
            "DeleteFrontend",
            "DeleteSlot",
            "DeleteSlot",
            "DeleteBackend",
            "DeleteBackend",
            "PutBackend",
            "PutSlot",
            "PutFrontend",
        ]
    );
    let mut fake = FakeDataplane::default();
    apply(&mut fake, &p1);
    apply(&mut fake, &p2);
}

#[test]
fn a_surviving_backend_keeps_its_slot() {
    let p1 = plan(
        &Programmed::default(),
        &desired(vec![(fk(1, 80), fe("a", &[1, 2, 3]))]),
    );
    let slot_of = |p: &Programmed, b: u8| {
        let id = p.backend_id(&be(b)).expect("programmed");
        p.frontend(fk(1, 80))
            .expect("programmed")
            .slots
            .iter()
            .position(|s| *s == Some(id))
    };
    assert_eq!(slot_of(&p1.next, 3), Some(2));
    // Backend 1 goes, 4 comes: 2 and 3 stay where they are, 4 takes slot 1.
    let p2 = plan(&p1.next, &desired(vec![(fk(1, 80), fe("a", &[2, 3, 4]))]));
    assert_eq!(slot_of(&p2.next, 2), Some(1));
    assert_eq!(slot_of(&p2.next, 3), Some(2));
    assert_eq!(slot_of(&p2.next, 4), Some(0));
    assert_eq!(
        op_kinds(&p2.ops),
        ["PutBackend", "PutSlot", "DeleteBackend"]
    );
    // Shrinking moves a survivor from a vanishing slot into a hole.
    let p3 = plan(&p2.next, &desired(vec![(fk(1, 80), fe("a", &[3]))]));
    assert_eq!(slot_of(&p3.next, 3), Some(0));
    let mut fake = FakeDataplane::default();
    for p in [&p1, &p2, &p3] {
        apply(&mut fake, p);
    }
}

#[test]
fn affinity_change_rewrites_only_the_frontend() {
    let p1 = plan(
        &Programmed::default(),
        &desired(vec![(fk(1, 80), fe("a", &[1]))]),
    );
    let mut sticky = fe("a", &[1]);
    sticky.affinity_timeout_s = 10_800;
    let p2 = plan(&p1.next, &desired(vec![(fk(1, 80), sticky)]));
    assert_eq!(op_kinds(&p2.ops), ["PutFrontend"]);
}
