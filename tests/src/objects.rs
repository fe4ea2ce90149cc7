//! One builder for the Kubernetes objects tests and benchmarks need: Services (every frontend
//! kind and policy the proxy serves) and EndpointSlices (conditions, nodes, zones, hints), as
//! `kubectl get -o json` prints them. `.json()` feeds the test API server, `.yaml()` a manifest
//! directory.
use std::net::IpAddr;

use serde_json::{Map, Value, json};

fn family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

#[derive(Clone, Debug)]
pub struct ServiceBuilder {
    metadata: Map<String, Value>,
    spec: Map<String, Value>,
    ingress: Vec<Value>,
}

impl ServiceBuilder {
    /// A `ClusterIP` Service `default/<name>` with no port yet.
    pub fn new(name: &str) -> Self {
        let mut metadata = Map::new();
        metadata.insert("name".into(), json!(name));
        metadata.insert("namespace".into(), json!("default"));
        let mut spec = Map::new();
        spec.insert("type".into(), json!("ClusterIP"));
        spec.insert("ports".into(), json!([]));
        Self {
            metadata,
            spec,
            ingress: Vec::new(),
        }
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.metadata.insert("namespace".into(), json!(namespace));
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        let labels = self
            .metadata
            .entry("labels")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("labels object");
        labels.insert(key.into(), json!(value));
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        let annotations = self
            .metadata
            .entry("annotations")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("annotations object");
        annotations.insert(key.into(), json!(value));
        self
    }

    /// One cluster IP per family, in this order; dual stack (`RequireDualStack`) with two.
    pub fn cluster_ips(mut self, ips: &[IpAddr]) -> Self {
        let families: Vec<&str> = ips.iter().map(family).collect();
        let policy = if ips.len() > 1 {
            "RequireDualStack"
        } else {
            "SingleStack"
        };
        let texts: Vec<String> = ips.iter().map(ToString::to_string).collect();
        self.spec.insert("clusterIP".into(), json!(texts[0]));
        self.spec.insert("clusterIPs".into(), json!(texts));
        self.spec.insert("ipFamilies".into(), json!(families));
        self.spec.insert("ipFamilyPolicy".into(), json!(policy));
        self
    }

    /// `spec.type`: ClusterIP, NodePort, LoadBalancer.
    pub fn type_(mut self, type_: &str) -> Self {
        self.spec.insert("type".into(), json!(type_));
        self
    }

    /// A port; `target` is a number or a port name.
    pub fn port(mut self, name: &str, protocol: &str, port: u16, target: impl Into<Value>) -> Self {
        self.ports().push(json!({
            "name": name, "protocol": protocol, "port": port, "targetPort": target.into()
        }));
        self
    }

    /// The `nodePort` of the port called `name` (a NodePort or LoadBalancer Service).
    pub fn node_port(mut self, name: &str, node_port: u16) -> Self {
        let port = self
            .ports()
            .iter_mut()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no port {name:?} to give a nodePort"));
        port["nodePort"] = json!(node_port);
        self
    }

    fn ports(&mut self) -> &mut Vec<Value> {
        self.spec
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .expect("ports array")
    }

    pub fn external_ips(mut self, ips: &[&str]) -> Self {
        self.spec.insert("externalIPs".into(), json!(ips));
        self
    }

    /// A `status.loadBalancer.ingress[]` entry; `ip_mode` `Some("Proxy")` or `Some("VIP")`.
    pub fn load_balancer_ip(mut self, ip: &str, ip_mode: Option<&str>) -> Self {
        let mut ingress = json!({ "ip": ip });
        if let Some(mode) = ip_mode {
            ingress["ipMode"] = json!(mode);
        }
        self.ingress.push(ingress);
        self
    }

    pub fn source_ranges(mut self, ranges: &[&str]) -> Self {
        self.spec
            .insert("loadBalancerSourceRanges".into(), json!(ranges));
        self
    }

    pub fn external_traffic_policy(mut self, policy: &str) -> Self {
        self.spec
            .insert("externalTrafficPolicy".into(), json!(policy));
        self
    }

    pub fn internal_traffic_policy(mut self, policy: &str) -> Self {
        self.spec
            .insert("internalTrafficPolicy".into(), json!(policy));
        self
    }

    pub fn health_check_node_port(mut self, port: u16) -> Self {
        self.spec.insert("healthCheckNodePort".into(), json!(port));
        self
    }

    /// `sessionAffinity: ClientIP`, with a timeout (`None`: the API default).
    pub fn session_affinity(mut self, timeout_seconds: Option<u32>) -> Self {
        self.spec
            .insert("sessionAffinity".into(), json!("ClientIP"));
        if let Some(timeout) = timeout_seconds {
            self.spec.insert(
                "sessionAffinityConfig".into(),
                json!({"clientIP": {"timeoutSeconds": timeout}}),
            );
        }
        self
    }

    /// Any other `spec` field, as JSON.
    pub fn spec(mut self, field: &str, value: Value) -> Self {
        self.spec.insert(field.into(), value);
        self
    }

    pub fn json(&self) -> Value {
        let mut service = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self.metadata,
            "spec": self.spec,
        });
        if !self.ingress.is_empty() {
            service["status"] = json!({"loadBalancer": {"ingress": self.ingress}});
        }
        service
    }

    pub fn yaml(&self) -> String {
        serde_yaml::to_string(&self.json()).expect("a JSON value renders as YAML")
    }
}

/// One endpoint of an EndpointSlice.
#[derive(Clone, Debug)]
pub struct EndpointBuilder {
    value: Value,
}

impl EndpointBuilder {
    /// Ready, serving, not terminating, on node `node-a` (the lab's node).
    pub fn ready(address: IpAddr) -> Self {
        Self {
            value: json!({
                "addresses": [address.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": "node-a",
            }),
        }
    }

    /// Terminating but still serving (a pod in a rolling update).
    pub fn terminating(address: IpAddr) -> Self {
        let mut endpoint = Self::ready(address);
        endpoint.value["conditions"] =
            json!({"ready": false, "serving": true, "terminating": true});
        endpoint
    }

    /// Neither ready nor serving.
    pub fn not_ready(address: IpAddr) -> Self {
        let mut endpoint = Self::ready(address);
        endpoint.value["conditions"] =
            json!({"ready": false, "serving": false, "terminating": false});
        endpoint
    }

    pub fn node(mut self, node: &str) -> Self {
        self.value["nodeName"] = json!(node);
        self
    }

    pub fn zone(mut self, zone: &str) -> Self {
        self.value["zone"] = json!(zone);
        self
    }

    pub fn zone_hints(mut self, zones: &[&str]) -> Self {
        let zones: Vec<Value> = zones.iter().map(|z| json!({"name": z})).collect();
        self.hints()["forZones"] = json!(zones);
        self
    }

    pub fn node_hints(mut self, nodes: &[&str]) -> Self {
        let nodes: Vec<Value> = nodes.iter().map(|n| json!({"name": n})).collect();
        self.hints()["forNodes"] = json!(nodes);
        self
    }

    fn hints(&mut self) -> &mut Value {
        let endpoint = self.value.as_object_mut().expect("endpoint object");
        endpoint.entry("hints").or_insert_with(|| json!({}))
    }
}

#[derive(Clone, Debug)]
pub struct SliceBuilder {
    service: String,
    name: String,
    namespace: String,
    address_type: Option<&'static str>,
    ports: Vec<Value>,
    endpoints: Vec<Value>,
}

impl SliceBuilder {
    /// An EndpointSlice `default/<name>` of Service `service`, with no port or endpoint yet.
    pub fn new(service: &str, name: &str) -> Self {
        Self {
            service: service.into(),
            name: name.into(),
            namespace: "default".into(),
            address_type: None,
            ports: Vec::new(),
            endpoints: Vec::new(),
        }
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// `IPv4` or `IPv6`; otherwise the first endpoint's family (IPv4 when there is none).
    pub fn address_type(mut self, address_type: &'static str) -> Self {
        self.address_type = Some(address_type);
        self
    }

    pub fn port(mut self, name: &str, protocol: &str, port: u16) -> Self {
        self.ports
            .push(json!({"name": name, "protocol": protocol, "port": port}));
        self
    }

    pub fn endpoint(mut self, endpoint: EndpointBuilder) -> Self {
        if self.address_type.is_none() {
            let first = endpoint.value["addresses"][0].as_str().unwrap_or_default();
            self.address_type = Some(if first.contains(':') { "IPv6" } else { "IPv4" });
        }
        self.endpoints.push(endpoint.value);
        self
    }

    /// Ready endpoints on `node-a`, one per address.
    pub fn ready(self, addresses: &[IpAddr]) -> Self {
        addresses.iter().fold(self, |slice, address| {
            slice.endpoint(EndpointBuilder::ready(*address))
        })
    }

    pub fn json(&self) -> Value {
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {"kubernetes.io/service-name": self.service},
            },
            "addressType": self.address_type.unwrap_or("IPv4"),
            "ports": self.ports,
            "endpoints": self.endpoints,
        })
    }

    pub fn yaml(&self) -> String {
        serde_yaml::to_string(&self.json()).expect("a JSON value renders as YAML")
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
    use proxy_userspace::model::{self, Built, TrafficPolicy};

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("IP literal")
    }

    /// Every builder method lands where the proxy reads it: the objects deserialize into the
    /// API types and the model finds each field.
    #[test]
    fn every_field_reaches_the_model() {
        let service = ServiceBuilder::new("shop")
            .namespace("web")
            .label("app", "shop")
            .annotation("example.com/owner", "team-a")
            .cluster_ips(&[ip("10.96.0.50"), ip("fd00:10:96::50")])
            .type_("LoadBalancer")
            .port("http", "TCP", 80, "web")
            .node_port("http", 30080)
            .external_ips(&["192.0.2.50"])
            .load_balancer_ip("203.0.113.50", None)
            .load_balancer_ip("203.0.113.51", Some("Proxy"))
            .source_ranges(&["198.51.100.0/24"])
            .external_traffic_policy("Local")
            .internal_traffic_policy("Local")
            .health_check_node_port(32050)
            .session_affinity(Some(30))
            .spec("publishNotReadyAddresses", json!(false));
        // The controller names a slice port after the service port; its number is the target.
        let slice = SliceBuilder::new("shop", "shop-1")
            .namespace("web")
            .port("http", "TCP", 8080)
            .endpoint(
                EndpointBuilder::ready(ip("10.244.1.50"))
                    .zone("zone-a")
                    .zone_hints(&["zone-a"])
                    .node_hints(&["node-a"]),
            )
            .endpoint(EndpointBuilder::terminating(ip("10.244.2.50")).node("node-b"))
            .endpoint(EndpointBuilder::not_ready(ip("10.244.3.50")))
            .ready(&[ip("10.244.4.50")]);
        let service: Service = serde_json::from_value(service.json()).expect("a Service");
        let slice: EndpointSlice = serde_json::from_value(slice.json()).expect("a slice");
        assert_eq!(slice.address_type, "IPv4");
        let Ok(Built::Ports { ports, warnings }) = model::service_ports(&service, &[&slice]) else {
            panic!("the Service builds");
        };
        assert!(warnings.is_empty(), "{warnings:?}");
        let v4 = &ports[0];
        assert_eq!(v4.name.service.to_string(), "web/shop");
        assert_eq!(v4.cluster_ip, ip("10.96.0.50"));
        assert_eq!(v4.node_port, Some(30080));
        assert_eq!(v4.external_ips, [ip("192.0.2.50")]);
        assert_eq!(v4.load_balancer_ips, [ip("203.0.113.50")]);
        assert_eq!(v4.source_ranges, ["198.51.100.0/24".parse().unwrap()]);
        assert_eq!(v4.external_policy, TrafficPolicy::Local);
        assert_eq!(v4.internal_policy, TrafficPolicy::Local);
        assert_eq!(v4.health_check_node_port, Some(32050));
        assert_eq!(v4.affinity_timeout, Some(30));
        assert_eq!(ports[1].cluster_ip, ip("fd00:10:96::50"));
        let endpoints = &v4.endpoints;
        assert_eq!(endpoints.len(), 4);
        assert_eq!(endpoints[0].zone.as_deref(), Some("zone-a"));
        assert_eq!(endpoints[0].zone_hints().len(), 1);
        assert_eq!(endpoints[0].node_hints().len(), 1);
        assert_eq!(endpoints[0].port, 8080, "the named target port resolves");
        assert!(endpoints[1].conditions.terminating && endpoints[1].conditions.serving);
        assert_eq!(endpoints[1].node_name.as_deref(), Some("node-b"));
        assert!(!endpoints[2].conditions.ready && !endpoints[2].conditions.serving);
        assert!(endpoints[3].conditions.ready);
        // The YAML form is the same object.
        let yaml: serde_json::Value =
            serde_yaml::from_str(&ServiceBuilder::new("x").yaml()).expect("YAML");
        assert_eq!(yaml, ServiceBuilder::new("x").json());
    }
}
