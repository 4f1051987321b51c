//! Typed access to the store: Docker objects in, Docker objects out, with `Version.Index` taken
//! from the store so it is always the version a write must quote.

use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_api::kind;
use shoal_api::models::{Config, Network, Node, Secret, Swarm};
use shoal_api::objects::{version, StoredService, StoredTask, StoredVolume};
use shoal_api::ApiError;
use shoal_store::{Expect, Object, Op, Store, StoreError};

pub use shoal_control::state::Versioned;

/// Objects shoal stores, and how each one's ID, name and version are reached.
pub trait Stored: Serialize + DeserializeOwned + Clone {
    /// Store kind.
    const KIND: &'static str;
    /// Object ID.
    fn id(&self) -> String;
    /// Unique name within the kind, if the kind has one.
    fn name(&self) -> Option<String>;
    /// Writes the store version into the object's `Version` field.
    fn set_version(&mut self, v: u64);
}

macro_rules! stored {
    ($t:ty, $kind:expr, |$s:ident| $id:expr, |$n:ident| $name:expr, |$o:ident, $v:ident| $set:expr) => {
        impl Stored for $t {
            const KIND: &'static str = $kind;
            fn id(&self) -> String {
                let $s = self;
                $id
            }
            fn name(&self) -> Option<String> {
                let $n = self;
                $name
            }
            fn set_version(&mut self, $v: u64) {
                let $o = self;
                $set
            }
        }
    };
}

stored!(
    StoredService,
    kind::SERVICE,
    |s| s.id().to_string(),
    |s| Some(s.name().to_string()),
    |o, v| o.service.version = version(v)
);
stored!(
    StoredTask,
    kind::TASK,
    |s| s.id().to_string(),
    |_s| None,
    |o, v| o.task.version = version(v)
);
stored!(
    Node,
    kind::NODE,
    |s| s.id.clone().unwrap_or_default(),
    |_s| None,
    |o, v| o.version = version(v)
);
stored!(
    Swarm,
    kind::CLUSTER,
    |s| s.id.clone().unwrap_or_default(),
    |_s| None,
    |o, v| o.version = version(v)
);
stored!(
    Secret,
    kind::SECRET,
    |s| s.id.clone().unwrap_or_default(),
    |s| s.spec.as_ref().and_then(|x| x.name.clone()),
    |o, v| o.version = version(v)
);
stored!(
    Config,
    kind::CONFIG,
    |s| s.id.clone().unwrap_or_default(),
    |s| s.spec.as_ref().and_then(|x| x.name.clone()),
    |o, v| o.version = version(v)
);
stored!(
    Network,
    kind::NETWORK,
    |s| s.id.clone().unwrap_or_default(),
    |s| s.name.clone(),
    |_o, _v| {}
);

stored!(
    StoredVolume,
    kind::VOLUME,
    |s| s.id.clone(),
    |s| Some(s.name.clone()),
    |_o, _v| {}
);

stored!(
    shoal_api::floating::StoredFloatingGrant,
    kind::FLOATING_GRANT,
    |s| s.address.clone(),
    |_s| None,
    |_o, _v| {}
);

stored!(
    shoal_api::floating::StoredNodeInterfaces,
    kind::NODE_INTERFACES,
    |s| s.node.clone(),
    |_s| None,
    |_o, _v| {}
);

stored!(
    shoal_api::images::StoredNodeImages,
    kind::NODE_IMAGES,
    |s| s.node.clone(),
    |_s| None,
    |_o, _v| {}
);

stored!(
    shoal_api::registry::StoredTag,
    kind::REGISTRY_TAG,
    |s| format!("{}:{}", s.repo, s.tag),
    |_s| None,
    |_o, _v| {}
);

stored!(
    shoal_api::registry::StoredManifest,
    kind::REGISTRY_MANIFEST,
    |s| s.digest.clone(),
    |_s| None,
    |_o, _v| {}
);

stored!(
    shoal_api::registry::StoredBlob,
    kind::REGISTRY_BLOB,
    |s| s.digest.clone(),
    |_s| None,
    |_o, _v| {}
);

stored!(
    shoal_api::floating::StoredFloatingIp,
    kind::FLOATING_IP,
    |s| s.address.clone(),
    |_s| None,
    |_o, _v| {}
);

/// The cluster CA with its key: replicated so any leader can sign node certificates, never
/// served by the API.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct RootCa {
    /// Always "root": there is one.
    pub id: String,
    /// Certificate PEM.
    pub cert_pem: String,
    /// Private key PEM.
    pub key_pem: String,
}
stored!(RootCa, "ca", |s| s.id.clone(), |_s| None, |_o, _v| {});

impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log.
        f.debug_struct("RootCa")
            .field("id", &self.id)
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// The swarm's unlock key (`SWMKEY-1-...`) while autolock is on: every manager seals its keys
/// with it. Replicated (sealed on disk like all raft data), served only by
/// `GET /swarm/unlockkey`, never printed.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct UnlockKey {
    /// Always "unlock": there is one.
    pub id: String,
    /// The key in Swarm's human-readable form; None while autolock is off.
    pub key: Option<String>,
}
stored!(
    UnlockKey,
    "unlockkey",
    |s| s.id.clone(),
    |_s| None,
    |_o, _v| {}
);

impl UnlockKey {
    /// The one record's ID.
    pub const ID: &'static str = "unlock";
}

impl std::fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log.
        f.debug_struct("UnlockKey")
            .field("set", &self.key.is_some())
            .finish()
    }
}

/// A manager's raft identity, keyed by node ID: what the membership reconciler adds to raft.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// Node ID.
    pub node_id: String,
    /// Raft node id.
    pub raft_id: u64,
    /// host:port of its RPC listener.
    pub addr: String,
}
stored!(
    Member,
    "member",
    |s| s.node_id.clone(),
    |_s| None,
    |_o, _v| {}
);

/// A node removed from the swarm: its certificate is refused from then on.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Removed {
    /// Node ID.
    pub node_id: String,
}
stored!(
    Removed,
    "removed",
    |s| s.node_id.clone(),
    |_s| None,
    |_o, _v| {}
);

/// An API client certificate the cluster CA issued (`shoal client-cert`), keyed by its serial:
/// what `shoal client-cert ls` lists and what every manager's API listener asks at each
/// handshake whether it is revoked. Holds its name while it is not revoked, so two live
/// certificates never share a name.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ClientCert {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// The name it was issued for (its CN).
    pub name: String,
    /// SHA-256 of its DER, lowercase hex.
    pub fingerprint: String,
    /// When it was issued (RFC 3339).
    pub created_at: String,
    /// When it expires (RFC 3339).
    pub not_after: String,
    /// When it was revoked; refused at every handshake from then on.
    #[serde(default)]
    pub revoked_at: Option<String>,
}
stored!(
    ClientCert,
    "clientcert",
    |s| s.serial.clone(),
    |s| s.revoked_at.is_none().then(|| s.name.clone()),
    |_o, _v| {}
);

/// Decodes a stored object for every reader of the store (the API and the live state): a
/// document that does not decode is logged and skipped, never fatal.
pub(crate) fn decode<T: Stored>(o: &Object) -> Option<Versioned<T>> {
    match serde_json::from_slice::<T>(&o.data) {
        Ok(mut obj) => {
            obj.set_version(o.version);
            Some(Versioned {
                obj,
                version: o.version,
            })
        }
        Err(e) => {
            tracing::error!(kind = %o.kind, id = %o.id, error = %e, "stored object does not decode; skipped");
            None
        }
    }
}

/// Reads one object by exact ID.
pub fn get<T: Stored>(store: &Store, id: &str) -> Option<Versioned<T>> {
    store.get(T::KIND, id).as_ref().and_then(decode)
}

/// Reads every object of a kind.
pub fn list<T: Stored>(store: &Store) -> Vec<Versioned<T>> {
    store.list(T::KIND).iter().filter_map(decode).collect()
}

/// Finds an object the way the Docker CLI expects: exact ID, then exact name, then unique ID prefix.
pub fn lookup<T: Stored>(store: &Store, key: &str) -> Option<Versioned<T>> {
    find::<T>(store, key).ok()
}

/// [`lookup`] for API handlers, as dockerd resolves a key (`getService` and its kin): exact ID,
/// then name (swarmkit indexes names lowercased, so `WEB` finds `web`), then ID prefix, which
/// must be unique: several matches are dockerd's "is ambiguous" (400), none its "not found".
pub fn find<T: Stored>(store: &Store, key: &str) -> Result<Versioned<T>, ApiError> {
    let not_found = || ApiError::not_found(format!("{} {key} not found", T::KIND));
    if key.is_empty() {
        return Err(not_found());
    }
    if let Some(o) = get::<T>(store, key) {
        return Ok(o);
    }
    if let Some(o) = store.find_by_name(T::KIND, key).as_ref().and_then(decode) {
        return Ok(o);
    }
    let mut named = list::<T>(store)
        .into_iter()
        .filter(|o| o.obj.name().is_some_and(|n| n.eq_ignore_ascii_case(key)));
    if let (Some(o), None) = (named.next(), named.next()) {
        return Ok(o);
    }
    let hits: Vec<_> = store
        .list(T::KIND)
        .into_iter()
        .filter(|o| o.id.starts_with(key))
        .collect();
    match hits.as_slice() {
        [] => Err(not_found()),
        [one] => decode(one).ok_or_else(not_found),
        many => Err(ApiError::invalid(format!(
            "{} {key} is ambiguous ({} matches found)",
            T::KIND,
            many.len()
        ))),
    }
}

/// Refuses an update made against another version than the stored one, as swarm does, so
/// that two clients updating the same object do not overwrite each other unseen.
pub fn at_version<T>(cur: Versioned<T>, version: u64) -> Result<Versioned<T>, ApiError> {
    if cur.version != version {
        return Err(ApiError::out_of_sequence());
    }
    Ok(cur)
}

/// A write that replaces an object, refused if someone else changed it since `expect`.
pub fn put<T: Stored>(obj: &T, expect: Expect) -> Result<Op, ApiError> {
    let data = serde_json::to_vec(obj)
        .map_err(|e| ApiError::internal(format!("encoding {} {}: {e}", T::KIND, obj.id())))?;
    Ok(Op::Put {
        kind: T::KIND.to_string(),
        id: obj.id(),
        name: obj.name(),
        expect,
        data,
    })
}

/// A write that deletes an object.
pub fn delete<T: Stored>(id: &str, expect: Expect) -> Op {
    Op::Delete {
        kind: T::KIND.to_string(),
        id: id.to_string(),
        expect,
    }
}

/// Maps store refusals to the errors Docker gives for the same situations.
pub fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict { .. } => ApiError::out_of_sequence(),
        StoreError::NotFound { kind, id } => ApiError::not_found(format!("{kind} {id} not found")),
        StoreError::AlreadyExists { kind, id } => ApiError::conflict(format!(
            "rpc error: code = AlreadyExists desc = {kind} {id} already exists"
        )),
        StoreError::NameConflict { kind, name } => ApiError::conflict(format!(
            "rpc error: code = AlreadyExists desc = name conflicts with an existing object: {kind} {name} already exists"
        )),
        StoreError::NotLeader { .. } => ApiError::unavailable(
            "rpc error: code = Unavailable desc = this manager is not the raft leader; retry",
        ),
        StoreError::Unavailable(m) => ApiError::unavailable(format!(
            "rpc error: code = Unavailable desc = {m}; the swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online."
        )),
        other => ApiError::internal(format!("store: {other}")),
    }
}

/// Writes a batch, mapping refusals to Docker's errors.
pub async fn write(store: &Store, ops: Vec<Op>) -> Result<u64, ApiError> {
    if ops.is_empty() {
        return Ok(store.last_applied());
    }
    store.write(ops).await.map_err(store_error)
}
