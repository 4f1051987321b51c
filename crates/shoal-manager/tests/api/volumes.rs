//! `/volumes` on a manager (issue 19): the swarm's shared volumes next to the engine's own,
//! options checked with the option named, credentials kept as secrets and out of every answer,
//! volumes made by services' mounts, removal refused while a service mounts one.

use crate::harness::*;
use serde_json::{json, Value};

const HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

fn names(list: &Value) -> Vec<String> {
    list["Volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["Name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_glusterfs_volume_is_stored_listed_with_the_engines_and_removed() {
    let n = Node::manager().await;
    let v = n
        .post(
            "/volumes/create",
            json!({"Name": "shared", "Driver": "shoal",
                "DriverOpts": {"type": "glusterfs", "device": "10.0.0.1,10.0.0.2:/gv0", "subdir": "app"},
                "Labels": {"team": "a"}}),
        )
        .await;
    let v = v.ok(201);
    assert_eq!(v["Name"], "shared");
    assert_eq!(v["Driver"], "shoal");
    assert_eq!(v["Scope"], "global");
    assert_eq!(v["Options"]["device"], "10.0.0.1,10.0.0.2:/gv0");
    assert_eq!(v["Labels"]["team"], "a");
    let list = n.read("/volumes").await;
    assert_eq!(names(&list), vec!["enginevol", "shared"]);
    let inspect = n.read("/volumes/shared").await;
    assert_eq!(inspect["Options"]["subdir"], "app");
    assert_eq!(n.delete("/volumes/shared").await.status, 204);
    assert_eq!(names(&n.read("/volumes").await), vec!["enginevol"]);
}

#[tokio::test]
async fn bad_options_are_refused_naming_the_option_and_store_nothing() {
    let n = Node::manager().await;
    for (opts, words) in [
        (json!({"type": "zfs", "device": "x:/y"}), vec!["zfs"]),
        (json!({"type": "glusterfs"}), vec!["device"]),
        (
            json!({"type": "glusterfs", "device": "nohost"}),
            vec!["device"],
        ),
        (
            json!({"type": "sshfs", "device": "u@h:/d", "password": "pw", "o": "ProxyCommand=sh"}),
            vec!["ProxyCommand"],
        ),
    ] {
        let a = n
            .post(
                "/volumes/create",
                json!({"Name": "v", "Driver": "shoal", "DriverOpts": opts}),
            )
            .await;
        a.refused(400, &words);
        assert!(!a.message().contains("pw"), "{}", a.message());
    }
    assert_eq!(names(&n.read("/volumes").await), vec!["enginevol"]);
}

#[tokio::test]
async fn credentials_become_secrets_and_leave_every_answer() {
    let n = Node::manager().await;
    let password = "hunter2-very-secret";
    let mount = json!({"Type": "volume", "Source": "files", "Target": "/data",
        "VolumeOptions": {"DriverConfig": {"Name": "shoal", "Options": {
            "type": "sshfs", "device": "alice@10.0.0.9:/srv/files",
            "password": password, "host_key": HOST_KEY}}}});
    n.post(
        "/services/create",
        json!({"Name": "app", "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Mounts": [mount]}}}),
    )
    .await
    .ok(201);
    let v = n.read("/volumes/files").await;
    assert_eq!(v["Driver"], "shoal");
    assert_eq!(
        v["Options"]["password"],
        "<secret shoal-volume.files.password>"
    );
    let svc = n.read("/services/app").await;
    let opts = &svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Mounts"][0]["VolumeOptions"]
        ["DriverConfig"]["Options"];
    assert_eq!(opts["device"], "alice@10.0.0.9:/srv/files");
    assert!(opts.get("password").is_none(), "{opts}");
    let secrets = n.read("/secrets").await;
    let secret_names: Vec<&str> = secrets
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Spec"]["Name"].as_str().unwrap())
        .collect();
    assert_eq!(secret_names, vec!["shoal-volume.files.password"]);
    for uri in [
        "/volumes",
        "/volumes/files",
        "/services/app",
        "/secrets",
        "/services",
    ] {
        let body = n.read(uri).await.to_string();
        assert!(!body.contains(password), "{uri}: {body}");
    }

    // Removing it while the service mounts it is refused; after the service, it goes with its
    // secret.
    n.delete("/volumes/files")
        .await
        .refused(409, &["files", "in use", "app"]);
    assert_eq!(n.delete("/services/app").await.status, 200);
    assert_eq!(n.delete("/volumes/files").await.status, 204);
    assert_eq!(n.read("/secrets").await, json!([]));
}

#[tokio::test]
async fn a_shoal_mount_without_options_must_name_an_existing_volume() {
    let n = Node::manager().await;
    let mount = json!({"Type": "volume", "Source": "nowhere", "Target": "/data",
        "VolumeOptions": {"DriverConfig": {"Name": "shoal"}}});
    n.post(
        "/services/create",
        json!({"Name": "app", "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Mounts": [mount]}}}),
    )
    .await
    .refused(400, &["Mounts[0]", "nowhere", "does not exist"]);
    assert_eq!(n.read("/services").await, json!([]));
}
