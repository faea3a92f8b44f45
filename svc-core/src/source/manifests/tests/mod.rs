//! The manifests source's tests. This file holds the seed manifests (the seed document's
//! examples), a temporary directory and the shared helpers; each child file tests one concern.

mod allocate;
pub(crate) mod cache;
mod dir;
mod mirror;
mod seed;
mod yaml;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::discovery::v1::EndpointPort;
use svc_common::{Backend, FrontendKey, PROTO_TCP, SCOPE_ANY};

use super::*;
use crate::model::{desired, NodeContext, ObjectRef, LABEL_SERVICE_NAME};

/// The seed document's manifests (kubernetes-service-summary), plus the hand-written
/// Endpoints the "Services without selectors" section implies.
const SEED_TEST_APP: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: test-app
spec:
  selector:
    app: test-app-link
  ports:
    - protocol: TCP
      port: 9000
      targetPort: 9000
";
const SEED_NO_SELECTOR: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: test-app-no-selector
spec:
  ports:
    - protocol: TCP
      port: 30050
      targetPort: 30050
---
apiVersion: v1
kind: Endpoints
metadata:
  name: test-app-no-selector
subsets:
  - addresses:
      - ip: 192.0.2.42
        nodeName: node-b
      - ip: 2001:db8::42
    notReadyAddresses:
      - ip: 192.0.2.43
    ports:
      - port: 30050
";
const SEED_CIP: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: test-cip-service
spec:
  type: ClusterIP
  clusterIP: 10.96.211.115
  selector:
    app: test-app-link
  ports:
    - protocol: TCP
      port: 9000
      targetPort: 9000
";
const SEED_NODEPORT: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: test-service
spec:
  type: NodePort
  selector:
    app.kubernetes.io/name: MyApp
  ports:
      # By default and for convenience, the `targetPort` is set to the same value as the `port` field.
    - port: 80
      targetPort: 80
      # Optional field
      nodePort: 30007
";
const SEED_LB: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: my-service
spec:
  selector:
    app.kubernetes.io/name: MyApp
  ports:
    - protocol: TCP
      port: 80
      targetPort: 9376
  clusterIP: 10.0.171.239
  type: LoadBalancer
status:
  loadBalancer:
    ingress:
    - ip: 192.0.2.127
";
const SEED_EXTERNAL_NAME: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: my-service
  namespace: prod
spec:
  type: ExternalName
  externalName: my.database.example.com
";
/// The seed's externalIPs example with its `80.11.12.10` replaced by `198.51.100.10`: test
/// addresses come from the documentation ranges only (DESIGN §3).
const SEED_EXTERNAL_IP: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: test-external-ip
spec:
  selector:
    app.kubernetes.io/name: MyApp
  ports:
    - name: http
      protocol: TCP
      port: 80
      targetPort: 9376
  externalIPs:
    - 198.51.100.10
";

fn seed_files() -> Vec<(String, String)> {
    [
        ("test_app.yml", SEED_TEST_APP),
        ("test_app_service_no_selector.yml", SEED_NO_SELECTOR),
        ("test_cluster.ip.yml", SEED_CIP),
        ("nodeport.yaml", SEED_NODEPORT),
        ("lb.yaml", SEED_LB),
        ("external-name.yaml", SEED_EXTERNAL_NAME),
        ("test_external_ip.yml", SEED_EXTERNAL_IP),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_owned(), t.to_owned()))
    .collect()
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "svc-agent-manifests-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    fn write(&self, name: &str, text: &str) {
        fs::write(self.0.join(name), text).expect("write manifest");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn r(ns: &str, name: &str) -> ObjectRef {
    ObjectRef::new(ns, name)
}

fn cluster_ip(objects: &Objects, ns: &str, name: &str) -> Option<String> {
    objects
        .services
        .get(&r(ns, name))?
        .spec
        .as_ref()?
        .cluster_ip
        .clone()
}

fn load(files: &[(&str, &str)]) -> Objects {
    let files: Vec<_> = files
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    load_texts(&files, &Options::default())
}

fn svc_yaml(ns: &str, name: &str, extra: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{ports: [{{port: 80}}]{extra}}}\n---\n")
}
