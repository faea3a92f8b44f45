//! IPv4 fragments of translated flows.
//!
//! netfilter reassembles before NAT (nf_defrag); a BPF program cannot, so it translates each
//! fragment on its own, as Cilium does: the first fragment carries the L4 header and is
//! translated like any packet, and its ports are remembered under the datagram's identity
//! (source, destination, IP id, protocol as they arrive). Later fragments carry only the IP
//! header: their ports are looked up here, and conntrack then tells how to rewrite their
//! addresses. The L4 checksum lives in the first fragment only and covers the whole datagram,
//! so the first fragment's incremental update is all the L4 checksum needs.
//!
//! A later fragment whose first fragment was not seen (not a translated flow's, or overtaken
//! on the way) is passed untouched and counted as `Reason::Fragment`.
use super::A;
use svc_common::{FragPorts, Reason, FRAG_TIMEOUT_NS};

use crate::{
    family::Family,
    parse::{FlowOf, FRAG_FIRST},
    Outcome,
};

/// After a first fragment was translated: remember its ports for the later ones.
#[inline(always)]
pub(crate) fn remember(flow: &FlowOf<A>, now: u64) {
    if flow.frag != FRAG_FIRST {
        return;
    }
    let ports = FragPorts {
        src_port: flow.sport,
        dst_port: flow.dport,
        _pad: 0,
        created_ns: now,
    };
    // Best effort: without it the later fragments pass untranslated and are counted.
    let _ = A::frags().insert(&A::frag_key(flow), &ports, 0);
}

/// A later fragment: fills in the ports its first fragment carried.
#[inline(always)]
pub(crate) fn later(flow: &mut FlowOf<A>, now: u64) -> Result<(), Outcome> {
    // SAFETY: the value is copied out at once.
    let Some(ports) = (unsafe { A::frags().get(&A::frag_key(flow)) }).copied() else {
        return Err(Outcome::pass(Reason::Fragment));
    };
    // An IP id reused long after (it wraps at 65536) names another datagram.
    if now.saturating_sub(ports.created_ns) > FRAG_TIMEOUT_NS {
        return Err(Outcome::pass(Reason::Fragment));
    }
    flow.sport = ports.src_port;
    flow.dport = ports.dst_port;
    Ok(())
}
