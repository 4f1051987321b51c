//! `/_ping`, `/version`, `/info` and the `/vX.Y` prefix: what the CLI reads before anything else.

use crate::harness::*;
use axum::body::Body;
use http::Method;

#[tokio::test]
async fn ping_says_which_swarm_state_the_node_is_in() {
    let n = Node::new().await;
    let a = n.get("/_ping").await;
    a.ok(200);
    assert_eq!(a.text, "OK");
    let h = |a: &Answer, k: &str| a.headers.get(k).unwrap().to_str().unwrap().to_string();
    assert_eq!(h(&a, "api-version"), "1.50");
    assert_eq!(h(&a, "ostype"), "linux");
    assert_eq!(h(&a, "swarm"), "inactive");
    let head = n.call(Method::HEAD, "/_ping", Body::empty()).await;
    head.ok(200);
    assert_eq!(h(&head, "swarm"), "inactive");

    n.post(
        "/swarm/init",
        serde_json::json!({"AdvertiseAddr": "127.0.0.1:0"}),
    )
    .await
    .ok(200);
    assert_eq!(h(&n.get("/_ping").await, "swarm"), "active/manager");
    assert_eq!(h(&n.get("/v1.41/_ping").await, "swarm"), "active/manager");
}

#[tokio::test]
async fn version_carries_shoals_api_range_and_component() {
    let n = Node::new().await;
    let v = n.read("/version").await;
    assert_eq!(v["ApiVersion"], "1.50");
    assert_eq!(v["MinAPIVersion"], "1.24");
    assert_eq!(v["Version"], "27.5.1", "the engine's own fields stay");
    let comps = v["Components"].as_array().unwrap();
    assert!(comps.iter().any(|c| c["Name"] == "Engine"));
    let shoal = comps.iter().find(|c| c["Name"] == "shoal").expect("shoal");
    assert_eq!(shoal["Details"]["ApiVersion"], "1.50");
}

#[tokio::test]
async fn info_reports_the_swarm_as_the_cli_reads_it() {
    let n = Node::new().await;
    let before = n.read("/info").await;
    assert_eq!(before["Name"], HOSTNAME, "the engine's fields stay");
    assert_eq!(before["Swarm"]["LocalNodeState"], "inactive");
    assert_eq!(before["Swarm"]["ControlAvailable"], false);
    assert_eq!(before["Swarm"]["NodeID"], "");

    let id = n
        .post(
            "/swarm/init",
            serde_json::json!({"AdvertiseAddr": "127.0.0.1:0"}),
        )
        .await
        .ok(200)
        .as_str()
        .expect("init answers the node ID as a JSON string")
        .to_string();
    let s = &n.read("/info").await["Swarm"];
    assert_eq!(s["LocalNodeState"], "active");
    assert_eq!(s["ControlAvailable"], true);
    assert_eq!(s["NodeID"], id.as_str());
    assert_eq!(s["NodeAddr"], "127.0.0.1");
    assert_eq!(s["Nodes"], 1);
    assert_eq!(s["Managers"], 1);
    assert_eq!(s["RemoteManagers"][0]["NodeID"], id.as_str());
    let cluster = &s["Cluster"];
    assert_eq!(cluster["ID"], n.read("/swarm").await["ID"]);
    assert!(
        cluster.get("JoinTokens").is_none(),
        "/info never shows join tokens"
    );
}

#[tokio::test]
async fn version_prefixes_within_the_range_are_served() {
    let n = Node::manager().await;
    for v in ["1.24", "1.41", "1.44", "1.50"] {
        let a = n.get(&format!("/v{v}/swarm")).await;
        assert!(a.ok(200)["ID"].is_string(), "/v{v}/swarm: {}", a.text);
        n.get(&format!("/v{v}/services?filters=%7B%7D"))
            .await
            .ok(200);
    }
}

#[tokio::test]
async fn versions_outside_the_range_are_refused_with_dockers_words() {
    let n = Node::manager().await;
    n.get("/v1.99/swarm").await.refused(
        400,
        &[
            "client version 1.99 is too new",
            "Maximum supported API version is 1.50",
        ],
    );
    n.get("/v2.0/_ping")
        .await
        .refused(400, &["client version 2.0 is too new"]);
    n.get("/v1.12/nodes").await.refused(
        400,
        &[
            "client version 1.12 is too old",
            "Minimum supported API version is 1.24",
        ],
    );
    // A refused version changes nothing, whatever the endpoint.
    n.post_raw("/v1.99/services/create", spec("web").to_string())
        .await
        .refused(400, &["too new"]);
    assert_eq!(n.read("/services").await, serde_json::json!([]));
}

#[tokio::test]
async fn without_the_engine_version_and_info_still_give_shoals_part() {
    let n = Node::manager().await;
    n.stop_engine();
    let v = n.read("/version").await;
    assert_eq!(v["ApiVersion"], "1.50");
    assert!(
        v.get("message").is_none(),
        "the engine's error is not a field: {v}"
    );
    let i = n.read("/info").await;
    assert_eq!(i["Swarm"]["ControlAvailable"], true);
    assert!(
        i.get("message").is_none(),
        "the engine's error is not a field: {i}"
    );
}
