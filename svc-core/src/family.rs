//! The two address families, for the parts of the agent that handle both: the frontend and
//! backend keys tagged with their family ([`AnyFrontendKey`], [`AnyBackend`]) that the
//! reconcile bookkeeping keys its state by, and [`Family`], what the model needs to know of
//! each family to decide per family with one piece of code.
//!
//! The ABI keeps each family in maps of its own (`SVC_FRONTENDS` / `SVC_FRONTENDS6`, …) but
//! frontend ids and backend ids are one space over both (svc-common's module docs): a slot
//! names a backend id, and the family of the frontend owning the slot says which backend map
//! holds it. So the id allocators and the slot map are shared, and everything else is kept
//! per family.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use svc_common::{
    Backend, Backend6, BackendOf, Frontend, FrontendKey, FrontendKey6, FrontendKeyOf,
};

use crate::dataplane::{MapOp, MapSnapshot, SourceRangeOf};

/// A frontend key of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnyFrontendKey {
    /// An `SVC_FRONTENDS` key.
    V4(FrontendKey),
    /// An `SVC_FRONTENDS6` key.
    V6(FrontendKey6),
}

impl AnyFrontendKey {
    /// The frontend address.
    pub fn ip(&self) -> IpAddr {
        match self {
            Self::V4(k) => Ipv4Addr::from(k.addr).into(),
            Self::V6(k) => Ipv6Addr::from(k.addr).into(),
        }
    }
    /// The frontend port, host order.
    pub fn port(&self) -> u16 {
        match self {
            Self::V4(k) => k.port,
            Self::V6(k) => k.port,
        }
    }
    /// The IP protocol number.
    pub fn proto(&self) -> u8 {
        match self {
            Self::V4(k) => k.proto,
            Self::V6(k) => k.proto,
        }
    }
    /// The scope (`SCOPE_*`).
    pub fn scope(&self) -> u8 {
        match self {
            Self::V4(k) => k.scope,
            Self::V6(k) => k.scope,
        }
    }
    /// The same address, port and protocol with another scope.
    pub fn with_scope(&self, scope: u8) -> Self {
        match *self {
            Self::V4(k) => Self::V4(FrontendKey { scope, ..k }),
            Self::V6(k) => Self::V6(FrontendKey6 { scope, ..k }),
        }
    }
}

impl From<FrontendKey> for AnyFrontendKey {
    fn from(k: FrontendKey) -> Self {
        Self::V4(k)
    }
}

impl From<FrontendKey6> for AnyFrontendKey {
    fn from(k: FrontendKey6) -> Self {
        Self::V6(k)
    }
}

/// `10.96.0.10:80/tcp`, `[fd00::10]:80/tcp` (scope not shown).
impl fmt::Display for AnyFrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = crate::names::proto_name(self.proto());
        match self.ip() {
            IpAddr::V4(ip) => write!(f, "{ip}:{}/{proto}", self.port()),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}/{proto}", self.port()),
        }
    }
}

/// A backend of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnyBackend {
    /// An `SVC_BACKENDS` value.
    V4(Backend),
    /// An `SVC_BACKENDS6` value.
    V6(Backend6),
}

impl AnyBackend {
    /// The endpoint address.
    pub fn ip(&self) -> IpAddr {
        match self {
            Self::V4(b) => Ipv4Addr::from(b.addr).into(),
            Self::V6(b) => Ipv6Addr::from(b.addr).into(),
        }
    }
    /// The endpoint port, host order.
    pub fn port(&self) -> u16 {
        match self {
            Self::V4(b) => b.port,
            Self::V6(b) => b.port,
        }
    }
    /// `BACKEND_F_*` bits.
    pub fn flags(&self) -> u8 {
        match self {
            Self::V4(b) => b.flags,
            Self::V6(b) => b.flags,
        }
    }
    /// The IP protocol number.
    pub fn proto(&self) -> u8 {
        match self {
            Self::V4(b) => b.proto,
            Self::V6(b) => b.proto,
        }
    }
}

impl From<Backend> for AnyBackend {
    fn from(b: Backend) -> Self {
        Self::V4(b)
    }
}

impl From<Backend6> for AnyBackend {
    fn from(b: Backend6) -> Self {
        Self::V6(b)
    }
}

/// A source-range entry of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnySourceRange {
    /// An `SVC_SOURCE_RANGES` entry.
    V4(SourceRangeOf<[u8; 4]>),
    /// An `SVC_SOURCE_RANGES6` entry.
    V6(SourceRangeOf<svc_common::Addr6>),
}

impl AnySourceRange {
    /// Its `PutSourceRange` or `PutSourceRange6`.
    pub fn put_op(&self) -> MapOp {
        match *self {
            Self::V4(range) => MapOp::PutSourceRange { range },
            Self::V6(range) => MapOp::PutSourceRange6 { range },
        }
    }
    /// Its `DeleteSourceRange` or `DeleteSourceRange6`.
    pub fn delete_op(&self) -> MapOp {
        match *self {
            Self::V4(range) => MapOp::DeleteSourceRange { range },
            Self::V6(range) => MapOp::DeleteSourceRange6 { range },
        }
    }
}

/// One address family as the model and the bookkeeping see it: its map address type
/// (`[u8; 4]`, `svc_common::Addr6`), its `std` address and `ipnet` prefix types, and the conversions
/// between them. Implemented for the two widths only, so code generic over it is written once
/// and instantiated per family.
pub trait Family: svc_common::Addr + AsRef<[u8]> + AsMut<[u8]> {
    /// `Ipv4Addr` or `Ipv6Addr`.
    type Ip: Copy + Eq + Ord + Hash + fmt::Debug + fmt::Display + Into<IpAddr> + 'static;
    /// `Ipv4Net` or `Ipv6Net`.
    type Net: Copy + Eq + Ord + Hash + fmt::Debug + fmt::Display + 'static;
    /// The family as `spec.ipFamilies` and an EndpointSlice's `addressType` spell it.
    const NAME: &'static str;

    /// The map address of `ip`.
    fn from_ip(ip: Self::Ip) -> Self;
    /// The address of a map address.
    fn to_ip(self) -> Self::Ip;
    /// `ip` if it is of this family.
    fn of(ip: IpAddr) -> Option<Self::Ip>;
    /// `addr/len` with the host bits cleared; `None` when `len` is too long for the family.
    fn net(addr: Self::Ip, len: u8) -> Option<Self::Net>;
    /// The network address (map form) and length of a prefix.
    fn net_parts(net: &Self::Net) -> (Self, u8);
    /// Whether `net` contains `ip`.
    fn net_contains(net: &Self::Net, ip: &Self::Ip) -> bool;
    /// The frontend key in its family-tagged form.
    fn any_key(key: FrontendKeyOf<Self>) -> AnyFrontendKey;
    /// The backend in its family-tagged form.
    fn any_backend(backend: BackendOf<Self>) -> AnyBackend;
    /// The source-range entry in its family-tagged form.
    fn any_range(range: SourceRangeOf<Self>) -> AnySourceRange;

    /// The family's frontend map in a snapshot.
    fn snap_frontends(s: &MapSnapshot) -> &BTreeMap<FrontendKeyOf<Self>, Frontend>;
    /// See [`Family::snap_frontends`].
    fn snap_frontends_mut(s: &mut MapSnapshot) -> &mut BTreeMap<FrontendKeyOf<Self>, Frontend>;
    /// The family's backend map in a snapshot.
    fn snap_backends(s: &MapSnapshot) -> &BTreeMap<u32, BackendOf<Self>>;
    /// See [`Family::snap_backends`].
    fn snap_backends_mut(s: &mut MapSnapshot) -> &mut BTreeMap<u32, BackendOf<Self>>;
    /// The family's source-range trie in a snapshot.
    fn snap_ranges(s: &MapSnapshot) -> &BTreeSet<SourceRangeOf<Self>>;
    /// See [`Family::snap_ranges`].
    fn snap_ranges_mut(s: &mut MapSnapshot) -> &mut BTreeSet<SourceRangeOf<Self>>;

    /// `PutFrontend` / `PutFrontend6`.
    fn put_frontend(key: FrontendKeyOf<Self>, value: Frontend) -> MapOp;
    /// `DeleteFrontend` / `DeleteFrontend6`.
    fn delete_frontend(key: FrontendKeyOf<Self>) -> MapOp;
    /// `PutBackend` / `PutBackend6`.
    fn put_backend(id: u32, backend: BackendOf<Self>) -> MapOp;
    /// `DeleteBackend` / `DeleteBackend6`.
    fn delete_backend(id: u32) -> MapOp;
    /// `PutSourceRange` / `PutSourceRange6`.
    fn put_source_range(range: SourceRangeOf<Self>) -> MapOp;
    /// `DeleteSourceRange` / `DeleteSourceRange6`.
    fn delete_source_range(range: SourceRangeOf<Self>) -> MapOp;
}

/// The [`Family`] items that name the snapshot's fields and the ops' variants, which differ
/// between the two impls only by the `6`.
macro_rules! family_maps {
    ($any:ident, $frontends:ident, $backends:ident, $ranges:ident, $put_fe:ident, $del_fe:ident,
     $put_be:ident, $del_be:ident, $put_r:ident, $del_r:ident) => {
        fn snap_frontends(s: &MapSnapshot) -> &BTreeMap<FrontendKeyOf<Self>, Frontend> {
            &s.$frontends
        }
        fn snap_frontends_mut(s: &mut MapSnapshot) -> &mut BTreeMap<FrontendKeyOf<Self>, Frontend> {
            &mut s.$frontends
        }
        fn snap_backends(s: &MapSnapshot) -> &BTreeMap<u32, BackendOf<Self>> {
            &s.$backends
        }
        fn snap_backends_mut(s: &mut MapSnapshot) -> &mut BTreeMap<u32, BackendOf<Self>> {
            &mut s.$backends
        }
        fn snap_ranges(s: &MapSnapshot) -> &BTreeSet<SourceRangeOf<Self>> {
            &s.$ranges
        }
        fn snap_ranges_mut(s: &mut MapSnapshot) -> &mut BTreeSet<SourceRangeOf<Self>> {
            &mut s.$ranges
        }
        fn any_range(range: SourceRangeOf<Self>) -> AnySourceRange {
            AnySourceRange::$any(range)
        }
        fn put_frontend(key: FrontendKeyOf<Self>, value: Frontend) -> MapOp {
            MapOp::$put_fe { key, value }
        }
        fn delete_frontend(key: FrontendKeyOf<Self>) -> MapOp {
            MapOp::$del_fe { key }
        }
        fn put_backend(id: u32, backend: BackendOf<Self>) -> MapOp {
            MapOp::$put_be { id, backend }
        }
        fn delete_backend(id: u32) -> MapOp {
            MapOp::$del_be { id }
        }
        fn put_source_range(range: SourceRangeOf<Self>) -> MapOp {
            MapOp::$put_r { range }
        }
        fn delete_source_range(range: SourceRangeOf<Self>) -> MapOp {
            MapOp::$del_r { range }
        }
    };
}

impl Family for [u8; 4] {
    type Ip = Ipv4Addr;
    type Net = Ipv4Net;
    const NAME: &'static str = "IPv4";

    fn from_ip(ip: Ipv4Addr) -> Self {
        ip.octets()
    }
    fn to_ip(self) -> Ipv4Addr {
        Ipv4Addr::from(self)
    }
    fn of(ip: IpAddr) -> Option<Ipv4Addr> {
        match ip {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        }
    }
    fn net(addr: Ipv4Addr, len: u8) -> Option<Ipv4Net> {
        Ipv4Net::new(addr, len).ok().map(|n| n.trunc())
    }
    fn net_parts(net: &Ipv4Net) -> (Self, u8) {
        (net.network().octets(), net.prefix_len())
    }
    fn net_contains(net: &Ipv4Net, ip: &Ipv4Addr) -> bool {
        net.contains(ip)
    }
    fn any_key(key: FrontendKey) -> AnyFrontendKey {
        AnyFrontendKey::V4(key)
    }
    fn any_backend(backend: Backend) -> AnyBackend {
        AnyBackend::V4(backend)
    }
    family_maps!(
        V4,
        frontends,
        backends,
        source_ranges,
        PutFrontend,
        DeleteFrontend,
        PutBackend,
        DeleteBackend,
        PutSourceRange,
        DeleteSourceRange
    );
}

impl Family for svc_common::Addr6 {
    type Ip = Ipv6Addr;
    type Net = Ipv6Net;
    const NAME: &'static str = "IPv6";

    fn from_ip(ip: Ipv6Addr) -> Self {
        ip.into()
    }
    fn to_ip(self) -> Ipv6Addr {
        Ipv6Addr::from(self)
    }
    fn of(ip: IpAddr) -> Option<Ipv6Addr> {
        match ip {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(_) => None,
        }
    }
    fn net(addr: Ipv6Addr, len: u8) -> Option<Ipv6Net> {
        Ipv6Net::new(addr, len).ok().map(|n| n.trunc())
    }
    fn net_parts(net: &Ipv6Net) -> (Self, u8) {
        (net.network().into(), net.prefix_len())
    }
    fn net_contains(net: &Ipv6Net, ip: &Ipv6Addr) -> bool {
        net.contains(ip)
    }
    fn any_key(key: FrontendKey6) -> AnyFrontendKey {
        AnyFrontendKey::V6(key)
    }
    fn any_backend(backend: Backend6) -> AnyBackend {
        AnyBackend::V6(backend)
    }
    family_maps!(
        V6,
        frontends6,
        backends6,
        source_ranges6,
        PutFrontend6,
        DeleteFrontend6,
        PutBackend6,
        DeleteBackend6,
        PutSourceRange6,
        DeleteSourceRange6
    );
}

/// Text of an address followed by a port: `10.0.0.1:80`, `[fd00::1]:80`.
pub fn host_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(ip) => format!("{ip}:{port}"),
        IpAddr::V6(ip) => format!("[{ip}]:{port}"),
    }
}
