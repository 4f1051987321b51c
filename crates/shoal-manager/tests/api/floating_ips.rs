//! `/shoal/v1/floating-ips` (issue 20, the configuration part): add, list with the eligible
//! nodes, remove; refusals name the field and store nothing.

use crate::harness::*;
use serde_json::json;

#[tokio::test]
async fn addresses_are_added_listed_with_their_eligible_nodes_and_removed() {
    let n = Node::manager().await;
    let a = n
        .post(
            "/shoal/v1/floating-ips",
            json!({"Address": "198.51.100.250/24", "Constraints": ["node.role==manager"]}),
        )
        .await;
    assert_eq!(a.ok(201)["Address"], "198.51.100.250/24");
    n.post(
        "/shoal/v1/floating-ips",
        json!({"Address": "FD00:250::0250/64", "Interface": "eth1",
            "Constraints": ["node.labels.edge==true"]}),
    )
    .await
    .ok(201);
    // The same address in another spelling is a duplicate.
    n.post(
        "/shoal/v1/floating-ips",
        json!({"Address": "fd00:250::250/64"}),
    )
    .await
    .refused(409, &["fd00:250::250/64", "already exists"]);

    let list = n.read("/shoal/v1/floating-ips").await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["Address"], "198.51.100.250/24");
    assert_eq!(list[0]["Eligible"], json!([HOSTNAME]));
    assert!(list[0]["Holder"].is_null());
    // No node has the label: accepted, and shown as such.
    assert_eq!(list[1]["Address"], "fd00:250::250/64");
    assert_eq!(list[1]["Interface"], "eth1");
    assert_eq!(list[1]["Eligible"], json!([]));
    assert_eq!(list[1]["Lease"], "no eligible node");

    // Without its prefix, an address names the one stored with that IP.
    let gone = n.delete("/shoal/v1/floating-ips/198.51.100.250").await;
    assert_eq!(gone.ok(200)["Address"], "198.51.100.250/24");
    n.delete("/shoal/v1/floating-ips/198.51.100.250%2F24")
        .await
        .refused(404, &["no floating address 198.51.100.250/24"]);
    assert_eq!(
        n.read("/shoal/v1/floating-ips")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn bad_addresses_are_refused_naming_the_field_and_store_nothing() {
    let n = Node::manager().await;
    for (body, words) in [
        (
            json!({"Address": "198.51.100.250"}),
            vec!["Address", "ADDR/PREFIX"],
        ),
        (
            json!({"Address": "10.0.0.0/24"}),
            vec!["Address", "network address"],
        ),
        (
            json!({"Address": "127.0.0.9/8"}),
            vec!["Address", "loopback"],
        ),
        (
            json!({"Address": "fe80::9/64"}),
            vec!["Address", "link-local"],
        ),
        (
            json!({"Address": "10.0.0.9/24", "Interface": "eth0/1"}),
            vec!["Interface"],
        ),
        (
            json!({"Address": "10.0.0.9/24", "Constraints": ["node.colour==red"]}),
            vec!["Constraints", "unknown key"],
        ),
        (json!({"Address": 5}), vec!["Address"]),
    ] {
        n.post("/shoal/v1/floating-ips", body.clone())
            .await
            .refused(400, &words);
    }
    assert_eq!(n.read("/shoal/v1/floating-ips").await, json!([]));
}
