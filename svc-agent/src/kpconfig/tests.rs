use std::net::Ipv4Addr;

use clap::Parser;

use super::*;
use crate::cli::{Cli, Command};

const KUBEADM_DEFAULTS: &str = include_str!("kubeadm-defaults.conf");
const KIND_CONFIGMAP: &str = include_str!("kind-configmap.conf");
const KIND_INPUT: &str = include_str!("kind-kubeadm-input.conf");

fn run_args(argv: &[&str]) -> RunArgs {
    let mut full = vec!["svc-agent", "run"];
    full.extend_from_slice(argv);
    match Cli::try_parse_from(full).expect("valid flags").command {
        Command::Run(args) => args,
        _ => unreachable!("parsed `run`"),
    }
}

/// Applies `text` to the defaults, with the flags in `given` counted as on the command line.
fn apply_to(text: &str, argv: &[&str], given: &[&str]) -> Result<(RunArgs, Report), ConfigError> {
    let mut args = run_args(argv);
    let report = apply(text, &mut args, &|id| given.contains(&id), 4)?;
    Ok((args, report))
}

/// Every leaf of `text` is applied or ignored, itself or through an enclosing field.
fn assert_every_field_accounted_for(text: &str, report: &Report) {
    let doc: Value = parse(text).unwrap();
    let mut all = Vec::new();
    leaves("", &doc, &mut all);
    for (path, _) in all {
        let covered = |list: &[String]| {
            list.iter()
                .any(|p| p == &path || path.starts_with(&format!("{p}.")))
        };
        assert!(
            covered(&report.applied) || covered(&report.ignored),
            "{path} neither applied nor ignored: {report:#?}"
        );
    }
}

#[test]
fn kubeadm_defaults_apply_nothing_but_the_kubeconfig() {
    let (args, report) = apply_to(KUBEADM_DEFAULTS, &[], &[]).expect("parses");
    assert_every_field_accounted_for(KUBEADM_DEFAULTS, &report);
    let defaults = run_args(&[]);
    assert_eq!(
        args.kubeconfig,
        Some(PathBuf::from("/var/lib/kube-proxy/kubeconfig.conf"))
    );
    assert_eq!(args.node_ip, defaults.node_ip);
    assert_eq!(args.cluster_cidr, defaults.cluster_cidr);
    assert_eq!(args.metrics_bind_address, "127.0.0.1:10249");
    assert_eq!(args.healthz_bind_address, "0.0.0.0:10256");
    assert_eq!(args.sync_period, Secs(30));
    assert_eq!(args.conntrack.timeouts(), defaults.conntrack.timeouts());
    assert_eq!(
        args.conntrack.conntrack_max,
        defaults.conntrack.conntrack_max
    );
    // Every zero-valued field that does not apply is named, in one line.
    let unset = report
        .warnings
        .iter()
        .find(|w| w.starts_with("fields that do not apply to svc-lb, unset:"))
        .expect("a summary of the unset fields");
    for field in [
        "bindAddressHardFail",
        "ipvs.scheduler",
        "winkernel.sourceVip",
        "nftables.masqueradeBit",
        "oomScoreAdj",
        "logging.options.json.infoBufferSize",
        "conntrack.tcpBeLiberal",
    ] {
        assert!(unset.contains(field), "{field} not in {unset}");
    }
    assert_eq!(report.warnings.len(), 1, "{:#?}", report.warnings);
}

#[test]
fn kinds_config_map_applies_and_names_its_iptables_mode() {
    let (args, report) = apply_to(KIND_CONFIGMAP, &[], &[]).expect("parses");
    assert_every_field_accounted_for(KIND_CONFIGMAP, &report);
    assert_eq!(args.cluster_cidr, ["10.244.0.0/16"]);
    assert_eq!(
        args.kubeconfig,
        Some(PathBuf::from("/var/lib/kube-proxy/kubeconfig.conf"))
    );
    // maxPerCore 0: kube-proxy leaves the limit alone, svc-lb keeps its own size.
    assert_eq!(
        args.conntrack.conntrack_max,
        run_args(&[]).conntrack.conntrack_max
    );
    let named = |prefix: &str| report.warnings.iter().any(|w| w.starts_with(prefix));
    assert!(named("mode: iptables ignored"), "{:#?}", report.warnings);
    assert!(
        named("iptables.minSyncPeriod: 1s ignored"),
        "{:#?}",
        report.warnings
    );
}

#[test]
fn kinds_kubeadm_input_parses_with_its_metadata_ignored() {
    let (_, report) = apply_to(KIND_INPUT, &[], &[]).expect("parses");
    assert_every_field_accounted_for(KIND_INPUT, &report);
    assert!(report.ignored.contains(&"metadata.name".to_string()));
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.starts_with("metadata.name: config ignored")),
        "{:#?}",
        report.warnings
    );
}

#[test]
fn an_unknown_field_is_named() {
    let text = format!("{KUBEADM_DEFAULTS}ebpfMagic: true\nconntrack2:\n  size: 3\n");
    let (_, report) = apply_to(&text, &[], &[]).expect("parses");
    for field in ["ebpfMagic", "conntrack2.size"] {
        assert!(
            report
                .warnings
                .contains(&format!("{field}: unknown field, ignored")),
            "{field}: {:#?}",
            report.warnings
        );
    }
}

const SET: &str = "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 172.18.0.2
clientConnection:
  kubeconfig: /etc/kp.conf
  qps: 50
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
conntrack:
  maxPerCore: 65536
  min: 131072
  tcpEstablishedTimeout: 1h0m0s
  tcpCloseWaitTimeout: 30m
  udpTimeout: 10s
  udpStreamTimeout: 2m0s
detectLocalMode: InterfaceNamePrefix
detectLocal:
  interfaceNamePrefix: cali
featureGates:
  SomeGate: true
healthzBindAddress: 0.0.0.0:12256
hostnameOverride: ' Worker-1 '
iptables:
  syncPeriod: 10s
ipvs:
  scheduler: rr
  syncPeriod: 5s
logging:
  format: json
  verbosity: 4
metricsBindAddress: 0.0.0.0
mode: iptables
nodePortAddresses: [192.168.0.0/16, primary, 'fd00::/64']
";

#[test]
fn every_applicable_field_reaches_the_command_line() {
    let (args, report) = apply_to(SET, &[], &[]).expect("parses");
    assert_every_field_accounted_for(SET, &report);
    assert_eq!(
        args.node_ip,
        [std::net::IpAddr::V4(Ipv4Addr::new(172, 18, 0, 2))]
    );
    assert_eq!(args.kubeconfig, Some(PathBuf::from("/etc/kp.conf")));
    assert_eq!(args.cluster_cidr, ["10.244.0.0/16", "fd00:10:244::/56"]);
    // 65536 × 4 CPUs = 262144 > min.
    assert_eq!(args.conntrack.conntrack_max, 262_144);
    assert_eq!(args.conntrack.conntrack_tcp_timeout_established, Secs(3600));
    assert_eq!(args.conntrack.conntrack_tcp_timeout_close_wait, Secs(1800));
    assert_eq!(args.conntrack.conntrack_udp_timeout, Secs(10));
    assert_eq!(args.conntrack.conntrack_udp_timeout_stream, Secs(120));
    assert_eq!(args.pod_ifaces, ["cali"]);
    assert_eq!(args.healthz_bind_address, "0.0.0.0:12256");
    assert_eq!(args.metrics_bind_address, "0.0.0.0:10249");
    assert_eq!(args.node_name.as_deref(), Some("worker-1"));
    assert_eq!(args.sync_period, Secs(10));
    assert_eq!(args.log_format, LogFormat::Json);
    assert_eq!(args.verbosity, Some(4));
    assert_eq!(
        args.nodeport_addresses,
        [
            parse_cidr_any("192.168.0.0/16").unwrap(),
            parse_cidr_any("fd00::/64").unwrap()
        ]
    );
    for prefix in [
        "clientConnection.qps: 50 ignored",
        "featureGates.SomeGate: true ignored",
        "ipvs.scheduler: rr ignored",
        "ipvs.syncPeriod: 5s ignored",
        "mode: iptables ignored",
        "nodePortAddresses[1] primary:",
    ] {
        assert!(
            report.warnings.iter().any(|w| w.starts_with(prefix)),
            "{prefix}: {:#?}",
            report.warnings
        );
    }
    // min wins when larger; the mode picks the section whose syncPeriod counts.
    let text = SET
        .replace("min: 131072", "min: 1000000")
        .replace("mode: iptables", "mode: ipvs");
    let (args, _) = apply_to(&text, &[], &[]).expect("parses");
    assert_eq!(args.conntrack.conntrack_max, 1_000_000);
    assert_eq!(args.sync_period, Secs(5));
}

#[test]
fn flags_on_the_command_line_win_over_the_file() {
    let (args, _) = apply_to(
        SET,
        &[
            "--node-name",
            "n1",
            "--kubeconfig",
            "/root/kc",
            "--conntrack-udp-timeout=5s",
            "--conntrack-max=4096",
            "--metrics-addr=127.0.0.1:9999",
            "--pod-ifaces=veth",
        ],
        &[
            "node_name",
            "kubeconfig",
            "conntrack_udp_timeout",
            "conntrack_max",
            "metrics_bind_address",
            "pod_ifaces",
        ],
    )
    .expect("parses");
    assert_eq!(args.node_name.as_deref(), Some("n1"));
    assert_eq!(args.kubeconfig, Some(PathBuf::from("/root/kc")));
    assert_eq!(args.conntrack.conntrack_udp_timeout, Secs(5));
    assert_eq!(args.conntrack.conntrack_max, 4096);
    assert_eq!(args.metrics_bind_address, "127.0.0.1:9999");
    assert_eq!(args.pod_ifaces, ["veth"]);
    // Not given: from the file.
    assert_eq!(args.conntrack.conntrack_udp_timeout_stream, Secs(120));
    // --manifests makes the file's kubeconfig moot.
    let (args, report) = apply_to(SET, &["--manifests", "/tmp/m"], &["manifests"]).expect("parses");
    assert_eq!(args.kubeconfig, None);
    assert!(report
        .warnings
        .iter()
        .any(|w| w.contains("clientConnection.kubeconfig /etc/kp.conf ignored")));
}

#[test]
fn a_bad_value_is_an_error_naming_its_field() {
    let base = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";
    for (extra, field) in [
        ("conntrack:\n  udpTimeout: 30\n", "conntrack.udpTimeout"),
        ("conntrack:\n  udpTimeout: 1.5s\n", "conntrack.udpTimeout"),
        ("conntrack:\n  maxPerCore: -1\n", "conntrack.maxPerCore"),
        ("conntrack:\n  maxPerCore: 10\n", "conntrack.maxPerCore"),
        (
            "healthzBindAddress: 'localhost:10256'\n",
            "healthzBindAddress",
        ),
        ("metricsBindAddress: 1.2.3\n", "metricsBindAddress"),
        ("bindAddress: node1\n", "bindAddress"),
        ("clusterCIDR: 10.244.0.0/33\n", "clusterCIDR"),
        (
            "nodePortAddresses: [10.0.0.0/8, 10.1.0.0]\n",
            "nodePortAddresses[1]",
        ),
        ("nodePortAddresses: 10.0.0.0/8\n", "nodePortAddresses"),
        ("mode: userspace\n", "mode"),
        ("logging:\n  format: xml\n", "logging.format"),
        (
            "detectLocalMode: InterfaceNamePrefix\n",
            "detectLocal.interfaceNamePrefix",
        ),
        ("hostnameOverride: [a]\n", "hostnameOverride"),
        ("iptables:\n  syncPeriod: soon\n", "iptables.syncPeriod"),
    ] {
        let err = apply_to(&format!("{base}{extra}"), &[], &[])
            .err()
            .unwrap_or_else(|| panic!("{extra:?} must be refused"));
        assert_eq!(err.field, field, "{extra:?}: {err}");
    }
    let err = apply_to(
        "apiVersion: kubeproxy.config.k8s.io/v1beta9\nkind: KubeProxyConfiguration\n",
        &[],
        &[],
    )
    .err()
    .expect("refused");
    assert_eq!(err.field, "apiVersion");
    let err = apply_to(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n",
        &[],
        &[],
    )
    .err()
    .expect("refused");
    assert_eq!(err.field, "kind");
    assert_eq!(
        apply_to("- a\n", &[], &[]).err().map(|e| e.field),
        Some("(document)".into())
    );
}

#[test]
fn a_file_that_is_not_yaml_is_an_error_with_its_line() {
    let err = apply_to(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: [KubeProxyConfiguration\n",
        &[],
        &[],
    )
    .err()
    .expect("refused");
    assert_eq!(err.field, "(document)");
    assert!(
        err.why.starts_with("not YAML: ") && err.why.contains("line 2"),
        "{err}"
    );
}

#[test]
fn kube_proxy_flag_spellings_parse() {
    let args = run_args(&[
        "--hostname-override=worker-2",
        "--metrics-addr=0.0.0.0:10249",
        "--healthz-bind-address=0.0.0.0:10256",
        "--config=/var/lib/svc-lb/config.conf",
        "--cluster-cidr=10.244.0.0/16",
        "--v=2",
        "--log-format=json",
        "--cleanup",
    ]);
    assert_eq!(args.node_name.as_deref(), Some("worker-2"));
    assert_eq!(args.metrics_bind_address, "0.0.0.0:10249");
    assert_eq!(
        args.config,
        Some(PathBuf::from("/var/lib/svc-lb/config.conf"))
    );
    assert_eq!(args.cluster_cidr, ["10.244.0.0/16"]);
    assert_eq!(args.verbosity, Some(2));
    assert_eq!(args.log_format, LogFormat::Json);
    assert!(args.cleanup);
    assert_eq!(run_args(&["-v", "5"]).verbosity, Some(5));
    assert_eq!(
        run_args(&["--logging-format", "json"]).log_format,
        LogFormat::Json
    );
    assert_eq!(
        run_args(&["--metrics-bind-address", "off"]).metrics_bind_address,
        "off"
    );
}
