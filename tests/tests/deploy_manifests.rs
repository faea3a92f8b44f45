//! The deploy/ manifests, checked as far as a machine without a cluster can (no root needed):
//! - every document parses as the type Kubernetes will read it as, and re-serialising it loses
//!   no key (so a misspelt or misplaced field, which the API server would drop or refuse, fails);
//! - svc-lb's ClusterRole grants nothing kube-proxy's `system:node-proxier` does not
//!   (deploy/node-proxier-rules.yaml, copied from the Kubernetes bootstrap policy);
//! - each DaemonSet starts the agent with arguments that parse with the agent's own command-line
//!   definition (`svc_agent::cli::Cli`), plus the ConfigMap's `config.conf` (`--config`) read
//!   with the agent's own parser (`svc_agent::kpconfig`), and its probes, ports, env and mounts
//!   agree with the result;
//! - the least-privilege DaemonSet differs from the privileged one only in its security settings.
//!
//! The checkers (in `deploy_common`) return the problems they find rather than panicking, so
//! `deploy_manifests_broken` can feed them deliberately broken manifests and prove each check
//! can fail.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::collections::BTreeSet;

use anyhow::{bail, ensure, Context, Result};

mod deploy_common;
use deploy_common::*;

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
