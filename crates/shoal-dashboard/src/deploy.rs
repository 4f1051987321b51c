//! `POST /api/stacks`: deploy a stack from a pasted compose file, as `docker stack deploy -c`
//! does, through the Docker API in process. `compose::plan` (pure) says what to make; this
//! carries it out: external secrets, configs and networks looked up, missing networks created,
//! each service created or updated (at its current version) in the file's order. It stops at the
//! first refusal and answers the API's own error, naming what was already done.

use crate::compose::{self, StackPlan};
use crate::Dashboard;
use axum::body::Body;
use axum::extract::Request;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

/// What the page sends.
#[derive(serde::Deserialize)]
pub struct DeployRequest {
    /// The stack's name (`docker stack deploy ... NAME`).
    pub name: String,
    /// The compose file's text.
    pub compose: String,
}

/// A refusal: the status to answer and Docker's `{"message"}`.
#[derive(Debug)]
pub struct Refused {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, and what was done before it.
    pub message: String,
}

/// One call to the API: the decoded JSON body on success, the API's error otherwise.
async fn call(
    dash: &Dashboard,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, Refused> {
    let mut req = Request::new(match body {
        Some(b) => Body::from(b.to_string()),
        None => Body::empty(),
    });
    *req.method_mut() = method;
    *req.uri_mut() = path.parse().map_err(|_| Refused {
        status: StatusCode::BAD_REQUEST,
        message: format!("malformed path {path}"),
    })?;
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json"
            .parse()
            .unwrap_or_else(|_| http::HeaderValue::from_static("application/json")),
    );
    let res = match dash.api().clone().oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 16 << 20)
        .await
        .unwrap_or_default();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status.is_success() {
        Ok(v)
    } else {
        Err(Refused {
            status,
            message: v["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
        })
    }
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The ID of the secret or config named exactly `name`, if one exists.
async fn id_by_name(dash: &Dashboard, kind: &str, name: &str) -> Result<Option<String>, Refused> {
    let filters = encode(&json!({ "name": [name] }).to_string());
    let list = call(
        dash,
        Method::GET,
        &format!("/{kind}?filters={filters}"),
        None,
    )
    .await?;
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["Spec"]["Name"] == name)
        .and_then(|o| o["ID"].as_str().map(str::to_string)))
}

/// Deploys `req`; answers what was created and updated, and the file's warnings.
pub async fn deploy(dash: &Dashboard, req: DeployRequest) -> Result<Value, Refused> {
    let StackPlan {
        networks,
        external_networks,
        mut services,
        external_secrets,
        external_configs,
        warnings,
    } = compose::plan(&req.name, &req.compose).map_err(|e| Refused {
        status: StatusCode::BAD_REQUEST,
        message: e.to_string(),
    })?;
    let mut done: Vec<String> = Vec::new();
    let with_done = |mut r: Refused, done: &[String]| {
        if !done.is_empty() {
            r.message = format!("{} (done before it: {})", r.message, done.join(", "));
        }
        r
    };

    // What must exist already, before anything is made.
    for name in &external_networks {
        if call(
            dash,
            Method::GET,
            &format!("/networks/{}", encode(name)),
            None,
        )
        .await
        .is_err()
        {
            return Err(Refused {
                status: StatusCode::BAD_REQUEST,
                message: format!("network {name} is declared as external, but could not be found. You need to create a swarm-scoped network before the stack is deployed"),
            });
        }
    }
    for (kind, names, id_key, name_key, field) in [
        (
            "secrets",
            &external_secrets,
            "SecretID",
            "SecretName",
            "Secrets",
        ),
        (
            "configs",
            &external_configs,
            "ConfigID",
            "ConfigName",
            "Configs",
        ),
    ] {
        for name in names {
            let Some(id) = id_by_name(dash, kind, name).await? else {
                return Err(Refused {
                    status: StatusCode::BAD_REQUEST,
                    message: format!(
                        "{} {name} not found: create it first (`docker {} create`)",
                        &kind[..kind.len() - 1],
                        &kind[..kind.len() - 1]
                    ),
                });
            };
            for (_, spec) in services.iter_mut() {
                if let Some(refs) = spec["TaskTemplate"]["ContainerSpec"][field].as_array_mut() {
                    for r in refs.iter_mut().filter(|r| r[name_key] == name.as_str()) {
                        r[id_key] = json!(id);
                    }
                }
            }
        }
    }

    for (name, body) in &networks {
        let exists = call(
            dash,
            Method::GET,
            &format!("/networks/{}", encode(name)),
            None,
        )
        .await
        .is_ok();
        if !exists {
            call(dash, Method::POST, "/networks/create", Some(body))
                .await
                .map_err(|e| with_done(e, &done))?;
            done.push(format!("created network {name}"));
        }
    }

    let mut created = Vec::new();
    let mut updated = Vec::new();
    for (name, spec) in &services {
        match call(
            dash,
            Method::GET,
            &format!("/services/{}", encode(name)),
            None,
        )
        .await
        {
            Ok(current) if current["Spec"]["Name"] == name.as_str() => {
                let id = current["ID"].as_str().unwrap_or_default().to_string();
                let version = current["Version"]["Index"].as_u64().unwrap_or(0);
                call(
                    dash,
                    Method::POST,
                    &format!("/services/{}/update?version={version}", encode(&id)),
                    Some(spec),
                )
                .await
                .map_err(|e| with_done(e, &done))?;
                done.push(format!("updated service {name}"));
                updated.push(name.clone());
            }
            _ => {
                call(dash, Method::POST, "/services/create", Some(spec))
                    .await
                    .map_err(|e| with_done(e, &done))?;
                done.push(format!("created service {name}"));
                created.push(name.clone());
            }
        }
    }
    Ok(json!({
        "stack": req.name,
        "created": created,
        "updated": updated,
        "networks": networks.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        "warnings": warnings,
    }))
}
