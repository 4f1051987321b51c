//! What every endpoint that takes a body does with one too large to read: Docker's error
//! format, and nothing written.

use crate::harness::*;

#[tokio::test]
async fn oversize_bodies_are_refused_in_dockers_format() {
    let n = Node::manager().await;
    let id = n.service(spec("web")).await;
    let node = n.read("/info").await["Swarm"]["NodeID"]
        .as_str()
        .unwrap()
        .to_string();
    let secret = n
        .post(
            "/secrets/create",
            serde_json::json!({"Name": "pw", "Data": b64("x")}),
        )
        .await
        .ok(201)["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let before = (
        n.read("/services").await,
        n.read("/secrets").await,
        n.read("/nodes").await,
        n.read("/swarm").await,
    );
    // A JSON string of 20 MiB: larger than any limit, still well-formed.
    let huge = format!(
        "{{\"Name\": \"big\", \"Data\": \"{}\"}}",
        "A".repeat(20 << 20)
    );
    for uri in [
        "/services/create".to_string(),
        format!("/services/{id}/update?version=1"),
        "/secrets/create".into(),
        format!("/secrets/{secret}/update?version=1"),
        "/configs/create".into(),
        format!("/nodes/{node}/update?version=1"),
        "/swarm/update?version=1".into(),
        "/swarm/init".into(),
        "/networks/create".into(),
    ] {
        let a = n.post_raw(&uri, huge.clone()).await;
        assert!(
            a.status == 413,
            "{uri}: {} {}",
            a.status,
            &a.text[..a.text.len().min(200)]
        );
        a.refused(a.status.as_u16(), &["body"]);
    }
    let after = (
        n.read("/services").await,
        n.read("/secrets").await,
        n.read("/nodes").await,
        n.read("/swarm").await,
    );
    assert_eq!(after, before);
}

#[tokio::test]
async fn paths_and_queries_that_do_not_decode_are_refused_in_dockers_format() {
    let n = Node::manager().await;
    n.service(spec("web")).await;
    for uri in [
        "/services/%FF",
        "/nodes/%C3%28",
        "/services?filters=%FF",
        "/tasks?filters=%FF%FE",
        "/services/web/update?version=%FF",
    ] {
        let a = if uri.contains("/update") {
            n.post(uri, spec("web")).await
        } else {
            n.get(uri).await
        };
        assert_eq!(a.status.as_u16(), 400, "{uri}: {}", a.text);
        a.refused(400, &[]);
        assert!(!a.message().is_empty());
    }
    assert_eq!(n.read("/services").await.as_array().unwrap().len(), 1);
}
