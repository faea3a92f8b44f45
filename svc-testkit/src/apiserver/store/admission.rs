//! What the API server does to an object on the way in: kind/apiVersion/namespace checks
//! against the URL, Service defaulting, and the ClusterIP and NodePort allocations
//! ([`Allocations`]).

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use k8s_openapi::api::core::v1::Service;
use serde_json::{json, Value};
use svc_core::source::manifests::{families, given_ips, Fam};

use super::{
    json::{default, meta_mut, probe},
    ApiError, Key, Resource, Store, NODE_PORT_RANGE, SERVICE_CIDR, SERVICE_CIDR6,
};

/// Which Service holds each allocated ClusterIP and NodePort.
#[derive(Default)]
pub(super) struct Allocations {
    ips: HashMap<IpAddr, Key>,
    node_ports: HashMap<u64, Key>,
}

impl Allocations {
    /// Adds (`held`) or releases (`!held`) what `svc` holds, for Service `key`.
    pub(super) fn update(&mut self, key: &Key, svc: &Value, held: bool) {
        let ips: Vec<IpAddr> = svc["spec"]["clusterIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(std::iter::once(&svc["spec"]["clusterIP"]))
            .filter_map(|v| v.as_str()?.parse().ok())
            .collect();
        let ports = svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["nodePort"].as_u64());
        if held {
            self.ips.extend(ips.into_iter().map(|ip| (ip, key.clone())));
            self.node_ports.extend(ports.map(|n| (n, key.clone())));
        } else {
            for ip in ips {
                if self.ips.get(&ip) == Some(key) {
                    self.ips.remove(&ip);
                }
            }
            for n in ports {
                if self.node_ports.get(&n) == Some(key) {
                    self.node_ports.remove(&n);
                }
            }
        }
    }
}

impl Store {
    /// Checks kind/apiVersion and namespace of a body against the URL, fills them in when
    /// absent, and drops a namespace from cluster-scoped objects.
    pub(super) fn check_type(
        &self,
        res: Resource,
        ns: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        let Some(map) = obj.as_object_mut() else {
            return Err(ApiError::bad_request("the body is not a JSON object"));
        };
        for (field, want) in [("apiVersion", res.api_version()), ("kind", res.kind())] {
            match map.get(field).and_then(Value::as_str) {
                None | Some("") => {
                    map.insert(field.into(), Value::String(want.into()));
                }
                Some(got) if got == want => {}
                Some(got) => {
                    return Err(ApiError::bad_request(format!(
                        "{field} {got} does not match the resource {} ({want})",
                        res.plural()
                    )))
                }
            }
        }
        let meta = meta_mut(&mut obj);
        if res.namespaced() {
            let want = if ns.is_empty() { "default" } else { ns };
            match meta.get("namespace").and_then(Value::as_str) {
                None | Some("") => {
                    meta.insert("namespace".into(), Value::String(want.into()));
                }
                Some(got) if got == want => {}
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace \
                         sent on the request",
                    ))
                }
            }
        } else {
            meta.remove("namespace");
        }
        Ok(obj)
    }

    /// What the API server does to a Service on create/update: defaults (`type`,
    /// `sessionAffinity`, `ipFamilies`, policies, port `protocol`/`targetPort`), keeps the
    /// allocated `clusterIP`/`nodePort`s of the old object when the new one omits them, checks
    /// user-chosen ones (range, not taken: 422 Invalid) and allocates the missing ones.
    /// Allocation is the static source's scheme (svc_core::source::manifests): FNV-1a of
    /// `namespace/name` picks the start, linear probing skips taken values, so the same
    /// manifests get the same addresses from either source when nothing collides.
    pub(super) fn prepare_service(
        &self,
        obj: &mut Value,
        old: Option<&Value>,
        ns: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        let invalid = |detail: String| ApiError::invalid(Resource::Services, name, detail);
        let me = (ns.to_owned(), name.to_owned());
        let used_ip = |ip: &IpAddr| self.allocated.ips.get(ip).is_some_and(|k| *k != me);
        let used_port = |n: &u64| self.allocated.node_ports.get(n).is_some_and(|k| *k != me);
        if !obj["spec"].is_object() {
            obj["spec"] = json!({});
        }
        let old_spec = old.map(|o| &o["spec"]);
        let spec = obj["spec"]
            .as_object_mut()
            .ok_or_else(|| invalid("spec".into()))?;
        let ty = spec
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_owned();
        if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty.as_str()) {
            return Err(invalid(format!("spec.type: Unsupported value: \"{ty}\"")));
        }
        spec.insert("type".into(), Value::String(ty.clone()));
        default(spec, "sessionAffinity", json!("None"));
        if ty != "ExternalName" {
            let given = spec.get("clusterIP").and_then(Value::as_str).unwrap_or("");
            if given.is_empty() {
                if let Some(old_ip) = old_spec.and_then(|s| s["clusterIP"].as_str()) {
                    spec.insert("clusterIP".into(), json!(old_ip));
                    spec.insert(
                        "clusterIPs".into(),
                        old_spec.map_or(json!([old_ip]), |s| s["clusterIPs"].clone()),
                    );
                }
            }
            // The families and the given addresses, by the rules the manifests source applies
            // (svc_core::source::manifests::families: KEP-563's defaulting and validation).
            let typed: Service =
                serde_json::from_value(json!({ "spec": Value::Object(spec.clone()) }))
                    .map_err(|e| invalid(format!("spec: {e}")))?;
            let fams = families(&typed, true)
                .map_err(|(field, message)| invalid(format!("{field}: {message}")))?;
            let given = given_ips(&typed).map_err(invalid)?;
            if fams.is_empty() {
                // Headless (or ExternalName, handled above): no address.
                default(spec, "clusterIPs", json!(["None"]));
            } else {
                let mut all = Vec::new();
                for (i, fam) in fams.iter().enumerate() {
                    let ip = match given.get(i) {
                        Some(ip) => {
                            let (inside, range) = match ip {
                                IpAddr::V4(a) => {
                                    let (net, bits) = SERVICE_CIDR;
                                    let off = u32::from(*a).wrapping_sub(u32::from(net));
                                    (
                                        u64::from(off) < 1u64 << (32 - bits),
                                        format!("{net}/{bits}"),
                                    )
                                }
                                IpAddr::V6(a) => {
                                    let (net, bits) = SERVICE_CIDR6;
                                    let off = u128::from(*a).wrapping_sub(u128::from(net));
                                    (off < 1u128 << (128 - bits), format!("{net}/{bits}"))
                                }
                            };
                            if !inside {
                                return Err(invalid(format!(
                                    "spec.clusterIPs: Invalid value: [\"{ip}\"]: failed to \
                                     allocate IP {ip}: the provided IP ({ip}) is not in the valid \
                                     range. The range of valid IPs is {range}"
                                )));
                            }
                            if used_ip(ip) {
                                return Err(invalid(format!(
                                    "spec.clusterIPs: Invalid value: [\"{ip}\"]: failed to \
                                     allocate IP {ip}: provided IP is already allocated"
                                )));
                            }
                            *ip
                        }
                        // Candidates: network+2 ..= last-1, as the static source.
                        None => match fam {
                            Fam::V4 => {
                                let (net, bits) = SERVICE_CIDR;
                                let base = u32::from(net);
                                let count = (1u64 << (32 - bits)) - 3;
                                probe(&format!("{ns}/{name}"), count, |off| {
                                    let ip = IpAddr::V4(Ipv4Addr::from(
                                        base.wrapping_add(u32::try_from(off + 2).ok()?),
                                    ));
                                    (!used_ip(&ip)).then_some(ip)
                                })
                            }
                            Fam::V6 => {
                                let (net, bits) = SERVICE_CIDR6;
                                let base = u128::from(net);
                                let count = (1u64 << (128 - bits)) - 3;
                                probe(&format!("{ns}/{name}"), count, |off| {
                                    let ip = IpAddr::V6(Ipv6Addr::from(base + u128::from(off) + 2));
                                    (!used_ip(&ip)).then_some(ip)
                                })
                            }
                        }
                        .ok_or_else(|| invalid("spec.clusterIP: no free address".into()))?,
                    };
                    all.push(ip.to_string());
                }
                spec.insert("clusterIP".into(), json!(all[0]));
                spec.insert("clusterIPs".into(), json!(all));
                let names: Vec<&str> = fams.iter().map(|f| f.name()).collect();
                spec.insert("ipFamilies".into(), json!(names));
            }
            default(spec, "ipFamilyPolicy", json!("SingleStack"));
            default(spec, "internalTrafficPolicy", json!("Cluster"));
        }
        let lb = ty == "LoadBalancer";
        if lb {
            default(spec, "allocateLoadBalancerNodePorts", json!(true));
        }
        if lb || ty == "NodePort" {
            default(spec, "externalTrafficPolicy", json!("Cluster"));
        }
        let wants_node_ports = ty == "NodePort"
            || (lb && spec.get("allocateLoadBalancerNodePorts") != Some(&json!(false)));
        let old_ports = old_spec.and_then(|s| s["ports"].as_array());
        let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) else {
            return Ok(());
        };
        let mut mine = HashSet::new();
        for (i, port) in ports.iter_mut().enumerate() {
            let Some(p) = port.as_object_mut() else {
                return Err(invalid(format!("spec.ports[{i}]: must be an object")));
            };
            default(p, "protocol", json!("TCP"));
            let number = p.get("port").cloned().unwrap_or(Value::Null);
            default(p, "targetPort", number.clone());
            if !wants_node_ports {
                if ty == "ClusterIP" && p.get("nodePort").is_some_and(|n| n != &json!(0)) {
                    return Err(invalid(format!(
                        "spec.ports[{i}].nodePort: Forbidden: may not be used when `type` is \
                         'ClusterIP'"
                    )));
                }
                continue;
            }
            if p.get("nodePort").and_then(Value::as_u64).unwrap_or(0) == 0 {
                let same = old_ports
                    .into_iter()
                    .flatten()
                    .find(|o| o["port"] == number && o["protocol"] == p["protocol"]);
                match same.and_then(|o| o["nodePort"].as_u64()) {
                    Some(n) => {
                        p.insert("nodePort".into(), json!(n));
                    }
                    None => {
                        p.remove("nodePort");
                    }
                }
            }
            if let Some(n) = p.get("nodePort").and_then(Value::as_u64) {
                let in_range = u16::try_from(n).is_ok_and(|n| NODE_PORT_RANGE.contains(&n));
                if !in_range {
                    return Err(invalid(format!(
                        "spec.ports[{i}].nodePort: Invalid value: {n}: provided port is not in \
                         the valid range. The range of valid ports is 30000-32767"
                    )));
                }
                if used_port(&n) || !mine.insert(n) {
                    return Err(invalid(format!(
                        "spec.ports[{i}].nodePort: Invalid value: {n}: provided port is already \
                         allocated"
                    )));
                }
            }
        }
        for port in ports.iter_mut() {
            let Some(p) = port.as_object_mut() else {
                continue;
            };
            if !wants_node_ports || p.contains_key("nodePort") {
                continue;
            }
            let which = match p.get("name").and_then(Value::as_str) {
                Some(n) if !n.is_empty() => n.to_owned(),
                _ => format!(
                    "{}/{}",
                    p.get("port").cloned().unwrap_or(Value::Null),
                    p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                ),
            };
            let first = u64::from(*NODE_PORT_RANGE.start());
            let count = u64::from(*NODE_PORT_RANGE.end()) + 1 - first;
            let n = probe(&format!("{ns}/{name}/{which}"), count, |off| {
                let n = first + off;
                (!used_port(&n) && !mine.contains(&n)).then_some(n)
            })
            .ok_or_else(|| invalid("spec.ports: no free node port".into()))?;
            mine.insert(n);
            p.insert("nodePort".into(), json!(n));
        }
        Ok(())
    }
}
