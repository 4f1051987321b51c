//! shoal's own endpoints beside Docker's (`/shoal/v1/services/{id}/history|rollback|schedule`),
//! which `shoal service history|rollback|schedule` call: same error format, same rules.

use crate::harness::*;
use serde_json::json;

#[tokio::test]
async fn history_and_rollback_to_a_revision() {
    let n = Node::manager().await;
    let id = n.service(spec("web")).await;
    let uri = format!("/services/{id}");
    for image in ["shoal-test/web:v2", "shoal-test/web:v3"] {
        let s = n.read(&uri).await;
        let v = s["Version"]["Index"].as_u64().unwrap();
        let mut new = s["Spec"].clone();
        new["TaskTemplate"]["ContainerSpec"]["Image"] = json!(image);
        n.post(&format!("/services/{id}/update?version={v}"), new)
            .await
            .ok(200);
    }
    let h = n.read(&format!("/shoal/v1/services/{id}/history")).await;
    let revs: Vec<(u64, bool, &str)> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["Version"].as_u64().unwrap(),
                r["Current"].as_bool().unwrap(),
                r["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
                    .as_str()
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(
        revs,
        [
            (3, true, "shoal-test/web:v3"),
            (2, false, "shoal-test/web:v2"),
            (1, false, "shoal-test/web:latest")
        ]
    );

    let before = n.read(&uri).await;
    let rollback = |q: &str| format!("/shoal/v1/services/{id}/rollback{q}");
    n.post_raw(&rollback(""), "")
        .await
        .refused(400, &["revision", "required"]);
    n.post_raw(&rollback("?revision=x"), "")
        .await
        .refused(400, &["revision"]);
    n.post_raw(&rollback("?revision=3"), "")
        .await
        .refused(400, &["revision: 3 is the current spec"]);
    n.post_raw(&rollback("?revision=9"), "")
        .await
        .refused(404, &["has no revision 9"]);
    n.post_raw("/shoal/v1/services/nosuch/rollback?revision=1", "")
        .await
        .refused(404, &["service nosuch not found"]);
    assert_eq!(n.read(&uri).await, before, "refusals change nothing");

    n.post_raw(&rollback("?revision=1"), "").await.ok(200);
    let back = n.read(&uri).await;
    assert_eq!(
        back["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"],
        "shoal-test/web:latest"
    );
    assert_eq!(back["UpdateStatus"]["State"], "rollback_started");
    n.get("/shoal/v1/services/nosuch/history")
        .await
        .refused(404, &["service nosuch not found"]);
}

#[tokio::test]
async fn schedule_of_a_periodic_job() {
    let n = Node::manager().await;
    n.service(spec("web")).await;
    n.get("/shoal/v1/services/web/schedule")
        .await
        .refused(400, &["has no shoal.cron label", "not a periodic job"]);
    let mut job = spec("nightly");
    job["Mode"] = json!({"ReplicatedJob": {}});
    job["Labels"] = json!({"shoal.cron": "0 3 * * *"});
    n.service(job).await;
    let s = n
        .wait_for("/shoal/v1/services/nightly/schedule", |s| {
            s["NextRun"].is_string()
        })
        .await;
    assert_eq!(s["Schedule"], "0 3 * * *");
    assert!(s["NextRun"].as_str().unwrap().contains("T03:00:00"), "{s}");
    n.get("/shoal/v1/services/nosuch/schedule")
        .await
        .refused(404, &["service nosuch not found"]);
}
