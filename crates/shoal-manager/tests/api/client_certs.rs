//! shoal's client-certificate endpoints (`/shoal/v1/client-certs`, what `shoal client-cert`
//! calls): issue from a CSR, refusals in Docker's format with nothing written, list, revoke.

use crate::harness::*;
use serde_json::json;

fn csr() -> String {
    shoal_pki::ClientKey::generate()
        .unwrap()
        .csr_pem()
        .to_string()
}

#[tokio::test]
async fn issue_list_and_revoke_by_name() {
    let n = Node::manager().await;
    let a = n
        .post(
            "/shoal/v1/client-certs",
            json!({"name": "ci-runner", "csr": csr(), "days": 30}),
        )
        .await;
    let issued = a.ok(201).clone();
    let who = shoal_pki::api_client_of_pem(issued["Certificate"].as_str().unwrap()).unwrap();
    assert_eq!(who.name, "ci-runner");
    assert_eq!(issued["Serial"], json!(who.serial));
    assert_eq!(issued["Fingerprint"], json!(who.fingerprint));
    assert_eq!(issued["RevokedAt"], json!(null));
    // The CA a client trusts is the swarm's.
    let swarm = n.read("/swarm").await;
    assert_eq!(issued["CA"], swarm["TLSInfo"]["TrustRoot"]);
    let days = |v: &serde_json::Value| {
        let t = chrono::DateTime::parse_from_rfc3339(v["NotAfter"].as_str().unwrap()).unwrap();
        (t.to_utc() - chrono::Utc::now()).num_hours()
    };
    assert!((29 * 24..=30 * 24).contains(&days(&issued)), "{issued}");

    // One live certificate per name.
    n.post(
        "/shoal/v1/client-certs",
        json!({"Name": "ci-runner", "CSR": csr()}),
    )
    .await
    .refused(
        409,
        &["ci-runner already exists", "shoal client-cert rm ci-runner"],
    );

    let list = n.read("/shoal/v1/client-certs").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["Name"], json!("ci-runner"));
    assert!(list[0].get("Certificate").is_none());

    let r = n.delete("/shoal/v1/client-certs/ci-runner").await;
    assert!(r.ok(200)["RevokedAt"].is_string());
    n.delete("/shoal/v1/client-certs/ci-runner")
        .await
        .refused(404, &["ci-runner is already revoked"]);
    n.delete("/shoal/v1/client-certs/nobody")
        .await
        .refused(404, &["client certificate nobody not found"]);

    // The name is free again; the revoked record stays listed.
    let again = n
        .post(
            "/shoal/v1/client-certs",
            json!({"Name": "ci-runner", "CSR": csr()}),
        )
        .await;
    assert_ne!(again.ok(201)["Serial"], issued["Serial"]);
    let list = n.read("/shoal/v1/client-certs").await;
    let revoked: Vec<bool> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["RevokedAt"].is_string())
        .collect();
    assert_eq!(revoked, [true, false]);
}

#[tokio::test]
async fn bad_requests_are_refused_and_issue_nothing() {
    let n = Node::manager().await;
    let cases = [
        (json!({"CSR": csr()}), "Name"),
        (json!({"Name": "a b", "CSR": csr()}), "Name"),
        (json!({"Name": "x".repeat(65), "CSR": csr()}), "Name"),
        (json!({"Name": "ok"}), "CSR"),
        (json!({"Name": "ok", "CSR": "not a csr"}), "CSR"),
        (json!({"Name": "ok", "CSR": csr(), "Days": 0}), "Days"),
        (json!({"Name": "ok", "CSR": csr(), "Days": 4000}), "Days"),
        (json!({"Name": "ok", "CSR": csr(), "Days": "ten"}), "Days"),
        (json!({"Name": 7, "CSR": csr()}), "Name"),
    ];
    for (body, field) in cases {
        n.post("/shoal/v1/client-certs", body.clone())
            .await
            .refused(400, &[field]);
    }
    n.post_raw("/shoal/v1/client-certs", "")
        .await
        .refused(400, &["body is empty"]);
    assert_eq!(n.read("/shoal/v1/client-certs").await, json!([]));
}

#[tokio::test]
async fn outside_a_swarm_there_is_no_ca_to_ask() {
    let n = Node::new().await;
    n.get("/shoal/v1/client-certs")
        .await
        .refused(503, &["not a swarm manager"]);
    n.post(
        "/shoal/v1/client-certs",
        json!({"Name": "ci", "CSR": csr()}),
    )
    .await
    .refused(503, &["not a swarm manager"]);
    n.delete("/shoal/v1/client-certs/ci")
        .await
        .refused(503, &["not a swarm manager"]);
}
