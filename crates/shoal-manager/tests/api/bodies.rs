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

/// The caps as written down: a body up to `MAX_BODY_BYTES` is read (more than axum's default
/// 2 MB), one byte more is 413 in Docker's format; a secret's data is refused from swarmkit's
/// 500 KiB on (`>=`, as swarmkit counts), with its message, and a config's from 1000 KiB.
#[tokio::test]
async fn caps_are_where_they_are_written_down() {
    let n = Node::manager().await;
    let cap = shoal_manager::api::MAX_BODY_BYTES;
    // A service spec padded by a label to exactly the cap.
    let body = |size: usize| {
        let head = r#"{"Name": "big", "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}}, "Labels": {"pad": ""#;
        let tail = r#""}}"#;
        format!("{head}{}{tail}", "x".repeat(size - head.len() - tail.len()))
    };
    let a = n.post_raw("/services/create", body(cap + 1)).await;
    a.refused(413, &["body"]);
    assert_eq!(n.read("/services").await.as_array().unwrap().len(), 0);
    n.post_raw("/services/create", body(cap)).await.ok(201);

    let max = shoal_api::validate::MAX_SECRET_SIZE;
    let secret =
        |name: &str, len: usize| serde_json::json!({"Name": name, "Data": b64(&"s".repeat(len))});
    n.post("/secrets/create", secret("at-cap", max))
        .await
        .refused(
            400,
            &["secret data must be larger than 0 and less than 512000 bytes"],
        );
    n.post("/secrets/create", secret("under-cap", max - 1))
        .await
        .ok(201);
    let max = shoal_api::validate::MAX_CONFIG_SIZE;
    let config = serde_json::json!({"Name": "c", "Data": b64(&"c".repeat(max))});
    n.post("/configs/create", config).await.refused(
        400,
        &["config data must be larger than 0 and less than 1024000 bytes"],
    );
    let names: Vec<String> = n
        .read("/secrets")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Spec"]["Name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["under-cap"]);
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
