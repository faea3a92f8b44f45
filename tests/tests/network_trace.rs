//! `svc-agent trace` against a running datapath (needs root).
//!
//! Node 1 runs pods `client`, `other` and `be1`; node 2 runs `be2`. Services: `web`
//! (ClusterIP 10.96.0.10:80 → be1, be2 on 8080) and `empty` (10.96.0.20:80, no endpoints).
//! Two tracers run at once on node 1's pins: one for the client's address, one for
//! `--service default/web` (resolved through the manifests). While `other` opens connections
//! to `web`, the client opens some to `web` and one to `empty`. The client's tracer must show
//! the new flows with their DNAT, the replies with their reverse NAT and the reject, and
//! nothing of `other`'s; the Service's tracer must see both clients' flows to `web` and
//! nothing of `empty`. Both release their slots on exit; a tracer killed with SIGKILL has its
//! slot freed by the agent. In a dual-stack topology, IPv6 flows are traced by the IPv6
//! programs and a filter of one family never shows the other.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::{collections::BTreeSet, net::Ipv4Addr, path::Path, time::Duration};

use serde_json::Value;
use svc_common::TraceFilter;
use svc_testkit::{
    agent::{http_endpoint_slice, workspace_bin, Agent, ManifestDir},
    probe::Summary,
    topology::{require_root, NsChild, Topology, TopologySpec},
};

const PROBE: &str = env!("CARGO_BIN_EXE_svc-probe");
const WEB: &str = "10.96.0.10:80";
const EMPTY: &str = "10.96.0.20:80";
/// Connections the client opens to `web`; `other` opens [`OTHER_CONNS`].
const CLIENT_CONNS: usize = 5;
const OTHER_CONNS: usize = 200;

/// The manifests: `web` (10.96.0.10:80 → `web_endpoints` on 8080) and `empty` (10.96.0.20:80,
/// no endpoints).
fn services(t: &Topology, web_endpoints: &[(Ipv4Addr, usize)]) -> ManifestDir {
    let m = ManifestDir::new(t).unwrap();
    let port = "  ports:\n    - {name: http, port: 80, targetPort: 8080, protocol: TCP}\n";
    m.write(
        "web.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: 10.96.0.10\n{port}---\n{}",
            http_endpoint_slice("web", web_endpoints)
        ),
    )
    .unwrap();
    m.write(
        "empty.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: empty\nspec:\n  clusterIP: 10.96.0.20\n{port}"
        ),
    )
    .unwrap();
    m
}

/// `svc-probe tcp` from pod `client` to `target`, `count` connections; its summary (also when
/// connections failed, as to a Service without endpoints).
fn client_tcp(t: &Topology, target: &str, count: usize) -> Summary {
    let out = t
        .exec(
            t.pod_ns("client"),
            &[
                PROBE,
                "tcp",
                "--target",
                target,
                "--count",
                &count.to_string(),
                "--timeout-ms",
                "2000",
            ],
        )
        .unwrap();
    Summary::from_output(&String::from_utf8_lossy(&out.stdout)).unwrap()
}

/// Starts `svc-agent trace ARGS --bpffs B -o json` in node 1's network namespace (nsenter:
/// the real bpffs) and waits until it has its slot.
fn tracer(t: &Topology, bpffs: &Path, args: &[&str]) -> NsChild {
    let mut args = args.to_vec();
    args.extend_from_slice(&["-o", "json"]);
    tracer_as(t, bpffs, &args)
}

/// [`tracer`] with the output format left to `args`.
fn tracer_as(t: &Topology, bpffs: &Path, args: &[&str]) -> NsChild {
    let bin = workspace_bin("svc-agent").unwrap();
    let mut cmd = vec![bin.to_str().unwrap(), "trace"];
    cmd.extend_from_slice(args);
    cmd.extend_from_slice(&["--bpffs", bpffs.to_str().unwrap()]);
    let child = t.spawn_nsenter(&t.node(1).ns, &cmd).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !child.stderr().contains("tracing in slot") {
        assert!(
            std::time::Instant::now() < deadline,
            "tracer {args:?} did not start: {}",
            child.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Stops a tracer with SIGINT and returns its events.
fn stop(mut tracer: NsChild) -> Vec<Value> {
    tracer.signal(libc::SIGINT).unwrap();
    let status = tracer.wait_timeout(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "tracer: {status}: {}", tracer.stderr());
    // The reader threads deliver what is left after the exit.
    std::thread::sleep(Duration::from_millis(200));
    // Its summary: nothing lost (a few thousand events at most, far below a ring's 7 281).
    let err = tracer.stderr();
    assert!(
        err.lines().any(|l| l.ends_with(" events")),
        "no summary line: {err}"
    );
    tracer
        .stdout_lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn trace_state(bpffs: &Path) -> (u32, Vec<TraceFilter>) {
    svc_agent::dataplane::trace::TraceMaps::open(bpffs)
        .and_then(|t| t.state())
        .unwrap()
}

fn s<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field].as_str().unwrap_or("")
}

fn ip_of(endpoint: &str) -> &str {
    endpoint.split(':').next().unwrap()
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn trace_shows_one_clients_flows_and_nothing_else() {
    require_root();
    let t = Topology::build(
        &TopologySpec::new()
            .node(&["client", "other", "be1"])
            .node(&["be2"]),
    )
    .expect("building the topology");
    let _servers = t.serve(&["be1", "be2"], &["--tcp", "8080"]).unwrap();
    let ep = |p: &str| (t.pod_ip(p), t.pod(p).node);
    let m = services(&t, &[ep("be1"), ep("be2")]);
    let agents = Agent::start_all(&t, 2, m.path(), &[]).unwrap();
    let bpffs = agents[0].bpffs().to_owned();
    let (client, other) = (t.pod_ip("client"), t.pod_ip("other"));
    let backends: BTreeSet<String> = [t.pod_ip("be1"), t.pod_ip("be2")]
        .iter()
        .map(|ip| format!("{ip}:8080"))
        .collect();

    let by_client = tracer(&t, &bpffs, &["--src", &client.to_string()]);
    let manifests = m.path().to_str().unwrap().to_owned();
    let by_service = tracer(
        &t,
        &bpffs,
        &["--service", "default/web", "--manifests", &manifests],
    );
    // A third, for people: the table format, stopping by itself after 3 events.
    let mut by_port = tracer_as(
        &t,
        &bpffs,
        &["--src", &client.to_string(), "--port", "80", "--count", "3"],
    );
    let (on, filters) = trace_state(&bpffs);
    assert_eq!(on.count_ones(), 3, "three slots in use: {on:#b}");
    assert!(
        filters
            .iter()
            .any(|f| f.src_addr == client.octets() && f.frontend_count == 0),
        "the client's filter is programmed"
    );

    // Other traffic while the client's flows run.
    let count = OTHER_CONNS.to_string();
    let other_traffic = t
        .spawn(
            t.pod_ns("other"),
            &[
                PROBE,
                "tcp",
                "--target",
                WEB,
                "--count",
                &count,
                "--timeout-ms",
                "2000",
            ],
        )
        .unwrap();
    let summary = client_tcp(&t, WEB, CLIENT_CONNS);
    assert_eq!(summary.ok, CLIENT_CONNS as u64, "{summary:?}");
    let refused = client_tcp(&t, EMPTY, 1);
    assert_eq!(refused.failed, 1, "empty rejects: {refused:?}");
    let fin = other_traffic.finish(Duration::from_secs(60)).unwrap();
    let other_summary = Summary::from_output(&fin.stdout).unwrap();
    assert_eq!(other_summary.ok, OTHER_CONNS as u64, "{other_summary:?}");
    std::thread::sleep(Duration::from_millis(300));

    // The table tracer has stopped by itself after its 3 events.
    let status = by_port.wait_timeout(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "table tracer: {}", by_port.stderr());
    std::thread::sleep(Duration::from_millis(200));
    let table = by_port.stdout_lines().to_vec();
    println!("svc-agent trace --src {client} --port 80 --count 3:");
    for l in &table {
        println!("{l}");
    }
    assert_eq!(table.len(), 3, "{table:?}");
    assert!(
        table[0].contains("pod_ingress") && table[0].contains("dnat_new"),
        "the first event is the first SYN's DNAT: {table:?}"
    );
    let client_events = stop(by_client);
    let service_events = stop(by_service);
    let c = client.to_string();
    let show = |evs: &[Value]| {
        evs.iter()
            .take(40)
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };

    // (1) The client's tracer: only flows with the client at one end.
    assert!(!client_events.is_empty(), "no event for the client");
    for e in &client_events {
        let ends = [s(e, "src"), s(e, "dst"), s(e, "new_src"), s(e, "new_dst")];
        assert!(
            ends.iter().any(|x| !x.is_empty() && ip_of(x) == c),
            "an event of another flow reached the client's tracer: {e}"
        );
        assert!(
            !ends
                .iter()
                .any(|x| !x.is_empty() && ip_of(x) == other.to_string()),
            "other's flow in the client's tracer: {e}"
        );
    }
    // New flows: one DNAT per connection, from the client's veth, to a backend of web.
    let dnat: Vec<&Value> = client_events
        .iter()
        .filter(|e| s(e, "reason") == "dnat_new")
        .collect();
    assert_eq!(
        dnat.len(),
        CLIENT_CONNS,
        "DNAT events:\n{}",
        show(&client_events)
    );
    for e in &dnat {
        assert_eq!(s(e, "hook"), "pod_ingress", "{e}");
        assert_eq!(s(e, "dst"), WEB, "{e}");
        assert!(backends.contains(s(e, "new_dst")), "{e}");
        assert_eq!(s(e, "backend"), s(e, "new_dst"), "{e}");
        assert_eq!(s(e, "frontend"), format!("{WEB}/TCP"), "{e}");
        assert_eq!(e["tcp_flags"], serde_json::json!(["SYN"]), "{e}");
        assert_eq!(s(e, "ct_dir"), "forward", "{e}");
    }
    // Replies: backend → client with the frontend restored as source, on the backend's veth
    // (be1, local) or the client's (be2's replies arrive from the uplink); each connection's
    // SYN-ACK among them.
    let rev: Vec<&Value> = client_events
        .iter()
        .filter(|e| s(e, "reason") == "rev_nat")
        .collect();
    for e in &rev {
        assert!(backends.contains(s(e, "src")), "{e}");
        assert_eq!(s(e, "new_src"), WEB, "{e}");
        assert_eq!(ip_of(s(e, "dst")), c, "{e}");
        assert_eq!(s(e, "ct_dir"), "reply", "{e}");
        assert!(["pod_ingress", "pod_egress"].contains(&s(e, "hook")), "{e}");
    }
    for d in &dnat {
        assert!(
            rev.iter().any(|r| s(r, "dst") == s(d, "src")
                && s(r, "src") == s(d, "new_dst")
                && r["tcp_flags"] == serde_json::json!(["SYN", "ACK"])),
            "no reverse-NAT SYN-ACK for {d}:\n{}",
            show(&client_events)
        );
    }
    // The reject of the Service without endpoints.
    let rejects: Vec<&Value> = client_events
        .iter()
        .filter(|e| s(e, "reason") == "no_backend")
        .collect();
    assert!(!rejects.is_empty(), "no reject:\n{}", show(&client_events));
    for e in &rejects {
        assert_eq!(s(e, "dst"), EMPTY, "{e}");
        assert_eq!(s(e, "frontend"), format!("{EMPTY}/TCP"), "{e}");
    }

    // (2) The Service's tracer: both clients' flows to web, nothing of empty.
    let service_dnat: Vec<&Value> = service_events
        .iter()
        .filter(|e| s(e, "reason") == "dnat_new")
        .collect();
    assert_eq!(
        service_dnat.len(),
        CLIENT_CONNS + OTHER_CONNS,
        "the Service's tracer sees every new flow to web"
    );
    for e in &service_events {
        assert_eq!(s(e, "frontend"), format!("{WEB}/TCP"), "{e}");
    }
    println!(
        "client tracer: {} events ({} DNAT, {} reverse NAT, {} rejects); service tracer: {} events",
        client_events.len(),
        dnat.len(),
        rev.len(),
        rejects.len(),
        service_events.len()
    );

    // (3) Released on exit.
    let (on, filters) = trace_state(&bpffs);
    assert_eq!(on, 0, "every slot released");
    assert!(filters.iter().all(|f| f.owner_pid == 0), "filters cleared");

    // (4) A tracer killed outright: the agent frees its slot.
    let mut killed = tracer(&t, &bpffs, &["--src", &client.to_string()]);
    assert_eq!(trace_state(&bpffs).0.count_ones(), 1);
    killed.signal(libc::SIGKILL).unwrap();
    let _ = killed.wait_timeout(Duration::from_secs(5));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (on, filters) = trace_state(&bpffs);
        if on == 0 && filters.iter().all(|f| f.owner_pid == 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not free the killed tracer's slot: on={on:#b}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `--bpf-debug-log`: the programs' aya-log messages reach the agent's log. One connection to
/// `web` must produce the new-flow line naming the client, the frontend and the backend; one to
/// `empty` the refusal. Without the flag (every other network test) the messages' code is
/// removed by the verifier (tests/tests/verifier_budget.rs loads the object both ways).
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn kernel_debug_messages_reach_the_agent_log() {
    require_root();
    let t = Topology::build(&TopologySpec::new().node(&["client", "be1"]))
        .expect("building the topology");
    let _servers = t.serve(&["be1"], &["--tcp", "8080"]).unwrap();
    let m = services(&t, &[(t.pod_ip("be1"), 1)]);
    let mut agent = Agent::start(&t, 1, m.path(), &["--bpf-debug-log", "-v", "4"]).unwrap();
    agent.wait_healthy(&t, Duration::from_secs(20)).unwrap();
    assert_eq!(client_tcp(&t, WEB, 1).ok, 1);
    assert_eq!(client_tcp(&t, EMPTY, 1).failed, 1);
    let (client, be1) = (t.pod_ip("client"), t.pod_ip("be1"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = agent.log();
        let new_flow = log.lines().any(|l| {
            l.contains("new flow")
                && l.contains(&format!("{client}:"))
                && l.contains("-> 10.96.0.10:80")
                && l.contains(&format!("{be1}:8080"))
        });
        let refused = log
            .lines()
            .any(|l| l.contains("-> 10.96.0.20:80") && l.contains("refused"));
        if new_flow && refused {
            assert!(log.contains("kernel debug messages on"), "{log}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no kernel debug line for the client's flows (new flow {new_flow}, refused \
             {refused}) in the agent's log:\n{}",
            log.lines()
                .filter(|l| l.contains("hook"))
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The host of `ADDR:PORT` or `[ADDR]:PORT`.
fn host_of(endpoint: &str) -> &str {
    match endpoint.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap(),
        None => ip_of(endpoint),
    }
}

/// IPv6 in a dual-stack topology: `web` made dual-stack (fd00:10:96::10 beside 10.96.0.10, an
/// IPv6 EndpointSlice beside the IPv4 one). Three tracers at once: the client's IPv6 address,
/// its IPv4 address, and `--service default/web`. The client opens connections to both
/// ClusterIPs. The IPv6 tracer must show the IPv6 flows' DNAT and reverse NAT from the IPv6
/// programs, bracketed, and no IPv4 packet; the IPv4 tracer no IPv6 packet (a filter's
/// addresses are of one family); the Service's tracer the flows of both families. The agents
/// run with `--bpf-debug-log`: the IPv6 programs' new-flow lines name IPv6 addresses.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn ipv6_flows_are_traced_and_the_families_stay_apart() {
    require_root();
    let t = Topology::build(
        &TopologySpec::new()
            .dual_stack(true)
            .node(&["client", "be1"])
            .node(&["be2"]),
    )
    .expect("building the dual-stack topology");
    let _servers = t.serve(&["be1", "be2"], &["--tcp", "8080"]).unwrap();
    let ep = |p: &str| (t.pod_ip(p), t.pod(p).node);
    let m = services(&t, &[ep("be1"), ep("be2")]);
    const WEB6: &str = "[fd00:10:96::10]:80";
    let mut slice6 = String::new();
    for p in ["be1", "be2"] {
        slice6.push_str(&format!(
            "  - addresses: [\"{}\"]\n    conditions: {{ready: true}}\n    nodeName: {}\n",
            t.pod_ip6(p),
            svc_testkit::agent::node_name(t.pod(p).node)
        ));
    }
    m.write(
        "web.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  \
             ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  \
             clusterIP: 10.96.0.10\n  clusterIPs: [\"10.96.0.10\", \"fd00:10:96::10\"]\n  \
             ports:\n    - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}\n---\n{}---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-6\n  \
             labels:\n    kubernetes.io/service-name: web\naddressType: IPv6\nports:\n  \
             - {{name: http, port: 8080, protocol: TCP}}\nendpoints:\n{slice6}",
            http_endpoint_slice("web", &[ep("be1"), ep("be2")])
        ),
    )
    .unwrap();
    let agents = Agent::start_all(&t, 2, m.path(), &["--bpf-debug-log", "-v", "4"]).unwrap();
    let bpffs = agents[0].bpffs().to_owned();
    let (client4, client6) = (
        t.pod_ip("client").to_string(),
        t.pod_ip6("client").to_string(),
    );
    let backends6: BTreeSet<String> = ["be1", "be2"]
        .iter()
        .map(|p| format!("[{}]:8080", t.pod_ip6(p)))
        .collect();

    let by_v6 = tracer(&t, &bpffs, &["--src", &client6]);
    let by_v4 = tracer(&t, &bpffs, &["--src", &client4]);
    let manifests = m.path().to_str().unwrap().to_owned();
    let by_service = tracer(
        &t,
        &bpffs,
        &["--service", "default/web", "--manifests", &manifests],
    );
    let (_, filters) = trace_state(&bpffs);
    assert!(
        filters.iter().any(|f| f.addr_family == svc_common::AF_INET6
            && std::net::Ipv6Addr::from(f.src_addr6).to_string() == client6),
        "the IPv6 filter is programmed"
    );
    let v6 = client_tcp(&t, WEB6, CLIENT_CONNS);
    assert_eq!(v6.ok, CLIENT_CONNS as u64, "IPv6 connections: {v6:?}");
    let v4 = client_tcp(&t, WEB, CLIENT_CONNS);
    assert_eq!(v4.ok, CLIENT_CONNS as u64, "IPv4 connections: {v4:?}");
    std::thread::sleep(Duration::from_millis(300));
    let (ev6, ev4, evs) = (stop(by_v6), stop(by_v4), stop(by_service));
    let is_v6 = |e: &Value| s(e, "src").starts_with('[');

    // (1) The IPv6 tracer: IPv6 packets of the client's flows, from the IPv6 programs.
    assert!(!ev6.is_empty(), "no event for the client's IPv6 address");
    for e in &ev6 {
        assert!(is_v6(e), "an IPv4 packet in the IPv6 tracer: {e}");
        assert!(s(e, "hook").ends_with('6'), "not an IPv6 program: {e}");
        let ends = [s(e, "src"), s(e, "dst"), s(e, "new_src"), s(e, "new_dst")];
        assert!(
            ends.iter().any(|x| !x.is_empty() && host_of(x) == client6),
            "an event of another flow in the IPv6 tracer: {e}"
        );
    }
    let dnat: Vec<&Value> = ev6
        .iter()
        .filter(|e| s(e, "reason") == "dnat_new")
        .collect();
    assert_eq!(dnat.len(), CLIENT_CONNS, "IPv6 DNAT events: {ev6:#?}");
    for e in &dnat {
        assert_eq!(s(e, "hook"), "pod_ingress6", "{e}");
        assert_eq!(s(e, "dst"), WEB6, "{e}");
        assert!(backends6.contains(s(e, "new_dst")), "{e}");
        assert_eq!(s(e, "backend"), s(e, "new_dst"), "{e}");
        assert_eq!(s(e, "frontend"), format!("{WEB6}/TCP"), "{e}");
        assert_eq!(e["tcp_flags"], serde_json::json!(["SYN"]), "{e}");
    }
    for d in &dnat {
        assert!(
            ev6.iter().any(|r| s(r, "reason") == "rev_nat"
                && s(r, "dst") == s(d, "src")
                && s(r, "src") == s(d, "new_dst")
                && s(r, "new_src") == WEB6
                && r["tcp_flags"] == serde_json::json!(["SYN", "ACK"])),
            "no reverse-NAT SYN-ACK for {d}: {ev6:#?}"
        );
    }
    // (2) The IPv4 tracer: the IPv4 flows, no IPv6 packet.
    assert!(
        ev4.iter().filter(|e| s(e, "reason") == "dnat_new").count() == CLIENT_CONNS,
        "IPv4 DNAT events: {ev4:#?}"
    );
    assert!(
        ev4.iter().all(|e| !is_v6(e)),
        "an IPv6 packet in the IPv4 tracer: {ev4:#?}"
    );
    // (3) The Service's tracer: the new flows of both families to web's frontends.
    let new_of = |v6: bool| {
        evs.iter()
            .filter(|e| s(e, "reason") == "dnat_new" && is_v6(e) == v6)
            .count()
    };
    assert_eq!(
        (new_of(false), new_of(true)),
        (CLIENT_CONNS, CLIENT_CONNS),
        "the Service's tracer sees the new flows of both families: {evs:#?}"
    );
    // (4) The IPv6 programs' debug messages: the new flows, IPv6 addresses formatted (the
    // agent relays them as they come: wait a little).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = agents[0].log();
        if log.lines().any(|l| {
            l.contains("new flow")
                && l.contains(&format!("{client6}:"))
                && l.contains("-> fd00:10:96::10:80")
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no IPv6 new-flow line in node 1's agent log:\n{}",
            log.lines()
                .filter(|l| l.contains("hook"))
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "IPv6 tracer: {} events ({} DNAT); IPv4 tracer: {} events; Service tracer: {} events",
        ev6.len(),
        dnat.len(),
        ev4.len(),
        evs.len()
    );
}
