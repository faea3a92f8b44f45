//! `--config FILE`: kube-proxy's `KubeProxyConfiguration` (kubeproxy.config.k8s.io/v1alpha1),
//! as kubeadm writes it into the `kube-proxy` ConfigMap (`config.conf`), applied to
//! [`RunArgs`].
//!
//! Pure: [`apply`] takes the file's text, the parsed command line, which flags were given on it
//! (those win over the file, as with kube-proxy) and the CPU count, and returns what it did.
//! Every field of the file is either applied, or named in a warning as not applying to svc-lb
//! (with why); a field this version does not know is named too. A value that cannot be used
//! (a malformed address, duration, number) is an error naming the field.
//!
//! What applies, and how (README.md, "kube-proxy compatibility", has the table):
//! - `clientConnection.kubeconfig` → `--kubeconfig` (unless `--manifests`);
//! - `hostnameOverride` → `--node-name` (trimmed and lower-cased, as kube-proxy does);
//! - `bindAddress` (a specific IPv4 or IPv6 address) → `--node-ip`; unspecified: the Node's
//!   addresses;
//! - `healthzBindAddress`, `metricsBindAddress` → `--healthz-bind-address`,
//!   `--metrics-bind-address` (a bare address gets kube-proxy's port);
//! - `clusterCIDR` → `--cluster-cidr` (recorded);
//! - `nodePortAddresses` → `--nodeport-addresses` (IPv4 and IPv6 CIDRs; `primary` is our
//!   default);
//! - `conntrack.maxPerCore` × CPUs, at least `conntrack.min` → `--conntrack-max` (0: keep
//!   ours); `conntrack.{tcpEstablishedTimeout, tcpCloseWaitTimeout, udpTimeout,
//!   udpStreamTimeout}` → the `--conntrack-*` timeouts (0 or null: keep ours, as kube-proxy
//!   leaves the sysctl);
//! - `detectLocalMode: InterfaceNamePrefix` + `detectLocal.interfaceNamePrefix` →
//!   `--pod-ifaces` (that is how svc-lb tells pod traffic);
//! - the `syncPeriod` of the section `mode` selects (`iptables` when unset) → `--sync-period`;
//! - `logging.format` → `--log-format`; `logging.verbosity` → `-v`.
use std::{net::IpAddr, path::PathBuf, str::FromStr};

use serde_json::Value;

use crate::{
    cli::{LogFormat, RunArgs, Secs},
    model::{parse_cidr, parse_cidr_any},
};

/// The only version kube-proxy reads (and kubeadm writes).
pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
pub const KIND: &str = "KubeProxyConfiguration";

/// What [`apply`] did with each field.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Field paths read and applied (or deliberately left at svc-lb's default because their
    /// value means "unset"), `conntrack.udpTimeout`.
    pub applied: Vec<String>,
    /// Field paths that do not apply to svc-lb, or are unknown.
    pub ignored: Vec<String>,
    /// For the log: each ignored field with a value and why, the unset ones in one line, and
    /// notes on how applied values were read.
    pub warnings: Vec<String>,
}

/// A value the agent cannot use, naming its field.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("--config: {field}: {why}")]
pub struct ConfigError {
    pub field: String,
    pub why: String,
}

fn bad(field: &str, why: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        why: why.into(),
    }
}

/// Why a field does not apply. Every field kube-proxy v1.34 knows is listed here or handled in
/// [`apply`]; anything else is unknown.
fn not_applicable(path: &str) -> Option<&'static str> {
    Some(match path {
        "metadata" => "object metadata (kind's kubeadm input carries one)",
        "mode" => {
            "svc-lb is its own eBPF datapath; `mode` only selects which section's syncPeriod applies"
        }
        "bindAddressHardFail" => "svc-lb always exits when it cannot bind a port",
        "clientConnection.acceptContentTypes"
        | "clientConnection.contentType"
        | "clientConnection.qps"
        | "clientConnection.burst" => "the API client's rate and encoding are kube-rs defaults",
        "configSyncPeriod" => "watches are not relisted periodically; a full resync runs every 60 s",
        "conntrack.tcpBeLiberal" => {
            "svc-lb's conntrack never drops out-of-window packets (liberal already)"
        }
        "detectLocal.bridgeInterface" => {
            "pod traffic is told by interface name prefix (--pod-ifaces), not by bridge"
        }
        "enableProfiling" => "no pprof endpoint",
        "featureGates" => "kube-proxy's feature gates do not apply",
        "iptables.localhostNodePorts" => {
            "localhost NodePorts are served when --nodeport-addresses includes 127.0.0.0/8"
        }
        "iptables.masqueradeAll"
        | "iptables.masqueradeBit"
        | "iptables.minSyncPeriod"
        | "nftables.masqueradeAll"
        | "nftables.masqueradeBit"
        | "nftables.minSyncPeriod"
        | "iptables.syncPeriod"
        | "nftables.syncPeriod"
        | "ipvs.syncPeriod" => "an iptables/ipvs/nftables setting (svc-lb writes every change at once)",
        "ipvs" => "an ipvs setting",
        "logging.flushFrequency" | "logging.options" | "logging.vmodule" => {
            "klog settings with no tracing equivalent"
        }
        "oomScoreAdj" => "the agent does not change its OOM score (set it in the pod spec)",
        "portRange" => "the userspace proxy's setting",
        "showHiddenMetricsForVersion" => "no hidden metrics",
        "winkernel" | "windowsRunAsService" => "a Windows setting",
        "minSyncPeriod" => "svc-lb writes every change at once",
        _ => return None,
    })
}

/// Whether a value means "unset" in kubeadm's output: null, "", 0, false, 0s, or a map/list of
/// such values.
fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || s == "0s" || s == "0",
        Value::Array(items) => items.iter().all(is_unset),
        Value::Object(m) => m.values().all(is_unset),
    }
}

/// Every leaf under `value` as (path, value); a map or list that is empty is a leaf.
pub fn leaves(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(m) if !m.is_empty() => {
            for (key, v) in m {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(&path, v, out);
            }
        }
        _ => out.push((prefix.to_string(), value.clone())),
    }
}

fn as_str<'a>(field: &str, v: &'a Value) -> Result<&'a str, ConfigError> {
    match v {
        Value::Null => Ok(""),
        Value::String(s) => Ok(s.trim()),
        _ => Err(bad(field, format!("expected a string, found {}", short(v)))),
    }
}

/// A value as YAML on one line, for messages.
fn short(v: &Value) -> String {
    serde_saphyr::to_string(v)
        .map(|s| s.trim().replace('\n', " "))
        .unwrap_or_default()
}

/// A Go duration of whole seconds; `None` for null, "" or 0 (kube-proxy: leave as is).
fn duration(field: &str, v: &Value) -> Result<Option<Secs>, ConfigError> {
    if is_unset(v) {
        return Ok(None);
    }
    let text = as_str(field, v)?;
    // "0m0s", "0h0m0s": zero in any unit.
    let digits = || text.chars().filter(char::is_ascii_digit);
    if digits().next().is_some() && digits().all(|c| c == '0') {
        return Ok(None);
    }
    Secs::from_str(text).map(Some).map_err(|e| bad(field, e))
}

fn integer(field: &str, v: &Value) -> Result<Option<u64>, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(field, format!("expected a whole number ≥ 0, found {n}"))),
        _ => Err(bad(field, format!("expected a number, found {}", short(v)))),
    }
}

/// `ip:port`, or a bare `ip` that gets `port` (kube-proxy accepts both).
fn bind_address(field: &str, text: &str, port: u16) -> Result<String, ConfigError> {
    if text.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(text.to_string());
    }
    match text.parse::<IpAddr>() {
        Ok(ip) => Ok(std::net::SocketAddr::new(ip, port).to_string()),
        Err(_) => Err(bad(
            field,
            format!("{text:?} is not an address such as 0.0.0.0:{port}"),
        )),
    }
}

fn used(report: &mut Report, path: &str) {
    report.applied.push(path.to_string());
}

/// The file as a generic value: YAML 1.2 booleans only (`yes`, `on` stay strings, as serde_yaml
/// read them); an error is one line with its line and column.
fn parse(text: &str) -> Result<Value, String> {
    serde_saphyr::from_str_with_options(
        text,
        serde_saphyr::options! { strict_booleans: true, with_snippet: false },
    )
    .map_err(|e| {
        e.render_with_options(serde_saphyr::render_options! {
            formatter: &serde_saphyr::UserMessageFormatter,
            snippets: serde_saphyr::SnippetMode::Off,
        })
    })
}

/// Applies the `KubeProxyConfiguration` in `text` to `args`, except the settings whose flag
/// `given(id)` says was on the command line (ids are [`RunArgs`] field names). `cpus` sizes
/// `conntrack.maxPerCore`.
pub fn apply(
    text: &str,
    args: &mut RunArgs,
    given: &dyn Fn(&str) -> bool,
    cpus: u32,
) -> Result<Report, ConfigError> {
    let doc = parse(text).map_err(|e| bad("(document)", format!("not YAML: {e}")))?;
    let Value::Object(_) = doc else {
        return Err(bad(
            "(document)",
            "expected a KubeProxyConfiguration mapping",
        ));
    };
    let mut all = Vec::new();
    leaves("", &doc, &mut all);
    let get = |path: &str| -> Value {
        path.split('.')
            .try_fold(&doc, |v, k| v.get(k))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let text_at = |field: &str| -> Result<String, ConfigError> {
        as_str(field, &get(field)).map(str::to_string)
    };
    let mut report = Report::default();

    // Identity.
    for (field, want) in [("apiVersion", API_VERSION), ("kind", KIND)] {
        let v = get(field);
        let got = as_str(field, &v)?;
        if got != want {
            return Err(bad(field, format!("{got:?}: svc-lb reads {want} only")));
        }
        used(&mut report, field);
    }

    // The section `mode` selects, whose syncPeriod is kube-proxy's sync period.
    let mode = text_at("mode")?;
    let section = match mode.as_str() {
        "" | "iptables" => "iptables",
        "ipvs" => "ipvs",
        "nftables" => "nftables",
        "kernelspace" => "winkernel",
        other => return Err(bad("mode", format!("{other:?} is not a kube-proxy mode"))),
    };
    let sync_field = format!("{section}.syncPeriod");
    // A top-level syncPeriod (newer configuration versions) wins over the section's.
    for field in [sync_field.as_str(), "syncPeriod"] {
        let v = get(field);
        if let Some(period) = duration(field, &v)? {
            if !given("sync_period") {
                args.sync_period = period;
            }
        }
        used(&mut report, field);
    }

    let kubeconfig = text_at("clientConnection.kubeconfig")?;
    if !kubeconfig.is_empty() {
        if given("manifests") {
            report.warnings.push(format!(
                "clientConnection.kubeconfig {kubeconfig} ignored: --manifests given"
            ));
        } else if !given("kubeconfig") {
            args.kubeconfig = Some(PathBuf::from(kubeconfig));
        }
    }
    used(&mut report, "clientConnection.kubeconfig");

    let hostname = text_at("hostnameOverride")?;
    if !hostname.is_empty() && !given("node_name") {
        args.node_name = Some(hostname.to_lowercase());
    }
    used(&mut report, "hostnameOverride");

    let bind = text_at("bindAddress")?;
    if !bind.is_empty() {
        match bind.parse::<IpAddr>() {
            Err(_) => return Err(bad("bindAddress", format!("{bind:?} is not an IP address"))),
            Ok(ip) if ip.is_unspecified() => {}
            Ok(ip) => {
                if !given("node_ip") {
                    args.node_ip = vec![ip];
                }
            }
        }
    }
    used(&mut report, "bindAddress");

    for (field, id, port) in [
        ("healthzBindAddress", "healthz_bind_address", 10256),
        ("metricsBindAddress", "metrics_bind_address", 10249),
    ] {
        let text = text_at(field)?;
        if !text.is_empty() {
            let addr = bind_address(field, &text, port)?;
            if !given(id) {
                match id {
                    "healthz_bind_address" => args.healthz_bind_address = addr,
                    _ => args.metrics_bind_address = addr,
                }
            }
        }
        used(&mut report, field);
    }

    let cidrs = text_at("clusterCIDR")?;
    if !cidrs.is_empty() {
        let mut list = Vec::new();
        for cidr in cidrs.split(',').map(str::trim) {
            let ok = if cidr.contains(':') {
                cidr.split_once('/').is_some_and(|(a, l)| {
                    a.parse::<std::net::Ipv6Addr>().is_ok()
                        && l.parse::<u8>().is_ok_and(|l| l <= 128)
                })
            } else {
                parse_cidr(cidr).is_ok()
            };
            if !ok {
                return Err(bad("clusterCIDR", format!("{cidr:?} is not a CIDR")));
            }
            list.push(cidr.to_string());
        }
        if !given("cluster_cidr") {
            args.cluster_cidr = list;
        }
    }
    used(&mut report, "clusterCIDR");

    match get("nodePortAddresses") {
        Value::Null => {}
        Value::Array(items) => {
            let mut cidrs = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let field = format!("nodePortAddresses[{i}]");
                let text = as_str(&field, item)?;
                if text == "primary" {
                    report.warnings.push(format!(
                        "{field} primary: svc-lb serves NodePorts on every node address (--node-ip and the Node's), kube-proxy's primary ones only"
                    ));
                } else {
                    cidrs.push(parse_cidr_any(text).map_err(|e| bad(&field, e.to_string()))?);
                }
            }
            if !cidrs.is_empty() && !given("nodeport_addresses") {
                args.nodeport_addresses = cidrs;
            }
        }
        other => {
            return Err(bad(
                "nodePortAddresses",
                format!("expected a list of CIDRs, found {}", short(&other)),
            ))
        }
    }
    used(&mut report, "nodePortAddresses");

    // conntrack: the table size from maxPerCore and min, and the timeouts.
    let per_core = integer("conntrack.maxPerCore", &get("conntrack.maxPerCore"))?;
    let min = integer("conntrack.min", &get("conntrack.min"))?;
    if let Some(per_core) = per_core.filter(|n| *n > 0) {
        let max = (per_core * u64::from(cpus.max(1))).max(min.unwrap_or(0));
        let max = u32::try_from(max)
            .ok()
            .filter(|m| *m >= 1024)
            .ok_or_else(|| {
                bad(
                    "conntrack.maxPerCore",
                    format!(
                        "{per_core} × {cpus} CPUs = {max} entries: svc-lb needs 1024 to 2^32 - 1"
                    ),
                )
            })?;
        if !given("conntrack_max") {
            args.conntrack.conntrack_max = max;
        }
    }
    used(&mut report, "conntrack.maxPerCore");
    used(&mut report, "conntrack.min");
    let ct = &mut args.conntrack;
    for (field, id, slot) in [
        (
            "conntrack.tcpEstablishedTimeout",
            "conntrack_tcp_timeout_established",
            &mut ct.conntrack_tcp_timeout_established,
        ),
        (
            "conntrack.tcpCloseWaitTimeout",
            "conntrack_tcp_timeout_close_wait",
            &mut ct.conntrack_tcp_timeout_close_wait,
        ),
        (
            "conntrack.udpTimeout",
            "conntrack_udp_timeout",
            &mut ct.conntrack_udp_timeout,
        ),
        (
            "conntrack.udpStreamTimeout",
            "conntrack_udp_timeout_stream",
            &mut ct.conntrack_udp_timeout_stream,
        ),
    ] {
        if let Some(value) = duration(field, &get(field))? {
            if !given(id) {
                *slot = value;
            }
        }
        report.applied.push(field.to_string());
    }

    // Local traffic: by interface name prefix, which is how svc-lb finds pods.
    let detect = text_at("detectLocalMode")?;
    let prefix_field = "detectLocal.interfaceNamePrefix";
    let prefix = text_at(prefix_field)?;
    match detect.as_str() {
        "InterfaceNamePrefix" => {
            if prefix.is_empty() {
                return Err(bad(
                    prefix_field,
                    "required with detectLocalMode: InterfaceNamePrefix",
                ));
            }
            if !given("pod_ifaces") {
                args.pod_ifaces = vec![prefix.to_string()];
            }
            used(&mut report, prefix_field);
        }
        "" => used(&mut report, prefix_field),
        "ClusterCIDR" | "NodeCIDR" | "BridgeInterface" => {
            report.warnings.push(format!(
                "detectLocalMode {detect} ignored: svc-lb tells pod traffic by interface name prefix (--pod-ifaces {})",
                args.pod_ifaces.join(",")
            ));
            report.ignored.push(prefix_field.to_string());
        }
        other => {
            return Err(bad(
                "detectLocalMode",
                format!("{other:?} is not a kube-proxy local-traffic mode"),
            ))
        }
    }
    used(&mut report, "detectLocalMode");

    let format = text_at("logging.format")?;
    match format.as_str() {
        "" => {}
        "text" | "json" => {
            if !given("log_format") {
                args.log_format = if format == "json" {
                    LogFormat::Json
                } else {
                    LogFormat::Text
                };
            }
        }
        other => return Err(bad("logging.format", format!("{other:?}: text or json"))),
    }
    used(&mut report, "logging.format");
    if let Some(v) = integer("logging.verbosity", &get("logging.verbosity"))?.filter(|v| *v > 0) {
        if !given("verbosity") {
            args.verbosity = Some(u8::try_from(v).unwrap_or(u8::MAX));
        }
    }
    used(&mut report, "logging.verbosity");

    // Everything else: not applicable, or unknown.
    let mut unset = Vec::new();
    for (path, value) in &all {
        if report.applied.iter().any(|a| a == path) || report.ignored.iter().any(|i| i == path) {
            continue;
        }
        // The closest enclosing path with a reason: `ipvs.scheduler` → `ipvs`.
        let reason =
            std::iter::successors(Some(path.as_str()), |p| p.rsplit_once('.').map(|(a, _)| a))
                .find_map(not_applicable);
        report.ignored.push(path.clone());
        match reason {
            Some(_) if is_unset(value) => unset.push(path.clone()),
            Some(why) => report
                .warnings
                .push(format!("{path}: {} ignored: {why}", short(value))),
            None => report
                .warnings
                .push(format!("{path}: unknown field, ignored")),
        }
    }
    if !unset.is_empty() {
        report.warnings.push(format!(
            "fields that do not apply to svc-lb, unset: {}",
            unset.join(", ")
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests;
