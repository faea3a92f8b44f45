//! [`SlimService`]: a Service as the store keeps it, with only what the model reads (see the
//! `slim` module docs for why). k8s-openapi's `Service` costs ~600 bytes inline before any of
//! its strings (every field an `Option<String>` or `Option<Vec<…>>`, most of them unread);
//! this keeps the read fields in their smallest faithful form: texts the model reports in
//! problems stay texts, values it only compares become flags, and repeated names (type,
//! protocol, port name) are shared through the [`Interner`].

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;

use super::slim::Interner;
use super::{label, ObjectRef, LABEL_SERVICE_PROXY_NAME};

/// A Service as the model reads it. Name and namespace are its key in the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlimService {
    /// The value of its [`LABEL_SERVICE_PROXY_NAME`] label, if it has one.
    pub proxy_name: Option<Box<str>>,
    /// `None` when the object has no spec.
    pub spec: Option<SlimSpec>,
}

/// What the model reads of a Service's spec, and its LoadBalancer ingress status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlimSpec {
    /// `spec.type`.
    pub type_: Option<Arc<str>>,
    /// `spec.clusterIP`.
    pub cluster_ip: Option<Box<str>>,
    /// `spec.clusterIPs` (absent: empty).
    pub cluster_ips: Box<[Box<str>]>,
    /// `spec.ipFamilies` (absent: empty): which family each `clusterIPs` entry is.
    pub ip_families: Box<[Box<str>]>,
    /// `spec.ipFamilyPolicy`.
    pub ip_family_policy: Option<Box<str>>,
    /// `spec.externalIPs` (absent: empty).
    pub external_ips: Box<[Box<str>]>,
    /// `spec.externalTrafficPolicy` is `Local`.
    pub external_local: bool,
    /// `spec.internalTrafficPolicy` is `Local`.
    pub internal_local: bool,
    /// `spec.healthCheckNodePort`.
    pub health_check_node_port: Option<i32>,
    /// `spec.loadBalancerSourceRanges` (absent: empty).
    pub source_ranges: Box<[Box<str>]>,
    /// `spec.ports` (absent: empty).
    pub ports: Box<[SlimPort]>,
    /// `spec.sessionAffinity` is `ClientIP`.
    pub client_ip_affinity: bool,
    /// `spec.sessionAffinityConfig.clientIP.timeoutSeconds`.
    pub affinity_timeout_s: Option<i32>,
    /// `status.loadBalancer.ingress` (absent: empty), every entry, as problems name them by
    /// index.
    pub ingress: Box<[SlimIngress]>,
}

/// One `spec.ports[]` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlimPort {
    /// `name`.
    pub name: Option<Arc<str>>,
    /// `protocol`.
    pub protocol: Option<Arc<str>>,
    /// `port`.
    pub port: i32,
    /// `nodePort`.
    pub node_port: Option<i32>,
}

/// One `status.loadBalancer.ingress[]` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlimIngress {
    /// `ip`.
    pub ip: Option<Box<str>>,
    /// `ipMode` is `Proxy`.
    pub proxy_mode: bool,
}

fn texts(list: Option<Vec<String>>) -> Box<[Box<str>]> {
    list.into_iter().flatten().map(Box::from).collect()
}

impl SlimService {
    /// The slim form of `service` with its reference, `None` when it has no name.
    pub fn keyed(service: Service, names: &mut Interner) -> Option<(ObjectRef, Self)> {
        let r = ObjectRef::from_meta(&service.metadata)?;
        Some((r, Self::of(service, names)))
    }

    /// What the model reads of `service`; managedFields, annotations, other labels, owner
    /// references, the selector and every other field are dropped.
    pub fn of(service: Service, names: &mut Interner) -> Self {
        let Service {
            metadata,
            spec,
            status,
            ..
        } = service;
        let ingress = status
            .and_then(|s| s.load_balancer?.ingress)
            .into_iter()
            .flatten()
            .map(|i| SlimIngress {
                ip: i.ip.map(Box::from),
                proxy_mode: i.ip_mode.as_deref() == Some("Proxy"),
            })
            .collect();
        Self {
            proxy_name: label(&metadata, LABEL_SERVICE_PROXY_NAME).map(Box::from),
            spec: spec.map(|s| SlimSpec {
                type_: s.type_.as_deref().map(|t| names.get(t)),
                cluster_ip: s.cluster_ip.map(Box::from),
                cluster_ips: texts(s.cluster_ips),
                ip_families: texts(s.ip_families),
                ip_family_policy: s.ip_family_policy.map(Box::from),
                external_ips: texts(s.external_ips),
                external_local: s.external_traffic_policy.as_deref() == Some("Local"),
                internal_local: s.internal_traffic_policy.as_deref() == Some("Local"),
                health_check_node_port: s.health_check_node_port,
                source_ranges: texts(s.load_balancer_source_ranges),
                ports: s
                    .ports
                    .into_iter()
                    .flatten()
                    .map(|p| SlimPort {
                        name: p.name.as_deref().map(|n| names.get(n)),
                        protocol: p.protocol.as_deref().map(|n| names.get(n)),
                        port: p.port,
                        node_port: p.node_port,
                    })
                    .collect(),
                client_ip_affinity: s.session_affinity.as_deref() == Some("ClientIP"),
                affinity_timeout_s: s
                    .session_affinity_config
                    .and_then(|c| c.client_ip?.timeout_seconds),
                ingress,
            }),
        }
    }
}
