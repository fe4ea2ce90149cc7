//! kube-proxy's metrics and health, as an operator's dashboards and probes read them: the real
//! `twinstack run` on manifests in a network namespace, `/metrics` parsed strictly as the
//! Prometheus (OpenMetrics) text format, `/healthz` and `/livez` on both families. (That a
//! change left unprogrammed past the health timeout turns both probes to 503 is the state
//! machine's unit test, `proxy-userspace` `health::tests`, on a fake clock.)
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use twinstack_lab::{
    lab::{DUAL_STACK, ExampleLab},
    objects::{EndpointBuilder, ServiceBuilder, SliceBuilder},
};

/// One metric family of a scrape: its type and its samples (name, labels, value).
#[derive(Debug)]
struct Family {
    type_: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

/// Parses the text exposition format strictly: every sample belongs to the family a `# TYPE`
/// line declared before it, with that type's suffixes (`_total` for a counter; `_bucket` with
/// `le`, `_sum`, `_count` for a histogram); labels are `name="value"` with `\\`, `\"` and `\n`
/// escapes; values are floats (or `+Inf`, `-Inf`, `NaN`). Panics naming the line otherwise.
fn parse(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (number, line) in text.lines().enumerate() {
        let fail = |why: &str| -> ! { panic!("line {}: {why}: {line:?}", number + 1) };
        if line == "# EOF" || line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, type_) = rest.split_once(' ').unwrap_or_else(|| fail("TYPE"));
            let known = [
                "counter",
                "gauge",
                "histogram",
                "summary",
                "info",
                "stateset",
            ];
            if !known.contains(&type_) || families.contains_key(name) {
                fail("unknown type or family declared twice");
            }
            families.insert(
                name.to_owned(),
                Family {
                    type_: type_.to_owned(),
                    samples: Vec::new(),
                },
            );
            current = Some(name.to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            fail("unexpected comment or blank line");
        }
        let (name, labels, rest) = match line.find(['{', ' ']) {
            Some(i) if line.as_bytes()[i] == b'{' => {
                let (labels, rest) = parse_labels(&line[i + 1..]).unwrap_or_else(|| fail("labels"));
                (&line[..i], labels, rest)
            }
            Some(i) => (&line[..i], BTreeMap::new(), &line[i..]),
            None => fail("no value"),
        };
        let mut fields = rest.split_whitespace();
        let value: f64 = match fields.next() {
            Some("+Inf") => f64::INFINITY,
            Some("-Inf") => f64::NEG_INFINITY,
            Some(v) => v.parse().unwrap_or_else(|_| fail("value")),
            None => fail("no value"),
        };
        if fields.next().is_some_and(|t| t.parse::<f64>().is_err()) || fields.next().is_some() {
            fail("trailing fields");
        }
        let family_name = current
            .clone()
            .unwrap_or_else(|| fail("sample before any TYPE"));
        let family = families.get_mut(&family_name).expect("declared");
        let suffix = name
            .strip_prefix(family_name.as_str())
            .unwrap_or_else(|| fail("sample outside its family"));
        let allowed: &[&str] = match family.type_.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "gauge" | "stateset" => &[""],
            _ => &["", "_sum", "_count", "_info", "_created"],
        };
        if !allowed.contains(&suffix) || (suffix == "_bucket") != labels.contains_key("le") {
            fail("sample name or labels wrong for the family's type");
        }
        family.samples.push((name.to_owned(), labels, value));
    }
    families
}

/// `a="x",b="y"} rest` → the labels and what follows the `}`.
fn parse_labels(text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (name, after) = rest.split_once("=\"")?;
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '_';
        if name.is_empty() || !name.chars().all(valid) {
            return None;
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    _ => return None,
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.to_owned(), value);
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn scrape(lab: &ExampleLab) -> BTreeMap<String, Family> {
    parse(&lab.agent.metrics())
}

/// The one value of sample `name` (no labels) in a scrape.
fn value(families: &BTreeMap<String, Family>, name: &str) -> f64 {
    let found: Vec<f64> = families
        .values()
        .flat_map(|f| &f.samples)
        .filter(|(n, labels, _)| n == name && labels.is_empty())
        .map(|(_, _, v)| *v)
        .collect();
    match found[..] {
        [v] => v,
        _ => panic!("{name}: {} samples", found.len()),
    }
}

/// The `le` bounds of a histogram's buckets.
fn buckets(families: &BTreeMap<String, Family>, family: &str) -> Vec<f64> {
    families[family]
        .samples
        .iter()
        .filter_map(|(_, labels, _)| labels.get("le"))
        .map(|le| match le.as_str() {
            "+Inf" => f64::INFINITY,
            le => le.parse().unwrap_or_else(|_| panic!("{family}: le={le:?}")),
        })
        .collect()
}

const SYNC_HISTOGRAMS: [&str; 3] = [
    "kubeproxy_sync_proxy_rules_duration_seconds",
    "kubeproxy_sync_full_proxy_rules_duration_seconds",
    "kubeproxy_sync_partial_proxy_rules_duration_seconds",
];
const PROGRAMMING: &str = "kubeproxy_network_programming_duration_seconds";

/// A Service `timed` with one IPv4 endpoint in slice `timed-v4`, the slice annotated with
/// `trigger` as its last change trigger time when given.
fn timed(lab: &ExampleLab, trigger: Option<String>, backend: usize) {
    let service = ServiceBuilder::new("timed")
        .cluster_ips(&["10.96.0.77".parse().unwrap()])
        .port("http", "TCP", 80, 8080);
    let address = lab.topology.backends[backend].address(false);
    let mut slice = SliceBuilder::new("timed", "timed-v4")
        .port("http", "TCP", 8080)
        .endpoint(EndpointBuilder::ready(address))
        .json();
    if let Some(trigger) = trigger {
        slice["metadata"]["annotations"] =
            serde_json::json!({"endpoints.kubernetes.io/last-change-trigger-time": trigger});
    }
    let yaml = format!(
        "{}---\n{}",
        service.yaml(),
        serde_yaml::to_string(&slice).unwrap()
    );
    // Written whole, then renamed: the agent never reads half a file.
    let path = lab.manifests.path().join("timed.yaml");
    std::fs::write(path.with_extension("tmp"), yaml).unwrap();
    std::fs::rename(path.with_extension("tmp"), path).unwrap();
}

/// Every kube-proxy series is there under its own name and type (histograms with kube-proxy's
/// buckets); a slice written with a `last-change-trigger-time` is observed in the network
/// programming latency once it is in the maps, one without it is not.
#[test]
fn kube_proxy_series_have_their_names_types_and_buckets() {
    let lab = ExampleLab::start(DUAL_STACK, &["--min-sync-period", "100ms"]);
    let families = scrape(&lab);
    let expect = [
        (SYNC_HISTOGRAMS[0], "histogram"),
        (SYNC_HISTOGRAMS[1], "histogram"),
        (SYNC_HISTOGRAMS[2], "histogram"),
        (PROGRAMMING, "histogram"),
        ("kubeproxy_sync_proxy_rules_last_timestamp_seconds", "gauge"),
        (
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "gauge",
        ),
        ("kubeproxy_sync_proxy_rules_endpoint_changes", "counter"),
        (
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "gauge",
        ),
        ("kubeproxy_sync_proxy_rules_service_changes", "counter"),
        (
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "gauge",
        ),
        // Ours stay.
        ("twinstack_syncs", "counter"),
        ("twinstack_datapath_packets", "counter"),
    ];
    for (name, type_) in expect {
        let family = families
            .get(name)
            .unwrap_or_else(|| panic!("no {name}:\n{}", lab.agent.metrics()));
        assert_eq!(family.type_, type_, "{name}");
    }
    // kube-proxy's exposed names, `_total` included.
    for name in [
        "kubeproxy_sync_proxy_rules_endpoint_changes_total",
        "kubeproxy_sync_proxy_rules_service_changes_total",
    ] {
        assert!(
            value(&families, name) >= 1.0,
            "{name}: the example's objects"
        );
    }

    // Buckets: 1 ms doubling 15 times; 0, 0.25 s, 0.5 s, 1-59 s, 60-115 s by 5, 120-300 s by 30.
    let mut sync: Vec<f64> = (0..15).map(|i| 0.001 * 2f64.powi(i)).collect();
    sync.push(f64::INFINITY);
    for name in SYNC_HISTOGRAMS {
        assert_eq!(buckets(&families, name), sync, "{name}");
    }
    let mut programming = vec![0.0, 0.25, 0.5];
    programming.extend((1..60).map(f64::from));
    programming.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    programming.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    programming.push(f64::INFINITY);
    assert_eq!(buckets(&families, PROGRAMMING), programming);

    // The first sync is a full one, and it succeeded.
    let count =
        |families: &BTreeMap<String, Family>, name: &str| value(families, &format!("{name}_count"));
    assert!(count(&families, SYNC_HISTOGRAMS[1]) >= 1.0);
    let synced_at = value(
        &families,
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 120.0..=now + 1.0).contains(&synced_at),
        "{synced_at} vs {now}"
    );

    // A slice without the annotation: programmed (a partial sync), not measured.
    let before = scrape(&lab);
    timed(&lab, None, 0);
    lab.until(Duration::from_secs(10), |lab| {
        let now = scrape(lab);
        value(&now, "kubeproxy_sync_proxy_rules_endpoint_changes_total")
            > value(&before, "kubeproxy_sync_proxy_rules_endpoint_changes_total")
            && count(&now, SYNC_HISTOGRAMS[2]) > count(&before, SYNC_HISTOGRAMS[2])
            && value(&now, "kubeproxy_sync_proxy_rules_endpoint_changes_pending") == 0.0
    });
    let after = scrape(&lab);
    assert_eq!(count(&after, PROGRAMMING), count(&before, PROGRAMMING));
    assert!(
        value(
            &after,
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds"
        ) > value(
            &before,
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds"
        )
    );

    // The same slice changed (another backend), its trigger time now: measured once programmed.
    let before = after;
    let trigger = k8s_openapi::jiff::Timestamp::now().to_string();
    let written = Instant::now();
    timed(&lab, Some(trigger), 1);
    lab.until(Duration::from_secs(10), |lab| {
        count(&scrape(lab), PROGRAMMING) > count(&before, PROGRAMMING)
    });
    let after = scrape(&lab);
    assert_eq!(
        count(&after, PROGRAMMING),
        count(&before, PROGRAMMING) + 1.0
    );
    let latency = value(&after, &format!("{PROGRAMMING}_sum"))
        - value(&before, &format!("{PROGRAMMING}_sum"));
    assert!(
        latency > 0.0 && latency <= written.elapsed().as_secs_f64() + 1.0,
        "latency {latency}"
    );
    let programmed = lab.agent.services().to_string();
    assert!(programmed.contains("10.96.0.77"), "{programmed}");
}

/// The body of `GET path` on `address:10256`, checked as kube-proxy's: status, JSON with
/// RFC 3339 `lastUpdated` and `currentTime`.
fn probe(lab: &ExampleLab, address: &str, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = lab
        .agent
        .http_get(address.parse().unwrap(), 10256, path)
        .unwrap_or_else(|| panic!("nothing answered {path} on {address}"));
    let body: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} on {address}: {e}: {body}"));
    for field in ["lastUpdated", "currentTime"] {
        let text = body[field].as_str().unwrap_or_default();
        text.parse::<k8s_openapi::jiff::Timestamp>()
            .unwrap_or_else(|e| panic!("{path} {field} {text:?}: {e}"));
    }
    (status, body)
}

/// `/healthz` and `/livez` on `0.0.0.0:10256` answer on both families with kube-proxy's JSON;
/// a Node marked for deletion by the cluster autoscaler fails `/healthz` (take no new traffic)
/// but not `/livez` (do not restart the proxy), and passes again once unmarked.
#[test]
fn healthz_and_livez_answer_on_both_families_and_a_node_being_deleted_fails_healthz_only() {
    let lab = ExampleLab::start(DUAL_STACK, &["--healthz-bind-address", "0.0.0.0:10256"]);
    let addresses = ["127.0.0.1", "::1", "10.244.1.1", "fd00:10:244:1::1"];
    let answers = |lab: &ExampleLab| {
        addresses.map(|address| {
            let (healthz, healthz_body) = probe(lab, address, "/healthz");
            let (livez, livez_body) = probe(lab, address, "/livez");
            assert_eq!(healthz_body["healthy"], healthz == 200, "{healthz_body}");
            assert_eq!(livez_body["healthy"], livez == 200, "{livez_body}");
            assert!(livez_body.get("nodeEligible").is_none(), "{livez_body}");
            (healthz, healthz_body["nodeEligible"].clone(), livez)
        })
    };
    let eligible = (200, serde_json::json!(true), 200);
    assert_eq!(
        answers(&lab),
        [
            eligible.clone(),
            eligible.clone(),
            eligible.clone(),
            eligible.clone()
        ]
    );

    let node = |taints: &str| {
        let path = lab.manifests.path().join("node.yaml");
        let text = format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: node-a}}\nspec:\n  taints: {taints}\n"
        );
        std::fs::write(path.with_extension("tmp"), text).unwrap();
        std::fs::rename(path.with_extension("tmp"), path).unwrap();
    };
    node("[{key: ToBeDeletedByClusterAutoscaler, value: '1700000000', effect: NoSchedule}]");
    let draining = (503, serde_json::json!(false), 200);
    lab.until(Duration::from_secs(10), |lab| {
        answers(lab)
            == [
                draining.clone(),
                draining.clone(),
                draining.clone(),
                draining.clone(),
            ]
    });
    node("[]");
    lab.until(Duration::from_secs(10), |lab| {
        answers(lab)
            == [
                eligible.clone(),
                eligible.clone(),
                eligible.clone(),
                eligible.clone(),
            ]
    });
}
