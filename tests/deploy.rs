//! The Kubernetes manifests in deploy/kubernetes: valid against the
//! Kubernetes schemas (offline, kubernetes-validate), and the DaemonSet
//! mounts every path the ConfigMap's spec and the install step name.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// A tool where scripts/deps.sh puts it, else on PATH (if `probe` runs).
fn tool(installed: &str, name: &str, probe: &str) -> Option<PathBuf> {
    let installed = PathBuf::from(installed);
    if installed.exists() {
        return Some(installed);
    }
    Command::new(name)
        .arg(probe)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from(name))
}

/// kubernetes-validate, in the venv scripts/deps.sh makes.
fn validator() -> Option<PathBuf> {
    tool(
        "/opt/headcni-ci/venv/bin/kubernetes-validate",
        "kubernetes-validate",
        "--version",
    )
}

/// kubernetes-validate --strict against Kubernetes 1.30's schemas.
fn validate(tool: &Path, files: &[PathBuf]) {
    let out = Command::new(tool)
        .args(["--strict", "--kubernetes-version", "1.30"])
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_manifests_pass_offline_schema_validation() {
    let Some(tool) = validator() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "kubernetes-validate is missing (scripts/deps.sh installs it)"
        );
        eprintln!("skipped: kubernetes-validate not installed (bash scripts/deps.sh)");
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        // kustomization.yaml is kustomize's, not an API object.
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml")
        })
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    validate(&tool, &files);
    // The kustomization names every manifest.
    let kustomization = std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).unwrap();
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(
            kustomization.contains(name),
            "kustomization.yaml lacks {name}"
        );
    }
}

#[derive(Deserialize)]
struct DaemonSet {
    spec: DaemonSetSpec,
}
#[derive(Deserialize)]
struct DaemonSetSpec {
    template: PodTemplate,
}
#[derive(Deserialize)]
struct PodTemplate {
    spec: PodSpec,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    #[serde(default)]
    init_containers: Vec<Container>,
    containers: Vec<Container>,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    name: String,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    volume_mounts: Vec<VolumeMount>,
    #[serde(default)]
    security_context: Option<SecurityContext>,
}
#[derive(Deserialize)]
struct SecurityContext {
    #[serde(default)]
    privileged: bool,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolumeMount {
    mount_path: String,
    #[serde(default)]
    mount_propagation: Option<String>,
}
#[derive(Deserialize)]
struct ConfigMap {
    data: std::collections::BTreeMap<String, String>,
}

impl Container {
    /// The mount a path lives under (the longest mount path that holds it).
    fn mount_of(&self, path: &Path) -> Option<&VolumeMount> {
        self.volume_mounts
            .iter()
            .filter(|m| path.starts_with(&m.mount_path))
            .max_by_key(|m| m.mount_path.len())
    }

    fn flag(&self, name: &str) -> Option<PathBuf> {
        let prefix = format!("--{name}=");
        self.command
            .iter()
            .find_map(|a| a.strip_prefix(&prefix))
            .map(PathBuf::from)
    }
}

#[test]
fn the_daemonset_mounts_every_path_the_config_names() {
    let read = |name: &str| std::fs::read_to_string(deploy_dir().join(name)).unwrap();
    let ds: DaemonSet = serde_saphyr::from_str(&read("daemonset.yaml")).unwrap();
    let cm: ConfigMap = serde_saphyr::from_str(&read("configmap.yaml")).unwrap();
    let pod = &ds.spec.template.spec;
    let daemon = pod
        .containers
        .iter()
        .find(|c| c.name == "headcni")
        .expect("headcni container");
    let install = pod
        .init_containers
        .iter()
        .find(|c| c.name == "install")
        .expect("install init container");

    // The template, rendered with a pod CIDR, is a spec headcni accepts.
    let template = &cm.data["headcni.toml"];
    let rendered = headcni_render(template);
    let spec = headcni::spec::Spec::parse(&rendered, Path::new("headcni.toml")).unwrap();
    let d = &spec.daemon;
    let mut daemon_paths: Vec<PathBuf> = vec![
        spec.state_dir.clone(),
        d.tailscaled.clone(),
        d.tailscale.clone(),
        d.netns_path(),
        d.resolv_conf_path(),
        d.dns_upstream.clone(),
        PathBuf::from("/dev/net/tun"),
    ];
    daemon_paths.extend(d.auth_key_file.clone());
    for c in [daemon, install] {
        let spec_flag = c.flag("spec").expect("--spec");
        let template_flag = c.flag("spec-template").expect("--spec-template");
        assert!(
            c.mount_of(&spec_flag).is_some(),
            "{}: {}",
            c.name,
            spec_flag.display()
        );
        assert!(
            c.mount_of(&template_flag).is_some(),
            "{}: {}",
            c.name,
            template_flag.display()
        );
    }
    for path in &daemon_paths {
        assert!(
            daemon.mount_of(path).is_some(),
            "the daemon container does not mount {}",
            path.display()
        );
    }
    // Pod namespaces at the paths runtimes give (the daemon wires pods
    // handed to it by the plugin).
    for runtime_path in ["/var/run/netns/cni-1234", "/run/netns/cni-1234"] {
        assert!(
            daemon.mount_of(Path::new(runtime_path)).is_some(),
            "the daemon container cannot see {runtime_path}"
        );
    }
    // The namespace bound under /run/netns must reach the host.
    let netns = daemon.mount_of(&d.netns_path()).unwrap();
    assert_eq!(netns.mount_propagation.as_deref(), Some("Bidirectional"));
    // Kubernetes allows Bidirectional propagation to privileged containers only.
    assert!(
        daemon
            .security_context
            .as_ref()
            .is_some_and(|s| s.privileged),
        "a Bidirectional mount needs a privileged container"
    );
    // What install writes, at its defaults.
    for path in [
        "/opt/cni/bin/headcni",
        "/etc/cni/net.d/x.conflist",
        "/etc/iproute2/rt_protos.d/headcni.conf",
        "/var/lib/headcni/install.json",
    ] {
        assert!(
            install.mount_of(Path::new(path)).is_some(),
            "install does not mount {path}"
        );
    }
}

/// The template with a pod CIDR, as install renders it.
fn headcni_render(template: &str) -> String {
    headcni::install::render::render_spec(
        template,
        Path::new("configmap.yaml"),
        "node-1",
        &["10.244.1.0/24".to_string()],
        Path::new("headcni.toml"),
    )
    .unwrap()
}

/// What `kubectl apply -k` ships runs as released: every image pinned (no
/// `:latest`, no floating tag), headcni's at the crate's version in the
/// DaemonSet and in the kustomization's one-line retag, Linux nodes only,
/// and no placeholder key applied.
#[test]
fn the_manifests_pin_their_images_and_apply_no_placeholder() {
    let read = |name: &str| std::fs::read_to_string(deploy_dir().join(name)).unwrap();
    let ds = read("daemonset.yaml");
    let version = env!("CARGO_PKG_VERSION");
    let images: Vec<&str> = ds
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
        .collect();
    assert!(images.len() >= 3, "{images:?}");
    for image in &images {
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && !["latest", "stable", "unstable"].contains(&tag),
            "{image} is not pinned"
        );
        if image.starts_with("ghcr.io/headcni/headcni:") {
            assert_eq!(tag, version, "{image}");
        }
    }
    let kustomization = read("kustomization.yaml");
    assert!(
        kustomization.contains(&format!("newTag: \"{version}\"")),
        "{kustomization}"
    );
    assert!(ds.contains("kubernetes.io/os: linux"));
    assert!(ds.contains("startupProbe:"));
    for name in ["kustomization.yaml", "configmap.yaml", "daemonset.yaml"] {
        assert!(
            !read(name).contains("REPLACE"),
            "{name} applies a placeholder"
        );
    }
}

/// helm, where scripts/deps.sh builds it.
fn helm() -> Option<PathBuf> {
    tool("/opt/headcni-ci/helm-v4.3.2/helm", "helm", "version")
}

/// YAML documents of a multi-document stream, as JSON values (empty ones
/// dropped).
fn documents(text: &str) -> Vec<serde_json::Value> {
    text.split("\n---")
        .filter_map(|doc| serde_saphyr::from_str::<serde_json::Value>(doc).ok())
        .filter(|v| v.is_object())
        .collect()
}

fn key(o: &serde_json::Value) -> String {
    format!(
        "{}/{}",
        o["kind"].as_str().unwrap_or(""),
        o["metadata"]["name"].as_str().unwrap_or("")
    )
}

/// The Helm chart lints, and at its defaults renders the objects
/// deploy/kubernetes applies (the Namespace aside, which Helm leaves to
/// `--create-namespace` or the operator): the same DaemonSet, mounts and
/// all, and a spec template that parses to the same spec. Its pod
/// template carries the ConfigMap's checksum, so a spec edit rolls it.
#[test]
fn the_helm_chart_renders_what_the_manifests_apply() {
    let Some(helm) = helm() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "helm is missing (scripts/deps.sh builds it)"
        );
        eprintln!("skipped: helm not installed (bash scripts/deps.sh)");
        return;
    };
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/helm/headcni");
    let run = |args: &[&str]| {
        let out = Command::new("timeout")
            .arg("60")
            .arg(&helm)
            .args(args)
            .arg(&chart)
            .env(
                "HELM_CACHE_HOME",
                std::env::temp_dir().join("headcni-helm-cache"),
            )
            .env(
                "HELM_CONFIG_HOME",
                std::env::temp_dir().join("headcni-helm-config"),
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "helm {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["lint", "--strict"]);
    let rendered = documents(&run(&[
        "template",
        "headcni",
        "--namespace",
        "headcni-system",
    ]));
    let mut shipped = Vec::new();
    for name in ["rbac.yaml", "configmap.yaml", "daemonset.yaml"] {
        shipped.extend(documents(
            &std::fs::read_to_string(deploy_dir().join(name)).unwrap(),
        ));
    }
    let mut keys: Vec<String> = rendered.iter().map(key).collect();
    let mut want: Vec<String> = shipped.iter().map(key).collect();
    keys.sort();
    want.sort();
    assert_eq!(keys, want);
    let version = env!("CARGO_PKG_VERSION");
    let chart_yaml = std::fs::read_to_string(chart.join("Chart.yaml")).unwrap();
    assert!(
        chart_yaml.contains(&format!("appVersion: \"{version}\"")),
        "{chart_yaml}"
    );
    for ours in &rendered {
        let theirs = shipped.iter().find(|o| key(o) == key(ours)).unwrap();
        match ours["kind"].as_str() {
            Some("ConfigMap") => {
                let spec = |o: &serde_json::Value| {
                    let text = headcni_render(o["data"]["headcni.toml"].as_str().unwrap());
                    headcni::spec::Spec::parse(&text, Path::new("headcni.toml")).unwrap()
                };
                assert_eq!(spec(ours), spec(theirs), "the spec templates differ");
            }
            Some("DaemonSet") => {
                let mut ours = ours.clone();
                let annotations = ours["spec"]["template"]["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("annotations")
                    .unwrap_or_default();
                assert!(
                    annotations["checksum/config"]
                        .as_str()
                        .is_some_and(|c| c.len() == 64),
                    "{annotations}"
                );
                assert_eq!(&ours, theirs, "the DaemonSets differ");
            }
            _ => assert_eq!(ours, theirs, "{}", key(ours)),
        }
    }
}

/// The cleanup DaemonSet (uninstalling from a cluster without SSH) is a
/// valid object and mounts everything `uninstall --purge` removes, the
/// tailnet namespace's bind with Bidirectional propagation (undone on the
/// host too).
#[test]
fn the_cleanup_daemonset_reaches_all_that_purge_removes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/cleanup");
    let text = std::fs::read_to_string(dir.join("daemonset.yaml")).unwrap();
    if let Some(tool) = validator() {
        validate(&tool, &[dir.join("daemonset.yaml")]);
    }
    let ds: DaemonSet = serde_saphyr::from_str(&text).unwrap();
    let c = &ds.spec.template.spec.containers[0];
    assert!(
        c.command.iter().any(|a| a == "--purge") && c.command.iter().any(|a| a == "--stay"),
        "{:?}",
        c.command
    );
    let cm: ConfigMap = serde_saphyr::from_str(
        &std::fs::read_to_string(deploy_dir().join("configmap.yaml")).unwrap(),
    )
    .unwrap();
    let spec = headcni::spec::Spec::parse(
        &headcni_render(&cm.data["headcni.toml"]),
        Path::new("headcni.toml"),
    )
    .unwrap();
    let d = &spec.daemon;
    for path in [
        c.flag("spec").expect("--spec"),
        c.flag("record").expect("--record"),
        spec.state_dir.clone(),
        d.resolv_conf_path(),
        PathBuf::from("/opt/cni/bin/headcni"),
        PathBuf::from("/etc/cni/net.d/10-headcni.conflist"),
        PathBuf::from("/etc/iproute2/rt_protos.d/headcni.conf"),
        // [headscale] api_key_file, as the ConfigMap's comment gives it.
        PathBuf::from("/etc/headcni/headscale/api-key"),
    ] {
        assert!(
            c.mount_of(&path).is_some(),
            "cleanup does not mount {}",
            path.display()
        );
    }
    let netns = c.mount_of(&d.netns_path()).expect("/run/netns");
    assert_eq!(netns.mount_propagation.as_deref(), Some("Bidirectional"));
    assert!(c.security_context.as_ref().is_some_and(|s| s.privileged));
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    assert!(kustomization.contains(&format!("newTag: \"{}\"", env!("CARGO_PKG_VERSION"))));
}
