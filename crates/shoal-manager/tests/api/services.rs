//! `/services`, `/services/create`, `/services/{id}`, `/services/{id}/update`,
//! `/services/{id}/logs` (its refusals: the logs themselves come from the engine).

use crate::harness::*;
use serde_json::{json, Value};

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["Spec"]["Name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn create_answers_201_and_the_service_reads_back() {
    let n = Node::manager().await;
    let a = n
        .post(
            "/services/create",
            json!({
                "Name": "web",
                "Labels": {"com.docker.stack.namespace": "demo"},
                "TaskTemplate": {"ContainerSpec": {"Image": "shoal-test/web:latest",
                                                   "Env": ["A=1"]}},
                "EndpointSpec": {"Ports": [{"TargetPort": 80, "PublishedPort": 8080}]}
            }),
        )
        .await;
    let id = a.ok(201)["ID"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 25);
    assert!(
        a.json.get("Warnings").is_some(),
        "Warnings is part of the answer"
    );

    let s = n.read(&format!("/services/{id}")).await;
    assert_eq!(s["ID"], id.as_str());
    assert!(s["Version"]["Index"].as_u64().unwrap() > 0);
    assert!(s["CreatedAt"].is_string() && s["UpdatedAt"].is_string());
    let spec = &s["Spec"];
    assert_eq!(spec["Name"], "web");
    assert_eq!(spec["Labels"]["com.docker.stack.namespace"], "demo");
    assert_eq!(
        spec["Mode"]["Replicated"]["Replicas"], 1,
        "the daemon fills the replica count the CLI leaves out"
    );
    assert_eq!(
        spec["TaskTemplate"]["ContainerSpec"]["Image"],
        "shoal-test/web:latest"
    );
    assert_eq!(spec["TaskTemplate"]["ContainerSpec"]["Env"], json!(["A=1"]));
    let ep = &s["Endpoint"];
    assert_eq!(ep["Spec"]["Mode"], "vip");
    assert_eq!(ep["Ports"][0]["Protocol"], "tcp");
    assert_eq!(ep["Ports"][0]["PublishMode"], "ingress");
    assert_eq!(ep["Ports"][0]["PublishedPort"], 8080);
    assert!(
        ep["VirtualIPs"][0]["Addr"]
            .as_str()
            .unwrap()
            .starts_with("10.0.0."),
        "a published port puts the service on the ingress network: {ep}"
    );
    let keys: Vec<&String> = s.as_object().unwrap().keys().collect();
    assert!(
        keys.iter().all(|k| !k.starts_with("Shoal")),
        "shoal's bookkeeping stays out of answers: {keys:?}"
    );

    // By name and by a unique ID prefix: the same service.
    assert_eq!(n.read("/services/web").await, s);
    assert_eq!(n.read(&format!("/services/{}", &id[..5])).await, s);
    let list = n.read("/services").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0], s);
}

#[tokio::test]
async fn a_lowercase_keyed_spec_is_read_as_dockerd_reads_it() {
    let n = Node::manager().await;
    let id = n
        .service(json!({
            "name": "lower",
            "taskTemplate": {"containerSpec": {"image": "shoal-test/web:latest"}},
            "mode": {"replicated": {"replicas": 2}}
        }))
        .await;
    let s = n.read(&format!("/services/{id}")).await;
    assert_eq!(s["Spec"]["Name"], "lower");
    assert_eq!(s["Spec"]["Mode"]["Replicated"]["Replicas"], 2);
    assert_eq!(
        s["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"],
        "shoal-test/web:latest"
    );
}

#[tokio::test]
async fn the_control_loop_makes_the_tasks_asked_for() {
    let n = Node::manager().await;
    let mut spec = spec("web");
    spec["Mode"]["Replicated"]["Replicas"] = json!(3);
    let id = n.service(spec).await;
    let tasks = n
        .wait_for("/tasks", |t| t.as_array().unwrap().len() == 3)
        .await;
    let node = n.read("/info").await["Swarm"]["NodeID"].clone();
    let mut slots: Vec<i64> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["ServiceID"], id.as_str());
            assert_eq!(t["DesiredState"], "running");
            assert_eq!(t["NodeID"], node, "the one node takes every task: {t}");
            assert_eq!(t["Spec"]["ContainerSpec"]["Image"], "shoal-test/web:latest");
            t["Slot"].as_i64().unwrap()
        })
        .collect();
    slots.sort();
    assert_eq!(slots, [1, 2, 3]);

    let status = n.read("/services?status=true").await;
    assert_eq!(status[0]["ServiceStatus"]["DesiredTasks"], 3);
    assert_eq!(
        status[0]["ServiceStatus"]["RunningTasks"], 0,
        "the stand-in agent runs nothing"
    );
}

#[tokio::test]
async fn list_filters_and_sorts_by_name() {
    let n = Node::manager().await;
    let mut labelled = spec("b-web");
    labelled["Labels"] = json!({"tier": "front"});
    let b = n.service(labelled).await;
    n.service(spec("a-db")).await;
    let mut global = spec("c-agent");
    global["Mode"] = json!({"Global": {}});
    n.service(global).await;
    assert_eq!(
        names(&n.read("/services").await),
        ["a-db", "b-web", "c-agent"]
    );
    let cases = [
        (json!({"name": ["b-"]}), vec!["b-web"]),
        (json!({"id": [&b[..6]]}), vec!["b-web"]),
        (json!({"label": ["tier=front"]}), vec!["b-web"]),
        (json!({"label": ["tier"]}), vec!["b-web"]),
        (json!({"mode": ["global"]}), vec!["c-agent"]),
        (json!({"mode": ["replicated"]}), vec!["a-db", "b-web"]),
        (json!({"name": ["nothing"]}), vec![]),
    ];
    for (f, want) in cases {
        let uri = format!("/services?filters={}", enc(&f.to_string()));
        assert_eq!(names(&n.read(&uri).await), want, "{f}");
    }
    for (raw, parts) in [
        ("{", &["invalid filter", "not JSON"][..]),
        ("\"name\"", &["invalid filter", "object"][..]),
        ("{\"colour\":[\"red\"]}", &["invalid filter 'colour'"][..]),
        // A value of another shape read as no filter: every service matched.
        ("{\"name\":[5]}", &["invalid filter 'name'"][..]),
        ("{\"name\":true}", &["invalid filter 'name'"][..]),
    ] {
        n.get(&format!("/services?filters={}", enc(raw)))
            .await
            .refused(400, parts);
    }
}

#[tokio::test]
async fn create_refusals_change_nothing() {
    let n = Node::manager().await;
    n.service(spec("web")).await;
    let before = n.read("/services").await;
    let with = |f: &dyn Fn(&mut Value)| {
        let mut s = spec("other");
        f(&mut s);
        s.to_string()
    };
    let cases: Vec<(String, u16, &[&str])> = vec![
        ("{".into(), 400, &["invalid JSON"]),
        ("".into(), 400, &["empty"]),
        ("[]".into(), 400, &["invalid JSON", "sequence"]),
        ("null".into(), 400, &["invalid JSON"]),
        (
            with(&|s| s["Mode"]["Replicated"]["Replicas"] = json!("3")),
            400,
            &["Mode.Replicated.Replicas", "invalid type: string"],
        ),
        (
            with(&|s| s["TaskTemplate"]["ContainerSpec"]["Env"] = json!("A=1")),
            400,
            &["TaskTemplate.ContainerSpec.Env", "sequence"],
        ),
        (
            with(&|s| {
                s["EndpointSpec"] = json!({"Ports": [{"TargetPort": 80, "Protocol": "icmp"}]})
            }),
            400,
            &["EndpointSpec.Ports[0].Protocol", "icmp"],
        ),
        (
            with(&|s| s["TaskTemplate"]["ContainerSpec"] = json!({})),
            400,
            &["image reference must be provided"],
        ),
        (json!({"Name": "x"}).to_string(), 400, &["TaskTemplate"]),
        (
            with(&|s| s["Name"] = json!("bad name")),
            400,
            &["Name", "DNS name"],
        ),
        (
            with(&|s| s["Mode"]["Replicated"]["Replicas"] = json!(-1)),
            400,
            &["Mode.Replicated.Replicas", "negative"],
        ),
        (
            with(&|s| s["Mode"] = json!({"Replicated": {}, "Global": {}})),
            400,
            &["must specify only one service mode"],
        ),
        (
            with(&|s| s["TaskTemplate"]["Networks"] = json!([{"Target": "nosuchnet"}])),
            404,
            &["network nosuchnet not found"],
        ),
        (
            with(&|s| s["TaskTemplate"]["Networks"] = json!([{"Target": "ingress"}])),
            400,
            &["Networks", "ingress"],
        ),
        (
            with(&|s| {
                s["TaskTemplate"]["ContainerSpec"]["Secrets"] = json!([{"SecretID": "nosuch",
                    "SecretName": "pw", "File": {"Name": "pw"}}])
            }),
            400,
            &["secret not found: pw"],
        ),
        (
            with(&|s| s["EndpointSpec"] = json!({"Ports": [{"TargetPort": 0}]})),
            400,
            &["EndpointSpec.Ports[0].TargetPort"],
        ),
        (spec("web").to_string(), 409, &["web already exists"]),
        // Names are unique without regard to case, as in swarmkit (they are DNS names).
        (
            spec("WEB").to_string(),
            409,
            &["service WEB already exists"],
        ),
    ];
    for (body, status, parts) in &cases {
        let a = n.post_raw("/services/create", body.clone()).await;
        assert_eq!(a.status.as_u16(), *status, "{body}: {}", a.text);
        a.refused(*status, parts);
        assert_eq!(
            n.read("/services").await,
            before,
            "{body} changed the services"
        );
    }
}

#[tokio::test]
async fn a_published_port_is_held_by_one_service() {
    let n = Node::manager().await;
    let mut first = spec("first");
    first["EndpointSpec"] = json!({"Ports": [{"TargetPort": 80, "PublishedPort": 8080}]});
    n.service(first).await;
    let before = n.read("/services").await;
    let mut second = spec("second");
    second["EndpointSpec"] = json!({"Ports": [{"TargetPort": 81, "PublishedPort": 8080}]});
    n.post("/services/create", second)
        .await
        .refused(400, &["port '8080' is already in use by service 'first'"]);
    assert_eq!(n.read("/services").await, before);
}

#[tokio::test]
async fn update_scales_and_keeps_the_previous_spec() {
    let n = Node::manager().await;
    let id = n.service(spec("web")).await;
    let uri = format!("/services/{id}");
    let s = n.read(&uri).await;
    let v = s["Version"]["Index"].as_u64().unwrap();
    let mut new = s["Spec"].clone();
    new["Mode"]["Replicated"]["Replicas"] = json!(3);
    let a = n
        .post(&format!("/services/{id}/update?version={v}"), new)
        .await;
    assert!(a.ok(200).get("Warnings").is_some(), "{}", a.text);
    let after = n.read(&uri).await;
    assert!(after["Version"]["Index"].as_u64().unwrap() > v);
    assert_eq!(after["Spec"]["Mode"]["Replicated"]["Replicas"], 3);
    assert_eq!(after["PreviousSpec"]["Mode"]["Replicated"]["Replicas"], 1);
    n.wait_for("/tasks", |t| t.as_array().unwrap().len() == 3)
        .await;

    // A new image is an update of the tasks: UpdateStatus says it started.
    let v = after["Version"]["Index"].as_u64().unwrap();
    let mut new = after["Spec"].clone();
    new["TaskTemplate"]["ContainerSpec"]["Image"] = json!("shoal-test/web:v2");
    n.post(&format!("/services/{id}/update?version={v}"), new)
        .await
        .ok(200);
    let updating = n.read(&uri).await;
    assert_eq!(updating["UpdateStatus"]["State"], "updating");
    assert!(updating["UpdateStatus"]["StartedAt"].is_string());

    // rollback=previous puts the previous spec back, whatever the body says.
    let v = updating["Version"]["Index"].as_u64().unwrap();
    n.post(
        &format!("/services/{id}/update?version={v}&rollback=previous"),
        updating["Spec"].clone(),
    )
    .await
    .ok(200);
    let back = n.read(&uri).await;
    assert_eq!(
        back["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"],
        "shoal-test/web:latest"
    );
    assert_eq!(back["UpdateStatus"]["State"], "rollback_started");
}

#[tokio::test]
async fn update_refusals_change_nothing() {
    let n = Node::manager().await;
    let id = n.service(spec("web")).await;
    n.service(spec("db")).await;
    let uri = format!("/services/{id}");
    let s = n.read(&uri).await;
    let v = s["Version"]["Index"].as_u64().unwrap();
    let at = format!("/services/{id}/update?version={v}");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut spec = s["Spec"].clone();
        f(&mut spec);
        spec.to_string()
    };
    let cases: Vec<(String, String, u16, &[&str])> = vec![
        (
            format!("/services/{id}/update?version={}", v - 1),
            s["Spec"].to_string(),
            409,
            &["update out of sequence"],
        ),
        (
            format!("/services/{id}/update"),
            s["Spec"].to_string(),
            400,
            &["version"],
        ),
        (
            format!("/services/{id}/update?version=x"),
            s["Spec"].to_string(),
            400,
            &["version"],
        ),
        (at.clone(), "{".into(), 400, &["invalid JSON"]),
        (at.clone(), "".into(), 400, &["empty"]),
        (
            at.clone(),
            with(&|s| s["Mode"]["Replicated"]["Replicas"] = json!(true)),
            400,
            &["Mode.Replicated.Replicas", "boolean"],
        ),
        (
            at.clone(),
            with(&|s| s["TaskTemplate"]["ContainerSpec"]["Image"] = json!("")),
            400,
            &["image reference must be provided"],
        ),
        (
            at.clone(),
            with(&|s| s["Name"] = json!("db")),
            501,
            &["renaming services is not supported"],
        ),
        (
            at.clone(),
            with(&|s| s["Mode"] = json!({"Global": {}})),
            501,
            &["rpc error: code = Unimplemented desc = service mode change is not allowed"],
        ),
        (
            format!("{at}&rollback=previous"),
            s["Spec"].to_string(),
            400,
            &["does not have a previous spec"],
        ),
        (
            "/services/nosuch/update?version=1".into(),
            s["Spec"].to_string(),
            404,
            &["service nosuch not found"],
        ),
    ];
    for (uri_, body, status, parts) in &cases {
        let a = n.post_raw(uri_, body.clone()).await;
        assert_eq!(a.status.as_u16(), *status, "{uri_} {body}: {}", a.text);
        a.refused(*status, parts);
        assert_eq!(n.read(&uri).await, s, "{uri_} {body} changed the service");
    }
}

#[tokio::test]
async fn remove_takes_the_service_and_then_its_tasks() {
    let n = Node::manager().await;
    let id = n.service(spec("web")).await;
    n.service(spec("db")).await;
    n.wait_for("/tasks", |t| t.as_array().unwrap().len() == 2)
        .await;
    n.delete(&format!("/services/{id}")).await.ok(200);
    assert_eq!(names(&n.read("/services").await), ["db"]);
    n.get(&format!("/services/{id}"))
        .await
        .refused(404, &[&format!("service {id} not found")]);
    // Its tasks are to be removed; they go once the node reports their containers gone (the
    // stand-in agent never does).
    n.wait_for("/tasks", |t| {
        t.as_array()
            .unwrap()
            .iter()
            .all(|t| t["ServiceID"] != id.as_str() || t["DesiredState"] == "remove")
    })
    .await;
    n.delete("/services/nosuch")
        .await
        .refused(404, &["service nosuch not found"]);
    assert_eq!(names(&n.read("/services").await), ["db"]);
}

#[tokio::test]
async fn unknown_services_are_404() {
    let n = Node::manager().await;
    n.service(spec("web")).await;
    for uri in ["/services/nosuch", "/services/nosuch/logs?stdout=1"] {
        n.get(uri).await.refused(404, &["service nosuch not found"]);
    }
}

#[tokio::test]
async fn logs_refuse_what_dockerd_refuses() {
    let n = Node::manager().await;
    n.service(spec("web")).await;
    let cases: &[(&str, &[&str])] = &[
        ("", &["you must choose at least one stream"]),
        (
            "?stdout=0&stderr=false&details=no",
            &["you must choose at least one stream"],
        ),
        (
            "?stdout=none&stderr=NO",
            &["you must choose at least one stream"],
        ),
        (
            "?stdout=1&tail=ten",
            &["tail value must be a positive integer or \"all\""],
        ),
        ("?stdout=1&tail=-3", &["negative tail values not supported"]),
        (
            "?stderr=1&since=yesterday",
            &["could not parse since timestamp", "yesterday"],
        ),
    ];
    for (q, parts) in cases {
        n.get(&format!("/services/web/logs{q}"))
            .await
            .refused(400, parts);
    }
    // What the CLI sends (and booleans as dockerd reads them): with no task running yet, the
    // stream ends at once.
    for q in [
        "stdout=1&stderr=1&tail=all&timestamps=1",
        "stdout=1&tail=10&since=1700000000.000000001",
        "stdout=TRUE",
        "stderr=yes",
    ] {
        let a = n.get(&format!("/services/web/logs?{q}")).await;
        a.ok(200);
        assert_eq!(
            a.headers["content-type"],
            "application/vnd.docker.multiplexed-stream"
        );
    }
}
