//! kube-proxy's rules, generated as kube-proxy writes them, for the benchmarks' baselines.
//!
//! # Layout
//! - [`Service`], [`Port`]: the little of the Kubernetes model the rules depend on.
//! - [`iptables_restore`]: the `nat` and `filter` tables of kube-proxy's iptables mode
//!   (pkg/proxy/iptables/proxier.go) as one `iptables-restore` input (a full sync: every table
//!   it names is replaced). [`iptables_partial`] is the input of a partial sync as kube-proxy
//!   ≥ 1.28 writes it (`--noflush`): the top-level chains in full, plus the chains of the
//!   Services that changed.
//! - [`nft_full`]: kube-proxy's nftables mode (pkg/proxy/nftables/proxier.go) as an `nft -f`
//!   transaction; [`nft_endpoints_changed`] the incremental transaction for one Service whose
//!   endpoints changed.
//!
//! Simplified, and the same for every Service: ClusterIP only in the iptables mode; the
//! nftables mode adds NodePorts and LoadBalancer IPs with `externalTrafficPolicy: Cluster` (the
//! `external-…` chains masquerade all of it); no externalIPs, firewall/source ranges, session
//! affinity, `Local` traffic policies or IPv6; every Service has endpoints (so the "no
//! endpoints" reject sets stay empty), and chain-name hashes are FNV-1a instead of SHA-256
//! (same alphabet and length; the rules never depend on the hash value).
//! What a packet walks through — the chain layout, the matches, the random choice, the DNAT,
//! the masquerade marks and the conntrack-state filter rules — is kube-proxy's.
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// Transport protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// As iptables and nft spell it.
    pub fn lower(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Port name (`http`); part of the chain names, as in kube-proxy.
    pub name: String,
    pub proto: Proto,
    /// The ClusterIP's port.
    pub port: u16,
    /// The endpoints' port.
    pub target_port: u16,
    /// The NodePort, if the Service has one (nftables mode only).
    pub node_port: Option<u16>,
}

/// A ClusterIP Service with its ready endpoints (the same for every port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub ports: Vec<Port>,
    pub endpoints: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress` IPs (nftables mode only).
    pub lb_ips: Vec<Ipv4Addr>,
}

/// kube-proxy's `--cluster-cidr`: traffic to a ClusterIP from outside it gets masqueraded.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// kube-proxy's masquerade mark bit (`--masquerade-bit` 14).
const MASQ_MARK: &str = "0x4000";

impl Service {
    /// `namespace/name:port`, kube-proxy's `ServicePortName` string.
    fn port_name(&self, p: &Port) -> String {
        format!("{}/{}:{}", self.namespace, self.name, p.name)
    }

    fn svc_chain(&self, p: &Port) -> String {
        format!(
            "KUBE-SVC-{}",
            hash32(&format!("{}{}", self.port_name(p), p.proto.lower()), 16)
        )
    }

    fn sep_chain(&self, p: &Port, ep: Ipv4Addr) -> String {
        let endpoint = format!("{ep}:{}", p.target_port);
        format!(
            "KUBE-SEP-{}",
            hash32(
                &format!("{}{}{endpoint}", self.port_name(p), p.proto.lower()),
                16
            )
        )
    }

    /// `namespace/name/proto/port`: the readable tail of kube-proxy's nftables chain names.
    fn nft_id(&self, p: &Port) -> String {
        format!(
            "{}/{}/{}/{}",
            self.namespace,
            self.name,
            p.proto.lower(),
            p.name
        )
    }

    fn nft_svc_chain(&self, p: &Port) -> String {
        let id = self.nft_id(p);
        format!("service-{}-{id}", hash32(&id, 8))
    }

    /// Where NodePort and LB IP traffic enters (`external-…`): masquerade, then the service.
    fn nft_ext_chain(&self, p: &Port) -> String {
        let id = self.nft_id(p);
        format!("external-{}-{id}", hash32(&id, 8))
    }

    fn nft_ep_chain(&self, p: &Port, ep: Ipv4Addr) -> String {
        let id = format!("{}__{ep}/{}", self.nft_id(p), p.target_port);
        format!("endpoint-{}-{id}", hash32(&id, 8))
    }
}

/// `len` base32 characters (RFC 4648 alphabet, as kube-proxy) of a 128-bit FNV-1a-based hash.
fn hash32(s: &str, len: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let fnv = |seed: u64| {
        s.bytes().fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let bits = (u128::from(fnv(0)) << 64) | u128::from(fnv(0x9e37_79b9_7f4a_7c15));
    (0..len)
        .map(|i| char::from(ALPHABET[((bits >> (5 * i)) & 31) as usize]))
        .collect()
}

/// kube-proxy's `computeProbability`: endpoint `i` of `n` is taken with 1/(n-i) of what
/// reaches its rule, so each gets 1/n; the last rule has no match at all.
fn probability(i: usize, n: usize) -> String {
    format!("{:.10}", 1.0 / (n - i) as f64)
}

/// A full `iptables-restore` input (no `--noflush`): the `filter` and `nat` tables with every
/// Service of `services`, in that order in KUBE-SERVICES (so the last one is matched last).
pub fn iptables_restore(services: &[Service]) -> String {
    let mut out = String::with_capacity(services.len() * 4096);
    filter_table(&mut out);
    nat_head(&mut out, services.iter(), true);
    for s in services {
        nat_service_rules(&mut out, s);
    }
    out.push_str("COMMIT\n");
    out
}

/// The input of a partial sync (`iptables-restore --noflush`), as kube-proxy ≥ 1.28 writes it
/// when only `changed`'s endpoints changed: KUBE-SERVICES is always rewritten in full (every
/// Service's jump rule), the changed Service's KUBE-SVC chains are flushed and rewritten, its
/// endpoint chains declared and written, and chains of `removed` endpoints deleted.
pub fn iptables_partial(services: &[Service], changed: &Service, removed: &[Ipv4Addr]) -> String {
    let mut out = String::with_capacity(services.len() * 256);
    out.push_str("*nat\n:KUBE-SERVICES - [0:0]\n");
    for p in &changed.ports {
        writeln!(out, ":{} - [0:0]", changed.svc_chain(p)).unwrap();
        // Removed endpoints' chains are declared too, which flushes them: a chain must be
        // empty before `-X` deletes it (kube-proxy does the same).
        for &ep in changed.endpoints.iter().chain(removed) {
            writeln!(out, ":{} - [0:0]", changed.sep_chain(p, ep)).unwrap();
        }
    }
    for s in services {
        services_rules(&mut out, s);
    }
    nodeports_last(&mut out);
    nat_service_rules(&mut out, changed);
    for p in &changed.ports {
        for &ep in removed {
            writeln!(out, "-X {}", changed.sep_chain(p, ep)).unwrap();
        }
    }
    out.push_str("COMMIT\n");
    out
}

fn filter_table(out: &mut String) {
    out.push_str(
        "*filter\n\
         :INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :KUBE-EXTERNAL-SERVICES - [0:0]\n:KUBE-FIREWALL - [0:0]\n:KUBE-FORWARD - [0:0]\n\
         :KUBE-NODEPORTS - [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n:KUBE-SERVICES - [0:0]\n\
         -A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
         -A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n\
         -A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
         -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
         -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
         -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n",
    );
}

/// `*nat`, the chain declarations and the fixed rules; with `jumps`, the Services' jump rules
/// in KUBE-SERVICES too.
fn nat_head<'a>(
    out: &mut String,
    services: impl Iterator<Item = &'a Service> + Clone,
    jumps: bool,
) {
    out.push_str(
        "*nat\n\
         :PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-MARK-MASQ - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-SERVICES - [0:0]\n",
    );
    for s in services.clone() {
        for p in &s.ports {
            writeln!(out, ":{} - [0:0]", s.svc_chain(p)).unwrap();
            for &ep in &s.endpoints {
                writeln!(out, ":{} - [0:0]", s.sep_chain(p, ep)).unwrap();
            }
        }
    }
    out.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
    );
    writeln!(
        out,
        "-A KUBE-MARK-MASQ -j MARK --set-xmark {MASQ_MARK}/{MASQ_MARK}\n\
         -A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark {MASQ_MARK}/0x0\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
    )
    .unwrap();
    if jumps {
        for s in services {
            services_rules(out, s);
        }
        nodeports_last(out);
    }
}

/// The Service's jump rules in KUBE-SERVICES, one per port.
fn services_rules(out: &mut String, s: &Service) {
    for p in &s.ports {
        writeln!(
            out,
            "-A KUBE-SERVICES -d {}/32 -p {proto} -m comment --comment \"{} cluster IP\" -m {proto} --dport {} -j {}",
            s.cluster_ip,
            s.port_name(p),
            p.port,
            s.svc_chain(p),
            proto = p.proto.lower(),
        )
        .unwrap();
    }
}

fn nodeports_last(out: &mut String) {
    out.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
}

/// The KUBE-SVC and KUBE-SEP chains' rules of one Service (already declared).
fn nat_service_rules(out: &mut String, s: &Service) {
    for p in &s.ports {
        let svc = s.svc_chain(p);
        let name = s.port_name(p);
        let proto = p.proto.lower();
        writeln!(
            out,
            "-A {svc} ! -s {CLUSTER_CIDR} -d {}/32 -p {proto} -m comment --comment \"{name} cluster IP\" -m {proto} --dport {} -j KUBE-MARK-MASQ",
            s.cluster_ip, p.port
        )
        .unwrap();
        let n = s.endpoints.len();
        for (i, &ep) in s.endpoints.iter().enumerate() {
            let sep = s.sep_chain(p, ep);
            let target = format!("{ep}:{}", p.target_port);
            if i + 1 < n {
                writeln!(
                    out,
                    "-A {svc} -m comment --comment \"{name} -> {target}\" -m statistic --mode random --probability {} -j {sep}",
                    probability(i, n)
                )
                .unwrap();
            } else {
                writeln!(
                    out,
                    "-A {svc} -m comment --comment \"{name} -> {target}\" -j {sep}"
                )
                .unwrap();
            }
        }
        for &ep in &s.endpoints {
            let sep = s.sep_chain(p, ep);
            writeln!(
                out,
                "-A {sep} -s {ep}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ\n\
                 -A {sep} -p {proto} -m comment --comment \"{name}\" -m {proto} -j DNAT --to-destination {ep}:{}",
                p.target_port
            )
            .unwrap();
        }
    }
}

/// The nftables table name kube-proxy uses for IPv4.
pub const NFT_TABLE: &str = "kube-proxy";

/// A transaction creating kube-proxy's `ip kube-proxy` table from nothing with every Service;
/// `node_ips` accept NodePort traffic (kube-proxy's default `--nodeport-addresses primary`).
pub fn nft_full(services: &[Service], node_ips: &[Ipv4Addr]) -> String {
    let mut out = String::with_capacity(services.len() * 2048);
    let t = format!("ip {NFT_TABLE}");
    writeln!(
        out,
        "add table {t} {{ comment \"rules for kube-proxy\" ; }}\n\
         add chain {t} mark-for-masquerade\n\
         add rule {t} mark-for-masquerade mark set mark or {MASQ_MARK}\n\
         add chain {t} masquerading\n\
         add rule {t} masquerading mark and {MASQ_MARK} == 0 return\n\
         add rule {t} masquerading mark set mark xor {MASQ_MARK}\n\
         add rule {t} masquerading masquerade fully-random\n\
         add set {t} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}\n\
         add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}\n\
         add map {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}\n\
         add chain {t} cluster-ips-check\n\
         add rule {t} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"\n\
         add chain {t} service-endpoints-check\n\
         add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n\
         add set {t} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}\n\
         add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}\n\
         add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}\n\
         add chain {t} nodeport-endpoints-check\n\
         add rule {t} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports\n\
         add chain {t} filter-input {{ type filter hook input priority -110 ; }}\n\
         add rule {t} filter-input ct state new jump nodeport-endpoints-check\n\
         add rule {t} filter-input ct state new jump service-endpoints-check\n\
         add chain {t} filter-forward {{ type filter hook forward priority -110 ; }}\n\
         add rule {t} filter-forward ct state new jump service-endpoints-check\n\
         add rule {t} filter-forward ct state new jump cluster-ips-check\n\
         add chain {t} filter-output {{ type filter hook output priority -110 ; }}\n\
         add rule {t} filter-output ct state new jump service-endpoints-check\n\
         add chain {t} filter-output-post-dnat {{ type filter hook output priority -90 ; }}\n\
         add rule {t} filter-output-post-dnat ct state new jump cluster-ips-check\n\
         add chain {t} services\n\
         add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add rule {t} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports\n\
         add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; }}\n\
         add rule {t} nat-prerouting jump services\n\
         add chain {t} nat-output {{ type nat hook output priority -100 ; }}\n\
         add rule {t} nat-output jump services\n\
         add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}\n\
         add rule {t} nat-postrouting jump masquerading"
    )
    .unwrap();
    for ip in node_ips {
        writeln!(out, "add element {t} nodeport-ips {{ {ip} }}").unwrap();
    }
    for s in services {
        nft_service(&mut out, s, &s.endpoints);
        writeln!(out, "add element {t} cluster-ips {{ {} }}", s.cluster_ip).unwrap();
        for p in &s.ports {
            let proto = p.proto.lower();
            writeln!(
                out,
                "add element {t} service-ips {{ {} . {proto} . {} : goto {} }}",
                s.cluster_ip,
                p.port,
                s.nft_svc_chain(p)
            )
            .unwrap();
            if p.node_port.is_none() && s.lb_ips.is_empty() {
                continue;
            }
            // externalTrafficPolicy: Cluster: everything from outside is masqueraded.
            let ext = s.nft_ext_chain(p);
            writeln!(
                out,
                "add chain {t} {ext}\n\
                 add rule {t} {ext} jump mark-for-masquerade\n\
                 add rule {t} {ext} goto {}",
                s.nft_svc_chain(p)
            )
            .unwrap();
            if let Some(np) = p.node_port {
                writeln!(
                    out,
                    "add element {t} service-nodeports {{ {proto} . {np} : goto {ext} }}"
                )
                .unwrap();
            }
            for ip in &s.lb_ips {
                writeln!(
                    out,
                    "add element {t} service-ips {{ {ip} . {proto} . {} : goto {ext} }}",
                    p.port
                )
                .unwrap();
            }
        }
    }
    out
}

/// The incremental transaction kube-proxy's nftables mode sends when only `s`'s endpoints
/// changed: new endpoint chains added, the service chain flushed and rewritten, removed
/// endpoint chains deleted. Nothing else is touched.
pub fn nft_endpoints_changed(s: &Service, removed: &[Ipv4Addr]) -> String {
    let mut out = String::new();
    let t = format!("ip {NFT_TABLE}");
    for p in &s.ports {
        writeln!(out, "flush chain {t} {}", s.nft_svc_chain(p)).unwrap();
    }
    nft_service(&mut out, s, &s.endpoints);
    for p in &s.ports {
        for &ep in removed {
            let chain = s.nft_ep_chain(p, ep);
            writeln!(out, "flush chain {t} {chain}\ndelete chain {t} {chain}").unwrap();
        }
    }
    out
}

/// `add chain` (a no-op when it exists) and the rules of the service and endpoint chains.
fn nft_service(out: &mut String, s: &Service, endpoints: &[Ipv4Addr]) {
    let t = format!("ip {NFT_TABLE}");
    for p in &s.ports {
        let proto = p.proto.lower();
        let mut vmap = Vec::with_capacity(endpoints.len());
        for (i, &ep) in endpoints.iter().enumerate() {
            let chain = s.nft_ep_chain(p, ep);
            writeln!(
                out,
                "add chain {t} {chain}\n\
                 flush chain {t} {chain}\n\
                 add rule {t} {chain} ip saddr {ep} jump mark-for-masquerade\n\
                 add rule {t} {chain} meta l4proto {proto} dnat to {ep}:{}",
                p.target_port
            )
            .unwrap();
            vmap.push(format!("{i} : goto {chain}"));
        }
        let chain = s.nft_svc_chain(p);
        writeln!(
            out,
            "add chain {t} {chain}\n\
             add rule {t} {chain} ip daddr {} {proto} dport {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade\n\
             add rule {t} {chain} numgen random mod {} vmap {{ {} }}",
            s.cluster_ip,
            p.port,
            endpoints.len(),
            vmap.join(" , ")
        )
        .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(endpoints: &[[u8; 4]]) -> Service {
        Service {
            namespace: "default".into(),
            name: "web".into(),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            ports: vec![Port {
                name: "http".into(),
                proto: Proto::Tcp,
                port: 80,
                target_port: 8080,
                node_port: Some(30080),
            }],
            endpoints: endpoints.iter().map(|&o| Ipv4Addr::from(o)).collect(),
            lb_ips: vec![Ipv4Addr::new(203, 0, 113, 10)],
        }
    }

    #[test]
    fn probabilities_give_every_endpoint_an_equal_share() {
        assert_eq!(probability(0, 2), "0.5000000000");
        assert_eq!(probability(0, 3), "0.3333333333");
        assert_eq!(probability(1, 3), "0.5000000000");
    }

    #[test]
    fn iptables_rules_follow_kube_proxy() {
        let s = web(&[[10, 244, 1, 3], [10, 244, 2, 2]]);
        let text = iptables_restore(std::slice::from_ref(&s));
        let svc = s.svc_chain(&s.ports[0]);
        assert!(svc.len() == "KUBE-SVC-".len() + 16, "{svc}");
        assert!(text.contains(&format!(
            "-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"default/web:http cluster IP\" -m tcp --dport 80 -j {svc}"
        )));
        assert!(text.contains("-m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-"));
        assert!(text.contains("-j DNAT --to-destination 10.244.2.2:8080"));
        // The nodeports rule stays last in KUBE-SERVICES.
        let last = text
            .lines()
            .rfind(|l| l.starts_with("-A KUBE-SERVICES"))
            .unwrap();
        assert!(last.contains("KUBE-NODEPORTS"), "{last}");
    }

    #[test]
    fn nft_nodeports_and_lb_ips_enter_through_the_external_chain() {
        let s = web(&[[10, 244, 1, 3]]);
        let text = nft_full(std::slice::from_ref(&s), &[Ipv4Addr::new(172, 18, 0, 2)]);
        let ext = s.nft_ext_chain(&s.ports[0]);
        assert!(text.contains("add element ip kube-proxy nodeport-ips { 172.18.0.2 }"));
        assert!(text.contains(&format!(
            "add element ip kube-proxy service-nodeports {{ tcp . 30080 : goto {ext} }}"
        )));
        assert!(text.contains(&format!(
            "add element ip kube-proxy service-ips {{ 203.0.113.10 . tcp . 80 : goto {ext} }}"
        )));
        assert!(text.contains(&format!(
            "add rule ip kube-proxy {ext} jump mark-for-masquerade"
        )));
        assert!(
            text.contains("ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports")
        );
    }

    #[test]
    fn nft_change_rewrites_only_the_service() {
        let s = web(&[[10, 244, 1, 3], [10, 244, 2, 2], [10, 244, 2, 3]]);
        let text = nft_endpoints_changed(&s, &[Ipv4Addr::new(10, 244, 9, 9)]);
        assert!(text.contains("numgen random mod 3 vmap { 0 : goto endpoint-"));
        assert!(text.contains("delete chain ip kube-proxy endpoint-"));
        assert!(!text.contains("service-ips"));
    }
}
