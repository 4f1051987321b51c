//! `/swarm`, `/swarm/init|join|leave|update|unlockkey|unlock`: the cluster object's life.

use crate::harness::*;
use serde_json::{json, Value};

#[tokio::test]
async fn init_answers_the_node_id_and_makes_the_cluster() {
    let n = Node::new().await;
    let a = n
        .post(
            "/swarm/init",
            json!({"ListenAddr": "127.0.0.1:0", "AdvertiseAddr": "127.0.0.1:0"}),
        )
        .await;
    let id = a.ok(200).as_str().expect("a JSON string").to_string();
    assert_eq!(id.len(), 25, "a swarm ID: {id}");
    assert_eq!(n.agent.starts.load(std::sync::atomic::Ordering::SeqCst), 1);

    let s = n.read("/swarm").await;
    assert_eq!(s["ID"].as_str().unwrap().len(), 25);
    assert!(s["Version"]["Index"].as_u64().unwrap() > 0);
    assert_eq!(s["Spec"]["Name"], "default");
    assert_eq!(s["Spec"]["Orchestration"]["TaskHistoryRetentionLimit"], 5);
    assert_eq!(s["Spec"]["Dispatcher"]["HeartbeatPeriod"], 5_000_000_000i64);
    assert_eq!(s["DefaultAddrPool"], json!(["10.0.0.0/8"]));
    assert_eq!(s["SubnetSize"], 24);
    assert_eq!(s["DataPathPort"], 4789);
    assert!(s["TLSInfo"]["TrustRoot"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    let tokens = &s["JoinTokens"];
    for role in ["Worker", "Manager"] {
        assert!(
            tokens[role].as_str().unwrap().starts_with("SWMTKN-1-"),
            "{role} token: {tokens}"
        );
    }
    assert_ne!(tokens["Worker"], tokens["Manager"]);

    // What the CLI reads right after init to print the join command.
    let node = n.read(&format!("/nodes/{id}")).await;
    assert_eq!(node["ManagerStatus"]["Leader"], true);
    assert_eq!(node["ManagerStatus"]["Addr"], "127.0.0.1:0");
    let nets = n.read("/networks").await;
    let ingress = nets
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["Name"] == "ingress")
        .expect("the ingress network");
    assert_eq!(ingress["Ingress"], true);
    assert_eq!(ingress["Scope"], "swarm");
    assert_eq!(ingress["IPAM"]["Config"][0]["Subnet"], "10.0.0.0/24");
}

#[tokio::test]
async fn init_takes_the_spec_given() {
    let n = Node::new().await;
    n.post(
        "/swarm/init",
        json!({"AdvertiseAddr": "127.0.0.1:0", "DataPathPort": 7789,
               "Spec": {"Name": "default", "Labels": {"env": "test"},
                        "Orchestration": {"TaskHistoryRetentionLimit": 2}}}),
    )
    .await
    .ok(200);
    let s = n.read("/swarm").await;
    assert_eq!(s["Spec"]["Labels"], json!({"env": "test"}));
    assert_eq!(s["Spec"]["Orchestration"]["TaskHistoryRetentionLimit"], 2);
    assert_eq!(s["DataPathPort"], 7789);
}

#[tokio::test]
async fn init_takes_lowercase_keys_as_dockerd_does() {
    let n = Node::new().await;
    n.post(
        "/swarm/init",
        json!({"advertiseAddr": "127.0.0.1:0", "dataPathPort": 7790,
               "spec": {"labels": {"Env": "test"}}}),
    )
    .await
    .ok(200);
    let s = n.read("/swarm").await;
    assert_eq!(s["DataPathPort"], 7790);
    assert_eq!(s["Spec"]["Labels"], json!({"Env": "test"}));
}

/// What a node outside any swarm answers: nothing of the swarm exists.
async fn still_outside(n: &Node) {
    n.get("/swarm")
        .await
        .refused(503, &["This node is not a swarm manager"]);
    assert_eq!(n.get("/_ping").await.headers["swarm"], "inactive");
    assert_eq!(n.read("/info").await["Swarm"]["LocalNodeState"], "inactive");
    assert_eq!(n.agent.starts.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn init_refusals_leave_the_node_outside() {
    let n = Node::new().await;
    let cases: &[(&str, u16, &[&str])] = &[
        ("{", 400, &["invalid JSON"]),
        ("", 400, &["empty"]),
        ("[1]", 400, &["invalid JSON"]),
        (r#"{"AdvertiseAddr": 5}"#, 400, &["AdvertiseAddr", "string"]),
        (
            r#"{"ForceNewCluster": "yes"}"#,
            400,
            &["ForceNewCluster", "bool"],
        ),
        (
            r#"{"Spec": {"Labels": ["a"]}}"#,
            400,
            &["Spec.Labels", "map"],
        ),
        (
            r#"{"AdvertiseAddr": "eth0"}"#,
            400,
            &["AdvertiseAddr", "not an IP address"],
        ),
        (
            r#"{"AdvertiseAddr": "127.0.0.1:http"}"#,
            400,
            &["AdvertiseAddr", "invalid port"],
        ),
        (
            r#"{"AdvertiseAddr": "127.0.0.1:0", "DefaultAddrPool": ["192.168.0.0/16"]}"#,
            400,
            &["DefaultAddrPool"],
        ),
        (
            r#"{"AdvertiseAddr": "127.0.0.1:0", "SubnetSize": 26}"#,
            400,
            &["SubnetSize"],
        ),
        (
            r#"{"ForceNewCluster": true}"#,
            503,
            &["--force-new-cluster", "manager"],
        ),
        // The spec is checked as `swarm update` checks it (swarmkit's validateClusterSpec).
        (
            r#"{"AdvertiseAddr": "127.0.0.1:0", "Spec": {"CAConfig": {"NodeCertExpiry": 1000000000}}}"#,
            400,
            &["CAConfig.NodeCertExpiry", "minimum"],
        ),
        (
            r#"{"AdvertiseAddr": "127.0.0.1:0", "Spec": {"Dispatcher": {"HeartbeatPeriod": -1}}}"#,
            400,
            &["Dispatcher.HeartbeatPeriod", "negative"],
        ),
        (
            r#"{"AdvertiseAddr": "127.0.0.1:0", "Spec": {"Dispatcher": {"HeartbeatPeriod": 10000000}}}"#,
            400,
            &[
                "Dispatcher.HeartbeatPeriod",
                "minimum heartbeat time period is: 1s",
            ],
        ),
        (
            r#"{"AdvertiseAddr": "127.0.0.1:0", "Spec": {"Raft": {"ElectionTick": 2, "HeartbeatTick": 3}}}"#,
            400,
            &["Raft.ElectionTick", "greater than heartbeat tick"],
        ),
        (
            r#"{"AdvertiseAddr": "127.0.0.1:0", "Spec": {"Orchestration": {"TaskHistoryRetentionLimit": -2}}}"#,
            400,
            &["TaskHistoryRetentionLimit"],
        ),
    ];
    for (body, status, parts) in cases {
        let a = n.post_raw("/swarm/init", body.to_string()).await;
        assert_eq!(a.status.as_u16(), *status, "{body}: {}", a.text);
        a.refused(*status, parts);
        still_outside(&n).await;
    }
    assert!(!n.data_dir().join("node.json").exists());
}

#[tokio::test]
async fn init_twice_is_refused_and_keeps_the_first_swarm() {
    let n = Node::manager().await;
    let before = n.read("/swarm").await;
    n.post("/swarm/init", json!({"AdvertiseAddr": "127.0.0.1:0"}))
        .await
        .refused(
            503,
            &["This node is already part of a swarm", "docker swarm leave"],
        );
    assert_eq!(n.read("/swarm").await, before);
}

#[tokio::test]
async fn update_changes_the_spec_and_the_version() {
    let n = Node::manager().await;
    let s = n.read("/swarm").await;
    let v = s["Version"]["Index"].as_u64().unwrap();
    let mut spec = s["Spec"].clone();
    spec["Labels"] = json!({"team": "infra"});
    spec["Orchestration"]["TaskHistoryRetentionLimit"] = json!(10);
    spec["Dispatcher"]["HeartbeatPeriod"] = json!(7_000_000_000i64);
    n.post(&format!("/swarm/update?version={v}"), spec)
        .await
        .ok(200);
    let after = n.read("/swarm").await;
    assert!(after["Version"]["Index"].as_u64().unwrap() > v);
    assert_eq!(after["Spec"]["Labels"], json!({"team": "infra"}));
    assert_eq!(
        after["Spec"]["Orchestration"]["TaskHistoryRetentionLimit"],
        10
    );
    assert_eq!(
        after["Spec"]["Dispatcher"]["HeartbeatPeriod"],
        7_000_000_000i64
    );
    assert_eq!(
        after["JoinTokens"], s["JoinTokens"],
        "tokens stay unless rotated"
    );
    assert_eq!(after["ID"], s["ID"]);
}

#[tokio::test]
async fn update_rotates_the_join_token_asked_for() {
    let n = Node::manager().await;
    let s = n.read("/swarm").await;
    let v = s["Version"]["Index"].as_u64().unwrap();
    n.post(
        &format!("/swarm/update?version={v}&rotateWorkerToken=true"),
        s["Spec"].clone(),
    )
    .await
    .ok(200);
    let after = n.read("/swarm").await;
    assert_ne!(after["JoinTokens"]["Worker"], s["JoinTokens"]["Worker"]);
    assert_eq!(after["JoinTokens"]["Manager"], s["JoinTokens"]["Manager"]);
    // The CA part of the token stays: it is the digest of the same root.
    let ca_part =
        |t: &serde_json::Value| t.as_str().unwrap().split('-').nth(2).unwrap().to_string();
    assert_eq!(
        ca_part(&after["JoinTokens"]["Worker"]),
        ca_part(&s["JoinTokens"]["Worker"])
    );
}

/// `spec` with the value at `pointer` replaced, as a body.
fn with(spec: &serde_json::Value, pointer: &str, v: serde_json::Value) -> String {
    let mut s = spec.clone();
    *s.pointer_mut(pointer).expect("the field is in the spec") = v;
    s.to_string()
}

#[tokio::test]
async fn update_refusals_change_nothing() {
    let n = Node::manager().await;
    let s = n.read("/swarm").await;
    let v = s["Version"]["Index"].as_u64().unwrap();
    let spec = s["Spec"].clone();
    let stale = format!("/swarm/update?version={}", v - 1);
    let at = format!("/swarm/update?version={v}");
    let cases: Vec<(String, String, u16, &[&str])> = vec![
        (stale, spec.to_string(), 409, &["update out of sequence"]),
        ("/swarm/update".into(), spec.to_string(), 400, &["version"]),
        (
            "/swarm/update?version=abc".into(),
            spec.to_string(),
            400,
            &["version"],
        ),
        (at.clone(), "{".into(), 400, &["invalid JSON"]),
        (at.clone(), "".into(), 400, &["empty"]),
        (
            at.clone(),
            r#"{"Labels": "x"}"#.into(),
            400,
            &["Labels", "map"],
        ),
        (
            at.clone(),
            r#"{"Orchestration": {"TaskHistoryRetentionLimit": "ten"}}"#.into(),
            400,
            &["Orchestration.TaskHistoryRetentionLimit", "expected i64"],
        ),
        (
            at.clone(),
            r#"{"Orchestration": {"TaskHistoryRetentionLimit": -1}}"#.into(),
            400,
            &["Orchestration.TaskHistoryRetentionLimit", "negative"],
        ),
        // swarmkit's validateClusterSpec: a one-second certificate would have every node
        // renewing, or failing to join.
        (
            at.clone(),
            with(&spec, "/CAConfig/NodeCertExpiry", json!(1_000_000_000i64)),
            400,
            &[
                "CAConfig.NodeCertExpiry",
                "minimum certificate expiry time is: 1h0m0s",
            ],
        ),
        (
            at.clone(),
            with(&spec, "/Dispatcher/HeartbeatPeriod", json!(-1)),
            400,
            &[
                "Dispatcher.HeartbeatPeriod",
                "cannot be a negative duration",
            ],
        ),
        // Issue 17: a 10 ms heartbeat marked every node down between two heartbeats.
        (
            at.clone(),
            with(&spec, "/Dispatcher/HeartbeatPeriod", json!(10_000_000i64)),
            400,
            &[
                "Dispatcher.HeartbeatPeriod",
                "minimum heartbeat time period is: 1s",
            ],
        ),
        (
            at.clone(),
            with(&spec, "/Raft/ElectionTick", json!(1)),
            400,
            &[
                "Raft.ElectionTick",
                "election tick must be greater than heartbeat tick",
            ],
        ),
        (
            at.clone(),
            with(&spec, "/Name", json!("prod")),
            400,
            &["modification of cluster name is not allowed"],
        ),
    ];
    for (uri, body, status, parts) in &cases {
        let a = n.post_raw(uri, body.clone()).await;
        assert_eq!(a.status.as_u16(), *status, "{uri} {body}: {}", a.text);
        a.refused(*status, parts);
        assert_eq!(n.read("/swarm").await, s, "{uri} {body} changed the swarm");
    }
}

#[tokio::test]
async fn outside_a_swarm_the_manager_endpoints_answer_503() {
    let n = Node::new().await;
    for uri in [
        "/swarm",
        "/swarm/unlockkey",
        "/nodes",
        "/nodes/x",
        "/services",
        "/services/x",
        "/services/x/logs?stdout=1",
        "/tasks",
        "/tasks/x",
        "/secrets",
        "/secrets/x",
        "/configs",
        "/configs/x",
    ] {
        n.get(uri).await.refused(
            503,
            &["This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\""],
        );
    }
    for uri in [
        "/swarm/update?version=1",
        "/nodes/x/update?version=1",
        "/services/create",
        "/services/x/update?version=1",
        "/secrets/create",
        "/configs/create",
    ] {
        n.post(uri, json!({"Name": "x"}))
            .await
            .refused(503, &["This node is not a swarm manager"]);
    }
    n.post(
        "/networks/create",
        json!({"Name": "x", "Driver": "overlay"}),
    )
    .await
    .refused(503, &["This node is not a swarm manager"]);
}

#[tokio::test]
async fn unlock_key_is_empty_without_autolock() {
    let n = Node::manager().await;
    assert_eq!(n.read("/swarm/unlockkey").await, json!({"UnlockKey": ""}));
    n.post("/swarm/unlock", json!({"UnlockKey": "SWMKEY-1-x"}))
        .await
        .refused(409, &["swarm is not locked"]);
    assert!(n.data_dir().join("keys/kek").exists());
}

fn unlock_key(n: &Value) -> String {
    n["UnlockKey"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn autolock_gives_an_unlock_key_that_rotates_and_goes_with_autolock() {
    let n = Node::new().await;
    n.post(
        "/swarm/init",
        json!({"ListenAddr": "127.0.0.1:0", "AdvertiseAddr": "127.0.0.1:0", "AutoLockManagers": true}),
    )
    .await
    .ok(200);
    let s = n.read("/swarm").await;
    assert_eq!(s["Spec"]["EncryptionConfig"]["AutoLockManagers"], true);
    let first = unlock_key(&n.read("/swarm/unlockkey").await);
    assert!(first.starts_with("SWMKEY-1-"), "{first}");
    assert!(
        !n.data_dir().join("keys/kek").exists(),
        "the unlock key is the KEK: no key file"
    );
    let kek = n.daemon.lock.kek().expect("unlocked");
    assert_eq!(
        shoal_manager::node::lock::parse_human_key(&first),
        Some(kek)
    );

    // Rotating gives a new key; the keys on disk follow it.
    let v = s["Version"]["Index"].as_u64().unwrap();
    n.post(
        &format!("/swarm/update?version={v}&rotateManagerUnlockKey=true"),
        s["Spec"].clone(),
    )
    .await
    .ok(200);
    let second = unlock_key(&n.read("/swarm/unlockkey").await);
    assert!(second.starts_with("SWMKEY-1-") && second != first);
    assert_eq!(
        shoal_manager::node::lock::parse_human_key(&second),
        n.daemon.lock.kek()
    );

    // Autolock off: no unlock key, a key file again.
    let s = n.read("/swarm").await;
    let v = s["Version"]["Index"].as_u64().unwrap();
    let mut spec = s["Spec"].clone();
    spec["EncryptionConfig"]["AutoLockManagers"] = json!(false);
    n.post(&format!("/swarm/update?version={v}"), spec)
        .await
        .ok(200);
    assert_eq!(n.read("/swarm/unlockkey").await, json!({"UnlockKey": ""}));
    assert!(n.data_dir().join("keys/kek").exists());
}

#[tokio::test]
async fn a_locked_node_says_so_and_refuses_bad_keys_without_change() {
    let n = Node::manager().await;
    let info = n.read("/info").await;
    let id = info["Swarm"]["NodeID"].as_str().unwrap().to_string();
    let identity: shoal_manager::node::Identity =
        serde_json::from_slice(&std::fs::read(n.data_dir().join("node.json")).expect("node.json"))
            .unwrap();
    // What a restart with autolock on leads to (the manager itself is not stopped here).
    n.daemon.lock.set_locked(identity);
    let info = n.read("/info").await;
    assert_eq!(info["Swarm"]["LocalNodeState"], "locked");
    assert_eq!(info["Swarm"]["NodeID"], id.as_str());
    assert_eq!(info["Swarm"]["ControlAvailable"], false);
    let locked = "Swarm is encrypted and needs to be unlocked before it can be used. Please use \"docker swarm unlock\" to unlock it.";
    for uri in [
        "/swarm",
        "/services",
        "/nodes",
        "/secrets",
        "/swarm/unlockkey",
    ] {
        n.get(uri).await.refused(503, &[locked]);
    }
    n.post("/swarm/init", json!({"ListenAddr": "127.0.0.1:0"}))
        .await
        .refused(503, &[locked]);
    n.post("/swarm/leave", json!({})).await.refused(
        503,
        &["Swarm is encrypted and locked. Please unlock it first or use `--force`"],
    );
    n.post("/swarm/unlock", json!({"UnlockKey": "not-a-key"}))
        .await
        .refused(400, &["invalid key string"]);
    let wrong = shoal_manager::node::lock::human_key(&shoal_store::seal::Key::generate().unwrap());
    n.post("/swarm/unlock", json!({"UnlockKey": wrong}))
        .await
        .refused(401, &["swarm could not be unlocked: invalid key provided"]);
    n.post("/swarm/unlock", json!({"UnlockKey": 7}))
        .await
        .refused(400, &["UnlockKey"]);
    n.post("/swarm/unlock", json!({"unlockkey": wrong}))
        .await
        .refused(401, &["invalid key provided"]);
    assert!(n.daemon.lock.is_locked(), "still locked");
    let ping = n.get("/_ping").await;
    assert_eq!(
        ping.headers.get("swarm").and_then(|v| v.to_str().ok()),
        Some("locked")
    );
}

#[tokio::test]
async fn join_refusals_name_the_field_and_leave_the_node_outside() {
    let n = Node::new().await;
    let ok_token =
        "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdbx";
    let cases: Vec<(String, u16, &[&str])> = vec![
        ("{".into(), 400, &["invalid JSON"]),
        ("".into(), 400, &["empty"]),
        (
            r#"{"RemoteAddrs": "10.0.0.1"}"#.into(),
            400,
            &["RemoteAddrs", "sequence"],
        ),
        (
            r#"{"RemoteAddrs": ["127.0.0.1:1"]}"#.into(),
            400,
            &["JoinToken"],
        ),
        (
            r#"{"RemoteAddrs": ["127.0.0.1:1"], "JoinToken": "SWMTKN-1-abc"}"#.into(),
            400,
            &["JoinToken", "invalid join token"],
        ),
        // Lowercase keys are read as dockerd reads them: the token is there, and malformed.
        (
            r#"{"remoteAddrs": ["127.0.0.1:1"], "joinToken": "SWMTKN-1-abc"}"#.into(),
            400,
            &["JoinToken", "invalid join token"],
        ),
        (
            format!(r#"{{"JoinToken": "{ok_token}"}}"#),
            400,
            &["RemoteAddrs", "at least one"],
        ),
        (
            format!(r#"{{"JoinToken": "{ok_token}", "RemoteAddrs": []}}"#),
            400,
            &["RemoteAddrs"],
        ),
        // Nobody listens on port 1 of the loopback: refused at once.
        (
            format!(
                r#"{{"JoinToken": "{ok_token}", "RemoteAddrs": ["127.0.0.1:1"], "AdvertiseAddr": "127.0.0.1:0"}}"#
            ),
            503,
            &["could not join the swarm through 127.0.0.1:1"],
        ),
    ];
    for (body, status, parts) in &cases {
        let a = n.post_raw("/swarm/join", body.clone()).await;
        assert_eq!(a.status.as_u16(), *status, "{body}: {}", a.text);
        a.refused(*status, parts);
        still_outside(&n).await;
    }
}

#[tokio::test]
async fn join_on_a_node_in_a_swarm_is_refused() {
    let n = Node::manager().await;
    let ok_token = n.read("/swarm").await["JoinTokens"]["Worker"].clone();
    n.post(
        "/swarm/join",
        json!({"JoinToken": ok_token, "RemoteAddrs": ["127.0.0.1:1"]}),
    )
    .await
    .refused(503, &["This node is already part of a swarm"]);
    n.read("/swarm").await;
}

#[tokio::test]
async fn leave_outside_a_swarm_is_refused() {
    let n = Node::new().await;
    n.post_raw("/swarm/leave", "")
        .await
        .refused(503, &["This node is not part of a swarm"]);
}

#[tokio::test]
async fn a_manager_leaves_only_with_force() {
    let n = Node::manager().await;
    let first = n.read("/swarm").await["ID"].clone();
    n.post_raw("/swarm/leave", "").await.refused(
        503,
        &[
            "participating as a manager",
            "Use `--force` to ignore this message",
        ],
    );
    n.read("/swarm").await;
    n.post_raw("/swarm/leave?force=false", "")
        .await
        .refused(503, &["--force"]);

    n.post_raw("/swarm/leave?force=1", "").await.ok(200);
    still_outside_after_leaving(&n).await;
    assert_eq!(
        n.agent.removals.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    for f in ["node.json", "raft", "ca", "certs"] {
        assert!(!n.data_dir().join(f).exists(), "{f} is left behind");
    }

    // A new swarm afterwards is a different one.
    n.post("/swarm/init", json!({"AdvertiseAddr": "127.0.0.1:0"}))
        .await
        .ok(200);
    assert_ne!(n.read("/swarm").await["ID"], first);
    assert_eq!(n.read("/services").await, json!([]));
}

async fn still_outside_after_leaving(n: &Node) {
    n.get("/swarm")
        .await
        .refused(503, &["This node is not a swarm manager"]);
    assert_eq!(n.get("/_ping").await.headers["swarm"], "inactive");
}

#[tokio::test]
async fn a_force_new_cluster_that_fails_halfway_leaves_the_old_manager_running() {
    let n = Node::manager().await;
    let id = n.service(spec("kept")).await;
    shoal_manager::node::init::FAIL_NEXT_FORCED_WRITE
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let force = json!({"ForceNewCluster": true, "AdvertiseAddr": "127.0.0.1:0"});
    n.post("/swarm/init", force.clone())
        .await
        .refused(500, &["injected fault"]);

    // The manager runs on its old state at once, without a daemon restart: it answers, it
    // still has the service, and it takes writes.
    assert_eq!(
        n.read(&format!("/services/{id}")).await["Spec"]["Name"],
        "kept"
    );
    n.service(spec("after")).await;
    let names: Vec<_> = std::fs::read_dir(n.data_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|f| !f.contains("aside")),
        "nothing left aside: {names:?}"
    );

    // And the next attempt goes through, keeping both services.
    n.post("/swarm/init", force).await.ok(200);
    let services = n.read("/services").await;
    assert_eq!(services.as_array().map(Vec::len), Some(2), "{services}");
}
