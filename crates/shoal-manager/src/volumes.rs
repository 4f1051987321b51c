//! Shared volumes as cluster objects (issue 19). A volume is made by `docker volume create -d
//! shoal` on a manager, or by a service whose mount gives a driver shoal mounts itself and its
//! options (what `docker stack deploy` sends for a compose file's `volumes:` section with
//! `driver_opts`); a later service write with other options updates it, and the next mount on a
//! node uses them. Each node that runs a task using a volume gets it in its assignments
//! ([`payloads`]) and mounts it (`shoal_agent::volumes`).
//!
//! Credential options (an sshfs password, a Ceph key: `shoal_api::volume::credential_keys`)
//! never stay in a spec: their values become secrets (`shoal-volume.NAME.KEY`, labelled
//! [`VOLUME_LABEL`]) that the volume names, and they are taken out of the service's mount
//! options before it is stored.

use crate::db;
use shoal_api::dispatch::VolumePayload;
use shoal_api::models::{MountType, Secret, SecretSpec, ServiceSpec};
use shoal_api::objects::{StoredService, StoredVolume, VolumePin};
use shoal_api::{id, volume, ApiError};
use shoal_store::{Expect, Op, Store};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Labels the secrets that hold a volume's credentials with the volume's name.
pub const VOLUME_LABEL: &str = "com.shoal.volume";

/// What a user asked for: a name, a driver and its options (`docker volume create`, or a
/// service's mount).
#[derive(Debug, Clone, Default)]
pub struct VolumeRequest {
    /// The volume's name.
    pub name: String,
    /// The driver (`shoal`, or `local` with a network filesystem `type`).
    pub driver: String,
    /// The options, credentials included.
    pub options: HashMap<String, String>,
    /// User labels.
    pub labels: BTreeMap<String, String>,
}

impl VolumeRequest {
    /// Validates the options for the driver; the error names the option.
    pub fn check(&self) -> Result<(), ApiError> {
        shoal_api::validate::object_name(&self.name)?;
        volume::parse(Some(&self.driver), &self.options).map(|_| ())
    }
}

/// The secret name holding credential `key` of volume `name`.
fn credential_secret_name(name: &str, key: &str) -> String {
    format!("shoal-volume.{name}.{key}")
}

/// The ops that store `req` as a new volume (and its credentials as secrets), or update the
/// existing one when its options differ; none when they are the same.
pub fn ops_for(store: &Store, req: &VolumeRequest) -> Result<Vec<Op>, ApiError> {
    req.check()?;
    let creds: HashSet<String> = volume::credential_keys(&req.options).into_iter().collect();
    let plain: BTreeMap<String, String> = req
        .options
        .iter()
        .filter(|(k, _)| !creds.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let cur = db::list::<StoredVolume>(store)
        .into_iter()
        .find(|v| v.obj.name == req.name);
    let now = id::now();
    let mut ops = Vec::new();
    let mut cred_ids = BTreeMap::new();
    let mut creds_changed = false;
    // The volume's current credential secrets, read once (not once per credential).
    let mut secrets: Vec<db::Versioned<Secret>> = if creds.is_empty() {
        Vec::new()
    } else {
        db::list::<Secret>(store)
    };
    for k in &creds {
        let value = req.options.get(k).cloned().unwrap_or_default();
        let sname = credential_secret_name(&req.name, k);
        let existing = secrets
            .iter()
            .position(|s| {
                s.obj.spec.as_ref().and_then(|x| x.name.as_deref()) == Some(sname.as_str())
            })
            .map(|i| secrets.swap_remove(i));
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD.encode(value.as_bytes());
        match existing {
            Some(s) if s.obj.spec.as_ref().and_then(|x| x.data.as_deref()) == Some(&data) => {
                cred_ids.insert(k.clone(), s.obj.id.clone().unwrap_or_default());
            }
            other => {
                // A changed credential is a new secret (secrets never change content).
                creds_changed = true;
                if let Some(old) = other {
                    ops.push(db::delete::<Secret>(
                        &old.obj.id.clone().unwrap_or_default(),
                        Expect::Version(old.version),
                    ));
                }
                let sid = id::new_id();
                let secret = Secret {
                    id: Some(sid.clone()),
                    created_at: Some(now.clone()),
                    updated_at: Some(now.clone()),
                    spec: Some(SecretSpec {
                        name: Some(sname),
                        labels: Some(HashMap::from([(
                            VOLUME_LABEL.to_string(),
                            req.name.clone(),
                        )])),
                        data: Some(data),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                ops.push(db::put(&secret, Expect::Absent)?);
                cred_ids.insert(k.clone(), sid);
            }
        }
    }
    match cur {
        Some(v) if v.obj.driver == req.driver && v.obj.options == plain && !creds_changed => {
            // Same options (a stack deployed again): nothing to write.
            if cred_ids.keys().eq(v.obj.credentials.keys()) {
                return Ok(ops);
            }
            let mut obj = v.obj.clone();
            obj.credentials = cred_ids;
            ops.push(db::put(&obj, Expect::Version(v.version))?);
        }
        Some(v) => {
            let mut obj = v.obj.clone();
            tracing::info!(volume = %obj.name, "volume options changed; the next mount on each node uses them");
            obj.driver = req.driver.clone();
            obj.options = plain;
            obj.credentials = cred_ids;
            obj.updated_at = now;
            ops.push(db::put(&obj, Expect::Version(v.version))?);
        }
        None => {
            let obj = StoredVolume {
                id: id::new_id(),
                name: req.name.clone(),
                driver: req.driver.clone(),
                options: plain,
                credentials: cred_ids,
                labels: req.labels.clone(),
                created_at: now.clone(),
                updated_at: now,
            };
            ops.push(db::put(&obj, Expect::Absent)?);
        }
    }
    Ok(ops)
}

/// The volumes a service's mounts declare (a shoal-mounted driver with options), as requests;
/// their credential values are taken out of the spec. A mount naming driver `shoal` without
/// options must name an existing volume.
pub fn from_service(store: &Store, spec: &mut ServiceSpec) -> Result<Vec<VolumeRequest>, ApiError> {
    let mounts = spec
        .task_template
        .as_mut()
        .and_then(|t| t.container_spec.as_mut())
        .and_then(|c| c.mounts.as_mut());
    let mut out = Vec::new();
    for (i, m) in mounts.into_iter().flatten().enumerate() {
        if m.typ != Some(MountType::VOLUME) {
            continue;
        }
        let Some(source) = m.source.clone().filter(|s| !s.is_empty()) else {
            continue;
        };
        let Some(dc) = m
            .volume_options
            .as_mut()
            .and_then(|o| o.driver_config.as_mut())
        else {
            continue;
        };
        let driver = dc.name.clone().unwrap_or_default();
        let options = dc.options.clone().unwrap_or_default();
        if !volume::is_managed(Some(&driver), &options) {
            continue;
        }
        if options.is_empty() {
            let known = db::list::<StoredVolume>(store)
                .iter()
                .any(|v| v.obj.name == source);
            if !known {
                return Err(ApiError::invalid(format!(
                    "Mounts[{i}]: volume {source:?} does not exist: create it with `docker volume create -d shoal --opt type=...` or give its options (volume-opt)"
                )));
            }
            continue;
        }
        let req = VolumeRequest {
            name: source,
            driver,
            options: options.clone(),
            labels: BTreeMap::new(),
        };
        req.check().map_err(|e| {
            ApiError::new(
                e.status,
                format!("Mounts[{i}].VolumeOptions.DriverConfig: {}", e.message),
            )
        })?;
        // The values live in secrets from here on, never in the stored spec.
        let creds = volume::credential_keys(&options);
        if let Some(o) = dc.options.as_mut() {
            for k in &creds {
                o.remove(k);
            }
        }
        out.push(req);
    }
    Ok(out)
}

/// The nodes the spec's node-local volumes live on: those named in `requests` (written with the
/// spec) or stored already. The scheduler places its tasks there only.
pub fn pins(store: &Store, spec: &ServiceSpec, requests: &[VolumeRequest]) -> Vec<VolumePin> {
    let stored = db::list::<StoredVolume>(store);
    let mut out: Vec<VolumePin> = Vec::new();
    for name in mounts_of(spec) {
        let (driver, options): (String, HashMap<String, String>) =
            match requests.iter().find(|r| r.name == name) {
                Some(r) => (r.driver.clone(), r.options.clone()),
                None => match stored.iter().find(|v| v.obj.name == name) {
                    Some(v) => (
                        v.obj.driver.clone(),
                        v.obj
                            .options
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    ),
                    None => continue,
                },
            };
        let creds = volume::credential_keys(&options);
        let Ok(cfg) =
            volume::parse_stored(Some(&driver), &options, creds.iter().map(String::as_str))
        else {
            continue;
        };
        if let volume::Backend::Local {
            node: Some(node), ..
        } = cfg.backend
        {
            if !out.iter().any(|p| p.volume == name) {
                out.push(VolumePin {
                    volume: name.to_string(),
                    node,
                });
            }
        }
    }
    out
}

/// The services whose mounts name volume `name`.
pub fn users(store: &Store, name: &str) -> Vec<String> {
    db::list::<StoredService>(store)
        .into_iter()
        .filter(|s| mounts_of(s.obj.spec()).any(|m| m == name))
        .map(|s| s.obj.name().to_string())
        .collect()
}

/// The volume names a spec's mounts use.
fn mounts_of(spec: &ServiceSpec) -> impl Iterator<Item = &str> {
    spec.task_template
        .as_ref()
        .and_then(|t| t.container_spec.as_ref())
        .and_then(|c| c.mounts.as_ref())
        .into_iter()
        .flatten()
        .filter(|m| m.typ == Some(MountType::VOLUME))
        .filter_map(|m| m.source.as_deref())
}

/// The ops that remove volume `name` and its credential secrets; refused while a service mounts
/// it (Docker's 409 for a volume in use).
pub fn remove_ops(store: &Store, v: &db::Versioned<StoredVolume>) -> Result<Vec<Op>, ApiError> {
    let users = users(store, &v.obj.name);
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "remove {}: volume is in use - [{}]",
            v.obj.name,
            users.join(", ")
        )));
    }
    let mut ops = vec![db::delete::<StoredVolume>(
        &v.obj.id,
        Expect::Version(v.version),
    )];
    for sid in v.obj.credentials.values() {
        ops.push(db::delete::<Secret>(sid, Expect::Any));
    }
    Ok(ops)
}

/// What a node needs to mount the volumes `names` (those its tasks' mounts name): options and
/// credential values. Names that are no cluster volume are the engine's own (left out).
pub fn payloads(store: &Store, names: &HashSet<String>) -> Vec<VolumePayload> {
    use base64::Engine;
    let mut out: Vec<VolumePayload> = db::list::<StoredVolume>(store)
        .into_iter()
        .filter(|v| names.contains(&v.obj.name))
        .map(|v| {
            let credentials = v
                .obj
                .credentials
                .iter()
                .filter_map(|(k, sid)| {
                    let s = db::get::<Secret>(store, sid)?;
                    let data = s.obj.spec.as_ref()?.data.as_deref()?.to_string();
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(data.as_bytes())
                        .ok()?;
                    Some((k.clone(), raw))
                })
                .collect();
            VolumePayload {
                name: v.obj.name.clone(),
                driver: v.obj.driver.clone(),
                options: v.obj.options.clone(),
                credentials,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The volume as Docker's API shows it (`docker volume inspect`): credentials as the name of
/// the secret holding them, `Scope: global`, and in `Status` the nodes where a task using it
/// runs now (so where it is mounted).
pub fn public(v: &StoredVolume, mounted_on: &[String]) -> serde_json::Value {
    let mut options: BTreeMap<String, String> = v.options.clone();
    for k in v.credentials.keys() {
        options.insert(
            k.clone(),
            format!("<secret {}>", credential_secret_name(&v.name, k)),
        );
    }
    serde_json::json!({
        "CreatedAt": v.created_at,
        "Driver": v.driver,
        "Labels": v.labels,
        "Mountpoint": "",
        "Name": v.name,
        "Options": options,
        "Scope": "global",
        "Status": {
            "MountedOn": mounted_on.join(","),
            "UpdatedAt": v.updated_at,
        },
    })
}
