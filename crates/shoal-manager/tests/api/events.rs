//! `GET /events` on a manager: the swarm's changes as Docker's events (Type, Action, Actor,
//! scope, time, timeNano), the filters, `since`/`until`, the engine's events merged in, live
//! streams, and a stream that ends with its client.

use crate::harness::{
    self, enc, engine_event, now_ns, spec, unix, Node, EVENTS_CHANGED, LIVE_EVENTS,
};
use axum::body::{Body, BodyDataStream};
use axum::extract::Request;
use futures::StreamExt;
use serde_json::{json, Value};
use shoal_manager::api;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// The events of a finished request (`until` in the past), one JSON value per line.
async fn history(n: &Node, since: i64, until: i64, filters: Option<Value>) -> Vec<Value> {
    let mut uri = format!("/v1.50/events?since={}&until={}", unix(since), unix(until));
    if let Some(f) = filters {
        uri.push_str(&format!("&filters={}", enc(&f.to_string())));
    }
    let a = n.get(&uri).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        a.headers.get("content-type").unwrap(),
        "application/json",
        "dockerd's content type below API 1.52"
    );
    a.text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// The swarm's events only (the fake engine's are shared by every test).
fn swarm(events: Vec<Value>) -> Vec<Value> {
    events
        .into_iter()
        .filter(|e| e["scope"] == "swarm")
        .collect()
}

/// (Type, Action, name) of each event, to compare lists at a glance.
fn brief(events: &[Value]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["Type"].as_str().unwrap().to_string(),
                e["Action"].as_str().unwrap().to_string(),
                e["Actor"]["Attributes"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

fn t(typ: &str, action: &str, name: &str) -> (String, String, String) {
    (typ.into(), action.into(), name.into())
}

/// An open events stream, read event by event.
struct Live {
    body: BodyDataStream,
    buf: Vec<u8>,
}

impl Live {
    async fn open(n: &Node, query: &str) -> Live {
        let req = Request::builder()
            .uri(format!("/v1.50/events?{query}"))
            .body(Body::empty())
            .unwrap();
        let resp = api::app(n.daemon.clone()).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        Live {
            body: resp.into_body().into_data_stream(),
            buf: Vec::new(),
        }
    }

    /// The next event within `limit`; None if none came or the stream ended.
    async fn next(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }

    /// Waits for the first event `want` takes, skipping others; panics after 10 s.
    async fn until(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(e) = self.next(Duration::from_secs(10)).await {
                if want(&e) {
                    return e;
                }
            }
        }
        panic!("no event: {what}");
    }
}

fn attrs(e: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(e["Actor"]["Attributes"].clone()).unwrap()
}

fn version(v: &Value) -> u64 {
    v["Version"]["Index"].as_u64().unwrap()
}

#[tokio::test]
async fn swarm_changes_read_back_as_dockers_events() {
    let n = Node::manager().await;
    let t0 = now_ns();
    let id = n.service(spec("web")).await;
    let svc = n.read(&format!("/services/{id}")).await;
    let mut new = svc["Spec"].clone();
    new["TaskTemplate"]["ContainerSpec"]["Image"] = json!("shoal-test/web:v2");
    new["Mode"]["Replicated"]["Replicas"] = json!(3);
    n.post(
        &format!("/services/{id}/update?version={}", version(&svc)),
        new,
    )
    .await
    .ok(200);
    n.delete(&format!("/services/{id}")).await.ok(200);
    let secret = n
        .post(
            "/secrets/create",
            json!({"Name": "db_pw", "Data": harness::b64("hunter2")}),
        )
        .await
        .ok(201)["ID"]
        .as_str()
        .unwrap()
        .to_string();
    n.delete(&format!("/secrets/{secret}")).await.ok(204);
    n.post(
        "/configs/create",
        json!({"Name": "app.conf", "Data": harness::b64("x=1")}),
    )
    .await
    .ok(201);
    let net = n
        .post(
            "/networks/create",
            json!({"Name": "backend", "Driver": "overlay"}),
        )
        .await
        .ok(201)["Id"]
        .as_str()
        .unwrap()
        .to_string();
    n.delete(&format!("/networks/{net}")).await.ok(204);
    let node = n.read("/nodes").await[0].clone();
    let node_id = node["ID"].as_str().unwrap().to_string();
    let mut node_spec = node["Spec"].clone();
    node_spec["Availability"] = json!("drain");
    n.post(
        &format!("/nodes/{node_id}/update?version={}", version(&node)),
        node_spec,
    )
    .await
    .ok(200);
    let t1 = now_ns();

    let events = swarm(history(&n, t0, t1, None).await);
    // The control loop writes the service too (the update's progress); the user's changes
    // come in the order they were made.
    let mine: Vec<Value> = events
        .iter()
        .filter(|e| {
            !(e["Type"] == "service"
                && e["Action"] == "update"
                && !attrs(e).contains_key("image.new"))
        })
        .cloned()
        .collect();
    assert_eq!(
        brief(&mine),
        [
            t("service", "create", "web"),
            t("service", "update", "web"),
            t("service", "remove", "web"),
            t("secret", "create", "db_pw"),
            t("secret", "remove", "db_pw"),
            t("config", "create", "app.conf"),
            t("network", "create", "backend"),
            t("network", "remove", "backend"),
            t("node", "update", harness::HOSTNAME),
        ],
        "{events:#?}"
    );
    let mut last = t0;
    for e in &events {
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        let mut keys = keys.clone();
        keys.sort();
        assert_eq!(
            keys,
            ["Action", "Actor", "Type", "scope", "time", "timeNano"],
            "moby's fields, no legacy status/id/from for swarm events: {e}"
        );
        let nano = e["timeNano"].as_i64().unwrap();
        assert!((t0..=t1).contains(&nano), "{e}");
        assert!(nano >= last, "ordered by time: {events:#?}");
        last = nano;
        assert_eq!(e["time"].as_i64().unwrap(), nano / 1_000_000_000, "{e}");
    }
    assert_eq!(mine[0]["Actor"]["ID"], id.as_str());
    let update = attrs(&mine[1]);
    for (k, v) in [
        ("name", "web"),
        ("image.old", "shoal-test/web:latest"),
        ("image.new", "shoal-test/web:v2"),
        ("replicas.old", "1"),
        ("replicas.new", "3"),
    ] {
        assert_eq!(update.get(k).map(String::as_str), Some(v), "{update:?}");
    }
    assert_eq!(mine[3]["Actor"]["ID"], secret.as_str());
    assert_eq!(mine[6]["Actor"]["ID"], net.as_str());
    assert_eq!(mine[8]["Actor"]["ID"], node_id.as_str());
    assert_eq!(
        attrs(&mine[8]),
        BTreeMap::from([
            ("name".to_string(), harness::HOSTNAME.to_string()),
            ("availability.old".to_string(), "active".to_string()),
            ("availability.new".to_string(), "drain".to_string()),
        ])
    );
    assert!(
        !events.iter().any(|e| e.to_string().contains("aHVudGVyMg")),
        "a secret's data never reaches an event"
    );
}

#[tokio::test]
async fn filters_and_windows_pick_events_as_dockerd_does() {
    let n = Node::manager().await;
    let t0 = now_ns();
    n.service(spec("web")).await;
    n.service(spec("db")).await;
    n.post(
        "/secrets/create",
        json!({"Name": "pw", "Data": harness::b64("x")}),
    )
    .await
    .ok(201);
    let middle = now_ns();
    n.post(
        "/networks/create",
        json!({"Name": "backend", "Driver": "overlay"}),
    )
    .await
    .ok(201);
    let t1 = now_ns();

    let got = |f: Value| {
        let n = &n;
        async move { brief(&swarm(history(n, t0, t1, Some(f)).await)) }
    };
    let creates = |names: &[(&str, &str)]| -> Vec<(String, String, String)> {
        names
            .iter()
            .map(|(ty, name)| t(ty, "create", name))
            .collect()
    };
    // The control loop may write the services meanwhile; creates are what these check.
    let only_creates = |v: Vec<(String, String, String)>| -> Vec<(String, String, String)> {
        v.into_iter().filter(|e| e.1 == "create").collect()
    };
    assert_eq!(
        only_creates(got(json!({"type": ["service"]})).await),
        creates(&[("service", "web"), ("service", "db")])
    );
    assert_eq!(
        got(json!({"type": ["secret", "network"]})).await,
        creates(&[("secret", "pw"), ("network", "backend")])
    );
    assert_eq!(
        only_creates(got(json!({"service": ["we"]})).await),
        creates(&[("service", "web")]),
        "a name prefix, as dockerd's fuzzy match"
    );
    assert_eq!(
        got(json!({"secret": ["pw"]})).await,
        creates(&[("secret", "pw")])
    );
    assert_eq!(
        got(json!({"network": ["backend"], "event": ["create"]})).await,
        creates(&[("network", "backend")])
    );
    assert_eq!(got(json!({"event": ["remove"]})).await, []);
    assert_eq!(got(json!({"scope": ["local"]})).await, []);
    assert_eq!(got(json!({"label": ["team=a"]})).await, []);
    assert_eq!(
        got(json!({"type": ["network"], "nonsense": ["x"]})).await,
        creates(&[("network", "backend")]),
        "dockerd ignores filter keys it does not know"
    );
    let before = only_creates(brief(&swarm(history(&n, t0, middle, None).await)));
    assert_eq!(
        before,
        creates(&[("service", "web"), ("service", "db"), ("secret", "pw")]),
        "until ends the window"
    );
    let after = brief(&swarm(history(&n, middle, t1, None).await));
    assert_eq!(after, creates(&[("network", "backend")]), "since starts it");
}

#[tokio::test]
async fn the_engines_events_merge_in_by_time() {
    let n = Node::manager().await;
    let tag = format!("ctr-{}", now_ns());
    let t0 = now_ns();
    engine_event(&format!("{tag}-a"), "create");
    n.post(
        "/secrets/create",
        json!({"Name": "between", "Data": harness::b64("x")}),
    )
    .await
    .ok(201);
    engine_event(&format!("{tag}-b"), "start");
    let t1 = now_ns();
    let events: Vec<Value> = history(&n, t0, t1, None)
        .await
        .into_iter()
        .filter(|e| e["Actor"]["ID"].as_str().unwrap().starts_with(&tag) || e["scope"] == "swarm")
        .collect();
    assert_eq!(
        brief(&events),
        [
            t("container", "create", &format!("{tag}-a")),
            t("secret", "create", "between"),
            t("container", "start", &format!("{tag}-b")),
        ]
    );
    assert_eq!(
        events[0]["status"], "create",
        "the engine's events pass as the engine wrote them"
    );

    // Live, from both.
    let mut live = Live::open(&n, "").await;
    let id = format!("{tag}-live");
    engine_event(&id, "die");
    let e = live
        .until("the engine's live event", |e| {
            e["Actor"]["ID"] == id.as_str()
        })
        .await;
    assert_eq!(
        (e["scope"].as_str(), e["Action"].as_str()),
        (Some("local"), Some("die"))
    );
    n.post(
        "/configs/create",
        json!({"Name": "live.conf", "Data": harness::b64("x")}),
    )
    .await
    .ok(201);
    let e = live
        .until("the config's event", |e| e["Type"] == "config")
        .await;
    assert_eq!(e["Actor"]["Attributes"]["name"], "live.conf");
}

#[tokio::test]
async fn live_events_come_as_they_commit_and_the_stream_ends_with_its_client() {
    let n = Node::manager().await;
    let key = json!({"shoal-test-stream": [format!("live-{}", now_ns())]}).to_string();
    let mut live = Live::open(&n, &format!("filters={}", enc(&key))).await;
    // The stream starts (and asks the engine) when first read.
    let deadline = Instant::now() + Duration::from_secs(10);
    while LIVE_EVENTS.lock().unwrap().get(&key) != Some(&1) {
        assert!(
            Instant::now() < deadline,
            "the engine was never asked for its events"
        );
        assert!(live.next(Duration::from_millis(20)).await.is_none());
    }

    // The write and the read run side by side: the event may come before the write's answer.
    let (mut to_event, mut to_answer, mut after_answer) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..20 {
        let name = format!("s{i}");
        let sent = Instant::now();
        let write = async {
            n.post(
                "/secrets/create",
                json!({"Name": name, "Data": harness::b64("x")}),
            )
            .await
            .ok(201);
            Instant::now()
        };
        let read = async {
            let e = live
                .until("the secret's event", |e| {
                    e["Actor"]["Attributes"]["name"] == name.as_str()
                })
                .await;
            (Instant::now(), e)
        };
        let (answered, (seen, e)) = tokio::join!(write, read);
        assert_eq!(
            (e["Type"].as_str(), e["Action"].as_str()),
            (Some("secret"), Some("create"))
        );
        to_event.push(seen - sent);
        to_answer.push(answered - sent);
        after_answer.push(seen.saturating_duration_since(answered));
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        (v[v.len() / 2], v[v.len() - 1])
    };
    eprintln!(
        "events, 20 secrets on a live stream (median, max): write sent -> event read {:?}; \
         write sent -> its answer (raft commit with fsync) {:?}; answer -> event (0 when the \
         event came first) {:?}",
        median(&mut to_event),
        median(&mut to_answer),
        median(&mut after_answer)
    );

    // The client goes away: the stream and the engine's connection end with it.
    drop(live);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let changed = EVENTS_CHANGED.notified();
        if LIVE_EVENTS.lock().unwrap().get(&key) == Some(&0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the engine's events stream outlived its client"
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), changed).await;
    }
}

#[tokio::test]
async fn until_ends_the_stream() {
    let n = Node::manager().await;
    let since = now_ns();
    let until = since + 1_500_000_000;
    let mut live = Live::open(&n, &format!("since={}&until={}", unix(since), unix(until))).await;
    n.post(
        "/secrets/create",
        json!({"Name": "in-time", "Data": harness::b64("x")}),
    )
    .await
    .ok(201);
    live.until("the secret's event", |e| e["Type"] == "secret")
        .await;
    // Nothing else happens; the stream ends by itself once `until` has passed.
    let mut ended = false;
    for _ in 0..100 {
        if live.next(Duration::from_secs(10)).await.is_none() {
            ended = true;
            break;
        }
    }
    assert!(ended, "the stream did not end at until");
    assert!(now_ns() >= until, "the stream ended before until");
}

#[tokio::test]
async fn bad_times_and_filters_are_refused_in_dockers_words() {
    let n = Node::manager().await;
    n.get("/events?since=yesterday").await.refused(
        400,
        &["invalid value for 'since': invalid timestamp \"yesterday\": invalid seconds"],
    );
    n.get("/events?until=1.x").await.refused(
        400,
        &[
            "invalid value for 'until'",
            "invalid character 'x' at position 0",
        ],
    );
    n.get("/events?since=20&until=10").await.refused(
        400,
        &["`since` time (20) cannot be after `until` time (10)"],
    );
    n.get(&format!(
        "/events?since=1&until=2&filters={}",
        enc("{not json")
    ))
    .await
    .refused(400, &["invalid filter"]);
    let a = n.get("/events?since=1&until=2&filters=%7B%7D").await;
    assert_eq!(a.status, 200, "{}", a.text);
}

#[tokio::test]
async fn outside_a_swarm_the_engine_answers_alone() {
    let n = Node::new().await;
    let id = format!("solo-{}", now_ns());
    let t0 = now_ns();
    engine_event(&id, "create");
    let t1 = now_ns();
    let a = n
        .get(&format!("/events?since={}&until={}", unix(t0), unix(t1)))
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.text.contains(&id), "{}", a.text);
}
