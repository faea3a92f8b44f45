//! What the `deploy_manifests*` test binaries share: reading deploy/ as YAML documents, strict
//! parsing (a re-serialisation that loses a key fails), the manifests' objects by kind, kind's
//! cluster config and the node-proxier reference rules, and the checkers, which return the
//! problems they find: RBAC beyond node-proxier, the DaemonSet against the agent's own command
//! line and config parser, and drift between the two DaemonSets.
// Each binary uses a part of these.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{bail, ensure, Context, Result};
use clap::{parser::ValueSource, CommandFactory, FromArgMatches};
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, Namespace, PodSpec, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use svc_agent::{
    cli::{Cli, Command, RunArgs},
    metrics::HEALTHZ_PATH,
};

pub(crate) const PRIVILEGED: &str = "svc-lb.yaml";
pub(crate) const LEAST_PRIVILEGE: &str = "svc-lb-least-privilege.yaml";
pub(crate) const KIND_CONFIG: &str = "kind-config.yaml";
pub(crate) const NODE_PROXIER: &str = "node-proxier-rules.yaml";

pub(crate) fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

pub(crate) fn read(file: &str) -> Result<String> {
    let path = deploy_dir().join(file);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// YAML 1.2 booleans only (`yes`, `on` stay strings), as the agent reads YAML.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { strict_booleans: true }
}

/// The `---` documents of a YAML text, as untyped trees (empty documents skipped).
pub(crate) fn documents(text: &str) -> Result<Vec<serde_json::Value>> {
    Ok(serde_saphyr::from_multiple_with_options(
        text,
        yaml_options(),
    )?)
}

/// One YAML document as an untyped tree.
pub(crate) fn document(text: &str) -> Result<serde_json::Value> {
    Ok(serde_saphyr::from_str_with_options(text, yaml_options())?)
}

/// Parses `doc` as `T` and fails if re-serialising the result loses or changes anything: serde
/// (and k8s-openapi) skip unknown fields silently, so this is how a typo such as `hostNetwrok`
/// or a field at the wrong level is caught.
pub(crate) fn parse_strict<T: DeserializeOwned + Serialize>(doc: &serde_json::Value) -> Result<T> {
    let typed: T = serde_json::from_value(doc.clone())?;
    let original = doc;
    let round_trip = serde_json::to_value(&typed)?;
    let mut lost = Vec::new();
    diff_lost(original, &round_trip, String::new(), &mut lost);
    ensure!(lost.is_empty(), "not part of the type: {}", lost.join(", "));
    Ok(typed)
}

/// Paths present in `original` but missing or different in `round_trip`.
pub(crate) fn diff_lost(
    original: &serde_json::Value,
    round_trip: &serde_json::Value,
    path: String,
    lost: &mut Vec<String>,
) {
    use serde_json::Value;
    match (original, round_trip) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}.{key}");
                match b.get(key) {
                    Some(other) => diff_lost(value, other, here, lost),
                    // An empty list or map that serialises as absent carries no meaning.
                    None if is_empty(value) => {}
                    None => lost.push(here),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_lost(x, y, format!("{path}[{i}]"), lost);
            }
        }
        (a, b) if a == b => {}
        _ => lost.push(format!(
            "{path} (was {original}, reads back as {round_trip})"
        )),
    }
}

pub(crate) fn is_empty(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(m) => m.is_empty(),
        serde_json::Value::Null => true,
        _ => false,
    }
}

/// What deploy/svc-lb*.yaml may contain, by kind.
#[derive(Default)]
pub(crate) struct Objects {
    pub(crate) namespaces: Vec<Namespace>,
    pub(crate) service_accounts: Vec<ServiceAccount>,
    pub(crate) cluster_roles: Vec<ClusterRole>,
    pub(crate) bindings: Vec<ClusterRoleBinding>,
    pub(crate) config_maps: Vec<ConfigMap>,
    pub(crate) daemon_sets: Vec<DaemonSet>,
}

pub(crate) fn parse_objects(text: &str) -> Result<Objects> {
    let mut out = Objects::default();
    for (i, doc) in documents(text)?.iter().enumerate() {
        let field = |name: &str| doc.get(name).and_then(|v| v.as_str()).unwrap_or_default();
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        let at = || format!("document {i} ({api_version} {kind})");
        match (api_version, kind) {
            ("v1", "Namespace") => out.namespaces.push(parse_strict(doc).with_context(at)?),
            ("v1", "ServiceAccount") => out
                .service_accounts
                .push(parse_strict(doc).with_context(at)?),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                out.cluster_roles.push(parse_strict(doc).with_context(at)?)
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                out.bindings.push(parse_strict(doc).with_context(at)?)
            }
            ("v1", "ConfigMap") => out.config_maps.push(parse_strict(doc).with_context(at)?),
            ("apps/v1", "DaemonSet") => out.daemon_sets.push(parse_strict(doc).with_context(at)?),
            _ => bail!("{}: a kind these manifests are not expected to hold", at()),
        }
    }
    Ok(out)
}

/// deploy/kind-config.yaml: the fields of kind's `Cluster` (kind.x-k8s.io/v1alpha4) we use.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct KindCluster {
    pub(crate) api_version: String,
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) networking: KindNetworking,
    pub(crate) nodes: Vec<KindNode>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct KindNetworking {
    pub(crate) kube_proxy_mode: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KindNode {
    pub(crate) role: String,
    pub(crate) image: String,
}

/// deploy/node-proxier-rules.yaml: the reference rules, with where they were copied from.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RulesReference {
    pub(crate) cluster_role: String,
    pub(crate) source: String,
    pub(crate) rules: Vec<PolicyRule>,
}

pub(crate) fn kind_cluster() -> Result<KindCluster> {
    let docs = documents(&read(KIND_CONFIG)?)?;
    ensure!(docs.len() == 1, "{KIND_CONFIG}: one document expected");
    parse_strict(&docs[0])
}

pub(crate) fn node_proxier() -> Result<RulesReference> {
    let docs = documents(&read(NODE_PROXIER)?)?;
    ensure!(docs.len() == 1, "{NODE_PROXIER}: one document expected");
    parse_strict(&docs[0])
}

/// Every (apiGroup, resource, verb) that `granted` allows and `reference` does not, plus any
/// rule the comparison cannot vouch for (non-resource URLs).
pub(crate) fn rules_beyond(granted: &[PolicyRule], reference: &[PolicyRule]) -> Vec<String> {
    let allows = |group: &str, resource: &str, verb: &str| {
        reference.iter().any(|rule| {
            let any = |list: &Option<Vec<String>>, x: &str| {
                list.iter().flatten().any(|item| item == "*" || item == x)
            };
            // A reference rule limited to some names does not grant the whole resource.
            rule.resource_names.as_ref().is_none_or(|n| n.is_empty())
                && any(&rule.api_groups, group)
                && any(&rule.resources, resource)
                && rule.verbs.iter().any(|v| v == "*" || v == verb)
        })
    };
    let mut beyond = Vec::new();
    for rule in granted {
        if let Some(urls) = rule.non_resource_urls.as_ref().filter(|u| !u.is_empty()) {
            beyond.push(format!("nonResourceURLs {urls:?}"));
        }
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    if !allows(group, resource, verb) {
                        beyond.push(format!("({group:?}, {resource}, {verb})"));
                    }
                }
            }
        }
    }
    beyond
}

pub(crate) fn pod_spec(ds: &DaemonSet) -> Result<&PodSpec> {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .context("DaemonSet without a pod spec")
}

/// Where a container env var's value comes from: a literal, or a downward-API field path.
pub(crate) fn env_source(container: &Container, name: &str) -> Option<String> {
    let var = container.env.iter().flatten().find(|e| e.name == name)?;
    match (&var.value, &var.value_from) {
        (Some(v), _) => Some(v.clone()),
        (None, Some(from)) => from
            .field_ref
            .as_ref()
            .map(|f| format!("fieldRef:{}", f.field_path)),
        _ => None,
    }
}

/// The container's args as the kubelet hands them over: `$(VAR)` replaced by the value of the
/// container's env var VAR (downward-API fields by a stand-in of the right shape); an
/// undefined reference stays as written, as Kubernetes leaves it.
pub(crate) fn expand_args(container: &Container) -> Vec<String> {
    let value_of = |name: &str| {
        env_source(container, name).map(|v| match v.as_str() {
            "fieldRef:spec.nodeName" => "svc-lb-worker".to_string(),
            "fieldRef:status.hostIP" => "172.18.0.2".to_string(),
            _ => v,
        })
    };
    container
        .args
        .iter()
        .flatten()
        .map(|arg| {
            let mut out = arg.clone();
            while let Some(start) = out.find("$(") {
                let Some(len) = out[start..].find(')') else {
                    break;
                };
                let name = out[start + 2..start + len].to_string();
                match value_of(&name) {
                    Some(value) => out.replace_range(start..start + len + 1, &value),
                    None => break,
                }
            }
            out
        })
        .collect()
}

/// The env var clap reads `svc-agent run`'s argument `id` from, from the agent's definition.
pub(crate) fn run_arg_env(id: &str) -> Option<String> {
    let cli = Cli::command();
    let run = cli.find_subcommand("run")?;
    let arg = run.get_arguments().find(|a| a.get_id() == id)?;
    arg.get_env().map(|e| e.to_string_lossy().into_owned())
}

/// The text of `file` in the pod: a key of the ConfigMap mounted at its directory.
pub(crate) fn config_map_file(
    file: &Path,
    container: &Container,
    pod: &PodSpec,
    config_maps: &[ConfigMap],
) -> Result<String> {
    let dir = file.parent().context("no directory")?;
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| Path::new(&m.mount_path) == dir)
        .with_context(|| format!("{}: no volume mounted at {}", file.display(), dir.display()))?;
    let name = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .and_then(|v| v.config_map.as_ref())
        .map(|c| c.name.clone())
        .with_context(|| {
            format!(
                "{}: volume {} is not a ConfigMap",
                file.display(),
                mount.name
            )
        })?;
    let config_map = config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(name.as_str()))
        .with_context(|| format!("{}: no ConfigMap {name}", file.display()))?;
    let key = file
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default();
    config_map
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned()
        .with_context(|| format!("{}: ConfigMap {name} has no key {key}", file.display()))
}

/// Parses the container's command line with the agent's own definition, then applies the
/// `--config` file from its ConfigMap as the agent does (flags given win). Env-backed flags
/// (`--node-name` from NODE_NAME) take the container's env, as clap does in the pod; the test
/// process's own environment plays no part.
pub(crate) fn parse_agent_args(
    container: &Container,
    pod: &PodSpec,
    config_maps: &[ConfigMap],
) -> Result<RunArgs> {
    let mut argv = vec!["svc-agent".to_string()];
    argv.extend(expand_args(container));
    let cli = Cli::command();
    let run = cli.find_subcommand("run").context("svc-agent has no run")?;
    for arg in run.get_arguments() {
        let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let given = argv
            .iter()
            .any(|a| a == &format!("--{long}") || a.starts_with(&format!("--{long}=")));
        if let Some(value) = env_source(container, &env.to_string_lossy()) {
            if !given {
                argv.push(format!("--{long}={value}"));
            }
        }
    }
    let matches = Cli::command()
        .try_get_matches_from(&argv)
        .map_err(|e| anyhow::anyhow!("{argv:?}: {}", e.render()))?;
    let Command::Run(mut args) = Cli::from_arg_matches(&matches)?.command else {
        bail!("the container does not start `svc-agent run`: {argv:?}");
    };
    if let Some(file) = args.config.clone() {
        let run = matches.subcommand_matches("run").context("no run")?;
        let given = |id: &str| {
            run.value_source(id)
                .is_some_and(|s| s != ValueSource::DefaultValue)
        };
        let text = config_map_file(&file, container, pod, config_maps)?;
        let report = svc_agent::kpconfig::apply(&text, &mut args, &given, 2)?;
        ensure!(
            report.warnings.is_empty(),
            "{}: fields that do not apply: {:?}",
            file.display(),
            report.warnings
        );
    }
    Ok(args)
}

/// Everything about the agent's DaemonSet that must agree with the agent or the cluster, with
/// the ConfigMaps of deploy/svc-lb.yaml.
pub(crate) fn daemonset_problems(ds: &DaemonSet, cluster: &KindCluster) -> Vec<String> {
    match privileged_objects() {
        Ok(objects) => daemonset_problems_with(ds, cluster, &objects.config_maps),
        Err(e) => vec![format!("{PRIVILEGED}: {e:#}")],
    }
}

pub(crate) fn daemonset_problems_with(
    ds: &DaemonSet,
    cluster: &KindCluster,
    config_maps: &[ConfigMap],
) -> Vec<String> {
    let mut problems = Vec::new();
    let Ok(pod) = pod_spec(ds) else {
        return vec!["no pod spec".into()];
    };
    let [container] = pod.containers.as_slice() else {
        return vec![format!("{} containers, expected one", pod.containers.len())];
    };
    let args = match parse_agent_args(container, pod, config_maps) {
        Ok(args) => args,
        Err(e) => {
            return vec![format!(
                "args (and --config) do not parse with svc_agent::cli::Cli / kpconfig: {e:#}"
            )]
        }
    };
    let mut problem = |ok: bool, text: String| {
        if !ok {
            problems.push(text);
        }
    };

    problem(
        args.manifests.is_none(),
        "the DaemonSet must follow the API server".into(),
    );
    problem(
        pod.host_network == Some(true),
        "hostNetwork must be true".into(),
    );
    // NODE_NAME: the env var clap reads --node-name from, filled from the pod's node.
    match run_arg_env("node_name") {
        Some(env) => problem(
            env_source(container, &env).as_deref() == Some("fieldRef:spec.nodeName"),
            format!("{env} must come from the downward API field spec.nodeName"),
        ),
        None => problem(false, "svc-agent run --node-name reads no env var".into()),
    }
    // --node-ip from status.hostIP.
    let node_ip_refs: Vec<String> = container
        .args
        .iter()
        .flatten()
        .filter_map(|a| a.strip_prefix("--node-ip=$(")?.strip_suffix(')'))
        .map(|var| env_source(container, var).unwrap_or_default())
        .collect();
    problem(
        node_ip_refs == ["fieldRef:status.hostIP"],
        format!("--node-ip must be $(VAR) with VAR from status.hostIP, found {node_ip_refs:?}"),
    );
    problem(
        args.pod_ifaces.iter().any(|p| p == "veth"),
        format!(
            "kindnet names pod veths veth…, --pod-ifaces is {:?}",
            args.pod_ifaces
        ),
    );

    // Ports and probes against the bind addresses: readiness is our /healthz on the metrics
    // port (first sync programmed), liveness kube-proxy's /livez on the healthz port.
    for (flag, value, probe_name, probe, path) in [
        (
            "--metrics-bind-address",
            &args.metrics_bind_address,
            "readinessProbe",
            &container.readiness_probe,
            HEALTHZ_PATH,
        ),
        (
            "--healthz-bind-address",
            &args.healthz_bind_address,
            "livenessProbe",
            &container.liveness_probe,
            "/livez",
        ),
    ] {
        let Ok(addr) = value.parse::<SocketAddr>() else {
            problem(false, format!("{flag} {value} is not an address"));
            continue;
        };
        problem(
            addr.ip().is_unspecified(),
            format!("{flag} {addr}: the kubelet probes the node's address, bind them all"),
        );
        let port = i32::from(addr.port());
        problem(
            container
                .ports
                .iter()
                .flatten()
                .any(|p| p.container_port == port),
            format!("no containerPort {port} ({flag})"),
        );
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref());
        let probe_port = get.map(|g| match &g.port {
            IntOrString::Int(n) => Some(*n),
            IntOrString::String(name) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port),
        });
        problem(
            get.and_then(|g| g.path.as_deref()) == Some(path) && probe_port == Some(Some(port)),
            format!("{probe_name} must be httpGet {path} on port {port} ({flag})"),
        );
    }

    // Host paths: the pins must land on the node's bpffs, the cgroup on the node's cgroup root.
    let host_mount = |path: &Path| {
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| path.starts_with(&m.mount_path))
            .max_by_key(|m| m.mount_path.len())?;
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)?;
        Some((mount, volume.host_path.as_ref()?.path.clone()))
    };
    match host_mount(&args.bpffs) {
        Some((mount, host)) => problem(
            host == "/sys/fs/bpf" && mount.mount_path == "/sys/fs/bpf",
            format!(
                "--bpffs {} must be under the node's /sys/fs/bpf mounted at /sys/fs/bpf",
                args.bpffs.display()
            ),
        ),
        None => problem(
            false,
            format!("--bpffs {} is on no hostPath mount", args.bpffs.display()),
        ),
    }
    if let Some(cgroup) = &args.cgroup {
        problem(
            host_mount(cgroup).is_some_and(|(_, host)| host == "/sys/fs/cgroup"),
            format!(
                "--cgroup {} is not the node's /sys/fs/cgroup",
                cgroup.display()
            ),
        );
    }
    // The API server refuses Bidirectional propagation for an unprivileged container.
    let privileged = container
        .security_context
        .as_ref()
        .and_then(|s| s.privileged)
        == Some(true);
    for mount in container.volume_mounts.iter().flatten() {
        problem(
            privileged || mount.mount_propagation.as_deref() != Some("Bidirectional"),
            format!(
                "{}: Bidirectional propagation needs privileged: true",
                mount.name
            ),
        );
    }
    // The API server is reached directly (its ClusterIP is served by svc-lb itself), through
    // the kubeconfig in the ConfigMap, with the pod's service-account credentials.
    let server = format!("https://{}-control-plane:6443", cluster.name);
    match &args.kubeconfig {
        None => problem(
            false,
            format!("no kubeconfig: the in-cluster default is the `kubernetes` ClusterIP, served by svc-lb itself; point one at {server}"),
        ),
        Some(file) => match config_map_file(file, container, pod, config_maps)
            .and_then(|text| document(&text))
        {
            Err(e) => problem(false, format!("kubeconfig: {e:#}")),
            Ok(kc) => {
                let at = |path: &[&str]| {
                    path.iter()
                        .try_fold(&kc, |v, k| match k.parse::<usize>() {
                            Ok(i) => v.get(i),
                            Err(_) => v.get(*k),
                        })
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_string()
                };
                let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
                for (path, want) in [
                    (&["clusters", "0", "cluster", "server"][..], server.clone()),
                    (
                        &["clusters", "0", "cluster", "certificate-authority"][..],
                        format!("{sa}/ca.crt"),
                    ),
                    (&["users", "0", "user", "tokenFile"][..], format!("{sa}/token")),
                ] {
                    let got = at(path);
                    problem(
                        got == want,
                        format!("kubeconfig {}: {got:?}, expected {want:?}", path.join(".")),
                    );
                }
            }
        },
    }
    problem(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "the agent must tolerate every taint (control-plane nodes too)".into(),
    );
    problems
}

/// The least-privilege DaemonSet with its security settings put back to the privileged one's
/// must be the privileged DaemonSet: any other difference is drift between two copies.
pub(crate) fn drift(privileged: &DaemonSet, least: &DaemonSet) -> Result<Vec<String>> {
    let mut least = least.clone();
    let reference = pod_spec(privileged)?.containers[0].clone();
    let spec = least
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .context("no pod spec")?;
    let container = spec.containers.get_mut(0).context("no container")?;
    container.security_context = reference.security_context.clone();
    for mount in container.volume_mounts.iter_mut().flatten() {
        if let Some(original) = reference
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == mount.name)
        {
            mount.mount_propagation = original.mount_propagation.clone();
        }
    }
    let mut lost = Vec::new();
    let (a, b) = (
        serde_json::to_value(privileged)?,
        serde_json::to_value(&least)?,
    );
    diff_lost(&a, &b, String::new(), &mut lost);
    diff_lost(&b, &a, String::new(), &mut lost);
    Ok(lost)
}

pub(crate) fn privileged_objects() -> Result<Objects> {
    parse_objects(&read(PRIVILEGED)?)
}

pub(crate) fn least_privilege_daemon_set() -> Result<DaemonSet> {
    let objects = parse_objects(&read(LEAST_PRIVILEGE)?)?;
    ensure!(
        objects.daemon_sets.len() == 1 && objects.cluster_roles.is_empty(),
        "{LEAST_PRIVILEGE}: exactly one DaemonSet expected"
    );
    Ok(objects.daemon_sets.into_iter().next().unwrap())
}
