//! Issue 17, "no input takes it down": a seeded property test over the write endpoints. Valid
//! bodies of every kind are mutated (values swapped for hostile ones, keys dropped, bytes
//! flipped, truncated), paths and query strings garbled, and each request sent through the
//! real router over a real store. For every answer: no panic (a panicking handler fails the
//! test), no 500, and every error is Docker's `{"message": "..."}` as JSON.
//! The seed is printed; `SHOAL_RANDOM_SEED=<n>` replays a run, `SHOAL_RANDOM_CASES=<n>` sizes it,
//! `SHOAL_RANDOM_TRACE=1` prints every request before it is sent.

use crate::harness::*;
use http::Method;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::time::Instant;

/// Values a user could put anywhere: wrong types, extremes, hostile strings.
fn hostile(rng: &mut StdRng) -> Value {
    let strings = [
        "",
        "@every 9000000000000s",
        "@every 99999999999999999d",
        "59/4294967295 * * * *",
        "* * * * *",
        "node.labels.x==y",
        "==",
        "{{.Task.Slot}}{{",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "0.0.0.0/0",
        "10.0.0.0/33",
        "999.1.1.1/24",
        "\u{0}\u{fffd}\u{202e}",
        "../../etc/passwd",
        "/run/secrets/../../x",
        "manager",
        "worker",
        "drain",
        "global",
        "replicated-job",
        "start-first",
        "rollback",
        "on-failure",
        "SWMTKN-1-x-y",
        "a]b[c",
    ];
    let ints: [i64; 12] = [
        0,
        -1,
        1,
        i64::MAX,
        i64::MIN,
        i64::MAX / 3,
        1 << 53,
        10_000_000,
        65535,
        65536,
        100_001,
        -9_000_000_000_000_000_000,
    ];
    match rng.random_range(0..11) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => json!(ints[rng.random_range(0..ints.len())]),
        3 => json!(u64::MAX),
        4 => json!(rng.random::<f64>() * 1e300 - 5e299),
        5 => json!(strings[rng.random_range(0..strings.len())]),
        6 => json!("x".repeat(rng.random_range(0..300))),
        7 => json!([]),
        8 => json!({}),
        9 => json!([
            strings[rng.random_range(0..strings.len())],
            ints[rng.random_range(0..ints.len())]
        ]),
        _ => json!(rng.random::<i64>()),
    }
}

/// Every path to a value in `v` (object keys and array indexes), as JSON pointers.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(x, p, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(x, p, out);
            }
        }
        _ => {}
    }
}

/// One to three structural mutations of a valid body.
fn mutate(rng: &mut StdRng, mut v: Value) -> Value {
    for _ in 0..rng.random_range(1..=3) {
        let mut ps = Vec::new();
        pointers(&v, String::new(), &mut ps);
        if ps.is_empty() {
            return hostile(rng);
        }
        let p = ps[rng.random_range(0..ps.len())].clone();
        match rng.random_range(0..4) {
            // Replace the value.
            0 | 1 => {
                if let Some(x) = v.pointer_mut(&p) {
                    *x = hostile(rng);
                }
            }
            // Drop the key (or empty the array item).
            2 => {
                let (parent, key) = p.rsplit_once('/').unwrap_or(("", ""));
                if let Some(Value::Object(m)) = v.pointer_mut(parent) {
                    m.remove(key);
                }
            }
            // Nest a copy of the value inside itself, as an object under an odd key.
            _ => {
                if let Some(x) = v.pointer_mut(&p) {
                    let inner = x.clone();
                    *x = json!({"Nested": inner, "nested": hostile(rng)});
                }
            }
        }
    }
    v
}

/// Keeps replica counts the validator accepts small: a mutation to 65,535 replicas is valid
/// input that makes the control loop place 65,535 tasks, after which every request of the run
/// is slow. Counts above the maximum stay as they are (they are refused at once).
fn tame(v: &mut Value) {
    for p in [
        "/Mode/Replicated/Replicas",
        "/Mode/ReplicatedJob/MaxConcurrent",
        "/Mode/ReplicatedJob/TotalCompletions",
    ] {
        if let Some(x) = v.pointer_mut(p) {
            if x.as_i64()
                .is_some_and(|n| (101..=shoal_api::validate::MAX_REPLICAS).contains(&n))
            {
                *x = json!(3);
            }
        }
    }
}

/// The body as bytes, sometimes damaged at the byte level.
fn bytes(rng: &mut StdRng, v: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec(v).expect("JSON");
    match rng.random_range(0..10) {
        0 if !b.is_empty() => {
            let n = rng.random_range(0..b.len());
            b.truncate(n);
        }
        1 if !b.is_empty() => {
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
        }
        2 => {
            let i = rng.random_range(0..=b.len());
            let junk: Vec<u8> = (0..rng.random_range(1..16)).map(|_| rng.random()).collect();
            b.splice(i..i, junk);
        }
        _ => {}
    }
    b
}

/// A query value: a good one or a hostile one, percent-encoded or raw.
fn query_value(rng: &mut StdRng, good: &str) -> String {
    match rng.random_range(0..8) {
        0 => "-1".into(),
        1 => "99999999999999999999999".into(),
        2 => "%FF%FE".into(),
        3 => enc(&hostile(rng).to_string()),
        4 => String::new(),
        _ => good.into(),
    }
}

/// A path segment: the right ID, another object's, or garbage.
fn segment(rng: &mut StdRng, good: &str, others: &[String]) -> String {
    match rng.random_range(0..10) {
        0 => "%C3%28".into(),
        1 => "..".into(),
        2 => "x".repeat(rng.random_range(1..200)),
        3 => others[rng.random_range(0..others.len())].clone(),
        4 => enc(&hostile(rng).to_string()),
        _ => good.into(),
    }
}

#[tokio::test]
async fn random_and_mutated_requests_never_panic_nor_answer_500() {
    let seed: u64 = std::env::var("SHOAL_RANDOM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let cases: usize = std::env::var("SHOAL_RANDOM_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    eprintln!("random_input: seed {seed} (SHOAL_RANDOM_SEED={seed} replays), {cases} cases");
    let mut rng = StdRng::seed_from_u64(seed);

    let n = Node::manager().await;
    let mut web = spec("web");
    web["TaskTemplate"]["ContainerSpec"]["Env"] = json!(["A=1"]);
    web["TaskTemplate"]["RestartPolicy"] = json!({"Condition": "on-failure", "Delay": 5_000_000_000i64, "MaxAttempts": 3, "Window": 60_000_000_000i64});
    web["TaskTemplate"]["Resources"] = json!({"Limits": {"NanoCPUs": 1_000_000_000, "MemoryBytes": 67_108_864}, "Reservations": {"NanoCPUs": 1, "MemoryBytes": 1}});
    web["TaskTemplate"]["Placement"] =
        json!({"Constraints": ["node.role==manager"], "MaxReplicas": 2});
    web["UpdateConfig"] = json!({"Parallelism": 1, "Delay": 1_000_000_000i64, "Monitor": 5_000_000_000i64, "MaxFailureRatio": 0.5, "Order": "start-first"});
    web["EndpointSpec"] =
        json!({"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080}]});
    let service = n.service(web.clone()).await;
    let job = json!({
        "Name": "cron", "Labels": {"shoal.cron": "*/5 * * * *"},
        "TaskTemplate": {"ContainerSpec": {"Image": "shoal-test/web:latest",
            "StopGracePeriod": 10_000_000_000i64,
            "Healthcheck": {"Test": ["CMD", "true"], "Interval": 1_000_000_000i64, "Retries": 3}}},
        "Mode": {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 2}}
    });
    let secret_body = json!({"Name": "pw", "Data": b64("hunter2"), "Labels": {"a": "b"}});
    let secret = n.post("/secrets/create", secret_body.clone()).await.ok(201)["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let config_body = json!({"Name": "conf", "Data": b64("k=v")});
    let config = n.post("/configs/create", config_body.clone()).await.ok(201)["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let network_body = json!({"Name": "net", "Driver": "overlay", "Attachable": true,
        "IPAM": {"Config": [{"Subnet": "10.77.0.0/24", "Gateway": "10.77.0.1"}]},
        "Labels": {"x": "y"}, "Options": {"o": "p"}});
    let info = n.read("/info").await;
    let node = info["Swarm"]["NodeID"].as_str().unwrap().to_string();
    let node_body = json!({"Role": "manager", "Availability": "active", "Labels": {"zone": "a"}});
    let swarm = n.read("/swarm").await;
    let swarm_body = swarm["Spec"].clone();
    let init_body = json!({"ListenAddr": "127.0.0.1:0", "AdvertiseAddr": "127.0.0.1:0",
        "DefaultAddrPool": ["10.0.0.0/8"], "SubnetSize": 24, "Spec": swarm_body.clone()});
    let join_body = json!({"ListenAddr": "127.0.0.1:0", "AdvertiseAddr": "127.0.0.1:0",
        "RemoteAddrs": ["127.0.0.1:1"], "JoinToken": "SWMTKN-1-x-y"});
    let ids = vec![
        service.clone(),
        secret.clone(),
        config.clone(),
        node.clone(),
        "web".to_string(),
    ];

    // One router for every case (building it is most of a request's cost in a debug build).
    let app = shoal_manager::api::app(n.daemon.clone());
    let started = Instant::now();
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    let mut batch = Vec::new();
    for case in 0..cases {
        // The current versions, so that some updates get past the version check.
        let version = |v: &Value| v["Version"]["Index"].as_u64().unwrap_or(0).to_string();
        let which = rng.random_range(0..12);
        let (uri, body) = match which {
            0 => (
                "/services/create".to_string(),
                if rng.random() {
                    web.clone()
                } else {
                    job.clone()
                },
            ),
            1 => {
                let v = version(
                    &send(&app, Method::GET, &format!("/services/{service}"), vec![])
                        .await
                        .json,
                );
                let s = segment(&mut rng, &service, &ids);
                (
                    format!(
                        "/services/{s}/update?version={}&registryAuthFrom={}&rollback={}",
                        query_value(&mut rng, &v),
                        query_value(&mut rng, "spec"),
                        query_value(&mut rng, "")
                    ),
                    web.clone(),
                )
            }
            2 => ("/secrets/create".into(), secret_body.clone()),
            3 => {
                let s = segment(&mut rng, &secret, &ids);
                (
                    format!("/secrets/{s}/update?version={}", query_value(&mut rng, "1")),
                    secret_body.clone(),
                )
            }
            4 => ("/configs/create".into(), config_body.clone()),
            5 => {
                let s = segment(&mut rng, &config, &ids);
                (
                    format!("/configs/{s}/update?version={}", query_value(&mut rng, "1")),
                    config_body.clone(),
                )
            }
            6 => ("/networks/create".into(), network_body.clone()),
            7 => {
                let v = version(
                    &send(&app, Method::GET, &format!("/nodes/{node}"), vec![])
                        .await
                        .json,
                );
                let s = segment(&mut rng, &node, &ids);
                (
                    format!("/nodes/{s}/update?version={}", query_value(&mut rng, &v)),
                    node_body.clone(),
                )
            }
            8 => {
                let v = version(&send(&app, Method::GET, "/swarm", vec![]).await.json);
                (
                    format!(
                        "/swarm/update?version={}&rotateWorkerToken={}&rotateManagerToken={}",
                        query_value(&mut rng, &v),
                        query_value(&mut rng, "false"),
                        query_value(&mut rng, "false")
                    ),
                    swarm_body.clone(),
                )
            }
            9 => ("/swarm/init".into(), init_body.clone()),
            10 => ("/swarm/join".into(), join_body.clone()),
            // Reads with garbled filters, through the same error path.
            _ => {
                let what = [
                    "services", "tasks", "secrets", "configs", "networks", "nodes",
                ][rng.random_range(0..6)];
                let filters = mutate(
                    &mut rng,
                    json!({"name": {"web": true}, "label": {"a=b": true}}),
                );
                let uri = format!(
                    "/{what}?filters={}&status={}",
                    enc(&filters.to_string()),
                    query_value(&mut rng, "1")
                );
                batch.push((case, Method::GET, uri, Vec::new()));
                continue;
            }
        };
        let body = if rng.random_range(0..10) == 0 {
            body
        } else {
            mutate(&mut rng, body)
        };
        let mut body = body;
        tame(&mut body);
        let raw = bytes(&mut rng, &body);
        batch.push((case, Method::POST, uri, raw));
        if batch.len() >= IN_FLIGHT || case + 1 == cases {
            run_batch(&app, seed, &mut batch, &mut by_status).await;
        }
    }
    run_batch(&app, seed, &mut batch, &mut by_status).await;
    eprintln!(
        "random_input: {cases} cases in {:.1}s, answers by status: {by_status:?}",
        started.elapsed().as_secs_f64()
    );
    // Still answering, and still itself.
    let a = n.get(&format!("/nodes/{node}")).await;
    a.ok(200);
}

/// Requests sent at once: the store coalesces concurrent writes into one raft entry, so the
/// 10,000 cases take seconds, and handlers meet each other as they do under real clients.
/// Generation stays sequential and seeded; a failure prints its own request.
const IN_FLIGHT: usize = 16;

/// Sends the batch concurrently and checks every answer.
async fn run_batch<S>(
    app: &S,
    seed: u64,
    batch: &mut Vec<(usize, Method, String, Vec<u8>)>,
    by_status: &mut std::collections::BTreeMap<u16, usize>,
) where
    S: tower::Service<
            http::Request<axum::body::Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone,
{
    if std::env::var("SHOAL_RANDOM_TRACE").is_ok() {
        for (case, m, uri, body) in batch.iter() {
            eprintln!("TRACE {case} {m} {uri} {}", String::from_utf8_lossy(body));
        }
    }
    let answers = futures::future::join_all(
        batch
            .iter()
            .map(|(_, method, uri, body)| send(app, method.clone(), uri, body.clone())),
    )
    .await;
    for ((case, _, uri, body), a) in batch.drain(..).zip(answers) {
        check(case, seed, &uri, &body, &a);
        *by_status.entry(a.status.as_u16()).or_default() += 1;
    }
}

/// Sends one request through a router built once.
async fn send<S>(app: &S, method: Method, uri: &str, body: Vec<u8>) -> Answer
where
    S: tower::Service<
            http::Request<axum::body::Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone,
{
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body))
        .expect("request");
    let resp = match app.clone().oneshot(req).await {
        Ok(r) => r,
        Err(e) => match e {},
    };
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    Answer {
        status,
        headers,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// No 500 (nor any 5xx but Docker's 503 for a node in the wrong swarm state, as "already part
/// of a swarm"), and every error is Docker's `{"message": "..."}` as JSON.
#[track_caller]
fn check(case: usize, seed: u64, uri: &str, body: &[u8], a: &Answer) {
    let ctx = || {
        format!(
            "case {case} (seed {seed}): POST {uri} {} -> {} {}",
            String::from_utf8_lossy(&body[..body.len().min(400)]),
            a.status,
            &a.text[..a.text.len().min(400)]
        )
    };
    assert!(
        !a.status.is_server_error() || a.status.as_u16() == 503,
        "{}",
        ctx()
    );
    if a.status.is_client_error() || a.status.is_server_error() {
        let obj = a.json.as_object();
        assert!(
            obj.is_some_and(|o| o.len() == 1 && o.get("message").is_some_and(Value::is_string)),
            "not Docker's error format: {}",
            ctx()
        );
        assert_eq!(
            a.headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{}",
            ctx()
        );
    }
}
