//! `/secrets` and `/configs`: named blobs mounted into tasks. Secret data never leaves in answers.

use super::filters::Filters;
use super::{json, parse_body, AppState, Result};
use crate::db::{self, Stored};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use shoal_api::models::{Config, ConfigSpec, Secret, SecretSpec};
use shoal_api::objects::StoredService;
use shoal_api::{id, validate, ApiError};
use shoal_store::Expect;
use std::collections::HashMap;

/// What secrets and configs share, so one set of handlers serves both.
trait Blob: Stored {
    const MAX: usize;
    /// How dockerd words a bad `version` for this kind.
    const VERSIONED: super::query::Versioned;
    /// The filters dockerd takes for this kind (configs have no `names`).
    const FILTERS: &'static [&'static str];
    type Spec: serde::de::DeserializeOwned + Clone;
    fn spec_name(s: &Self::Spec) -> Option<String>;
    fn spec_data(s: &Self::Spec) -> Option<String>;
    fn spec_labels(s: &Self::Spec) -> Option<HashMap<String, String>>;
    fn make(id: String, now: String, spec: Self::Spec) -> Self;
    fn labels(&self) -> Option<HashMap<String, String>>;
    fn set_labels(&mut self, l: Option<HashMap<String, String>>);
    fn data(&self) -> Option<String>;
    /// The object as clients may see it.
    fn public(&self) -> Self;
    fn used_by(svc: &StoredService, id: &str) -> bool;
}

/// The two kinds differ only in their names, their size limit, whether the data is secret, and
/// where a service refers to them; this writes the rest once.
macro_rules! blob {
    ($ty:ident, $spec:ident, $max:expr, $versioned:ident, $filters:expr, hide_data: $hide:literal, $refs:ident, $ref_id:ident) => {
        impl Blob for $ty {
            const MAX: usize = $max;
            const VERSIONED: super::query::Versioned = super::query::Versioned::$versioned;
            const FILTERS: &'static [&'static str] = $filters;
            type Spec = $spec;
            fn spec_name(s: &$spec) -> Option<String> {
                s.name.clone()
            }
            fn spec_data(s: &$spec) -> Option<String> {
                s.data.clone()
            }
            fn spec_labels(s: &$spec) -> Option<HashMap<String, String>> {
                s.labels.clone()
            }
            fn make(id: String, now: String, spec: $spec) -> Self {
                $ty {
                    id: Some(id),
                    version: None,
                    created_at: Some(now.clone()),
                    updated_at: Some(now),
                    spec: Some(spec),
                }
            }
            fn labels(&self) -> Option<HashMap<String, String>> {
                self.spec.as_ref().and_then(|s| s.labels.clone())
            }
            fn set_labels(&mut self, l: Option<HashMap<String, String>>) {
                if let Some(s) = self.spec.as_mut() {
                    s.labels = l
                }
            }
            fn data(&self) -> Option<String> {
                self.spec.as_ref().and_then(|s| s.data.clone())
            }
            fn public(&self) -> Self {
                let mut o = self.clone();
                if let Some(spec) = o.spec.as_mut() {
                    if $hide {
                        spec.data = None;
                    }
                    shoal_api::moby::labels(&mut spec.labels);
                }
                o
            }
            fn used_by(svc: &StoredService, id: &str) -> bool {
                svc.spec()
                    .task_template
                    .as_ref()
                    .and_then(|t| t.container_spec.as_ref())
                    .and_then(|c| c.$refs.as_ref())
                    .is_some_and(|s| s.iter().any(|r| r.$ref_id.as_deref() == Some(id)))
            }
        }
    };
}

blob!(Secret, SecretSpec, validate::MAX_SECRET_SIZE, Secret, &["id", "label", "name", "names"], hide_data: true, secrets, secret_id);
blob!(Config, ConfigSpec, validate::MAX_CONFIG_SIZE, Config, &["id", "label", "name"], hide_data: false, configs, config_id);

async fn list<T: Blob>(d: AppState, q: HashMap<String, String>) -> Result<Response> {
    let m = d.manager().await?;
    let f = Filters::parse(&q, T::FILTERS)?;
    let mut out: Vec<T> = db::list::<T>(&m.store)
        .into_iter()
        .map(|v| v.obj)
        .filter(|o| f.any("id", |x| o.id().starts_with(x)))
        .filter(|o| f.any("name", |x| o.name().unwrap_or_default().starts_with(x)))
        .filter(|o| f.any("names", |x| o.name().as_deref() == Some(x)))
        .filter(|o| f.labels("label", o.labels().as_ref()))
        .map(|o| o.public())
        .collect();
    out.sort_by_key(|o| o.name());
    Ok(json(StatusCode::OK, &out))
}

async fn create<T: Blob>(d: AppState, body: Bytes) -> Result<Response> {
    let m = d.manager().await?;
    let spec: T::Spec = parse_body(&body)?;
    let name = T::spec_name(&spec).unwrap_or_default();
    validate::object_name(&name)?;
    super::name_free::<T>(&m.store, T::KIND, &name)?;
    let data = T::spec_data(&spec).unwrap_or_default();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(data.as_bytes())
        .map_err(|e| ApiError::invalid(format!("Data: not valid base64: {e}")))?;
    // swarmkit's bound: the cap itself is already too large.
    if raw.is_empty() || raw.len() >= T::MAX {
        return Err(ApiError::invalid_arg(format!(
            "{} data must be larger than 0 and less than {} bytes",
            T::KIND,
            T::MAX
        ))
        .into());
    }
    let oid = id::new_id();
    let obj = T::make(oid.clone(), id::now(), spec);
    match db::write(&m.store, vec![db::put(&obj, Expect::Absent)?]).await {
        Err(e) if e.status == 409 => Err(ApiError::conflict(format!(
            "rpc error: code = AlreadyExists desc = {} {name} already exists",
            T::KIND
        ))
        .into()),
        Err(e) => Err(e.into()),
        Ok(_) => {
            tracing::info!(kind = T::KIND, name = %name, id = %oid, "created");
            Ok(json(StatusCode::CREATED, &serde_json::json!({"ID": oid})))
        }
    }
}

async fn inspect<T: Blob>(d: AppState, key: String) -> Result<Response> {
    let m = d.manager().await?;
    Ok(json(
        StatusCode::OK,
        &db::find::<T>(&m.store, &key)?.obj.public(),
    ))
}

async fn update<T: Blob>(
    d: AppState,
    key: String,
    q: HashMap<String, String>,
    body: Bytes,
) -> Result<Response> {
    let m = d.manager().await?;
    let spec: T::Spec = parse_body(&body)?;
    let version = super::query::version(&q, T::VERSIONED)?;
    let cur = db::at_version(db::find::<T>(&m.store, &key)?, version)?;
    let same_name = T::spec_name(&spec).is_none_or(|n| Some(n) == cur.obj.name());
    let same_data = T::spec_data(&spec).is_none_or(|d| d.is_empty() || Some(d) == cur.obj.data());
    if !same_name || !same_data {
        return Err(ApiError::invalid_arg("only updates to Labels are allowed").into());
    }
    let mut obj = cur.obj.clone();
    obj.set_labels(T::spec_labels(&spec));
    db::write(&m.store, vec![db::put(&obj, Expect::Version(version))?]).await?;
    Ok(super::done())
}

async fn remove<T: Blob>(d: AppState, key: String) -> Result<Response> {
    let m = d.manager().await?;
    let cur = db::find::<T>(&m.store, &key)?;
    let oid = cur.obj.id();
    let users: Vec<String> = db::list::<StoredService>(&m.store)
        .into_iter()
        .filter(|s| T::used_by(&s.obj, &oid))
        .map(|s| s.obj.name().to_string())
        .collect();
    if !users.is_empty() {
        return Err(ApiError::invalid_arg(format!(
            "{} '{}' is in use by the following service: {}",
            T::KIND,
            cur.obj.name().unwrap_or_default(),
            users.join(", ")
        ))
        .into());
    }
    db::write(&m.store, vec![db::delete::<T>(&oid, Expect::Any)]).await?;
    Ok(axum::response::IntoResponse::into_response(
        StatusCode::NO_CONTENT,
    ))
}

/// The five routes of one kind, each a thin axum handler over the generic one above.
macro_rules! handlers {
    ($ty:ident, $path:literal, $list:ident, $create:ident, $inspect:ident, $update:ident, $remove:ident) => {
        #[doc = concat!("`GET /", $path, "`.")]
        pub async fn $list(
            State(d): State<AppState>,
            Query(q): Query<HashMap<String, String>>,
        ) -> Result<Response> {
            list::<$ty>(d, q).await
        }
        #[doc = concat!("`POST /", $path, "/create`.")]
        pub async fn $create(State(d): State<AppState>, body: Bytes) -> Result<Response> {
            create::<$ty>(d, body).await
        }
        #[doc = concat!("`GET /", $path, "/{id}`.")]
        pub async fn $inspect(
            State(d): State<AppState>,
            Path(k): Path<String>,
        ) -> Result<Response> {
            inspect::<$ty>(d, k).await
        }
        #[doc = concat!("`POST /", $path, "/{id}/update`.")]
        pub async fn $update(
            State(d): State<AppState>,
            Path(k): Path<String>,
            Query(q): Query<HashMap<String, String>>,
            body: Bytes,
        ) -> Result<Response> {
            update::<$ty>(d, k, q, body).await
        }
        #[doc = concat!("`DELETE /", $path, "/{id}`.")]
        pub async fn $remove(State(d): State<AppState>, Path(k): Path<String>) -> Result<Response> {
            remove::<$ty>(d, k).await
        }
    };
}

handlers!(
    Secret,
    "secrets",
    list_secrets,
    create_secret,
    inspect_secret,
    update_secret,
    remove_secret
);
handlers!(
    Config,
    "configs",
    list_configs,
    create_config,
    inspect_config,
    update_config,
    remove_config
);
