//! The `docker service ls` path reads less than a full decode and encodes without a JSON tree:
//! what it answers must be what the full objects give.

use super::*;
use serde_json::json;

fn service(mode: serde_json::Value, job_iteration: Option<u64>) -> StoredService {
    let mut v = json!({
        "ID": "svc1",
        "Version": {"Index": 7},
        "CreatedAt": "2026-12-06T06:00:00Z",
        "Spec": {
            "Name": "web",
            "Labels": {"tier": "front"},
            "Mode": mode,
            "TaskTemplate": {"ContainerSpec": {"Image": "shoal-test/web", "Env": ["A=1"]}}
        },
        "PreviousSpec": {"Name": "web", "Mode": {"Replicated": {"Replicas": 1}}},
        "UpdateStatus": {"State": "completed", "Message": "update completed"},
        "ShoalSpecVersion": 3,
        "ShoalPreviousSpecVersion": 2,
        "ShoalLastSpecVersion": 3,
        "ShoalHistory": [{"Version": 1, "ReplacedAt": "2026-12-06T06:01:00Z", "Spec": {"Name": "web"}}],
        "ShoalCronNext": "2026-12-06T07:00:00Z"
    });
    if let Some(i) = job_iteration {
        v["JobStatus"] = json!({"JobIteration": {"Index": i}});
    }
    serde_json::from_value(v).unwrap()
}

/// A task as the store holds it, with the spec and status details a tally skips.
fn task(id: &str, service: &str, desired: &str, state: &str, iteration: Option<u64>) -> Vec<u8> {
    let mut v = json!({
        "ID": id,
        "Version": {"Index": 9},
        "ServiceID": service,
        "Slot": 1,
        "NodeID": "node1",
        "DesiredState": desired,
        "Spec": {"ContainerSpec": {"Image": "shoal-test/web", "Env": ["A=1"]}},
        "Status": {
            "Timestamp": "2026-12-06T06:02:00Z",
            "State": state,
            "Message": "started",
            "ContainerStatus": {"ContainerID": "c1", "PID": 42}
        },
        "ShoalSpecVersion": 3,
        "ShoalServiceName": "web"
    });
    if let Some(i) = iteration {
        v["JobIteration"] = json!({"Index": i});
    }
    serde_json::to_vec(&v).unwrap()
}

fn full(data: &[u8]) -> StoredTask {
    serde_json::from_slice(data).unwrap()
}

#[test]
fn the_list_encodes_what_inspect_shows() {
    let mut s = service(json!({"Replicated": {"Replicas": 3}}), None);
    s.service.service_status = Some(ServiceServiceStatus {
        running_tasks: Some(2),
        desired_tasks: Some(3),
        completed_tasks: Some(0),
    });
    // Inspect answers the same view, as dockerd's conversions leave a service.
    let listed = serde_json::to_value(ServiceView::from(s.clone())).unwrap();
    assert_eq!(listed["PreviousSpec"]["Labels"], json!({}), "{listed}");
    assert_eq!(listed["Spec"]["TaskTemplate"]["ForceUpdate"], 0, "{listed}");
    let keys: Vec<&String> = listed.as_object().unwrap().keys().collect();
    assert!(keys.iter().all(|k| !k.starts_with("Shoal")), "{keys:?}");
    assert_eq!(listed["PreviousSpec"]["Mode"]["Replicated"]["Replicas"], 1);
    assert_eq!(listed["ServiceStatus"]["RunningTasks"], 2);
}

#[test]
fn a_tally_counts_what_the_full_tasks_count() {
    let svc = service(json!({"Replicated": {"Replicas": 3}}), None);
    let stored = [
        task("t1", "svc1", "running", "running", None),
        task("t2", "svc1", "running", "starting", None),
        task("t3", "svc1", "shutdown", "running", None),
        task("t4", "svc1", "running", "running", None),
        task("t5", "svc1", "shutdown", "complete", None),
    ];
    let fulls: Vec<StoredTask> = stored.iter().map(|d| full(d)).collect();
    let tallied: Vec<StoredTask> = stored.iter().map(|d| tally(d).unwrap()).collect();
    let want = service_status(&svc, &fulls, &[]);
    assert_eq!(want.running_tasks, Some(2));
    assert_eq!(want.desired_tasks, Some(3));
    assert_eq!(want.completed_tasks, Some(1));
    assert_eq!(service_status(&svc, &tallied, &[]), want);
    for (t, f) in tallied.iter().zip(&fulls) {
        assert_eq!(t.service_id(), f.service_id());
    }
}

#[test]
fn a_jobs_tally_counts_only_its_current_iteration() {
    let svc = service(
        json!({"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 5}}),
        Some(2),
    );
    let stored = [
        task("t1", "svc1", "complete", "complete", Some(1)),
        task("t2", "svc1", "complete", "complete", Some(2)),
        task("t3", "svc1", "complete", "running", Some(2)),
        task("t4", "svc1", "complete", "starting", Some(2)),
    ];
    let fulls: Vec<StoredTask> = stored.iter().map(|d| full(d)).collect();
    let tallied: Vec<StoredTask> = stored.iter().map(|d| tally(d).unwrap()).collect();
    let want = service_status(&svc, &fulls, &[]);
    assert_eq!(want.completed_tasks, Some(1));
    assert_eq!(want.running_tasks, Some(1));
    assert_eq!(service_status(&svc, &tallied, &[]), want);
}
