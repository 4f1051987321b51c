//! `/nodes`, `/nodes/{id}`, `/nodes/{id}/update`: the one node of an in-process swarm.

use crate::harness::*;
use serde_json::{json, Value};

async fn the_node(n: &Node) -> Value {
    let list = n.read("/nodes").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    list[0].clone()
}

#[tokio::test]
async fn list_and_inspect_show_the_manager_as_docker_does() {
    let n = Node::manager().await;
    let node = the_node(&n).await;
    let id = node["ID"].as_str().unwrap();
    assert_eq!(n.read("/info").await["Swarm"]["NodeID"], id);
    assert!(node["Version"]["Index"].as_u64().unwrap() > 0);
    assert_eq!(node["Spec"]["Role"], "manager");
    assert_eq!(node["Spec"]["Availability"], "active");
    assert_eq!(node["Status"]["State"], "ready");
    assert_eq!(node["Status"]["Addr"], "127.0.0.1");
    assert_eq!(node["Description"]["Hostname"], HOSTNAME);
    assert_eq!(node["Description"]["Platform"]["OS"], "linux");
    assert_eq!(
        node["Description"]["Resources"]["NanoCPUs"],
        2_000_000_000i64
    );
    assert_eq!(node["Description"]["Engine"]["EngineVersion"], "27.5.1");
    assert_eq!(
        node["Description"]["Engine"]["Labels"],
        json!({"zone": "test"})
    );
    assert_eq!(node["ManagerStatus"]["Leader"], true);
    assert_eq!(node["ManagerStatus"]["Reachability"], "reachable");

    // By ID, by host name, by a unique ID prefix: the same node.
    for key in [id, HOSTNAME, &id[..6]] {
        assert_eq!(n.read(&format!("/nodes/{key}")).await, node, "{key}");
    }
}

#[tokio::test]
async fn list_filters() {
    let n = Node::manager().await;
    let id = the_node(&n).await["ID"].as_str().unwrap().to_string();
    let count = |v: Value| v.as_array().unwrap().len();
    let cases = [
        (json!({"role": ["manager"]}), 1),
        (json!({"role": ["worker"]}), 0),
        (json!({"name": ["apitest"]}), 1),
        (json!({"name": ["other"]}), 0),
        (json!({"id": [&id[..5]]}), 1),
        (json!({"membership": ["accepted"]}), 1),
        (json!({"label": ["zone=test"]}), 1),
        (json!({"label": ["zone=prod"]}), 0),
        (json!({"node.label": ["zone"]}), 0),
        // The older shape of filters, {"key": {"value": true}}.
        (json!({"role": {"manager": true}}), 1),
    ];
    for (f, want) in cases {
        let uri = format!("/nodes?filters={}", enc(&f.to_string()));
        assert_eq!(count(n.read(&uri).await), want, "{f}");
    }
}

#[tokio::test]
async fn filters_that_do_not_parse_are_refused() {
    let n = Node::manager().await;
    for (raw, parts) in [
        ("{", &["invalid filter", "{"][..]),
        ("[\"role\"]", &["invalid filter", "object"][..]),
        ("{\"colour\":[\"red\"]}", &["invalid filter 'colour'"][..]),
    ] {
        n.get(&format!("/nodes?filters={}", enc(raw)))
            .await
            .refused(400, parts);
    }
}

#[tokio::test]
async fn unknown_nodes_are_404() {
    let n = Node::manager().await;
    n.get("/nodes/nosuchnode")
        .await
        .refused(404, &["node nosuchnode not found"]);
    n.post(
        "/nodes/nosuchnode/update?version=1",
        json!({"Role": "worker", "Availability": "active"}),
    )
    .await
    .refused(404, &["node nosuchnode not found"]);
    n.delete("/nodes/nosuchnode")
        .await
        .refused(404, &["node nosuchnode not found"]);
}

#[tokio::test]
async fn update_sets_labels_and_availability() {
    let n = Node::manager().await;
    let node = the_node(&n).await;
    let id = node["ID"].as_str().unwrap();
    let v = node["Version"]["Index"].as_u64().unwrap();
    let mut spec = node["Spec"].clone();
    spec["Labels"] = json!({"disk": "ssd"});
    spec["Availability"] = json!("drain");
    n.post(&format!("/nodes/{id}/update?version={v}"), spec)
        .await
        .ok(200);
    let after = the_node(&n).await;
    assert!(after["Version"]["Index"].as_u64().unwrap() > v);
    assert_eq!(after["Spec"]["Labels"], json!({"disk": "ssd"}));
    assert_eq!(after["Spec"]["Availability"], "drain");
    assert_eq!(after["Spec"]["Role"], "manager");
    let uri = format!("/nodes?filters={}", enc(r#"{"node.label":["disk=ssd"]}"#));
    assert_eq!(n.read(&uri).await.as_array().unwrap().len(), 1);

    // A lowercase-keyed spec is read as Go reads it.
    let v = after["Version"]["Index"].as_u64().unwrap();
    n.post(
        &format!("/nodes/{id}/update?version={v}"),
        json!({"role": "manager", "availability": "active", "labels": {}}),
    )
    .await
    .ok(200);
    let again = the_node(&n).await;
    assert_eq!(again["Spec"]["Availability"], "active");
    assert_eq!(again["Spec"]["Labels"], json!({}));
}

#[tokio::test]
async fn update_refusals_change_nothing() {
    let n = Node::manager().await;
    let node = the_node(&n).await;
    let id = node["ID"].as_str().unwrap();
    let v = node["Version"]["Index"].as_u64().unwrap();
    let spec = node["Spec"].to_string();
    let at = format!("/nodes/{id}/update?version={v}");
    let cases: Vec<(String, String, u16, &[&str])> = vec![
        (
            format!("/nodes/{id}/update?version={}", v + 1),
            spec.clone(),
            409,
            &["update out of sequence"],
        ),
        (
            format!("/nodes/{id}/update"),
            spec.clone(),
            400,
            &["version"],
        ),
        (
            format!("/nodes/{id}/update?version=-1"),
            spec.clone(),
            400,
            &["version"],
        ),
        (at.clone(), "{".into(), 400, &["invalid JSON"]),
        (at.clone(), "".into(), 400, &["empty"]),
        (
            at.clone(),
            r#"{"Role": "boss", "Availability": "active"}"#.into(),
            400,
            &["Role", "boss"],
        ),
        (
            at.clone(),
            r#"{"Role": "manager", "Availability": 1}"#.into(),
            400,
            &["Availability"],
        ),
        (
            at.clone(),
            r#"{"Role": "manager", "Availability": "active", "Labels": ["a"]}"#.into(),
            400,
            &["Labels", "map"],
        ),
        (
            at.clone(),
            r#"{"Role": "manager"}"#.into(),
            400,
            &["invalid Availability"],
        ),
        (
            at.clone(),
            r#"{"Role": "", "Availability": "active"}"#.into(),
            400,
            &["invalid Role"],
        ),
        (
            at.clone(),
            r#"{"Availability": "active"}"#.into(),
            400,
            &["invalid Role"],
        ),
        (
            at.clone(),
            r#"{"Role": "worker", "Availability": "active"}"#.into(),
            400,
            &["demote the last manager"],
        ),
    ];
    for (uri, body, status, parts) in &cases {
        let a = n.post_raw(uri, body.clone()).await;
        assert_eq!(a.status.as_u16(), *status, "{uri} {body}: {}", a.text);
        a.refused(*status, parts);
        assert_eq!(the_node(&n).await, node, "{uri} {body} changed the node");
    }
}

#[tokio::test]
async fn the_manager_cannot_be_removed() {
    let n = Node::manager().await;
    let node = the_node(&n).await;
    let id = node["ID"].as_str().unwrap();
    for uri in [format!("/nodes/{id}"), format!("/nodes/{id}?force=1")] {
        n.delete(&uri)
            .await
            .refused(400, &["is a cluster manager", "must be demoted"]);
        assert_eq!(the_node(&n).await, node);
    }
}

#[tokio::test]
async fn a_node_announcing_another_nodes_host_name_does_not_take_its_place() {
    let n = Node::manager().await;
    let real = the_node(&n).await;
    let id = real["ID"].as_str().unwrap().to_string();
    // A worker whose description (what a node says of itself) claims the manager's host name.
    let m = n.daemon.manager.read().await.clone().unwrap();
    let mut impostor: shoal_api::models::Node = serde_json::from_value(real.clone()).unwrap();
    let impostor_id = "impostor00000000000000000".to_string();
    impostor.id = Some(impostor_id.clone());
    impostor.version = None;
    impostor.manager_status = None;
    if let Some(spec) = impostor.spec.as_mut() {
        spec.role = Some(shoal_api::models::NodeSpecRoleEnum::WORKER);
    }
    let op = shoal_manager::db::put(&impostor, shoal_store::Expect::Absent).unwrap();
    shoal_manager::db::write(&m.store, vec![op]).await.unwrap();
    assert_eq!(n.read("/nodes").await.as_array().unwrap().len(), 2);

    // The host name now names neither: not inspected, promoted nor removed in the other's place.
    n.get(&format!("/nodes/{HOSTNAME}"))
        .await
        .refused(400, &[HOSTNAME, "is ambiguous (2 matches found)"]);
    let version = n.read(&format!("/nodes/{impostor_id}")).await["Version"]["Index"]
        .as_u64()
        .unwrap();
    n.post(
        &format!("/nodes/{HOSTNAME}/update?version={version}"),
        json!({"Role": "manager", "Availability": "active"}),
    )
    .await
    .refused(400, &["is ambiguous"]);
    n.delete(&format!("/nodes/{HOSTNAME}?force=1"))
        .await
        .refused(400, &["is ambiguous"]);
    // Nothing changed; the IDs, which come from certificates, still name each node.
    assert_eq!(n.read(&format!("/nodes/{id}")).await, real);
    let after = n.read(&format!("/nodes/{impostor_id}")).await;
    assert_eq!(after["Spec"]["Role"], "worker");
    assert_eq!(after["Version"]["Index"], version);
}
