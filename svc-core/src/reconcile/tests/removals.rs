//! [`Removals`]: the (frontend, backend) pairs and frontends a plan takes away, for the flushes
//! that follow it.

use super::*;

#[test]
fn removed_backend_ids_are_those_no_new_slot_names() {
    assert_eq!(
        removed_backend_ids(&[Some(1), Some(2), Some(3)], &[3, 1]),
        vec![2]
    );
    assert_eq!(removed_backend_ids(&[Some(1), None, Some(1)], &[]), vec![1]);
    assert_eq!(
        removed_backend_ids(&[Some(1), Some(2)], &[2, 1, 4]),
        Vec::<u32>::new()
    );
    assert_eq!(removed_backend_ids(&[], &[1]), Vec::<u32>::new());
}

#[test]
fn a_plan_reports_the_pairs_it_removes_and_the_frontends_it_deletes() {
    let udp = FrontendKey {
        proto: PROTO_UDP,
        ..fk(2, 53)
    };
    let p1 = plan(
        &Programmed::default(),
        &desired(vec![
            (fk(1, 80), fe("a", &[1, 2, 3])),
            (udp, fe("dns", &[1, 2])),
            (fk(3, 80), fe("c", &[4])),
        ]),
    );
    assert_eq!(p1.removals, Removals::default(), "nothing existed before");
    let id = |key: &FrontendKey| p1.next.frontend(*key).expect("programmed").id;
    let backend = |last: u8| p1.next.backend_id(&be(last)).expect("programmed");
    // "a" loses backend 2 and gains 5; "dns" loses 1; "c" is deleted.
    let p2 = plan(
        &p1.next,
        &desired(vec![
            (fk(1, 80), fe("a", &[1, 3, 5])),
            (udp, fe("dns", &[2])),
        ]),
    );
    assert_eq!(
        p2.removals.backends,
        vec![
            // Removed frontends are planned (and written) first.
            RemovedBackend {
                frontend_id: id(&fk(3, 80)),
                proto: PROTO_TCP,
                backend_id: backend(4),
            },
            RemovedBackend {
                frontend_id: id(&fk(1, 80)),
                proto: PROTO_TCP,
                backend_id: backend(2),
            },
            RemovedBackend {
                frontend_id: id(&udp),
                proto: PROTO_UDP,
                backend_id: backend(1),
            },
        ]
    );
    assert_eq!(p2.removals.frontend_ids, vec![id(&fk(3, 80))]);
    assert_eq!(p2.removals.udp_pairs(), vec![(id(&udp), backend(1))]);
    // The same state again removes nothing.
    assert!(plan(
        &p2.next,
        &desired(vec![
            (fk(1, 80), fe("a", &[1, 3, 5])),
            (udp, fe("dns", &[2])),
        ])
    )
    .removals
    .is_empty());
}

#[test]
fn incremental_plans_report_removals_of_the_changed_services() {
    let p1 = plan(
        &Programmed::default(),
        &desired(vec![
            (fk(1, 80), fe("a", &[1, 2])),
            (fk(2, 80), fe("b", &[3])),
        ]),
    );
    let id_b = p1.next.frontend(fk(2, 80)).expect("programmed").id;
    let changed: BTreeSet<ObjectRef> = [svc("b")].into();
    let p2 = plan_services(
        &p1.next,
        &desired(vec![(fk(1, 80), fe("a", &[1]))]),
        &changed,
    );
    assert_eq!(p2.removals.frontend_ids, vec![id_b]);
    assert_eq!(
        p2.removals.backends.len(),
        1,
        "only b's backend: a was not re-planned"
    );
    assert_eq!(p2.removals.backends[0].frontend_id, id_b);
}
