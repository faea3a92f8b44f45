//! Per-CPU counters: one per (hook, reason), see `svc_common::stat_index`.
use svc_common::{stat_index, Hook, Reason};

use crate::maps::SVC_STATS;

#[inline(always)]
pub(crate) fn count(hook: Hook, reason: Reason) {
    if let Some(ptr) = SVC_STATS.get_ptr_mut(stat_index(hook, reason)) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *ptr += 1 };
    }
}
