//! `/secrets` and `/configs`: create, inspect, list, update (labels only), remove. One set of
//! cases runs against both, as they share the handlers and Docker's rules.

use crate::harness::*;
use serde_json::{json, Value};

/// The kind under test: its path, its name in messages, and whether answers carry the data.
#[derive(Clone, Copy)]
struct Kind {
    path: &'static str,
    what: &'static str,
    shows_data: bool,
    max: usize,
}

const SECRETS: Kind = Kind {
    path: "secrets",
    what: "secret",
    shows_data: false,
    max: 500 * 1024,
};
const CONFIGS: Kind = Kind {
    path: "configs",
    what: "config",
    shows_data: true,
    max: 1000 * 1024,
};

async fn create(n: &Node, k: Kind, name: &str, data: &str) -> String {
    let a = n
        .post(
            &format!("/{}/create", k.path),
            json!({"Name": name, "Data": b64(data), "Labels": {"app": "web"}}),
        )
        .await;
    a.ok(201)["ID"].as_str().unwrap().to_string()
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|o| o["Spec"]["Name"].as_str().unwrap())
        .collect()
}

async fn create_and_read_back(k: Kind) {
    let n = Node::manager().await;
    let id = create(&n, k, "db_password.v1", "s3cret").await;
    assert_eq!(id.len(), 25);
    let o = n.read(&format!("/{}/{id}", k.path)).await;
    assert_eq!(o["ID"], id.as_str());
    assert!(o["Version"]["Index"].as_u64().unwrap() > 0);
    assert!(o["CreatedAt"].is_string() && o["UpdatedAt"].is_string());
    assert_eq!(o["Spec"]["Name"], "db_password.v1");
    assert_eq!(o["Spec"]["Labels"], json!({"app": "web"}));
    if k.shows_data {
        assert_eq!(o["Spec"]["Data"], b64("s3cret"));
    } else {
        assert!(
            o["Spec"].get("Data").is_none(),
            "secret data never leaves: {o}"
        );
    }
    // By name and by a unique ID prefix; and listed.
    assert_eq!(n.read(&format!("/{}/db_password.v1", k.path)).await, o);
    assert_eq!(n.read(&format!("/{}/{}", k.path, &id[..5])).await, o);
    assert_eq!(n.read(&format!("/{}", k.path)).await, json!([o]));
}

#[tokio::test]
async fn secrets_create_and_read_back() {
    create_and_read_back(SECRETS).await;
}

#[tokio::test]
async fn configs_create_and_read_back() {
    create_and_read_back(CONFIGS).await;
}

async fn lowercase_keys(k: Kind) {
    let n = Node::manager().await;
    let a = n
        .post(
            &format!("/{}/create", k.path),
            json!({"name": "lower", "data": b64("x"), "labels": {"Team": "a"}}),
        )
        .await;
    let id = a.ok(201)["ID"].as_str().unwrap().to_string();
    let o = n.read(&format!("/{}/{id}", k.path)).await;
    assert_eq!(o["Spec"]["Name"], "lower");
    assert_eq!(
        o["Spec"]["Labels"],
        json!({"Team": "a"}),
        "label keys stay as sent"
    );
}

#[tokio::test]
async fn secrets_take_lowercase_keys() {
    lowercase_keys(SECRETS).await;
}

#[tokio::test]
async fn configs_take_lowercase_keys() {
    lowercase_keys(CONFIGS).await;
}

async fn list_filters(k: Kind) {
    let n = Node::manager().await;
    let a = create(&n, k, "app.key", "1").await;
    create(&n, k, "app.key.old", "2").await;
    let c = n
        .post(
            &format!("/{}/create", k.path),
            json!({"Name": "other", "Data": b64("3"), "Labels": {"tier": "db"}}),
        )
        .await
        .ok(201)["ID"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        names(&n.read(&format!("/{}", k.path)).await),
        ["app.key", "app.key.old", "other"],
        "sorted by name"
    );
    // Exact names are a secrets filter only (dockerd's `newListConfigsFilters` lacks it).
    let names_filter = format!("/{}?filters={}", k.path, enc(r#"{"names":["app.key"]}"#));
    if k.path == "secrets" {
        assert_eq!(names(&n.read(&names_filter).await), ["app.key"]);
    } else {
        n.get(&names_filter)
            .await
            .refused(400, &["invalid filter 'names'"]);
    }
    let cases = [
        (json!({"name": ["app.key"]}), vec!["app.key", "app.key.old"]),
        (json!({"id": [&a[..6]]}), vec!["app.key"]),
        (json!({"id": [&c]}), vec!["other"]),
        (json!({"label": ["tier=db"]}), vec!["other"]),
        (json!({"label": ["app"]}), vec!["app.key", "app.key.old"]),
    ];
    for (f, want) in cases {
        let uri = format!("/{}?filters={}", k.path, enc(&f.to_string()));
        assert_eq!(names(&n.read(&uri).await), want, "{f}");
    }
    for (raw, parts) in [
        ("{", &["invalid filter", "not JSON"][..]),
        ("[]", &["invalid filter", "object"][..]),
        ("{\"driver\":[\"x\"]}", &["invalid filter 'driver'"][..]),
    ] {
        n.get(&format!("/{}?filters={}", k.path, enc(raw)))
            .await
            .refused(400, parts);
    }
}

#[tokio::test]
async fn secrets_list_filters() {
    list_filters(SECRETS).await;
}

#[tokio::test]
async fn configs_list_filters() {
    list_filters(CONFIGS).await;
}

async fn create_refusals(k: Kind) {
    let n = Node::manager().await;
    create(&n, k, "taken", "x").await;
    let before = n.read(&format!("/{}", k.path)).await;
    let too_big = b64(&"x".repeat(k.max + 1));
    let conflict = format!("{} taken already exists", k.what);
    // Names are unique without regard to case, as in swarmkit.
    let conflict_case = format!("{} Taken already exists", k.what);
    let cases: Vec<(String, u16, Vec<&str>)> = vec![
        ("{".into(), 400, vec!["invalid JSON"]),
        ("".into(), 400, vec!["empty"]),
        (
            r#"{"Name": 7, "Data": "eA=="}"#.into(),
            400,
            vec!["Name", "invalid type: integer"],
        ),
        (
            r#"{"Name": "a", "Data": ["eA=="]}"#.into(),
            400,
            vec!["Data", "sequence"],
        ),
        (
            r#"{"Name": "a", "Data": "eA==", "Labels": {"k": 1}}"#.into(),
            400,
            vec!["Labels.k"],
        ),
        (
            r#"{"Name": "a", "Data": "%%%"}"#.into(),
            400,
            vec!["Data", "base64"],
        ),
        (
            r#"{"Name": "a"}"#.into(),
            400,
            vec!["data must be larger than 0"],
        ),
        (
            format!(r#"{{"Name": "a", "Data": "{too_big}"}}"#),
            400,
            vec!["data must be larger than 0 and less than"],
        ),
        (r#"{"Data": "eA=="}"#.into(), 400, vec!["invalid name"]),
        (
            r#"{"Name": "bad name", "Data": "eA=="}"#.into(),
            400,
            vec!["invalid name, only 64"],
        ),
        (
            r#"{"Name": ".hidden", "Data": "eA=="}"#.into(),
            400,
            vec!["invalid name"],
        ),
        (
            r#"{"Name": "taken", "Data": "eQ=="}"#.into(),
            409,
            vec![conflict.as_str()],
        ),
        (
            r#"{"Name": "Taken", "Data": "eQ=="}"#.into(),
            409,
            vec![conflict_case.as_str()],
        ),
    ];
    for (body, status, parts) in &cases {
        let a = n
            .post_raw(&format!("/{}/create", k.path), body.clone())
            .await;
        assert_eq!(
            a.status.as_u16(),
            *status,
            "{}: {}",
            &body[..body.len().min(80)],
            a.text
        );
        a.refused(*status, parts);
        assert_eq!(n.read(&format!("/{}", k.path)).await, before);
    }
}

#[tokio::test]
async fn secrets_create_refusals_change_nothing() {
    create_refusals(SECRETS).await;
}

#[tokio::test]
async fn configs_create_refusals_change_nothing() {
    create_refusals(CONFIGS).await;
}

async fn update_labels(k: Kind) {
    let n = Node::manager().await;
    let id = create(&n, k, "pw", "x").await;
    let uri = format!("/{}/{id}", k.path);
    let o = n.read(&uri).await;
    let v = o["Version"]["Index"].as_u64().unwrap();
    // What `docker stack deploy` sends for an existing one: the whole spec, data included.
    n.post(
        &format!("/{}/{id}/update?version={v}", k.path),
        json!({"Name": "pw", "Data": b64("x"), "Labels": {"app": "api"}}),
    )
    .await
    .ok(200);
    let after = n.read(&uri).await;
    assert!(after["Version"]["Index"].as_u64().unwrap() > v);
    assert_eq!(after["Spec"]["Labels"], json!({"app": "api"}));
    assert_eq!(after["Spec"]["Name"], "pw");
    if k.shows_data {
        assert_eq!(after["Spec"]["Data"], b64("x"), "the data stays");
    }
}

#[tokio::test]
async fn secrets_update_labels() {
    update_labels(SECRETS).await;
}

#[tokio::test]
async fn configs_update_labels() {
    update_labels(CONFIGS).await;
}

async fn update_refusals(k: Kind) {
    let n = Node::manager().await;
    let id = create(&n, k, "pw", "x").await;
    let uri = format!("/{}/{id}", k.path);
    let o = n.read(&uri).await;
    let v = o["Version"]["Index"].as_u64().unwrap();
    let at = format!("/{}/{id}/update?version={v}", k.path);
    let labels = r#"{"Name": "pw", "Labels": {"a": "b"}}"#.to_string();
    let cases: Vec<(String, String, u16, &[&str])> = vec![
        (
            format!("/{}/{id}/update?version={}", k.path, v + 7),
            labels.clone(),
            409,
            &["update out of sequence"],
        ),
        (
            format!("/{}/{id}/update", k.path),
            labels.clone(),
            400,
            &["version"],
        ),
        (at.clone(), "{".into(), 400, &["invalid JSON"]),
        (at.clone(), "".into(), 400, &["empty"]),
        (
            at.clone(),
            r#"{"Labels": "a=b"}"#.into(),
            400,
            &["Labels", "map"],
        ),
        (
            at.clone(),
            r#"{"Name": "renamed", "Labels": {}}"#.into(),
            400,
            &["only updates to Labels are allowed"],
        ),
        (
            at.clone(),
            format!(r#"{{"Name": "pw", "Data": "{}"}}"#, b64("changed")),
            400,
            &["only updates to Labels are allowed"],
        ),
        (
            format!("/{}/nosuch/update?version={v}", k.path),
            labels.clone(),
            404,
            &[],
        ),
    ];
    for (u, body, status, parts) in &cases {
        let a = n.post_raw(u, body.clone()).await;
        assert_eq!(a.status.as_u16(), *status, "{u} {body}: {}", a.text);
        a.refused(*status, parts);
        if *status == 404 {
            assert_eq!(a.message(), format!("{} nosuch not found", k.what));
        }
        assert_eq!(n.read(&uri).await, o, "{u} {body} changed it");
    }
}

#[tokio::test]
async fn secrets_update_refusals_change_nothing() {
    update_refusals(SECRETS).await;
}

#[tokio::test]
async fn configs_update_refusals_change_nothing() {
    update_refusals(CONFIGS).await;
}

async fn remove(k: Kind) {
    let n = Node::manager().await;
    let used = create(&n, k, "used", "x").await;
    let free = create(&n, k, "free", "y").await;
    let mut svc = spec("web");
    let refs = if k.path == "secrets" {
        json!([{"SecretID": used, "SecretName": "used", "File": {"Name": "used"}}])
    } else {
        json!([{"ConfigID": used, "ConfigName": "used", "File": {"Name": "/used"}}])
    };
    let field = if k.path == "secrets" {
        "Secrets"
    } else {
        "Configs"
    };
    svc["TaskTemplate"]["ContainerSpec"][field] = refs;
    n.service(svc).await;

    let a = n.delete(&format!("/{}/free", k.path)).await;
    assert_eq!(a.status.as_u16(), 204, "{}", a.text);
    n.get(&format!("/{}/{free}", k.path))
        .await
        .refused(404, &[&format!("{} {free} not found", k.what)]);

    let before = n.read(&format!("/{}", k.path)).await;
    n.delete(&format!("/{}/used", k.path)).await.refused(
        400,
        &[&format!(
            "{} 'used' is in use by the following service: web",
            k.what
        )],
    );
    n.delete(&format!("/{}/nosuch", k.path))
        .await
        .refused(404, &[&format!("{} nosuch not found", k.what)]);
    assert_eq!(n.read(&format!("/{}", k.path)).await, before);
}

#[tokio::test]
async fn secrets_remove() {
    remove(SECRETS).await;
}

#[tokio::test]
async fn configs_remove() {
    remove(CONFIGS).await;
}
