//! [`plan_services`]: incremental plans that touch only the changed Services.

use super::*;

#[test]
fn plan_services_touches_only_the_changed_services() {
    let d1 = desired(vec![(fk(1, 80), fe("a", &[1])), (fk(2, 80), fe("b", &[2]))]);
    let p1 = plan(&Programmed::default(), &d1);
    // b changes; a changes too in `desired` but is not listed, so it is left alone.
    let d2 = desired(vec![
        (fk(1, 80), fe("a", &[9])),
        (fk(2, 80), fe("b", &[2, 3])),
    ]);
    let changed = BTreeSet::from([svc("b")]);
    let p2 = plan_services(&p1.next, &d2, &changed);
    assert_eq!(op_kinds(&p2.ops), ["PutBackend", "PutSlot", "PutFrontend"]);
    let mut fake = FakeDataplane::default();
    apply(&mut fake, &p1);
    apply(&mut fake, &p2);
    // A full plan afterwards catches up with a.
    let p3 = plan(&p2.next, &d2);
    apply(&mut fake, &p3);
    assert_eq!(
        canonical(&fake.snapshot),
        canonical(&plan(&Programmed::default(), &d2).next.to_snapshot())
    );
}

#[test]
fn plan_services_removes_frontends_the_service_no_longer_has() {
    let d1 = desired(vec![
        (fk(1, 80), fe("a", &[1])),
        (fk(1, 443), fe("a", &[1])),
        (fk(2, 80), fe("b", &[2])),
    ]);
    let p1 = plan(&Programmed::default(), &d1);
    let d2 = desired(vec![(fk(1, 80), fe("a", &[1])), (fk(2, 80), fe("b", &[2]))]);
    let p2 = plan_services(&p1.next, &d2, &BTreeSet::from([svc("a")]));
    assert_eq!(op_kinds(&p2.ops), ["DeleteFrontend", "DeleteSlot"]);
    // Service deleted altogether.
    let d3 = desired(vec![(fk(2, 80), fe("b", &[2]))]);
    let p3 = plan_services(&p2.next, &d3, &BTreeSet::from([svc("a")]));
    assert_eq!(
        op_kinds(&p3.ops),
        ["DeleteFrontend", "DeleteSlot", "DeleteBackend"]
    );
    assert_eq!(
        canonical(&p3.next.to_snapshot()),
        canonical(&plan(&Programmed::default(), &d3).next.to_snapshot())
    );
    let mut fake = FakeDataplane::default();
    for p in [&p1, &p2, &p3] {
        apply(&mut fake, p);
    }
}

#[test]
fn a_services_frontends_share_one_copy_of_its_name() {
    let d1 = desired(vec![
        (fk(1, 80), fe("a", &[1])),
        (fk(1, 443), fe("a", &[1])),
        (fk(2, 80), fe("b", &[2])),
    ]);
    let p1 = plan(&Programmed::default(), &d1);
    let owner = |p: &Plan, k: FrontendKey| {
        p.next
            .frontend(k)
            .expect("programmed")
            .owner
            .clone()
            .expect("owned")
    };
    assert!(std::sync::Arc::ptr_eq(
        &owner(&p1, fk(1, 80)),
        &owner(&p1, fk(1, 443))
    ));
    assert_eq!(*owner(&p1, fk(2, 80)), svc("b"));
    // Moved to another Service: the frontend names that one, and the index follows.
    let d2 = desired(vec![
        (fk(1, 80), fe("a", &[1])),
        (fk(1, 443), fe("b", &[1])),
        (fk(2, 80), fe("b", &[2])),
    ]);
    let p2 = plan(&p1.next, &d2);
    assert!(std::sync::Arc::ptr_eq(
        &owner(&p2, fk(1, 443)),
        &owner(&p2, fk(2, 80))
    ));
    assert_eq!(p2.next.frontends_of(&svc("a")).count(), 1);
    assert_eq!(p2.next.frontends_of(&svc("b")).count(), 2);
}
