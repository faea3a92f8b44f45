//! `kind-up` and `manifests`: svc-lb as a DaemonSet in a kind cluster, from deploy/.
//!
//! `manifests` prints deploy/svc-lb.yaml with the image filled in (and, with
//! `--least-privilege`, its DaemonSet swapped for deploy/svc-lb-least-privilege.yaml's).
//! `kind-up` needs docker and kind besides kubectl; it creates the cluster of
//! deploy/kind-config.yaml unless it exists, builds deploy/Dockerfile, loads the image into the
//! nodes, applies the rendered manifests and waits for the rollout.
use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, ensure, Context, Result};

use crate::run;

/// The image line deploy/svc-lb*.yaml carry; a usable tag for a hand-built image too.
const IMAGE_PLACEHOLDER: &str = "image: svc-lb-agent:dev";
const IMAGE_REPOSITORY: &str = "svc-lb-agent";

/// The image tag for this tree: the commit, and the time when there are uncommitted changes,
/// so that every `kind-up` after an edit changes the pod template and so rolls the DaemonSet.
pub(crate) fn default_image(root: &Path) -> Result<String> {
    let git = |args: &[&str]| -> Result<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .context("running git")?;
        ensure!(out.status.success(), "git {args:?} failed");
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let mut tag = format!("dev-{}", git(&["rev-parse", "--short=12", "HEAD"])?);
    if !git(&["status", "--porcelain", "--untracked-files=no"])?.is_empty() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        tag.push_str(&format!("-dirty-{}", now.as_secs()));
    }
    Ok(format!("{IMAGE_REPOSITORY}:{tag}"))
}

/// deploy/svc-lb.yaml with `image` in place of the placeholder.
pub(crate) fn render(root: &Path, image: &str, least_privilege: bool) -> Result<String> {
    let read = |file: &str| {
        let path = root.join("deploy").join(file);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let mut text = read("svc-lb.yaml")?;
    if least_privilege {
        let variant = read("svc-lb-least-privilege.yaml")?;
        let docs: Vec<&str> = text.split("\n---\n").collect();
        let is_ds = |doc: &str| doc.contains("\nkind: DaemonSet\n");
        ensure!(
            docs.iter().filter(|doc| is_ds(doc)).count() == 1,
            "deploy/svc-lb.yaml: expected one DaemonSet document"
        );
        text = docs
            .iter()
            .map(|doc| if is_ds(doc) { variant.as_str() } else { doc })
            .collect::<Vec<_>>()
            .join("\n---\n");
    }
    let count = text.matches(IMAGE_PLACEHOLDER).count();
    ensure!(
        count == 1,
        "expected `{IMAGE_PLACEHOLDER}` once in the manifests, found it {count} times"
    );
    Ok(text.replace(IMAGE_PLACEHOLDER, &format!("image: {image}")))
}

/// The cluster name deploy/kind-config.yaml gives (its top-level `name:`).
fn cluster_name(root: &Path) -> Result<String> {
    let config = std::fs::read_to_string(root.join("deploy/kind-config.yaml"))?;
    config
        .lines()
        .find_map(|l| l.strip_prefix("name: "))
        .map(|n| n.trim().to_string())
        .context("deploy/kind-config.yaml has no top-level name")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) fn kind_up(root: &Path, least_privilege: bool) -> Result<()> {
    let missing: Vec<&str> = [
        ("docker", "builds the image and runs the kind nodes"),
        ("kind", "creates the cluster (kind 0.29 or newer)"),
        ("kubectl", "applies the manifests"),
    ]
    .into_iter()
    .filter(|(tool, _)| !have(tool))
    .map(|(tool, why)| {
        eprintln!("xtask kind-up: `{tool}` is not installed: it {why}");
        tool
    })
    .collect();
    if !missing.is_empty() {
        bail!(
            "kind-up needs {missing:?}, not found on PATH; without them, \
             `cargo xtask manifests` prints what would be applied"
        );
    }
    let daemon = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    ensure!(
        daemon.success(),
        "docker is installed but `docker info` fails: is its daemon running and reachable?"
    );

    let cluster = cluster_name(root)?;
    let context = format!("kind-{cluster}");
    let clusters = Command::new("kind").args(["get", "clusters"]).output()?;
    if String::from_utf8_lossy(&clusters.stdout)
        .lines()
        .any(|l| l == cluster)
    {
        eprintln!("xtask kind-up: cluster {cluster} exists, keeping it");
    } else {
        run(Command::new("kind")
            .args(["create", "cluster", "--config", "deploy/kind-config.yaml"])
            .current_dir(root))?;
    }

    let image = default_image(root)?;
    run(Command::new("docker")
        .args(["build", "-f", "deploy/Dockerfile", "-t", &image, "."])
        .current_dir(root))?;
    run(Command::new("kind").args(["load", "docker-image", "--name", &cluster, &image]))?;

    let manifests = render(root, &image, least_privilege)?;
    let mut apply = Command::new("kubectl")
        .args(["--context", &context, "apply", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .context("spawning kubectl apply")?;
    apply
        .stdin
        .take()
        .context("kubectl stdin")?
        .write_all(manifests.as_bytes())?;
    ensure!(apply.wait()?.success(), "kubectl apply failed");
    run(Command::new("kubectl").args([
        "--context",
        &context,
        "-n",
        "svc-lb",
        "rollout",
        "status",
        "daemonset/svc-lb",
        "--timeout=300s",
    ]))?;
    eprintln!("xtask kind-up: svc-lb runs on every node of {cluster} (kubectl context {context})");
    Ok(())
}
