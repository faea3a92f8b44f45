//! [`health_checks`]: which Services get one and what it counts.

use super::*;

#[test]
fn health_check_reports_local_endpoints() {
    let (lb_ref, lb) = svc(
        "default",
        "web",
        json!({"type": "LoadBalancer", "clusterIP": "10.96.0.10",
               "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
               "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}),
    );
    let cluster = svc(
        "default",
        "other",
        json!({"type": "LoadBalancer", "clusterIP": "10.96.0.11",
               "healthCheckNodePort": 32001, "ports": [{"port": 80}]}),
    );
    let eps = slice(
        "default",
        "web-1",
        "web",
        json!({"ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 53, "protocol": "UDP"}],
        "endpoints": [
            ep_on("10.244.1.5", "node-a"),
            ep_on("10.244.1.6", "node-a"),
            {"addresses": ["10.244.1.7"], "nodeName": "node-a",
             "conditions": {"ready": false, "serving": true, "terminating": true}},
            ep_on("10.244.2.7", "node-b"),
        ]}),
    );
    let objs = objects(vec![(lb_ref.clone(), lb), cluster], vec![eps]);
    // Two local ready pods × two distinct address:port pairs each; the terminating and
    // the remote one do not count; "other" (eTP Cluster) has no health check.
    assert_eq!(
        health_checks(&objs, &node()),
        vec![HealthCheck {
            service: lb_ref.clone(),
            port: 32000,
            local_endpoints: 4
        }]
    );
    let node_b = NodeContext {
        node_name: "node-b".into(),
        ..node()
    };
    assert_eq!(health_checks(&objs, &node_b)[0].local_endpoints, 2);
    let node_c = NodeContext {
        node_name: "node-c".into(),
        ..node()
    };
    assert_eq!(health_checks(&objs, &node_c)[0].local_endpoints, 0);
}
