//! The deploy/ manifest checkers of `deploy_manifests` can fail: each checker, fed a
//! deliberately broken copy of a manifest (a wrong probe or metrics port, an edited
//! `config.conf`, an extra RBAC verb, an unknown or misplaced field, an agent flag that does not
//! exist, NODE_NAME from the wrong field, bpffs outside the host mount, drift between the
//! DaemonSets), reports the breakage. No root needed.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, FromArgMatches};
use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::ConfigMap, rbac::v1::PolicyRule};
use svc_agent::cli::{Cli, Command};

mod deploy_common;
use deploy_common::*;

// The checks above can fail: each checker, fed a deliberately broken copy, reports the breakage.

/// The privileged DaemonSet, edited as a YAML tree by `edit`, then parsed.
fn broken_daemon_set(edit: impl FnOnce(&mut serde_json::Value)) -> Result<Result<DaemonSet>> {
    let text = read(PRIVILEGED)?;
    let mut doc = documents(&text)?
        .into_iter()
        .find(|d| d.get("kind").and_then(|k| k.as_str()) == Some("DaemonSet"))
        .context("no DaemonSet")?;
    edit(&mut doc);
    Ok(parse_strict(&doc))
}

fn container_yaml(doc: &mut serde_json::Value) -> &mut serde_json::Value {
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
fn a_wrong_metrics_or_healthz_port_is_reported_for_its_probe_and_the_container_port() -> Result<()>
{
    // A flag on the command line wins over the ConfigMap, as with kube-proxy.
    for (arg, probe) in [
        ("--metrics-bind-address=0.0.0.0:9999", "readinessProbe"),
        ("--healthz-bind-address=0.0.0.0:9998", "livenessProbe"),
    ] {
        let ds = broken_daemon_set(|doc| {
            let args = container_yaml(doc)["args"].as_array_mut().unwrap();
            args.push(arg.into());
        })??;
        let problems = daemonset_problems(&ds, &kind_cluster()?);
        assert_eq!(problems.len(), 2, "{arg}: {problems:?}");
        assert!(problems[0].starts_with("no containerPort"), "{problems:?}");
        assert!(problems[1].starts_with(probe), "{problems:?}");
    }
    Ok(())
}

/// The privileged manifests' ConfigMaps with `config.conf` edited by `edit`.
fn edited_config(edit: impl FnOnce(&str) -> String) -> Result<Vec<ConfigMap>> {
    let mut maps = privileged_objects()?.config_maps;
    let data = maps[0].data.as_mut().context("no data")?;
    let text = data.get("config.conf").context("no config.conf")?;
    let edited = edit(text);
    data.insert("config.conf".into(), edited);
    Ok(maps)
}

#[test]
fn the_config_map_parses_with_the_agents_parser_and_every_field_applies() -> Result<()> {
    let objects = privileged_objects()?;
    let [config] = objects.config_maps.as_slice() else {
        bail!("{PRIVILEGED}: one ConfigMap expected");
    };
    let text = config
        .data
        .as_ref()
        .and_then(|d| d.get("config.conf"))
        .context("no config.conf")?;
    let cli = Cli::command().try_get_matches_from(["svc-agent", "run"])?;
    let Command::Run(mut args) = Cli::from_arg_matches(&cli)?.command else {
        bail!("not run");
    };
    let report = svc_agent::kpconfig::apply(text, &mut args, &|_| false, 2)?;
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert!(report.ignored.is_empty(), "{:?}", report.ignored);
    assert_eq!(args.metrics_bind_address, "0.0.0.0:10249");
    assert_eq!(args.healthz_bind_address, "0.0.0.0:10256");
    assert_eq!(args.pod_ifaces, ["veth"]);
    assert_eq!(args.cluster_cidr, ["10.244.0.0/16"]);
    // The DaemonSet's own view of it is checked by daemon_sets_start_the_agent_as_its_…;
    // here, that a broken or inapplicable field in the ConfigMap fails that check.
    let ds = &objects.daemon_sets[0];
    let cluster = kind_cluster()?;
    for (edit, needle) in [
        ("conntrack:\n  udpTimeout: 30\n", "conntrack.udpTimeout"),
        ("mode: ipvs\n", "mode: ipvs ignored"),
        ("kubeProxyMagic: 1\n", "kubeProxyMagic: unknown field"),
    ] {
        let maps = edited_config(|t| format!("{t}{edit}"))?;
        let problems = daemonset_problems_with(ds, &cluster, &maps);
        assert!(
            problems.len() == 1 && problems[0].contains(needle),
            "{edit:?}: {problems:?}"
        );
    }
    // The kubeconfig must reach kind's control plane with the pod's credentials.
    let mut maps = objects.config_maps.clone();
    let data = maps[0].data.as_mut().context("no data")?;
    let kc = data.get("kubeconfig.conf").context("no kubeconfig.conf")?;
    let edited = kc.replace("svc-lb-control-plane", "kind-control-plane");
    data.insert("kubeconfig.conf".into(), edited);
    let problems = daemonset_problems_with(ds, &cluster, &maps);
    assert!(
        problems.len() == 1 && problems[0].contains("kubeconfig clusters.0.cluster.server"),
        "{problems:?}"
    );
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
        let args = container_yaml(doc)["args"].as_array_mut().unwrap();
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
    // Without NODE_NAME, the agent would fall back to the host name (the container's, here
    // the node's, as kube-proxy): reported, the node name must come from the pod's node.
    let ds = broken_daemon_set(|doc| {
        container_yaml(doc)["env"]
            .as_array_mut()
            .unwrap()
            .retain(|e| e["name"].as_str() != Some("NODE_NAME"));
    })??;
    let problems = daemonset_problems(&ds, &kind_cluster()?);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("NODE_NAME must come from")),
        "{problems:?}"
    );
    Ok(())
}

#[test]
fn bpffs_outside_the_host_mount_and_drift_are_reported() -> Result<()> {
    let ds = broken_daemon_set(|doc| {
        let args = container_yaml(doc)["args"].as_array_mut().unwrap();
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
            .as_array_mut()
            .unwrap()
            .retain(|e| e["name"].as_str() != Some("NODE_IP"));
    })??;
    let problems = daemonset_problems(&ds, &kind_cluster()?);
    assert!(problems[0].contains("$(NODE_IP)"), "{problems:?}");
    Ok(())
}
