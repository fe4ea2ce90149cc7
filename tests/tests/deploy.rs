//! `deploy/` holds what a cluster needs to run the agent on every node. Every document of every
//! YAML file there is read as its Kubernetes API type (an unknown kind or field fails), its
//! fields are checked against what the agent needs, and the DaemonSet's command line, expanded
//! as the kubelet expands it, is parsed by the agent's own CLI. No cluster, no root.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use clap::Parser as _;
use k8s_openapi::{
    Resource,
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, PodSpec, Probe, ServiceAccount, VolumeMount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use proxy_userspace::cli::{Cli, Command, DEFAULT_BPF_ROOT};
use serde::{Deserialize as _, Serialize, de::DeserializeOwned};
use serde_json::Value;

/// kube-proxy's health port: the agent's default `--healthz-bind-address` port.
const HEALTH_PORT: i32 = 10256;
/// What the downward API gives `NODE_NAME` on the node this test stands for.
const NODE: &str = "node-a";
/// The API groups and resources the agent watches; it may `get`, `list` and `watch` them only.
const READS: [(&str, &str); 3] = [
    ("", "services"),
    ("", "nodes"),
    ("discovery.k8s.io", "endpointslices"),
];

/// Every document of every YAML file under `deploy/`, by kind.
#[derive(Default)]
struct Manifests {
    daemon_sets: Vec<DaemonSet>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
}

impl Manifests {
    fn load() -> Self {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let mut files = Vec::new();
        yaml_files(&deploy, &mut files);
        assert!(!files.is_empty(), "no YAML file under {}", deploy.display());
        let mut manifests = Self::default();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
            for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
                let name = file.strip_prefix(&deploy).unwrap_or(&file).display();
                let at = format!("deploy/{name} (document {})", index + 1);
                let value = Value::deserialize(document).unwrap_or_else(|e| panic!("{at}: {e}"));
                // A document of comments only.
                if !value.is_null() {
                    manifests.add(&at, value);
                }
            }
        }
        manifests
    }

    fn add(&mut self, at: &str, value: Value) {
        let kind = value["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{at}: no kind"));
        match kind {
            "DaemonSet" => self.daemon_sets.push(typed(at, value)),
            "ServiceAccount" => self.service_accounts.push(typed(at, value)),
            "ClusterRole" => self.cluster_roles.push(typed(at, value)),
            "ClusterRoleBinding" => self.bindings.push(typed(at, value)),
            "ConfigMap" => self.config_maps.push(typed(at, value)),
            other => panic!("{at}: kind {other:?} is not one this test knows: add it to Manifests"),
        }
    }

    fn daemon_set(&self) -> &DaemonSet {
        one(&self.daemon_sets)
    }

    fn namespace(&self) -> &str {
        namespace_of(&self.daemon_set().metadata)
    }

    fn pod(&self) -> &PodSpec {
        let spec = self.daemon_set().spec.as_ref().expect("DaemonSet: no spec");
        spec.template.spec.as_ref().expect("DaemonSet: no pod spec")
    }

    fn agent(&self) -> &Container {
        let pod = self.pod();
        let mut agents = pod.containers.iter().filter(|c| c.name == "twinstack");
        let agent = agents
            .next()
            .expect("DaemonSet: no container named twinstack");
        assert!(
            agents.next().is_none(),
            "DaemonSet: two containers named twinstack"
        );
        agent
    }

    /// The agent's command line as written: the container's command, then its args.
    fn argv(&self) -> Vec<String> {
        let agent = self.agent();
        let command = agent.command.clone().unwrap_or_default();
        assert!(
            !command.is_empty(),
            "the twinstack container has no command: the image's entrypoint alone runs no agent"
        );
        command
            .into_iter()
            .chain(agent.args.clone().unwrap_or_default())
            .collect()
    }

    /// Each environment variable of the agent as the kubelet sets it on node [`NODE`].
    fn environment(&self) -> BTreeMap<String, String> {
        let mut environment = BTreeMap::new();
        for var in self.agent().env.iter().flatten() {
            let value = match (&var.value, &var.value_from) {
                (Some(value), None) => value.clone(),
                (None, Some(source)) => match (&source.field_ref, &source.config_map_key_ref) {
                    (Some(field), None) => match field.field_path.as_str() {
                        "spec.nodeName" => NODE.to_owned(),
                        other => panic!("env {}: fieldRef {other}: not modelled here", var.name),
                    },
                    (None, Some(key)) => self.config_value(&key.name, &key.key),
                    _ => panic!("env {}: a source this test does not model", var.name),
                },
                _ => panic!("env {}: neither a value nor one source", var.name),
            };
            assert!(
                environment.insert(var.name.clone(), value).is_none(),
                "env {} set twice",
                var.name
            );
        }
        environment
    }

    /// `key` of ConfigMap `name` in the DaemonSet's namespace.
    fn config_value(&self, name: &str, key: &str) -> String {
        let map = self
            .config_maps
            .iter()
            .find(|m| {
                m.metadata.name.as_deref() == Some(name)
                    && namespace_of(&m.metadata) == self.namespace()
            })
            .unwrap_or_else(|| panic!("no ConfigMap {name} in {}", self.namespace()));
        map.data
            .as_ref()
            .and_then(|data| data.get(key))
            .unwrap_or_else(|| panic!("ConfigMap {name} has no key {key}"))
            .clone()
    }

    /// The agent's command line as the kubelet runs it.
    fn expanded_argv(&self) -> Vec<String> {
        let environment = self.environment();
        let argv: Vec<String> = self
            .argv()
            .iter()
            .map(|a| expand(a, &environment))
            .collect();
        for arg in &argv {
            assert!(
                !arg.contains("$("),
                "{arg}: a variable the container does not define reaches the agent as written"
            );
        }
        argv
    }

    /// The agent's mount of the host's `host_path` (a hostPath volume).
    fn host_mount(&self, host_path: &str) -> &VolumeMount {
        let volume = self
            .pod()
            .volumes
            .iter()
            .flatten()
            .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == host_path))
            .unwrap_or_else(|| panic!("no hostPath volume of {host_path}"));
        self.agent()
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == volume.name)
            .unwrap_or_else(|| panic!("volume {} ({host_path}) is not mounted", volume.name))
    }
}

fn yaml_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            yaml_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
}

/// `value` as a `T` of its apiVersion, keeping every field `value` has: the API types skip
/// fields they do not know, so a misspelt field would pass unseen (and fail `kubectl apply`).
fn typed<T: Resource + DeserializeOwned + Serialize>(at: &str, value: Value) -> T {
    assert_eq!(
        value["apiVersion"],
        T::API_VERSION,
        "{at}: apiVersion of a {}",
        T::KIND
    );
    let object: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{at}: not a {}: {e}", T::KIND));
    let read = serde_json::to_value(&object).expect("an API object serializes");
    if let Some(path) = lost(&value, &read, "") {
        panic!(
            "{at}: {path}: not a field of {} (misspelt or misplaced?)",
            T::KIND
        );
    }
    object
}

/// The first place where `written` has something `read` does not.
fn lost(written: &Value, read: &Value, path: &str) -> Option<String> {
    match (written, read) {
        (Value::Object(written), Value::Object(read)) => written.iter().find_map(|(key, value)| {
            let path = format!("{path}.{key}");
            match read.get(key) {
                Some(kept) => lost(value, kept, &path),
                None => Some(path),
            }
        }),
        (Value::Array(written), Value::Array(read)) if written.len() == read.len() => written
            .iter()
            .zip(read)
            .enumerate()
            .find_map(|(i, (value, kept))| lost(value, kept, &format!("{path}[{i}]"))),
        _ => (written != read).then(|| path.to_owned()),
    }
}

fn one<T: Resource>(objects: &[T]) -> &T {
    assert_eq!(objects.len(), 1, "deploy/ holds one {}", T::KIND);
    &objects[0]
}

fn namespace_of(metadata: &ObjectMeta) -> &str {
    let name = metadata.name.as_deref().unwrap_or("?");
    metadata
        .namespace
        .as_deref()
        .unwrap_or_else(|| panic!("{name}: no namespace (kubectl would use the current one)"))
}

/// The kubelet's expansion of a command argument: `$(NAME)` of a variable the container
/// defines becomes its value, `$$` becomes `$`, anything else stays as written.
fn expand(arg: &str, environment: &BTreeMap<String, String>) -> String {
    let mut expanded = String::new();
    let mut rest = arg;
    while let Some(at) = rest.find('$') {
        expanded.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(tail) = rest.strip_prefix("$$") {
            expanded.push('$');
            rest = tail;
        } else if let Some(inner) = rest.strip_prefix("$(")
            && let Some(end) = inner.find(')')
            && let Some(value) = environment.get(&inner[..end])
        {
            expanded.push_str(value);
            rest = &inner[end + 1..];
        } else {
            expanded.push('$');
            rest = &rest[1..];
        }
    }
    expanded.push_str(rest);
    expanded
}

/// The value of `--name` in `argv` (`--name=value` or `--name value`), the last one if repeated.
fn flag<'a>(argv: &'a [String], name: &str) -> Option<&'a str> {
    let mut found = None;
    for (i, arg) in argv.iter().enumerate() {
        if let Some(value) = arg.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            found = Some(value);
        } else if arg == name {
            found = argv.get(i + 1).map(String::as_str);
        }
    }
    found
}

#[test]
fn every_document_is_a_known_kind_with_known_fields() {
    let manifests = Manifests::load();
    one(&manifests.daemon_sets);
    one(&manifests.service_accounts);
    one(&manifests.cluster_roles);
    one(&manifests.bindings);
}

#[test]
fn agent_accepts_its_command_line() {
    let manifests = Manifests::load();
    let argv = manifests.expanded_argv();
    assert_eq!(
        argv.first().map(String::as_str),
        Some("twinstack"),
        "{argv:?}"
    );
    match Cli::try_parse_from(&argv) {
        Ok(Cli {
            command: Command::Run(_),
        }) => {}
        Ok(other) => panic!("{argv:?} is not `twinstack run`: {other:?}"),
        Err(e) => panic!("twinstack rejects {argv:?}:\n{}", e.render()),
    }
}

#[test]
fn runs_on_every_node_in_the_host_network() {
    let manifests = Manifests::load();
    let daemon_set = manifests.daemon_set();
    let spec = daemon_set.spec.as_ref().expect("DaemonSet: no spec");
    let pod = manifests.pod();
    assert_eq!(
        pod.host_network,
        Some(true),
        "hostNetwork: the node's own interfaces and ports"
    );
    // Socket LB destroys sockets in each process's network namespace, /proc/PID/ns/net.
    assert_eq!(pod.host_pid, Some(true), "hostPID: the node's processes");
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical"),
        "priorityClassName: Services break on a node whose agent is evicted"
    );
    assert!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "tolerations: one `operator: Exists` with no key or effect (every taint)"
    );
    let strategy = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref());
    assert_eq!(strategy, Some("RollingUpdate"), "updateStrategy");
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for (key, value) in spec.selector.match_labels.iter().flatten() {
        assert_eq!(
            labels.get(key),
            Some(value),
            "the selector's {key} is not on the pod template"
        );
    }
}

#[test]
fn has_the_privileges_and_host_mounts_the_agent_needs() {
    let manifests = Manifests::load();
    let agent = manifests.agent();
    let argv = manifests.expanded_argv();
    let context = agent.security_context.clone().unwrap_or_default();
    let privileged = context.privileged == Some(true);
    if !privileged {
        let added: BTreeSet<String> = context
            .capabilities
            .and_then(|c| c.add)
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.trim_start_matches("CAP_").to_owned())
            .collect();
        for needed in ["BPF", "NET_ADMIN", "SYS_ADMIN", "PERFMON", "SYS_RESOURCE"] {
            assert!(
                added.contains(needed),
                "neither privileged nor CAP_{needed}"
            );
        }
    }
    let mounts = agent.volume_mounts.iter().flatten();
    for mount in mounts.clone() {
        assert!(
            manifests
                .pod()
                .volumes
                .iter()
                .flatten()
                .any(|v| v.name == mount.name),
            "mount of volume {}, which the pod does not have",
            mount.name
        );
    }
    assert!(
        privileged
            || !mounts
                .clone()
                .any(|m| m.mount_propagation.as_deref() == Some("Bidirectional")),
        "a Bidirectional mount needs privileged: true (the API rejects it otherwise)"
    );

    // The pins on the host's bpffs, and a bpffs the agent mounts (over --bpf-root's parent,
    // where the host has none) propagated to the host, so they outlive the pod.
    let bpf = manifests.host_mount("/sys/fs/bpf");
    assert_eq!(
        bpf.mount_propagation.as_deref(),
        Some("Bidirectional"),
        "the bpffs mount's propagation"
    );
    assert_ne!(bpf.read_only, Some(true), "the bpffs mount is read-only");
    let bpf_root = flag(&argv, "--bpf-root").unwrap_or(DEFAULT_BPF_ROOT);
    let parent = Path::new(bpf_root)
        .parent()
        .expect("--bpf-root has a parent");
    assert!(
        parent.starts_with(&bpf.mount_path),
        "--bpf-root {bpf_root}: its parent is not on the host bpffs at {}",
        bpf.mount_path
    );

    // Without --cgroup-root the agent would take the container's own cgroup namespace root.
    let cgroup = manifests.host_mount("/sys/fs/cgroup");
    let cgroup_root = flag(&argv, "--cgroup-root").expect("--cgroup-root");
    assert!(
        Path::new(cgroup_root).starts_with(&cgroup.mount_path),
        "--cgroup-root {cgroup_root} is not under the host cgroup v2 mount at {}",
        cgroup.mount_path
    );
}

#[test]
fn node_name_comes_from_the_downward_api() {
    let manifests = Manifests::load();
    let var = manifests
        .agent()
        .env
        .iter()
        .flatten()
        .find(|v| v.name == "NODE_NAME")
        .expect("env NODE_NAME");
    let field = var.value_from.as_ref().and_then(|s| s.field_ref.as_ref());
    assert_eq!(
        field.map(|f| f.field_path.as_str()),
        Some("spec.nodeName"),
        "NODE_NAME's fieldRef"
    );
    let argv = manifests.argv();
    assert_eq!(
        flag(&argv, "--node-name"),
        Some("$(NODE_NAME)"),
        "--node-name"
    );
    assert_eq!(flag(&manifests.expanded_argv(), "--node-name"), Some(NODE));
}

#[test]
fn probes_ask_the_health_server() {
    let manifests = Manifests::load();
    let agent = manifests.agent();
    let argv = manifests.expanded_argv();
    // The kubelet probes the pod's IP, the node's address under hostNetwork.
    let bind: SocketAddr = flag(&argv, "--healthz-bind-address")
        .unwrap_or("0.0.0.0:10256")
        .parse()
        .expect("--healthz-bind-address");
    assert!(
        bind.ip().is_unspecified(),
        "--healthz-bind-address {bind}: not every address"
    );
    assert_eq!(
        i32::from(bind.port()),
        HEALTH_PORT,
        "--healthz-bind-address's port"
    );

    let check = |name: &str, probe: Option<&Probe>, paths: &[&str]| {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{name}: no httpGet"));
        let path = get.path.as_deref().unwrap_or("/");
        assert!(
            paths.contains(&path),
            "{name}: path {path}, not one of {paths:?}"
        );
        let port = match &get.port {
            IntOrString::Int(port) => *port,
            IntOrString::String(named) => {
                agent
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(named))
                    .unwrap_or_else(|| panic!("{name}: no container port named {named}"))
                    .container_port
            }
        };
        assert_eq!(port, HEALTH_PORT, "{name}: port");
        assert!(get.host.is_none(), "{name}: a host other than the pod's IP");
        assert!(
            get.scheme.as_deref().is_none_or(|s| s == "HTTP"),
            "{name}: the health server speaks plain HTTP"
        );
    };
    check(
        "readinessProbe",
        agent.readiness_probe.as_ref(),
        &["/healthz"],
    );
    check(
        "livenessProbe",
        agent.liveness_probe.as_ref(),
        &["/healthz", "/livez"],
    );
}

#[test]
fn rbac_reads_services_endpointslices_and_nodes_only() {
    let manifests = Manifests::load();
    let role = one(&manifests.cluster_roles);
    assert!(
        role.aggregation_rule.is_none(),
        "an aggregated ClusterRole grants what others add"
    );
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(
            rule.non_resource_urls.is_none(),
            "nonResourceURLs: {rule:?}"
        );
        assert!(rule.resource_names.is_none(), "resourceNames: {rule:?}");
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let wanted: BTreeSet<(String, String, String)> = READS
        .iter()
        .flat_map(|(group, resource)| {
            ["get", "list", "watch"]
                .map(|verb| (group.to_string(), resource.to_string(), verb.to_owned()))
        })
        .collect();
    assert_eq!(
        granted, wanted,
        "the ClusterRole's (apiGroup, resource, verb) grants"
    );
}

#[test]
fn binding_gives_the_role_to_the_daemon_sets_account() {
    let manifests = Manifests::load();
    let namespace = manifests.namespace();
    let role = one(&manifests.cluster_roles);
    let binding = one(&manifests.bindings);
    assert!(
        role.metadata.namespace.is_none(),
        "ClusterRole: cluster-scoped, no namespace"
    );
    assert!(
        binding.metadata.namespace.is_none(),
        "ClusterRoleBinding: cluster-scoped, no namespace"
    );
    assert_eq!(
        binding.role_ref.api_group, "rbac.authorization.k8s.io",
        "roleRef.apiGroup"
    );
    assert_eq!(binding.role_ref.kind, "ClusterRole", "roleRef.kind");
    assert_eq!(
        Some(&binding.role_ref.name),
        role.metadata.name.as_ref(),
        "roleRef.name"
    );

    let pod = manifests.pod();
    let account_name = pod
        .service_account_name
        .as_deref()
        .expect("serviceAccountName (else the namespace's default account)");
    assert_ne!(
        pod.automount_service_account_token,
        Some(false),
        "the pod mounts no token"
    );
    let account = one(&manifests.service_accounts);
    assert_eq!(
        account.metadata.name.as_deref(),
        Some(account_name),
        "ServiceAccount name"
    );
    assert_eq!(
        namespace_of(&account.metadata),
        namespace,
        "ServiceAccount namespace"
    );
    assert_ne!(
        account.automount_service_account_token,
        Some(false),
        "the account mounts no token"
    );

    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(
        subjects.len(),
        1,
        "the binding's subjects: the agent's account only"
    );
    let subject = &subjects[0];
    assert_eq!(subject.kind, "ServiceAccount", "subject kind");
    assert!(
        subject.api_group.as_deref().is_none_or(str::is_empty),
        "subject apiGroup"
    );
    assert_eq!(subject.name, account_name, "subject name");
    assert_eq!(
        subject.namespace.as_deref(),
        Some(namespace),
        "subject namespace"
    );

    for map in &manifests.config_maps {
        assert_eq!(
            namespace_of(&map.metadata),
            namespace,
            "ConfigMap namespace"
        );
    }
}

#[test]
fn reaches_the_api_server_without_a_service() {
    // The `kubernetes` Service and cluster DNS work only once this agent has programmed them,
    // and it programs nothing before its first lists from the API server.
    let manifests = Manifests::load();
    let environment = manifests.environment();
    let host = environment
        .get("KUBERNETES_SERVICE_HOST")
        .expect("env KUBERNETES_SERVICE_HOST: else the in-cluster config takes the Service's");
    assert!(!host.is_empty(), "KUBERNETES_SERVICE_HOST is empty");
    let port = environment
        .get("KUBERNETES_SERVICE_PORT")
        .expect("env KUBERNETES_SERVICE_PORT");
    port.parse::<u16>()
        .unwrap_or_else(|e| panic!("KUBERNETES_SERVICE_PORT {port:?}: {e}"));
    assert_eq!(
        manifests.pod().dns_policy.as_deref(),
        Some("Default"),
        "dnsPolicy: the node's resolver, not cluster DNS"
    );
}

#[test]
fn kubelet_expansion() {
    let environment = BTreeMap::from([("A".to_owned(), "x".to_owned())]);
    assert_eq!(expand("--a=$(A)", &environment), "--a=x");
    assert_eq!(expand("$$(A)", &environment), "$(A)");
    assert_eq!(expand("$(B)-$", &environment), "$(B)-$");
    let argv: Vec<String> = ["run", "--a=1", "--b", "2", "--ab=3"]
        .map(String::from)
        .into();
    assert_eq!(flag(&argv, "--a"), Some("1"));
    assert_eq!(flag(&argv, "--b"), Some("2"));
    assert_eq!(flag(&argv, "--c"), None);
}
