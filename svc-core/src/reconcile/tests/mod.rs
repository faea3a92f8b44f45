//! The planner's tests: every plan is applied to the fake dataplane, which checks the update-order
//! invariant after each op. This file holds the shared helpers; each child file tests one concern.

mod adoption;
mod families;
mod ids;
mod north_south;
mod order;
mod random;
mod removals;
mod services;

use std::collections::BTreeSet;

use svc_common::{
    Backend, Frontend, FrontendKey, Slot, SlotKey, BACKEND_F_TERMINATING, FRONTEND_F_SOURCE_RANGES,
    PROTO_TCP, PROTO_UDP, SCOPE_ANY,
};

use super::*;
use crate::dataplane::fake::{canonical, FakeDataplane};
use crate::dataplane::{Dataplane, MapSnapshot, SourceRange};
use crate::model::{cidr, DesiredFrontend, Ipv4Net};

fn fk(last: u8, port: u16) -> FrontendKey {
    FrontendKey {
        addr: [10, 96, 0, last],
        port,
        proto: PROTO_TCP,
        scope: SCOPE_ANY,
    }
}

fn be(last: u8) -> Backend {
    Backend {
        addr: [10, 244, 1, last],
        port: 8080,
        proto: PROTO_TCP,
        flags: 0,
    }
}

fn svc(name: &str) -> ObjectRef {
    ObjectRef::new("default", name)
}

fn fe(service: &str, backends: &[u8]) -> DesiredFrontend {
    let mut backends: Vec<Backend> = backends.iter().map(|&b| be(b)).collect();
    backends.sort();
    DesiredFrontend {
        service: svc(service),
        port_name: String::new(),
        backends,
        affinity_timeout_s: 0,
        flags: 0,
        source_ranges: vec![],
    }
}

fn desired(items: Vec<(FrontendKey, DesiredFrontend)>) -> Desired {
    Desired {
        frontends: items.into_iter().collect(),
        ..Desired::default()
    }
}

/// Applies `plan` to `fake` (which checks the invariant after every op) and checks the
/// result is exactly what the plan says.
fn apply(fake: &mut FakeDataplane, plan: &Plan) {
    for op in &plan.ops {
        fake.apply(op)
            .unwrap_or_else(|e| panic!("{e}\nplan: {:#?}", plan.ops));
    }
    assert_eq!(fake.snapshot, plan.next.to_snapshot());
    fake.check_all().expect("invariant holds at the end");
}

fn op_kinds(ops: &[MapOp]) -> Vec<&'static str> {
    ops.iter()
        .map(|op| match op {
            MapOp::PutBackend { .. } => "PutBackend",
            MapOp::PutSlot { .. } => "PutSlot",
            MapOp::PutFrontend { .. } => "PutFrontend",
            MapOp::DeleteFrontend { .. } => "DeleteFrontend",
            MapOp::DeleteSlot { .. } => "DeleteSlot",
            MapOp::DeleteBackend { .. } => "DeleteBackend",
            MapOp::PutSourceRange { .. } => "PutSourceRange",
            MapOp::DeleteSourceRange { .. } => "DeleteSourceRange",
            MapOp::PutBackend6 { .. } => "PutBackend6",
            MapOp::PutFrontend6 { .. } => "PutFrontend6",
            MapOp::DeleteFrontend6 { .. } => "DeleteFrontend6",
            MapOp::DeleteBackend6 { .. } => "DeleteBackend6",
            MapOp::PutSourceRange6 { .. } => "PutSourceRange6",
            MapOp::DeleteSourceRange6 { .. } => "DeleteSourceRange6",
        })
        .collect()
}
