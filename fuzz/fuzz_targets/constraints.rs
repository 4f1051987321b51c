//! Placement constraints and label values, as a service and a node carry them, and Swarm
//! templates in hostnames and env: evaluated against a node whose labels come from the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_api::models::{Node, NodeDescription, NodeSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    // "constraint\nlabel key\nlabel value"
    let mut parts = s.splitn(3, '\n');
    let constraint = parts.next().unwrap_or("");
    let key = parts.next().unwrap_or("");
    let value = parts.next().unwrap_or("");
    let node = Node {
        id: Some("n1".into()),
        spec: Some(NodeSpec {
            labels: Some([(key.to_string(), value.to_string())].into()),
            ..Default::default()
        }),
        description: Some(NodeDescription {
            hostname: Some(value.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let _ = shoal_control::scheduler::constraint_met(constraint, &node);
    let ctx = shoal_api::template::Context::default();
    let _ = shoal_api::template::expand(s, &ctx);
});
