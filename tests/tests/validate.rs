//! `twinstack validate` on the dual-stack lab: the real agent serves the example Service, and
//! `validate` runs in the node's namespace, in the agent's cgroup (a node process the socket
//! hooks serve), on a manifest directory of its own (the agent's, plus this node's Node).
//! It passes when dual stack works, and names the fault when one family's endpoints,
//! frontend, pod CIDR or cluster CIDR is missing.
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use twinstack_lab::{
    lab::{DUAL_STACK, ExampleLab},
    manifests, twinstack_binary,
};

/// node-a, with a pod CIDR and an InternalIP of each family (`v6_pod_cidr: false`: IPv4 only).
fn node(v6_pod_cidr: bool) -> String {
    let cidrs = if v6_pod_cidr {
        "[10.244.0.0/20, 'fd00:10:244::/60']"
    } else {
        "[10.244.0.0/20]"
    };
    format!(
        "apiVersion: v1
kind: Node
metadata: {{name: node-a}}
spec:
  podCIDR: 10.244.0.0/20
  podCIDRs: {cidrs}
status:
  addresses:
  - {{type: InternalIP, address: 192.0.2.10}}
  - {{type: InternalIP, address: '2001:db8:1::10'}}
"
    )
}

/// A second dual-stack Service, in the API (validate's directory) but never given to the agent.
const UNPROGRAMMED: &str = "apiVersion: v1
kind: Service
metadata: {name: later, namespace: default}
spec:
  type: ClusterIP
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20, 'fd00:10:96::20']
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: later-v4
  namespace: default
  labels: {kubernetes.io/service-name: later}
addressType: IPv4
ports:
- {name: http, protocol: TCP, port: 8080}
endpoints:
- addresses: [10.244.2.2]
  conditions: {ready: true}
  nodeName: node-a
";

/// The agent's manifests plus `extra` files, as validate's `--manifests` directory.
fn inputs(lab: &ExampleLab, extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(lab.manifests.path()).expect("the agent's manifests") {
        let path = entry.expect("an entry").path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().expect("a name"))).expect("copy");
        }
    }
    for (name, text) in extra {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    dir
}

/// Runs `twinstack validate … -o json`; its exit status and report.
fn validate(lab: &ExampleLab, dir: &Path, cluster_cidr: &str) -> (bool, Value) {
    let mut command = Command::new(twinstack_binary());
    command
        .args(["validate", "--node-name", "node-a", "-o", "json"])
        .arg("--manifests")
        .arg(dir)
        .args(["--cluster-cidr", cluster_cidr])
        .arg("--bpf-root")
        .arg(&lab.agent.bpf_root);
    lab.agent.cgroup.command(&mut command);
    lab.topology.node.command(&mut command);
    let output = command.output().expect("running twinstack validate");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "validate printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.success(), report)
}

/// The report's rows with `status`, as (check, subject, detail).
fn rows(report: &Value, status: &str) -> Vec<(String, String, String)> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["status"] == status)
        .map(|c| {
            let field = |name: &str| c[name].as_str().expect("a string").to_owned();
            (field("check"), field("subject"), field("detail"))
        })
        .collect()
}

fn has(rows: &[(String, String, String)], check: &str, subject: &str) -> bool {
    rows.iter()
        .any(|(c, s, _)| c == check && s.contains(subject))
}

#[test]
fn validate_passes_on_the_dual_stack_lab() {
    let lab = ExampleLab::start(DUAL_STACK, &[]);
    let dir = inputs(&lab, &[("node.yaml", &node(true))]);
    let (passed, report) = validate(&lab, dir.path(), DUAL_STACK);
    let problems = rows(&report, "problem");
    assert!(passed && problems.is_empty(), "{report:#}");
    let ok = rows(&report, "ok");
    for subject in [
        "default/demo 10.96.0.10:80/TCP",
        "default/demo [fd00:10:96::10]:80/TCP",
    ] {
        assert!(has(&ok, "programmed", subject), "{subject}: {ok:#?}");
        assert!(has(&ok, "connect", subject), "{subject} answered: {ok:#?}");
    }
    for subject in [
        "default/demo 10.96.0.10:5353/UDP",
        "default/demo [fd00:10:96::10]:5353/UDP",
    ] {
        assert!(has(&ok, "programmed", subject), "{subject}: {ok:#?}");
    }
    for subject in ["default/demo IPv4", "default/demo IPv6"] {
        assert!(has(&ok, "endpoints", subject), "{subject}: {ok:#?}");
    }
    for subject in ["node-a IPv4", "node-a IPv6"] {
        assert!(has(&ok, "node", subject), "{subject}: {ok:#?}");
    }
    assert!(has(&ok, "dual-stack", "default/demo"), "{ok:#?}");

    // The table: problems first, a summary last.
    let output = Command::new(twinstack_binary())
        .args(["validate", "--node-name", "node-a", "--no-connect"])
        .arg("--manifests")
        .arg(dir.path())
        .args(["--cluster-cidr", DUAL_STACK])
        .arg("--bpf-root")
        .arg(&lab.agent.bpf_root)
        .output()
        .expect("running twinstack validate");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.starts_with("STATUS"), "{text}");
    assert!(text.contains("\n0 problem(s), 0 warning(s)"), "{text}");
}

#[test]
fn validate_names_the_missing_family_frontend_pod_cidr_and_endpoints() {
    let lab = ExampleLab::start(DUAL_STACK, &[]);

    // No IPv6 in --cluster-cidr, no IPv6 pod CIDR on the Node.
    let dir = inputs(&lab, &[("node.yaml", &node(false))]);
    let (passed, report) = validate(&lab, dir.path(), "10.244.0.0/16");
    let problems = rows(&report, "problem");
    assert!(!passed, "{report:#}");
    assert!(has(&problems, "cluster-cidr", "IPv6"), "{problems:#?}");
    assert!(has(&problems, "node", "node-a IPv6"), "{problems:#?}");
    assert_eq!(report["problems"], problems.len(), "{report:#}");

    // A dual-stack Service the API has and the agent never programmed: both families named;
    // it lists no IPv6 endpoint either.
    let dir = inputs(
        &lab,
        &[("node.yaml", &node(true)), ("later.yaml", UNPROGRAMMED)],
    );
    let (passed, report) = validate(&lab, dir.path(), DUAL_STACK);
    let problems = rows(&report, "problem");
    assert!(!passed, "{report:#}");
    for subject in [
        "default/later 10.96.0.20:80/TCP",
        "default/later [fd00:10:96::20]:80/TCP",
    ] {
        assert!(
            has(&problems, "programmed", subject),
            "{subject}: {problems:#?}"
        );
    }
    assert!(
        has(&problems, "endpoints", "default/later IPv6"),
        "{problems:#?}"
    );
    assert!(
        !has(&problems, "programmed", "default/demo"),
        "{problems:#?}"
    );

    // The IPv6 endpoints go (the agent programs that): validate names the family.
    let slices = std::fs::read_to_string(lab.manifests.path().join("endpointslices.yaml"))
        .expect("the example slices");
    let (v4, v6) = slices.split_once("\n---").expect("two slices, IPv4 first");
    assert!(v6.contains("addressType: IPv6"), "{v6}");
    let v6_empty = v6
        .split_once("endpoints:")
        .map(|(head, _)| format!("{head}endpoints: []\n"))
        .expect("an endpoints list");
    manifests::write_atomically(
        lab.manifests.path(),
        "endpointslices.yaml",
        &format!("{v4}\n---{v6_empty}"),
    );
    let started = Instant::now();
    let report = loop {
        let dir = inputs(&lab, &[("node.yaml", &node(true))]);
        let (passed, report) = validate(&lab, dir.path(), DUAL_STACK);
        let problems = rows(&report, "problem");
        if !passed && has(&problems, "endpoints", "default/demo IPv6") {
            break report;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no IPv6 endpoint problem: {report:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let problems = rows(&report, "problem");
    assert!(
        !has(&problems, "endpoints", "default/demo IPv4"),
        "{problems:#?}"
    );
    assert!(!has(&problems, "connect", "10.96.0.10"), "{problems:#?}");
}
