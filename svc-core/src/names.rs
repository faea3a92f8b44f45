//! How the datapath's numbers read to people: flag bits as words, protocol, scope and
//! conntrack state names, a flow's remaining lifetime. Shared by `inspect`, `explain` and
//! `trace`, so one bit has one name everywhere.
use svc_common::{
    ct_peer_key, CtEntryOf, CtKeyOf, CtTimeouts, ALL_CT_STATES, BACKEND_F_LOCAL,
    BACKEND_F_TERMINATING, CT_F_EXTERNAL, CT_F_HAIRPIN, CT_F_SNAT, FRONTEND_F_DENY_NODE,
    FRONTEND_F_DROP_NO_BACKEND, FRONTEND_F_EXTERNAL_IP, FRONTEND_F_EXTERNAL_SCOPE,
    FRONTEND_F_NODEPORT, FRONTEND_F_SOURCE_RANGES, PROTO_TCP, PROTO_UDP, SCOPE_ANY, SCOPE_EXTERNAL,
};

use crate::dataplane::MapSnapshot;
use crate::family::Family;

/// `CT_STATE_*` by name (`established`, `time_wait`, …), or the number if unknown.
pub fn ct_state_name(state: u8) -> String {
    ALL_CT_STATES
        .iter()
        .find(|(s, _)| *s == state)
        .map(|(_, n)| (*n).to_string())
        .unwrap_or_else(|| state.to_string())
}

/// How long the flow of entry `e` (keyed `k`, with `peer` the entry at its peer key) lives
/// without another packet, in ms: the longer of the two directions' remaining lifetimes, as
/// an entry is removed only when its peer has expired too. `None`: expired (the datapath
/// ignores it; the collector deletes it at its next pass).
pub fn remaining_ms<A: svc_common::Addr>(
    k: &CtKeyOf<A>,
    e: &CtEntryOf<A>,
    peer: Option<&CtEntryOf<A>>,
    now_ns: u64,
    t: &CtTimeouts,
) -> Option<u64> {
    let left = |key: &CtKeyOf<A>, entry: &CtEntryOf<A>| {
        (entry
            .last_seen_ns
            .saturating_add(t.for_entry(key.proto, entry)))
        .checked_sub(now_ns)
    };
    let own = left(k, e);
    let peer_key = ct_peer_key(k, e);
    let theirs = peer
        .filter(|p| ct_peer_key(&peer_key, p) == *k)
        .and_then(|p| left(&peer_key, p));
    own.max(theirs).map(|ns| ns / 1_000_000)
}

fn words<T: Copy + Into<u64>>(bits: T, names: &[(T, &str)]) -> Vec<String> {
    let bits: u64 = bits.into();
    let mut known = 0u64;
    let mut out: Vec<String> = names
        .iter()
        .filter(|(bit, _)| {
            let bit: u64 = (*bit).into();
            known |= bit;
            bits & bit != 0
        })
        .map(|(_, name)| (*name).to_string())
        .collect();
    if bits & !known != 0 {
        out.push(format!("{:#x}", bits & !known));
    }
    out
}

/// `FRONTEND_F_*` as words.
pub fn frontend_flag_words(flags: u32) -> Vec<String> {
    words(
        flags,
        &[
            (FRONTEND_F_NODEPORT, "nodeport"),
            (FRONTEND_F_EXTERNAL_IP, "external-ip"),
            (FRONTEND_F_EXTERNAL_SCOPE, "external-scope"),
            (FRONTEND_F_DROP_NO_BACKEND, "drop-no-backend"),
            (FRONTEND_F_SOURCE_RANGES, "source-ranges"),
            (FRONTEND_F_DENY_NODE, "deny-node"),
        ],
    )
}

/// `BACKEND_F_*` as words.
pub fn backend_flag_words(flags: u8) -> Vec<String> {
    words(
        flags,
        &[
            (BACKEND_F_LOCAL, "local"),
            (BACKEND_F_TERMINATING, "terminating"),
        ],
    )
}

/// `CT_F_*` as words.
pub fn ct_flag_words(flags: u8) -> Vec<String> {
    words(
        flags,
        &[
            (CT_F_SNAT, "snat"),
            (CT_F_HAIRPIN, "hairpin"),
            (CT_F_EXTERNAL, "external"),
        ],
    )
}

/// TCP header flag bits as words.
pub fn tcp_flag_words(flags: u8) -> Vec<String> {
    let names = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x08, "PSH"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ];
    words(flags, &names)
}

/// `tcp`, `udp`, or the number.
pub fn proto_name(proto: u8) -> String {
    match proto {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        p => p.to_string(),
    }
}

/// `any`, `external`, or the number.
pub fn scope_name(scope: u8) -> String {
    match scope {
        SCOPE_ANY => "any".into(),
        SCOPE_EXTERNAL => "external".into(),
        s => s.to_string(),
    }
}

/// The source-range prefixes (`SVC_SOURCE_RANGES`, `SVC_SOURCE_RANGES6`) of frontend `id`
/// of family `A`, as `a.b.c.d/len` or `2001:db8::/48`.
pub fn source_ranges_of<A: Family>(snap: &MapSnapshot, id: u32) -> Vec<String> {
    A::snap_ranges(snap)
        .iter()
        .filter(|r| r.frontend_id == id)
        .map(|r| format!("{}/{}", A::to_ip(r.addr), r.len))
        .collect()
}
