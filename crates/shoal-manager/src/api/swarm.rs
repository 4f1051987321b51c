//! `docker swarm init / join / inspect / update / leave`: parse and validate, call the node's
//! lifecycle ([`crate::node`]) or the store, and answer in Docker's format.

use super::{json, parse_body, AppState, Error, Result};
use crate::db::{self, UnlockKey};
use crate::node::init::{default_spec, join_token, merge_spec, InitPlan};
use crate::node::join::JoinPlan;
use crate::node::{self, NodeError};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use shoal_api::models::{Swarm, SwarmInitRequest, SwarmJoinRequest, SwarmSpec, TlsInfo};
use shoal_api::objects::version;
use shoal_api::{id, ApiError};
use shoal_pki::{digest_of, JoinToken};
use shoal_store::Expect;
use std::collections::HashMap;

impl From<NodeError> for Error {
    fn from(e: NodeError) -> Self {
        let status = match &e {
            NodeError::Store(api) => return Error(api.clone()),
            NodeError::AlreadyInSwarm
            | NodeError::NotInSwarm
            | NodeError::ManagerLeaveNeedsForce(_)
            | NodeError::NotAManagerToRecover
            | NodeError::ManagerUnreachable { .. }
            | NodeError::Locked
            | NodeError::LockedLeave => 503,
            NodeError::NotLocked => 409,
            NodeError::InvalidUnlockKey => 401,
            NodeError::RemoteAddr(_)
            | NodeError::TokenRefused(_)
            | NodeError::AddressInUse(_)
            | NodeError::CaMismatch
            | NodeError::InvalidKeyString => 400,
            _ => 500,
        };
        Error(ApiError::new(status, e.to_string()))
    }
}

/// Fields of Docker's `InitRequest` and `JoinRequest` that the generated models lack, read
/// through the same decoding as the rest of the body (any letter case).
#[derive(serde::Deserialize, Default)]
struct Extras {
    #[serde(rename = "AutoLockManagers", default)]
    auto_lock_managers: Option<bool>,
    #[serde(rename = "Availability", default)]
    availability: Option<String>,
}

/// The address this node advertises: the one asked for, else the host's outward address.
fn advertise_addr(req: &SwarmInitRequest) -> std::result::Result<String, ApiError> {
    let raw = req
        .advertise_addr
        .clone()
        .filter(|a| !a.is_empty())
        .or_else(|| {
            req.listen_addr
                .clone()
                .filter(|a| !a.is_empty() && !a.starts_with("0.0.0.0"))
        })
        .unwrap_or_default();
    let (host, port) = match raw.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (
            h.to_string(),
            p.parse::<u16>().map_err(|_| {
                ApiError::invalid(format!("AdvertiseAddr: invalid port in {raw:?}"))
            })?,
        ),
        _ => (raw.clone(), 2377),
    };
    let host = if host.is_empty() {
        node::local::local_ipv4().unwrap_or_else(|| "127.0.0.1".to_string())
    } else if host.parse::<std::net::IpAddr>().is_ok() {
        host
    } else {
        return Err(ApiError::invalid(format!(
            "AdvertiseAddr: {host:?} is not an IP address (interface names are not supported yet)"
        )));
    };
    Ok(format!("{host}:{port}"))
}

/// `POST /swarm/init`.
pub async fn init(State(d): State<AppState>, body: Bytes) -> Result<Response> {
    let req: SwarmInitRequest = parse_body(&body)?;
    let extras: Extras = parse_body(&body)?;
    if d.lock.is_locked() {
        return Err(NodeError::Locked.into());
    }
    if req.force_new_cluster == Some(true) {
        let node_id = node::init::force_new_cluster(&d).await?;
        return Ok(json(StatusCode::OK, &node_id));
    }
    if d.manager.read().await.is_some() {
        return Err(NodeError::AlreadyInSwarm.into());
    }
    for (i, pool) in req.default_addr_pool.iter().flatten().enumerate() {
        let field = format!("DefaultAddrPool[{i}]");
        let cidr: shoal_api::dispatch::ipnet_str::Ipv4Cidr = pool
            .parse()
            .map_err(|e| ApiError::invalid_arg(format!("{field}: {e}")))?;
        // A pool is where subnets are taken from, so only the reserved ranges refuse it whole;
        // subnets on host routes are skipped when picked.
        shoal_control::allocator::check_subnet(&field, &cidr, &[])?;
    }
    if req
        .default_addr_pool
        .as_ref()
        .is_some_and(|p| !p.is_empty() && p != &["10.0.0.0/8".to_string()])
        || req.subnet_size.is_some_and(|s| s != 0 && s != 24)
    {
        return Err(ApiError::invalid(
            "DefaultAddrPool/SubnetSize: shoal allocates from 10.0.0.0/8 in /24s only, for now",
        )
        .into());
    }
    if let Some(spec) = &req.spec {
        // A new swarm takes the spec's name, so only the other rules apply.
        let name = spec.name.as_deref().unwrap_or("default");
        shoal_api::validate::swarm_spec(spec, name)?;
    }
    let plan = InitPlan {
        addr: advertise_addr(&req)?,
        spec: req.spec,
        data_path_port: req.data_path_port,
        autolock: extras.auto_lock_managers == Some(true),
    };
    let node_id = node::init::init(&d, plan).await?;
    Ok(json(StatusCode::OK, &node_id))
}

/// `GET /swarm`.
pub async fn inspect(State(d): State<AppState>) -> Result<Response> {
    let m = d.manager().await?;
    let mut c = db::list::<Swarm>(&m.store)
        .into_iter()
        .next()
        .ok_or_else(ApiError::not_a_manager)?;
    c.obj.tls_info = c.obj.tls_info.map(with_issuer);
    Ok(json(StatusCode::OK, &c.obj))
}

/// The swarm's TLS information as Docker shows it (for the swarm and for each node): the
/// root CA, and its subject and public key (base64 of their DER), which the store does not
/// keep because they are read from the certificate.
pub(crate) fn with_issuer(mut t: TlsInfo) -> TlsInfo {
    use base64::Engine as _;
    let b64 = |b: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(b);
    if let Some(Ok((subject, key))) = t.trust_root.as_deref().map(shoal_pki::issuer_of) {
        t.cert_issuer_subject = Some(b64(subject));
        t.cert_issuer_public_key = Some(b64(key));
    }
    t
}

/// The swarm's [`with_issuer`] TLS information, for the nodes' descriptions.
pub(crate) fn tls_info(store: &shoal_store::Store) -> Option<TlsInfo> {
    db::list::<Swarm>(store)
        .into_iter()
        .next()
        .and_then(|c| c.obj.tls_info)
        .map(with_issuer)
}

/// `POST /swarm/update?version=N&rotateWorkerToken=&rotateManagerToken=`.
pub async fn update(
    State(d): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response> {
    let m = d.manager().await?;
    let spec: SwarmSpec = parse_body(&body)?;
    let v = super::query::version(&q, super::query::Versioned::Swarm)?;
    let flag = |k: &str| -> std::result::Result<bool, ApiError> {
        match q.get(k).map(String::as_str) {
            None | Some("") => Ok(false),
            Some(v) => super::query::parse_bool(v)
                .map_err(|_| ApiError::invalid(format!("invalid value for {k}: {v}"))),
        }
    };
    let (rotate_worker, rotate_manager, rotate_unlock) = (
        flag("rotateWorkerToken")?,
        flag("rotateManagerToken")?,
        flag("rotateManagerUnlockKey")?,
    );
    let mut c = db::list::<Swarm>(&m.store)
        .into_iter()
        .next()
        .ok_or_else(ApiError::not_a_manager)?;
    if c.version != v {
        return Err(ApiError::out_of_sequence().into());
    }
    shoal_api::validate::swarm_spec(
        &spec,
        c.obj
            .spec
            .as_ref()
            .and_then(|s| s.name.as_deref())
            .unwrap_or("default"),
    )?;
    let autolock_of = |s: &SwarmSpec| {
        s.encryption_config
            .as_ref()
            .and_then(|e| e.auto_lock_managers)
            .unwrap_or(false)
    };
    let was_locking = c.obj.spec.as_ref().is_some_and(autolock_of);
    let mut merged = c.obj.spec.clone().unwrap_or_else(default_spec);
    // The CLI sends the whole spec back: its EncryptionConfig is the autolock setting wanted.
    if let Some(e) = spec.encryption_config.clone() {
        merged.encryption_config = Some(e);
    }
    merge_spec(&mut merged, spec);
    let locking = autolock_of(&merged);
    c.obj.spec = Some(merged);
    // A new unlock key when autolock is switched on or its key rotated; none when off.
    let unlock_key = match (locking, was_locking && !rotate_unlock) {
        (false, _) => Some(None),
        (true, true) => None,
        (true, false) => {
            let key = shoal_store::seal::Key::generate()
                .map_err(|e| ApiError::internal(format!("making an unlock key: {e}")))?;
            Some(Some(node::lock::human_key(&key)))
        }
    };
    let trust_root = c
        .obj
        .tls_info
        .as_ref()
        .and_then(|t| t.trust_root.clone())
        .unwrap_or_default();
    let digest = digest_of(&trust_root);
    if let Some(t) = c.obj.join_tokens.as_mut() {
        if rotate_worker {
            t.worker = Some(join_token(digest));
        }
        if rotate_manager {
            t.manager = Some(join_token(digest));
        }
    }
    c.obj.updated_at = Some(id::now());
    c.obj.version = version(v);
    let mut ops = vec![db::put(&c.obj, Expect::Version(v))?];
    if let Some(key) = unlock_key {
        ops.push(db::put(
            &UnlockKey {
                id: UnlockKey::ID.into(),
                key,
            },
            Expect::Any,
        )?);
    }
    db::write(&m.store, ops).await?;
    // This manager's keys follow at once (the others through their followers), so a restart
    // right after `swarm update --autolock=true` is locked.
    node::lock::reconcile(&d.data_dir, &d.lock, &m.store)?;
    Ok(super::done())
}

/// `POST /swarm/leave?force=`.
pub async fn leave(
    State(d): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let force = super::bool_param(&q, "force");
    node::leave::leave(&d, force).await?;
    Ok(super::done())
}

/// `POST /swarm/join`: joins through the first manager address ([`node::join`]).
pub async fn join(State(d): State<AppState>, body: Bytes) -> Result<Response> {
    let req: SwarmJoinRequest = parse_body(&body)?;
    let extras: Extras = parse_body(&body)?;
    if d.lock.is_locked() {
        return Err(NodeError::Locked.into());
    }
    if d.node.read().await.is_some() {
        return Err(NodeError::AlreadyInSwarm.into());
    }
    let token_text = req.join_token.clone().unwrap_or_default();
    let token = JoinToken::parse(&token_text)
        .map_err(|e| ApiError::invalid(format!("JoinToken: invalid join token: {e}")))?;
    let remote_text = req
        .remote_addrs
        .clone()
        .unwrap_or_default()
        .into_iter()
        .next()
        .ok_or_else(|| {
            ApiError::invalid("RemoteAddrs: at least one manager address is required")
        })?;
    let remote_text = if remote_text.contains(':') {
        remote_text
    } else {
        format!("{remote_text}:2377")
    };
    let remote: std::net::SocketAddr = tokio::net::lookup_host(&remote_text)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ApiError::invalid(format!("RemoteAddrs: cannot resolve {remote_text:?}")))?;
    let advertise = match req.advertise_addr.as_deref().filter(|a| !a.is_empty()) {
        Some(a) if a.contains(':') => a.to_string(),
        Some(a) => format!("{a}:2377"),
        None => {
            let ip = node::local::local_addr_towards(&remote).ok_or_else(|| {
                ApiError::invalid(
                    "AdvertiseAddr: could not find a local address; set --advertise-addr",
                )
            })?;
            format!("{ip}:2377")
        }
    };
    let availability = extras.availability.unwrap_or_default().to_lowercase();
    let plan = JoinPlan {
        token,
        token_text,
        remote,
        advertise,
        availability,
    };
    node::join::join(&d, plan).await?;
    Ok(super::done())
}

/// `GET /swarm/unlockkey`: the unlock key while autolock is on, else `""` (the CLI then says
/// "no unlock key is set", as with Swarm).
pub async fn unlock_key(State(d): State<AppState>) -> Result<Response> {
    let m = d.manager().await?;
    let locking = db::list::<Swarm>(&m.store)
        .into_iter()
        .next()
        .and_then(|c| c.obj.spec?.encryption_config?.auto_lock_managers)
        .unwrap_or(false);
    let key = match locking {
        true => db::get::<UnlockKey>(&m.store, UnlockKey::ID).and_then(|u| u.obj.key),
        false => None,
    };
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"UnlockKey": key.unwrap_or_default()}),
    ))
}

/// `POST /swarm/unlock` `{"UnlockKey": "SWMKEY-1-..."}`: starts a locked manager.
pub async fn unlock(State(d): State<AppState>, body: Bytes) -> Result<Response> {
    /// Docker's `UnlockRequest`.
    #[derive(serde::Deserialize)]
    struct UnlockRequest {
        #[serde(rename = "UnlockKey", default)]
        unlock_key: Option<String>,
    }
    let req: UnlockRequest = parse_body(&body)?;
    node::lock::unlock(&d, &req.unlock_key.unwrap_or_default()).await?;
    Ok(super::done())
}
