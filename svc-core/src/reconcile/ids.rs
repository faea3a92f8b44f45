//! [`IdAllocator`]: the lowest free frontend or backend id, with free ids kept as ranges so sparse
//! or huge adopted ids cost memory by the gap, not by the largest id.

use std::collections::{BTreeMap, BTreeSet};

/// Hands out the lowest free id ≥ 1. Free ids are kept as disjoint ranges (start → end,
/// inclusive), so adopting maps with sparse or huge ids costs memory proportional to the number
/// of gaps, not to the largest id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct IdAllocator {
    free: BTreeMap<u32, u32>,
}

impl Default for IdAllocator {
    fn default() -> Self {
        Self {
            free: BTreeMap::from([(1, u32::MAX)]),
        }
    }
}

impl IdAllocator {
    pub(super) fn excluding(used: impl Iterator<Item = u32>) -> Self {
        let used: BTreeSet<u32> = used.filter(|&id| id != 0).collect();
        let mut free = BTreeMap::new();
        let mut next = 1u32;
        for id in used {
            if id > next {
                free.insert(next, id - 1);
            }
            match id.checked_add(1) {
                Some(n) => next = n,
                None => return Self { free },
            }
        }
        free.insert(next, u32::MAX);
        Self { free }
    }

    pub(super) fn alloc(&mut self) -> u32 {
        // Exhaustion needs 2^32 - 1 live ids, far beyond any map's capacity and this process's
        // memory; treat it as the bug it would be.
        let (start, end) = self.free.pop_first().expect("u32 id space exhausted");
        if start < end {
            self.free.insert(start + 1, end);
        }
        start
    }

    pub(super) fn release(&mut self, id: u32) {
        let (mut start, mut end) = (id, id);
        if let Some((&s, &e)) = self.free.range(..id).next_back() {
            if e.checked_add(1) == Some(id) {
                start = s;
                self.free.remove(&s);
            }
        }
        if let Some(next) = id.checked_add(1) {
            if let Some(e) = self.free.remove(&next) {
                end = e;
            }
        }
        self.free.insert(start, end);
    }
}
