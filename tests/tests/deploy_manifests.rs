//! The deploy/ manifests, checked as far as a machine without a cluster can (no root needed):
//! - every document parses as the type Kubernetes will read it as, and re-serialising it loses
//!   no key (so a misspelt or misplaced field, which the API server would drop or refuse, fails);
//! - svc-lb's ClusterRole grants nothing kube-proxy's `system:node-proxier` does not
//!   (deploy/node-proxier-rules.yaml, copied from the Kubernetes bootstrap policy);
//! - each DaemonSet starts the agent with arguments that parse with the agent's own command-line
//!   definition (`svc_agent::cli::Cli`), and its probes, ports, env and mounts agree with them;
//! - the least-privilege DaemonSet differs from the privileged one only in its security settings.
//!
//! The checkers return the problems they find rather than panicking, so the last tests can feed
//! them deliberately broken manifests and prove each check can fail.
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{bail, ensure, Context, Result};
use clap::{CommandFactory, Parser};
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Container, Namespace, PodSpec, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use svc_agent::{
    cli::{Cli, Command, RunArgs},
    metrics::HEALTHZ_PATH,
};

const PRIVILEGED: &str = "svc-lb.yaml";
const LEAST_PRIVILEGE: &str = "svc-lb-least-privilege.yaml";
const KIND_CONFIG: &str = "kind-config.yaml";
const NODE_PROXIER: &str = "node-proxier-rules.yaml";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(file: &str) -> Result<String> {
    let path = deploy_dir().join(file);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// The `---` documents of a YAML text, as untyped trees.
fn documents(text: &str) -> Result<Vec<serde_yaml::Value>> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| serde_yaml::Value::deserialize(doc).map_err(Into::into))
        .filter(|doc| !matches!(doc, Ok(serde_yaml::Value::Null)))
        .collect()
}

/// Parses `doc` as `T` and fails if re-serialising the result loses or changes anything: serde
/// (and k8s-openapi) skip unknown fields silently, so this is how a typo such as `hostNetwrok`
/// or a field at the wrong level is caught.
fn parse_strict<T: DeserializeOwned + Serialize>(doc: &serde_yaml::Value) -> Result<T> {
    let typed: T = serde_yaml::from_value(doc.clone())?;
    let original = serde_json::to_value(doc)?;
    let round_trip = serde_json::to_value(&typed)?;
    let mut lost = Vec::new();
    diff_lost(&original, &round_trip, String::new(), &mut lost);
    ensure!(lost.is_empty(), "not part of the type: {}", lost.join(", "));
    Ok(typed)
}

/// Paths present in `original` but missing or different in `round_trip`.
fn diff_lost(
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

fn is_empty(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(m) => m.is_empty(),
        serde_json::Value::Null => true,
        _ => false,
    }
}

/// What deploy/svc-lb*.yaml may contain, by kind.
#[derive(Default)]
struct Objects {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    daemon_sets: Vec<DaemonSet>,
}

fn parse_objects(text: &str) -> Result<Objects> {
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
            ("apps/v1", "DaemonSet") => out.daemon_sets.push(parse_strict(doc).with_context(at)?),
            _ => bail!("{}: a kind these manifests are not expected to hold", at()),
        }
    }
    Ok(out)
}

/// deploy/kind-config.yaml: the fields of kind's `Cluster` (kind.x-k8s.io/v1alpha4) we use.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KindCluster {
    api_version: String,
    kind: String,
    name: String,
    networking: KindNetworking,
    nodes: Vec<KindNode>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KindNetworking {
    kube_proxy_mode: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KindNode {
    role: String,
    image: String,
}

/// deploy/node-proxier-rules.yaml: the reference rules, with where they were copied from.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RulesReference {
    cluster_role: String,
    source: String,
    rules: Vec<PolicyRule>,
}

fn kind_cluster() -> Result<KindCluster> {
    let docs = documents(&read(KIND_CONFIG)?)?;
    ensure!(docs.len() == 1, "{KIND_CONFIG}: one document expected");
    parse_strict(&docs[0])
}

fn node_proxier() -> Result<RulesReference> {
    let docs = documents(&read(NODE_PROXIER)?)?;
    ensure!(docs.len() == 1, "{NODE_PROXIER}: one document expected");
    parse_strict(&docs[0])
}

/// Every (apiGroup, resource, verb) that `granted` allows and `reference` does not, plus any
/// rule the comparison cannot vouch for (non-resource URLs).
fn rules_beyond(granted: &[PolicyRule], reference: &[PolicyRule]) -> Vec<String> {
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

fn pod_spec(ds: &DaemonSet) -> Result<&PodSpec> {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .context("DaemonSet without a pod spec")
}

/// Where a container env var's value comes from: a literal, or a downward-API field path.
fn env_source(container: &Container, name: &str) -> Option<String> {
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
fn expand_args(container: &Container) -> Vec<String> {
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
fn run_arg_env(id: &str) -> Option<String> {
    let cli = Cli::command();
    let run = cli.find_subcommand("run")?;
    let arg = run.get_arguments().find(|a| a.get_id() == id)?;
    arg.get_env().map(|e| e.to_string_lossy().into_owned())
}

/// Parses the container's command line with the agent's own definition. Env-backed flags
/// (`--node-name` from NODE_NAME) take the container's env, as clap does in the pod; the test
/// process's own environment plays no part.
fn parse_agent_args(container: &Container) -> Result<RunArgs> {
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
    match Cli::try_parse_from(&argv)
        .map_err(|e| anyhow::anyhow!("{argv:?}: {}", e.render()))?
        .command
    {
        Command::Run(args) => Ok(args),
        _ => bail!("the container does not start `svc-agent run`: {argv:?}"),
    }
}

/// Everything about the agent's DaemonSet that must agree with the agent or the cluster.
fn daemonset_problems(ds: &DaemonSet, cluster: &KindCluster) -> Vec<String> {
    let mut problems = Vec::new();
    let Ok(pod) = pod_spec(ds) else {
        return vec!["no pod spec".into()];
    };
    let [container] = pod.containers.as_slice() else {
        return vec![format!("{} containers, expected one", pod.containers.len())];
    };
    let args = match parse_agent_args(container) {
        Ok(args) => args,
        Err(e) => return vec![format!("args do not parse with svc_agent::cli::Cli: {e:#}")],
    };
    let mut problem = |ok: bool, text: String| {
        if !ok {
            problems.push(text);
        }
    };

    problem(
        args.manifests.is_none() && args.kubeconfig.is_none(),
        "the DaemonSet must follow the API server in-cluster".into(),
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

    // Probes and port against --metrics-addr and the agent's health route.
    match args.metrics_addr.parse::<SocketAddr>() {
        Err(_) => problem(
            false,
            format!("--metrics-addr {} is not an address", args.metrics_addr),
        ),
        Ok(addr) => {
            let port = i32::from(addr.port());
            problem(
                container
                    .ports
                    .iter()
                    .flatten()
                    .any(|p| p.container_port == port),
                format!("no containerPort {port} (--metrics-addr)"),
            );
            for (name, probe) in [
                ("livenessProbe", &container.liveness_probe),
                ("readinessProbe", &container.readiness_probe),
            ] {
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
                    get.and_then(|g| g.path.as_deref()) == Some(HEALTHZ_PATH)
                        && probe_port == Some(Some(port)),
                    format!(
                        "{name} must be httpGet {HEALTHZ_PATH} on port {port} (--metrics-addr)"
                    ),
                );
            }
        }
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
    // The API server is reached directly (its ClusterIP is served by svc-lb itself).
    let control_plane = format!("{}-control-plane", cluster.name);
    problem(
        env_source(container, "KUBERNETES_SERVICE_HOST").as_deref() == Some(&control_plane),
        format!("KUBERNETES_SERVICE_HOST must be {control_plane}, kind's control-plane node"),
    );
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
fn drift(privileged: &DaemonSet, least: &DaemonSet) -> Result<Vec<String>> {
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

fn privileged_objects() -> Result<Objects> {
    parse_objects(&read(PRIVILEGED)?)
}

fn least_privilege_daemon_set() -> Result<DaemonSet> {
    let objects = parse_objects(&read(LEAST_PRIVILEGE)?)?;
    ensure!(
        objects.daemon_sets.len() == 1 && objects.cluster_roles.is_empty(),
        "{LEAST_PRIVILEGE}: exactly one DaemonSet expected"
    );
    Ok(objects.daemon_sets.into_iter().next().unwrap())
}

#[test]
fn every_document_parses_as_its_type_with_no_unknown_field() -> Result<()> {
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(deploy_dir())? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".yaml") {
            continue;
        }
        match name.as_str() {
            KIND_CONFIG => drop(kind_cluster().context(KIND_CONFIG)?),
            NODE_PROXIER => drop(node_proxier().context(NODE_PROXIER)?),
            _ => drop(parse_objects(&read(&name)?).with_context(|| name.clone())?),
        }
        seen.insert(name);
    }
    for expected in [PRIVILEGED, LEAST_PRIVILEGE, KIND_CONFIG, NODE_PROXIER] {
        ensure!(seen.contains(expected), "deploy/{expected} is missing");
    }
    Ok(())
}

#[test]
fn kind_config_is_the_seed_cluster_without_kube_proxy() -> Result<()> {
    let cluster = kind_cluster()?;
    assert_eq!(cluster.api_version, "kind.x-k8s.io/v1alpha4");
    assert_eq!(cluster.kind, "Cluster");
    assert_eq!(cluster.networking.kube_proxy_mode, "none");
    let roles: Vec<&str> = cluster.nodes.iter().map(|n| n.role.as_str()).collect();
    assert_eq!(roles, ["control-plane", "worker", "worker"]);
    for node in &cluster.nodes {
        assert!(
            node.image.starts_with("kindest/node:v1.33.") && node.image.contains("@sha256:"),
            "{}: pin kindest/node by tag and digest",
            node.image
        );
    }
    Ok(())
}

#[test]
fn cluster_role_grants_nothing_node_proxier_does_not() -> Result<()> {
    let reference = node_proxier()?;
    assert_eq!(reference.cluster_role, "system:node-proxier");
    let objects = privileged_objects()?;
    let [role] = objects.cluster_roles.as_slice() else {
        bail!("{PRIVILEGED}: one ClusterRole expected");
    };
    let beyond = rules_beyond(role.rules.as_deref().unwrap_or_default(), &reference.rules);
    assert!(beyond.is_empty(), "beyond system:node-proxier: {beyond:?}");
    Ok(())
}

#[test]
fn service_account_is_bound_to_the_role_and_used_by_the_daemon_set() -> Result<()> {
    let objects = privileged_objects()?;
    let [ns] = objects.namespaces.as_slice() else {
        bail!("one Namespace expected");
    };
    let [sa] = objects.service_accounts.as_slice() else {
        bail!("one ServiceAccount expected");
    };
    let [binding] = objects.bindings.as_slice() else {
        bail!("one ClusterRoleBinding expected");
    };
    let [role] = objects.cluster_roles.as_slice() else {
        bail!("one ClusterRole expected");
    };
    assert_eq!(sa.metadata.namespace, ns.metadata.name);
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert!(subjects.iter().any(|s| s.kind == "ServiceAccount"
        && Some(&s.name) == sa.metadata.name.as_ref()
        && s.namespace == sa.metadata.namespace));
    for ds in objects
        .daemon_sets
        .iter()
        .chain([&least_privilege_daemon_set()?])
    {
        assert_eq!(ds.metadata.namespace, ns.metadata.name);
        assert_eq!(pod_spec(ds)?.service_account_name, sa.metadata.name);
    }
    Ok(())
}

#[test]
fn daemon_sets_start_the_agent_as_its_command_line_defines() -> Result<()> {
    let cluster = kind_cluster()?;
    let objects = privileged_objects()?;
    let [ds] = objects.daemon_sets.as_slice() else {
        bail!("{PRIVILEGED}: one DaemonSet expected");
    };
    for (file, ds) in [
        (PRIVILEGED, ds),
        (LEAST_PRIVILEGE, &least_privilege_daemon_set()?),
    ] {
        let problems = daemonset_problems(ds, &cluster);
        assert!(problems.is_empty(), "{file}: {problems:#?}");
    }
    Ok(())
}

#[test]
fn least_privilege_variant_differs_only_in_security_settings() -> Result<()> {
    let objects = privileged_objects()?;
    let least = least_privilege_daemon_set()?;
    let lost = drift(&objects.daemon_sets[0], &least)?;
    assert!(lost.is_empty(), "{LEAST_PRIVILEGE} drifted: {lost:?}");
    let container = &pod_spec(&least)?.containers[0];
    let security = container
        .security_context
        .as_ref()
        .context("no securityContext")?;
    assert_eq!(security.privileged, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let caps = security.capabilities.as_ref().context("no capabilities")?;
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    // The set deploy/capabilities-check.sh proved sufficient, each member necessary.
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(added, BTreeSet::from(["BPF", "NET_ADMIN", "PERFMON"]));
    Ok(())
}

// The checks above can fail: each checker, fed a deliberately broken copy, reports the breakage.

/// The privileged DaemonSet, edited as a YAML tree by `edit`, then parsed.
fn broken_daemon_set(edit: impl FnOnce(&mut serde_yaml::Value)) -> Result<Result<DaemonSet>> {
    let text = read(PRIVILEGED)?;
    let mut doc = documents(&text)?
        .into_iter()
        .find(|d| d.get("kind").and_then(|k| k.as_str()) == Some("DaemonSet"))
        .context("no DaemonSet")?;
    edit(&mut doc);
    Ok(parse_strict(&doc))
}

fn container_yaml(doc: &mut serde_yaml::Value) -> &mut serde_yaml::Value {
    &mut doc["spec"]["template"]["spec"]["containers"][0]
}

#[test]
fn a_wrong_probe_port_is_reported() -> Result<()> {
    let ds = broken_daemon_set(|doc| {
        container_yaml(doc)["livenessProbe"]["httpGet"]["port"] = 10250.into();
    })??;
    let problems = daemonset_problems(&ds, &kind_cluster()?);
    assert!(
        problems.iter().any(|p| p.starts_with("livenessProbe")),
        "{problems:?}"
    );
    Ok(())
}

#[test]
fn a_wrong_metrics_port_is_reported_for_both_probes_and_the_container_port() -> Result<()> {
    let ds = broken_daemon_set(|doc| {
        let args = container_yaml(doc)["args"].as_sequence_mut().unwrap();
        for arg in args {
            if arg.as_str() == Some("--metrics-addr=0.0.0.0:10249") {
                *arg = "--metrics-addr=0.0.0.0:9999".into();
            }
        }
    })??;
    let problems = daemonset_problems(&ds, &kind_cluster()?);
    assert_eq!(problems.len(), 3, "{problems:?}");
    Ok(())
}

#[test]
fn an_extra_rbac_verb_is_reported() -> Result<()> {
    let reference = node_proxier()?;
    let objects = privileged_objects()?;
    let mut rules = objects.cluster_roles[0].rules.clone().unwrap_or_default();
    rules.push(PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["services".into()]),
        verbs: vec!["delete".into()],
        ..Default::default()
    });
    // `get` on endpointslices is within reason but not within kube-proxy's role.
    rules.push(PolicyRule {
        api_groups: Some(vec!["discovery.k8s.io".into()]),
        resources: Some(vec!["endpointslices".into()]),
        verbs: vec!["get".into()],
        ..Default::default()
    });
    assert_eq!(
        rules_beyond(&rules, &reference.rules),
        [
            r#"("", services, delete)"#,
            r#"("discovery.k8s.io", endpointslices, get)"#
        ]
    );
    Ok(())
}

#[test]
fn an_unknown_or_misplaced_field_is_reported() -> Result<()> {
    let result = broken_daemon_set(|doc| {
        doc["spec"]["template"]["spec"]["hostNetwrok"] = true.into();
    })?;
    let err = format!("{:#}", result.err().context("a misspelt field parsed")?);
    assert!(err.contains(".spec.template.spec.hostNetwrok"), "{err}");
    Ok(())
}

#[test]
fn an_agent_flag_that_does_not_exist_is_reported() -> Result<()> {
    let ds = broken_daemon_set(|doc| {
        let args = container_yaml(doc)["args"].as_sequence_mut().unwrap();
        args.push("--nodeport-adresses=127.0.0.0/8".into());
    })??;
    let problems = daemonset_problems(&ds, &kind_cluster()?);
    assert!(
        problems[0].contains("do not parse") && problems[0].contains("nodeport-adresses"),
        "{problems:?}"
    );
    Ok(())
}

#[test]
fn node_name_from_the_wrong_field_or_missing_is_reported() -> Result<()> {
    let ds = broken_daemon_set(|doc| {
        container_yaml(doc)["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] =
            "metadata.name".into();
    })??;
    let problems = daemonset_problems(&ds, &kind_cluster()?);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("NODE_NAME must come from")),
        "{problems:?}"
    );
    // Without NODE_NAME, the required --node-name is missing and the args do not parse.
    let ds = broken_daemon_set(|doc| {
        container_yaml(doc)["env"]
            .as_sequence_mut()
            .unwrap()
            .retain(|e| e["name"].as_str() != Some("NODE_NAME"));
    })??;
    let problems = daemonset_problems(&ds, &kind_cluster()?);
    assert!(problems[0].contains("--node-name"), "{problems:?}");
    Ok(())
}

#[test]
fn bpffs_outside_the_host_mount_and_drift_are_reported() -> Result<()> {
    let ds = broken_daemon_set(|doc| {
        let args = container_yaml(doc)["args"].as_sequence_mut().unwrap();
        for arg in args {
            if arg.as_str() == Some("--bpffs=/sys/fs/bpf/svc") {
                *arg = "--bpffs=/var/run/svc".into();
            }
        }
    })??;
    let problems = daemonset_problems(&ds, &kind_cluster()?);
    assert!(
        problems.iter().any(|p| p.contains("--bpffs /var/run/svc")),
        "{problems:?}"
    );
    // The least-privilege copy with one more change than its security settings.
    let mut least = least_privilege_daemon_set()?;
    let spec = least.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    spec.containers[0]
        .args
        .as_mut()
        .unwrap()
        .push("--poll-ms=5".into());
    let lost = drift(&privileged_objects()?.daemon_sets[0], &least)?;
    assert!(!lost.is_empty());
    // Bidirectional without privileged, as the API server would refuse it.
    let mut least = least_privilege_daemon_set()?;
    let spec = least.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    spec.containers[0].volume_mounts.as_mut().unwrap()[0].mount_propagation =
        Some("Bidirectional".into());
    let problems = daemonset_problems(&least, &kind_cluster()?);
    assert!(
        problems.iter().any(|p| p.contains("Bidirectional")),
        "{problems:?}"
    );
    Ok(())
}

#[test]
fn env_expansion_follows_kubernetes() -> Result<()> {
    let ds = &privileged_objects()?.daemon_sets[0];
    let args = expand_args(&pod_spec(ds)?.containers[0]);
    assert!(
        args.contains(&"--node-ip=172.18.0.2".to_string()),
        "{args:?}"
    );
    // An undefined reference stays literal, so it fails to parse as an address.
    let ds = broken_daemon_set(|doc| {
        container_yaml(doc)["env"]
            .as_sequence_mut()
            .unwrap()
            .retain(|e| e["name"].as_str() != Some("NODE_IP"));
    })??;
    let problems = daemonset_problems(&ds, &kind_cluster()?);
    assert!(problems[0].contains("$(NODE_IP)"), "{problems:?}");
    Ok(())
}
