//! Frontend and backend ids: kept, shared per tuple, never reused within a plan, lowest free
//! first.

use super::*;
use crate::reconcile::ids::IdAllocator;

#[test]
fn existing_frontends_keep_their_ids_and_new_ones_get_the_lowest_free() {
    let d1 = desired(vec![
        (fk(1, 80), fe("a", &[1])),
        (fk(2, 80), fe("b", &[1])),
        (fk(3, 80), fe("c", &[1])),
    ]);
    let p1 = plan(&Programmed::default(), &d1);
    let d2 = desired(vec![(fk(1, 80), fe("a", &[1])), (fk(3, 80), fe("c", &[1]))]);
    let p2 = plan(&p1.next, &d2);
    let d3 = desired(vec![
        (fk(1, 80), fe("a", &[1])),
        (fk(3, 80), fe("c", &[1])),
        (fk(9, 80), fe("z", &[1])),
    ]);
    let p3 = plan(&p2.next, &d3);
    let ids: Vec<u32> = p3.next.frontends().values().map(|f| f.id).collect();
    assert_eq!(ids, [1, 3, 2], "fk(9) takes the freed id 2");
}

#[test]
fn ids_freed_in_a_plan_are_not_reused_by_the_same_plan() {
    let p1 = plan(
        &Programmed::default(),
        &desired(vec![(fk(1, 80), fe("a", &[1]))]),
    );
    // Replace frontend and backend in one plan: the new ones must not take id 1 while the
    // old frontend/backend 1 are still live in the maps.
    let p2 = plan(&p1.next, &desired(vec![(fk(2, 80), fe("b", &[2]))]));
    assert_eq!(p2.next.frontend(fk(2, 80)).expect("programmed").id, 2);
    assert_eq!(p2.next.backend_id(&be(2)), Some(2));
    let mut fake = FakeDataplane::default();
    apply(&mut fake, &p1);
    apply(&mut fake, &p2);
    // And the next plan reuses the lowest free ids again.
    let p3 = plan(
        &p2.next,
        &desired(vec![(fk(2, 80), fe("b", &[2])), (fk(3, 80), fe("c", &[3]))]),
    );
    assert_eq!(p3.next.frontend(fk(3, 80)).expect("programmed").id, 1);
    assert_eq!(p3.next.backend_id(&be(3)), Some(1));
}

#[test]
fn a_backend_shared_by_frontends_has_one_id() {
    let d = desired(vec![
        (fk(1, 80), fe("a", &[1, 2])),
        (fk(2, 80), fe("b", &[2, 3])),
    ]);
    let p = plan(&Programmed::default(), &d);
    assert_eq!(
        p.ops
            .iter()
            .filter(|op| matches!(op, MapOp::PutBackend { .. }))
            .count(),
        3
    );
    let snap = p.next.to_snapshot();
    assert_eq!(snap.backends.len(), 3);
    // Removing one user keeps the shared backend.
    let p2 = plan(&p.next, &desired(vec![(fk(2, 80), fe("b", &[2, 3]))]));
    assert_eq!(
        p2.ops
            .iter()
            .filter(|op| matches!(op, MapOp::DeleteBackend { .. }))
            .collect::<Vec<_>>(),
        vec![&MapOp::DeleteBackend { id: 1 }]
    );
}

#[test]
fn backend_ids_are_reused_for_the_same_tuple_and_distinct_per_flags() {
    let p1 = plan(
        &Programmed::default(),
        &desired(vec![(fk(1, 80), fe("a", &[1]))]),
    );
    let p2 = plan(
        &p1.next,
        &desired(vec![(fk(1, 80), fe("a", &[1])), (fk(2, 80), fe("b", &[1]))]),
    );
    assert!(p2
        .ops
        .iter()
        .all(|op| !matches!(op, MapOp::PutBackend { .. })));
    let mut term = fe("a", &[]);
    term.backends = vec![Backend {
        flags: BACKEND_F_TERMINATING,
        ..be(1)
    }];
    let p3 = plan(
        &p2.next,
        &desired(vec![(fk(1, 80), term), (fk(2, 80), fe("b", &[1]))]),
    );
    assert_eq!(p3.next.backend_count(), 2);
}

#[test]
fn id_allocator_hands_out_the_lowest_free_id() {
    let mut a = IdAllocator::excluding([3, 5, u32::MAX].into_iter());
    assert_eq!((a.alloc(), a.alloc(), a.alloc(), a.alloc()), (1, 2, 4, 6));
    a.release(2);
    a.release(1);
    assert_eq!(a.alloc(), 1);
    a.release(4);
    a.release(6);
    assert_eq!(a, IdAllocator::excluding([1, 3, 5, u32::MAX].into_iter()));
}
