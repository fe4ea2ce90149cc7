//! Flag errors name the flag and show the expected form; `bpf` commands on a missing root fail
//! clearly. No root needed.
use std::process::Command;

fn twinstack(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_twinstack"))
        .args(args)
        .output()
        .expect("running twinstack");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn run_with_cidr(cidr: &str) -> (bool, String) {
    twinstack(&[
        "run",
        "--manifests",
        ".",
        "--node-name",
        "n",
        "--pod-interfaces",
        "veth*",
        "--cluster-cidr",
        cidr,
    ])
}

/// `twinstack run` with valid base flags and `extra`. Should a bad flag ever be accepted, the
/// agent fails at once and touches nothing: no interface matches, socket LB is off, and its
/// pin root cannot be made.
fn run_with(extra: &[&str]) -> (bool, String) {
    let mut args = SAFE_RUN.to_vec();
    args.extend_from_slice(extra);
    twinstack(&args)
}

/// `twinstack run` flags that can never start a real agent (see [`run_with`]).
const SAFE_RUN: [&str; 11] = [
    "run",
    "--manifests",
    ".",
    "--cluster-cidr",
    "10.0.0.0/8",
    "--pod-interfaces",
    "tscli-none*",
    "--socket-lb",
    "false",
    "--bpf-root",
    "/proc/twinstack-cli-test",
];

#[test]
fn bad_cluster_cidrs_are_refused_with_the_flag_and_an_example() {
    for bad in [
        "10.0.0.0/8,10.1.0.0/16",
        "fd00::/64,fd01::/64",
        "10.0.0.0/33",
        "nonsense",
        "",
    ] {
        let (ok, stderr) = run_with_cidr(bad);
        assert!(!ok, "{bad:?} accepted");
        assert!(stderr.contains("--cluster-cidr"), "{bad:?}: {stderr}");
        assert!(
            stderr.contains("10.244.0.0/16,fd00:10:244::/56"),
            "{bad:?}: {stderr}"
        );
    }
}

#[test]
fn other_bad_flags_name_the_flag() {
    let (ok, stderr) = twinstack(&[
        "run",
        "--manifests",
        ".",
        "--cluster-cidr",
        "10.0.0.0/8",
        "--pod-interfaces",
        "veth[",
    ]);
    assert!(!ok && stderr.contains("--pod-interfaces"), "{stderr}");
    let (ok, stderr) = run_with(&["--min-sync-period", "soon"]);
    assert!(!ok && stderr.contains("--min-sync-period"), "{stderr}");
    let (ok, stderr) = twinstack(&[
        "run",
        "--manifests",
        "/nonexistent/dir",
        "--cluster-cidr",
        "10.0.0.0/8",
        "--pod-interfaces",
        "veth*",
    ]);
    assert!(!ok && stderr.contains("--manifests"), "{stderr}");
}

#[test]
fn bad_conntrack_and_masquerade_flags_name_the_flag_and_an_example() {
    for (flag, bad, expected) in [
        ("--conntrack-udp-timeout", "0", "at least 1s"),
        ("--conntrack-tcp-timeout-established", "0", "at least 1s"),
        (
            "--conntrack-tcp-timeout-close-wait",
            "soon",
            "expected e.g.",
        ),
        ("--conntrack-gc-interval", "0", "greater than 0"),
        ("--masquerade-ports", "61000", "expected MIN-MAX"),
        ("--masquerade-ports", "65000-61000", "expected MIN-MAX"),
        ("--masquerade-ports", "0-100", "expected MIN-MAX"),
        ("--masquerade-ports", "61000-70000", "expected MIN-MAX"),
        ("--xdp", "fast", "native"),
        ("--nodeport-addresses", "10.0.0.0/33", "is not a CIDR"),
        (
            "--nodeport-addresses",
            "primary,10.0.0.0/8",
            "is not a CIDR",
        ),
        ("--devices", "eth[", "is not a glob pattern"),
    ] {
        let (ok, stderr) = run_with(&[flag, bad]);
        assert!(!ok, "{flag} {bad} accepted");
        assert!(
            stderr.contains(flag) && stderr.contains(expected),
            "{flag} {bad}: {stderr}"
        );
    }
}

#[test]
fn bpf_list_on_a_missing_root_fails_clearly() {
    let (ok, stderr) = twinstack(&[
        "bpf",
        "service",
        "list",
        "--bpf-root",
        "/nonexistent/twinstack",
    ]);
    assert!(!ok);
    assert!(stderr.contains("lb4_services"), "{stderr}");
}

/// An agent error prints as its cause chain, `error: …`, never as a backtrace, even with
/// `RUST_BACKTRACE` set (here: the pin root is on no BPF filesystem, and its parent is not an
/// empty directory to mount one on).
#[test]
fn an_agent_error_is_a_cause_chain_not_a_backtrace() {
    let output = Command::new(env!("CARGO_BIN_EXE_twinstack"))
        .args(SAFE_RUN)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("running twinstack");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("error: ") && stderr.contains("BPF filesystem"),
        "{stderr}"
    );
    assert!(
        !stderr.to_lowercase().contains("backtrace") && !stderr.contains("Caused by"),
        "{stderr}"
    );
}
