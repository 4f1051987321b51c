//! `/tasks` and `/tasks/{id}`: the tasks the control loop made, as `docker service ps` reads them.

use crate::harness::*;
use serde_json::{json, Value};

async fn two_services(n: &Node) -> (String, String) {
    let web = n.service(spec("web")).await;
    let mut db = spec("db");
    db["Labels"] = json!({"tier": "back"});
    db["Mode"]["Replicated"]["Replicas"] = json!(2);
    let db = n.service(db).await;
    n.wait_for("/tasks", |t| t.as_array().unwrap().len() == 3)
        .await;
    (web, db)
}

fn count(v: &Value) -> usize {
    v.as_array().unwrap().len()
}

#[tokio::test]
async fn list_filters_as_service_ps_uses_them() {
    let n = Node::manager().await;
    let (web, db) = two_services(&n).await;
    let node = n.read("/info").await["Swarm"]["NodeID"]
        .as_str()
        .unwrap()
        .to_string();
    let cases = [
        (json!({"service": ["web"]}), 1),
        (json!({"service": [&web]}), 1),
        (json!({"service": [&db[..6]]}), 2),
        (json!({"service": ["nosuch"]}), 0),
        (json!({"service": [&web], "_up-to-date": ["true"]}), 1),
        (json!({"desired-state": ["running"]}), 3),
        (json!({"desired-state": ["shutdown"]}), 0),
        (json!({"node": [&node]}), 3),
        (json!({"node": [HOSTNAME]}), 3),
        (json!({"node": ["self"]}), 3),
        (json!({"label": ["tier=back"]}), 2),
        (json!({"name": ["db."]}), 2),
        (json!({"name": ["web.1"]}), 1),
    ];
    for (f, want) in cases {
        let uri = format!("/tasks?filters={}", enc(&f.to_string()));
        assert_eq!(count(&n.read(&uri).await), want, "{f}");
    }
    for (raw, parts) in [
        ("{", &["invalid filter", "not JSON"][..]),
        ("5", &["invalid filter", "object"][..]),
        ("{\"colour\":[\"red\"]}", &["invalid filter 'colour'"][..]),
    ] {
        n.get(&format!("/tasks?filters={}", enc(raw)))
            .await
            .refused(400, parts);
    }
}

#[tokio::test]
async fn inspect_shows_a_task_by_id_and_prefix() {
    let n = Node::manager().await;
    let (web, _) = two_services(&n).await;
    let uri = format!(
        "/tasks?filters={}",
        enc(&json!({"service": [&web]}).to_string())
    );
    let t = n.read(&uri).await[0].clone();
    let id = t["ID"].as_str().unwrap();
    let one = n.read(&format!("/tasks/{id}")).await;
    assert_eq!(one["ID"], id);
    assert_eq!(one["ServiceID"], web.as_str());
    assert_eq!(one["Slot"], 1);
    assert!(one["Version"]["Index"].as_u64().unwrap() > 0);
    assert!(one["Status"]["State"].is_string());
    assert!(one["Status"]["Timestamp"].is_string());
    assert!(
        one.as_object()
            .unwrap()
            .keys()
            .all(|k| !k.starts_with("Shoal")),
        "{one}"
    );
    assert_eq!(n.read(&format!("/tasks/{}", &id[..8])).await["ID"], id);

    n.get("/tasks/nosuch")
        .await
        .refused(404, &["task nosuch not found"]);
    n.get("/tasks/nosuch/logs?stdout=1")
        .await
        .refused(404, &["task nosuch not found"]);
    n.get(&format!("/tasks/{id}/logs"))
        .await
        .refused(400, &["you must choose at least one stream"]);
    n.get(&format!("/tasks/{id}/logs?stdout=1&tail=x"))
        .await
        .refused(400, &["tail value must be a positive integer"]);
    // No node session serves it here (the node's own session has no manager to reach): the
    // stream says why on stream 3, and ends.
    let a = n.get(&format!("/tasks/{id}/logs?stdout=1")).await;
    a.ok(200);
    assert!(
        a.text.starts_with('\u{3}') && a.text.contains("Error grabbing logs"),
        "{:?}",
        a.text
    );
}

/// Issue 17: `docker service logs -f` whose client goes away ends its subscription (and with
/// it, the nodes' readers) even when no line ever comes; before, the stream waiting on the
/// engine leaked with its connection for as long as the container lived.
#[tokio::test]
async fn follow_logs_end_their_subscription_when_the_client_goes_away() {
    use http_body_util::BodyExt;
    use shoal_api::objects::StoredTask;
    use tower::ServiceExt;
    let n = Node::manager().await;
    let m = n.daemon.manager().await.unwrap();
    let mut task = StoredTask::default();
    task.task.id = Some("logtask0000000000000000001".into());
    task.task.service_id = Some("svc".into());
    let op = shoal_manager::db::put(&task, shoal_store::Expect::Absent).unwrap();
    shoal_manager::db::write(&m.store, vec![op]).await.unwrap();

    let req = http::Request::get("/tasks/logtask0000000000000000001/logs?follow=1&stdout=1")
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = shoal_manager::api::app(n.daemon.clone())
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // Following a task not placed yet: nothing comes, the subscription waits.
    let nothing = tokio::time::timeout(std::time::Duration::from_millis(200), body.frame()).await;
    assert!(nothing.is_err(), "{nothing:?}");
    assert_eq!(m.logs.open_subscriptions(), 1);
    // The client goes away.
    drop(body);
    assert_eq!(
        m.logs.open_subscriptions(),
        0,
        "the subscription outlived its client"
    );
}

#[tokio::test]
async fn a_tasks_networks_are_whole_swarm_network_objects_as_moby_shows_them() {
    let n = Node::manager().await;
    let net = n
        .post(
            "/networks/create",
            json!({"Name": "backend", "Driver": "overlay", "Labels": {"tier": "back"}}),
        )
        .await;
    let net_id = net.ok(201)["Id"].as_str().unwrap().to_string();
    let mut s = spec("web");
    s["TaskTemplate"]["Networks"] = json!([{"Target": "backend"}]);
    n.service(s).await;
    let tasks = n
        .wait_for("/tasks", |t| {
            t.as_array().unwrap().iter().any(|t| {
                t["NetworksAttachments"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty())
            })
        })
        .await;
    let task = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["NetworksAttachments"].is_array())
        .unwrap();
    let by_id = n
        .read(&format!("/tasks/{}", task["ID"].as_str().unwrap()))
        .await;
    for t in [task, &by_id] {
        let a = &t["NetworksAttachments"][0];
        let network = &a["Network"];
        assert_eq!(network["ID"], net_id.as_str(), "{a}");
        assert!(network["Version"]["Index"].as_u64().unwrap() > 0, "{a}");
        assert!(network["CreatedAt"].is_string(), "{a}");
        assert_eq!(network["Spec"]["Name"], "backend");
        assert_eq!(network["Spec"]["Labels"]["tier"], "back");
        assert_eq!(network["Spec"]["DriverConfiguration"]["Name"], "overlay");
        assert_eq!(network["DriverState"]["Name"], "overlay");
        assert!(
            network["DriverState"]["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
                .is_string(),
            "{a}"
        );
        let subnet = network["IPAMOptions"]["Configs"][0]["Subnet"]
            .as_str()
            .unwrap();
        let addr = a["Addresses"][0].as_str().unwrap();
        let prefix = subnet.rsplit_once('.').unwrap().0;
        assert!(addr.starts_with(prefix), "{addr} in {subnet}");
    }
}
