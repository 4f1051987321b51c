//! `docker swarm init / inspect / update / leave`: the cluster object's life.

use super::{json, parse_body, AppState, Result};
use crate::cluster::{certs_dir, Identity, Manager, NodeSession};
use crate::db::{self, Member, RootCa, Stored};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use shoal_api::models::{
    EngineDescription, Ipam, IpamConfig, JoinTokens, ManagerStatus, Network, Node, NodeDescription,
    NodeSpec, NodeSpecAvailabilityEnum, NodeSpecRoleEnum, NodeState, NodeStatus, Platform,
    Reachability, ResourceObject, Swarm, SwarmInitRequest, SwarmJoinRequest, SwarmSpec,
    SwarmSpecCaConfig, SwarmSpecDispatcher, SwarmSpecEncryptionConfig, SwarmSpecOrchestration,
    SwarmSpecRaft, SwarmSpecTaskDefaults, TlsInfo,
};
use shoal_api::objects::version;
use shoal_api::{id, ApiError};
use shoal_pki::{digest_of, ClusterCa, JoinToken, NodeCert, NodeIdentity, NodeKey, Role};
use shoal_store::Expect;
use std::collections::HashMap;
use std::sync::Arc;

/// A fresh join token for the CA with this digest, in Swarm's format.
fn join_token(ca_digest: [u8; 32]) -> String {
    JoinToken::generate(ca_digest).to_string()
}

fn default_spec() -> SwarmSpec {
    SwarmSpec {
        name: Some("default".into()),
        labels: Some(HashMap::new()),
        orchestration: Some(SwarmSpecOrchestration {
            task_history_retention_limit: Some(5),
        }),
        raft: Some(SwarmSpecRaft {
            snapshot_interval: Some(10000),
            keep_old_snapshots: Some(0),
            log_entries_for_slow_followers: Some(500),
            election_tick: Some(10),
            heartbeat_tick: Some(1),
        }),
        dispatcher: Some(SwarmSpecDispatcher {
            heartbeat_period: Some(5_000_000_000),
        }),
        ca_config: Some(SwarmSpecCaConfig {
            node_cert_expiry: Some(7_776_000_000_000_000),
            ..Default::default()
        }),
        encryption_config: Some(SwarmSpecEncryptionConfig {
            auto_lock_managers: Some(false),
        }),
        task_defaults: Some(SwarmSpecTaskDefaults::default()),
    }
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
        local_ipv4().unwrap_or_else(|| "127.0.0.1".to_string())
    } else if host.parse::<std::net::IpAddr>().is_ok() {
        host
    } else {
        return Err(ApiError::invalid(format!(
            "AdvertiseAddr: {host:?} is not an IP address (interface names are not supported yet)"
        )));
    };
    Ok(format!("{host}:{port}"))
}

/// The IPv4 address of the interface holding the default route, as Docker picks it; read from
/// the kernel and `ip`, no traffic sent.
fn local_ipv4() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let iface = routes
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[1] == "00000000")
        .map(|f| f[0].to_string())?;
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", &iface])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_string)
}

/// `POST /swarm/init`.
pub async fn init(State(d): State<AppState>, body: Bytes) -> Result<Response> {
    let req: SwarmInitRequest = parse_body(&body)?;
    let _lock = d.lifecycle.lock().await;
    if req.force_new_cluster == Some(true) {
        return force_new_cluster(&d).await;
    }
    if d.manager.read().await.is_some() {
        return Err(ApiError::unavailable("This node is already part of a swarm. Use \"docker swarm leave\" to leave this swarm and join another one.").into());
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
    let addr = advertise_addr(&req)?;
    let ca = ClusterCa::generate()
        .map_err(|e| ApiError::internal(format!("creating the cluster CA: {e}")))?;
    ca.save(&d.data_dir.join("ca"))
        .map_err(|e| ApiError::internal(format!("saving the cluster CA: {e}")))?;
    let cluster_id = id::new_id();
    let identity = Identity {
        node_id: id::new_id(),
        addr: addr.clone(),
        role: "manager".into(),
        raft_id: 1,
        managers: vec![addr.clone()],
    };
    let cert = own_certificate(&ca, &identity, &cluster_id)?;
    cert.save(&certs_dir(&d.data_dir))
        .map_err(|e| ApiError::internal(format!("saving the node certificate: {e}")))?;
    identity.save(&d.data_dir).map_err(|e| {
        ApiError::internal(format!(
            "saving node identity in {}: {e}",
            d.data_dir.display()
        ))
    })?;
    let manager = Manager::start(&d.data_dir, identity.clone(), &cert, true)
        .await
        .map_err(ApiError::internal)?;
    let now = id::now();
    let mut spec = default_spec();
    if let Some(s) = req.spec.clone() {
        merge_spec(&mut spec, s);
    }
    let ca_digest = ca.digest();
    let cluster = Swarm {
        id: Some(cluster_id.clone()),
        version: None,
        created_at: Some(now.clone()),
        updated_at: Some(now.clone()),
        spec: Some(spec),
        tls_info: Some(TlsInfo {
            trust_root: Some(ca.cert_pem().to_string()),
            cert_issuer_subject: None,
            cert_issuer_public_key: None,
        }),
        root_rotation_in_progress: Some(false),
        data_path_port: Some(req.data_path_port.filter(|p| *p != 0).unwrap_or(4789)),
        default_addr_pool: Some(vec!["10.0.0.0/8".into()]),
        subnet_size: Some(24),
        join_tokens: Some(JoinTokens {
            worker: Some(join_token(ca_digest)),
            manager: Some(join_token(ca_digest)),
        }),
    };
    let node = local_node(&d, &identity, &now).await;
    let ingress = Network {
        name: Some("ingress".into()),
        id: Some(id::new_id()),
        created: Some(now.clone()),
        scope: Some("swarm".into()),
        driver: Some("overlay".into()),
        enable_ipv4: Some(true),
        enable_ipv6: Some(false),
        ipam: Some(Ipam {
            driver: Some("default".into()),
            config: Some(vec![IpamConfig {
                subnet: Some("10.0.0.0/24".into()),
                gateway: Some("10.0.0.1".into()),
                ..Default::default()
            }]),
            options: None,
        }),
        internal: Some(false),
        attachable: Some(false),
        ingress: Some(true),
        options: Some(HashMap::from([(
            "com.docker.network.driver.overlay.vxlanid_list".to_string(),
            "4096".to_string(),
        )])),
        labels: Some(HashMap::new()),
        ..Default::default()
    };
    let (ca_cert, ca_key) = ca.to_pem_pair();
    let ops = vec![
        db::put(&cluster, Expect::Absent)?,
        db::put(&node, Expect::Absent)?,
        db::put(&ingress, Expect::Absent)?,
        db::put(
            &RootCa {
                id: "root".into(),
                cert_pem: ca_cert,
                key_pem: ca_key,
            },
            Expect::Absent,
        )?,
        db::put(
            &Member {
                node_id: identity.node_id.clone(),
                raft_id: identity.raft_id,
                addr: identity.addr.clone(),
            },
            Expect::Absent,
        )?,
    ];
    if let Err(e) = db::write(&manager.store, ops).await {
        manager.shutdown().await;
        return Err(e.into());
    }
    let session = match NodeSession::start(
        &d.data_dir,
        &identity,
        &cert,
        node.description.clone(),
        d.agent.as_ref(),
        role_watcher(&d),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            manager.shutdown().await;
            return Err(ApiError::internal(format!("starting the agent: {e}")).into());
        }
    };
    tokio::spawn(renewal_loop(Arc::downgrade(&d), session.stopped()));
    *d.node.write().await = Some((identity.clone(), Arc::new(session)));
    *d.manager.write().await = Some(Arc::new(manager));
    tracing::info!(node = %identity.node_id, addr = %addr, "swarm initialized");
    Ok(json(StatusCode::OK, &identity.node_id))
}

/// `swarm init --force-new-cluster` on a manager that lost its quorum: a new single-manager
/// raft cluster holding this manager's copy of the state. The other managers become workers
/// (they demote themselves when they reconnect); the old raft files are kept aside.
async fn force_new_cluster(d: &AppState) -> Result<Response> {
    let Some(m) = d.manager.read().await.clone() else {
        return Err(ApiError::unavailable(
            "--force-new-cluster needs this node to be a manager of the swarm to recover",
        )
        .into());
    };
    let objects = m.store.dump();
    let identity = m.identity.clone();
    let cert = NodeCert::load(&certs_dir(&d.data_dir))
        .map_err(|e| ApiError::internal(format!("node certificate: {e}")))?;
    *d.manager.write().await = None;
    m.shutdown().await;
    let raft = d.data_dir.join("raft");
    let aside = d
        .data_dir
        .join(format!("raft.before-force-new-cluster-{}", id::new_id()));
    std::fs::rename(&raft, &aside)
        .map_err(|e| ApiError::internal(format!("moving {} aside: {e}", raft.display())))?;
    let manager = Manager::start(&d.data_dir, identity.clone(), &cert, true)
        .await
        .map_err(ApiError::internal)?;
    let mut ops = Vec::with_capacity(objects.len());
    for o in objects {
        let mut data = o.data.to_vec();
        if o.kind == Member::KIND && o.id != identity.node_id {
            continue;
        }
        if o.kind == Member::KIND {
            let mut me: Member = serde_json::from_slice(&data)
                .map_err(|e| ApiError::internal(format!("member record: {e}")))?;
            me.raft_id = identity.raft_id;
            me.addr = identity.addr.clone();
            data = serde_json::to_vec(&me).map_err(|e| ApiError::internal(e.to_string()))?;
        }
        if o.kind == Node::KIND && o.id != identity.node_id {
            if let Ok(mut n) = serde_json::from_slice::<Node>(&data) {
                if let Some(spec) = n.spec.as_mut() {
                    spec.role = Some(NodeSpecRoleEnum::WORKER);
                }
                n.manager_status = None;
                n.status = Some(NodeStatus {
                    state: Some(NodeState::DOWN),
                    message: Some("not heard from since --force-new-cluster".into()),
                    addr: n.status.and_then(|s| s.addr),
                });
                data = serde_json::to_vec(&n).map_err(|e| ApiError::internal(e.to_string()))?;
            }
        }
        ops.push(shoal_store::Op::Put {
            kind: o.kind,
            id: o.id,
            name: o.name,
            expect: Expect::Any,
            data,
        });
    }
    let total = ops.len();
    while !ops.is_empty() {
        let rest = ops.split_off(ops.len().min(1000));
        db::write(&manager.store, std::mem::replace(&mut ops, rest)).await?;
    }
    *d.manager.write().await = Some(Arc::new(manager));
    tracing::warn!(objects = total, old = %aside.display(), "forced a new single-manager cluster from this manager's state");
    Ok(json(StatusCode::OK, &identity.node_id))
}

/// The node object describing this machine.
async fn local_node(d: &AppState, identity: &Identity, now: &str) -> Node {
    let info = super::system::engine_json(d, axum::http::Method::GET, "/info", None)
        .await
        .map(|(_, v)| v)
        .unwrap_or_default();
    let hostname = d
        .hostname
        .clone()
        .or_else(|| info["Name"].as_str().map(str::to_string))
        .unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .unwrap_or_default()
                .trim()
                .to_string()
        });
    let arch = info["Architecture"]
        .as_str()
        .unwrap_or(std::env::consts::ARCH)
        .to_string();
    let labels: HashMap<String, String> = info["Labels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            l.as_str()?
                .split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    Node {
        id: Some(identity.node_id.clone()),
        version: None,
        created_at: Some(now.to_string()),
        updated_at: Some(now.to_string()),
        spec: Some(NodeSpec {
            name: None,
            labels: Some(HashMap::new()),
            role: Some(NodeSpecRoleEnum::MANAGER),
            availability: Some(NodeSpecAvailabilityEnum::ACTIVE),
        }),
        description: Some(NodeDescription {
            hostname: Some(hostname),
            platform: Some(Platform {
                architecture: Some(arch),
                os: Some("linux".into()),
            }),
            resources: Some(ResourceObject {
                nano_cpus: info["NCPU"].as_i64().map(|n| n * 1_000_000_000),
                memory_bytes: info["MemTotal"].as_i64(),
                generic_resources: None,
            }),
            engine: Some(EngineDescription {
                engine_version: info["ServerVersion"].as_str().map(str::to_string),
                labels: Some(labels),
                plugins: None,
            }),
            tls_info: None,
        }),
        status: Some(NodeStatus {
            state: Some(NodeState::READY),
            message: None,
            addr: Some(
                identity
                    .addr
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            ),
        }),
        manager_status: Some(ManagerStatus {
            leader: Some(true),
            reachability: Some(Reachability::REACHABLE),
            addr: Some(identity.addr.clone()),
        }),
    }
}

fn merge_spec(into: &mut SwarmSpec, from: SwarmSpec) {
    if from.name.as_deref().is_some_and(|n| !n.is_empty()) {
        into.name = from.name;
    }
    if from.labels.is_some() {
        into.labels = from.labels;
    }
    if let Some(o) = from
        .orchestration
        .and_then(|o| o.task_history_retention_limit)
    {
        into.orchestration = Some(SwarmSpecOrchestration {
            task_history_retention_limit: Some(o),
        });
    }
    if let Some(p) = from
        .dispatcher
        .and_then(|x| x.heartbeat_period)
        .filter(|p| *p > 0)
    {
        into.dispatcher = Some(SwarmSpecDispatcher {
            heartbeat_period: Some(p),
        });
    }
    if let Some(ca) = from.ca_config {
        if ca.node_cert_expiry.is_some_and(|e| e > 0) {
            into.ca_config = Some(ca);
        }
    }
    if let Some(r) = from.raft {
        if r.snapshot_interval.is_some() {
            into.raft = Some(r);
        }
    }
    if from.task_defaults.is_some() {
        into.task_defaults = from.task_defaults;
    }
}

/// `GET /swarm`.
pub async fn inspect(State(d): State<AppState>) -> Result<Response> {
    let m = d.manager().await?;
    let c = db::list::<Swarm>(&m.store)
        .into_iter()
        .next()
        .ok_or_else(ApiError::not_a_manager)?;
    Ok(json(StatusCode::OK, &c.obj))
}

/// `POST /swarm/update?version=N&rotateWorkerToken=&rotateManagerToken=`.
pub async fn update(
    State(d): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response> {
    let m = d.manager().await?;
    let spec: SwarmSpec = parse_body(&body)?;
    let v: u64 = super::version_param(&q)?;
    let mut c = db::list::<Swarm>(&m.store)
        .into_iter()
        .next()
        .ok_or_else(ApiError::not_a_manager)?;
    if c.version != v {
        return Err(ApiError::out_of_sequence().into());
    }
    if spec
        .orchestration
        .as_ref()
        .and_then(|o| o.task_history_retention_limit)
        .is_some_and(|l| l < 0)
    {
        return Err(ApiError::invalid_arg(
            "Orchestration.TaskHistoryRetentionLimit: must not be negative",
        )
        .into());
    }
    let mut merged = c.obj.spec.clone().unwrap_or_else(default_spec);
    merge_spec(&mut merged, spec);
    c.obj.spec = Some(merged);
    let flag = |k: &str| q.get(k).is_some_and(|v| v == "1" || v == "true");
    let trust_root = c
        .obj
        .tls_info
        .as_ref()
        .and_then(|t| t.trust_root.clone())
        .unwrap_or_default();
    let digest = digest_of(&trust_root);
    if let Some(t) = c.obj.join_tokens.as_mut() {
        if flag("rotateWorkerToken") {
            t.worker = Some(join_token(digest));
        }
        if flag("rotateManagerToken") {
            t.manager = Some(join_token(digest));
        }
    }
    c.obj.updated_at = Some(id::now());
    c.obj.version = version(v);
    db::write(&m.store, vec![db::put(&c.obj, Expect::Version(v))?]).await?;
    Ok(json(StatusCode::OK, &serde_json::Value::Null))
}

/// `POST /swarm/leave?force=`.
pub async fn leave(
    State(d): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let _lock = d.lifecycle.lock().await;
    let Some((_, session)) = d.node.read().await.clone() else {
        return Err(ApiError::unavailable("This node is not part of a swarm").into());
    };
    let force = q.get("force").is_some_and(|v| v == "1" || v == "true");
    let manager = d.manager.read().await.clone();
    if manager.is_some() && !force {
        return Err(ApiError::unavailable("You are attempting to leave the swarm on a node that is participating as a manager. Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message.").into());
    }
    if let Some(m) = &manager {
        leave_raft(m).await;
    }
    *d.manager.write().await = None;
    *d.node.write().await = None;
    session.stop();
    d.agent.stop(true).await;
    if let Some(m) = manager {
        m.shutdown().await;
    }
    for sub in ["raft", "node.json", "ca", "certs"] {
        let p = d.data_dir.join(sub);
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        if let Err(e) = r {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %p.display(), error = %e, "removing swarm state");
            }
        }
    }
    tracing::info!("left the swarm");
    Ok(json(StatusCode::OK, &serde_json::Value::Null))
}

/// A manager that leaves a swarm with other managers first takes itself out of the voters (by
/// demoting its node), so the others keep their quorum. Best effort, bounded to 10 s.
async fn leave_raft(m: &Manager) {
    let me = m.store.raft_id();
    if m.store.membership().voters.keys().all(|v| *v == me) {
        return;
    }
    let Some(mut node) = db::get::<Node>(&m.store, &m.identity.node_id) else {
        return;
    };
    if let Some(spec) = node.obj.spec.as_mut() {
        spec.role = Some(NodeSpecRoleEnum::WORKER);
    }
    let op = match db::put(&node.obj, Expect::Version(node.version)) {
        Ok(op) => op,
        Err(_) => return,
    };
    if let Err(e) = db::write(&m.store, vec![op]).await {
        tracing::warn!(error = %e.message, "could not demote this manager before leaving");
        return;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if !m.store.membership().voters.contains_key(&me) {
            tracing::info!("left the raft voters");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tracing::warn!("still a raft voter after 10s; leaving anyway");
}

/// The certificate of the node that creates the swarm, signed by the new CA directly.
fn own_certificate(
    ca: &ClusterCa,
    identity: &Identity,
    cluster_id: &str,
) -> std::result::Result<NodeCert, ApiError> {
    let key = NodeKey::generate().map_err(|e| ApiError::internal(format!("node key: {e}")))?;
    let ident = NodeIdentity {
        node_id: identity.node_id.clone(),
        role: Role::Manager,
        cluster_id: cluster_id.to_string(),
    };
    let pem = ca
        .issue(key.csr_pem(), &ident, crate::rpc::DEFAULT_CERT_EXPIRY)
        .map_err(|e| ApiError::internal(format!("node certificate: {e}")))?;
    key.into_node_cert(pem, ca.cert_pem().to_string())
        .map_err(|e| ApiError::internal(format!("node certificate: {e}")))
}

/// The address this host uses to reach `remote` (no packet is sent: a UDP connect only routes).
fn local_addr_towards(remote: &std::net::SocketAddr) -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind(("0.0.0.0", 0)).ok()?;
    s.connect(remote).ok()?;
    Some(s.local_addr().ok()?.ip())
}

/// `POST /swarm/join`: fetches the CA pinned by the token, gets a certificate, then runs as a
/// worker (a dispatcher session) or a manager (a raft member too).
pub async fn join(State(d): State<AppState>, body: Bytes) -> Result<Response> {
    let req: SwarmJoinRequest = parse_body(&body)?;
    let _lock = d.lifecycle.lock().await;
    if d.node.read().await.is_some() {
        return Err(ApiError::unavailable("This node is already part of a swarm. Use \"docker swarm leave\" to leave this swarm and join another one.").into());
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
            let ip = local_addr_towards(&remote).ok_or_else(|| {
                ApiError::invalid(
                    "AdvertiseAddr: could not find a local address; set --advertise-addr",
                )
            })?;
            format!("{ip}:2377")
        }
    };

    // Trust only a manager whose CA has the token's digest, before the token is sent.
    let boot = shoal_pki::bootstrap_client_config(token.ca_digest)
        .map_err(|e| ApiError::internal(format!("TLS: {e}")))?;
    let channel = shoal_rpc::connect(&remote.to_string(), boot)
        .map_err(|e| ApiError::invalid(format!("RemoteAddrs: {e}")))?;
    let mut ca_client = shoal_rpc::pb::ca_client::CaClient::new(channel);
    let unreachable = |e: tonic::Status| {
        ApiError::unavailable(format!(
            "could not join the swarm through {remote}: {} (a manager must answer there, and its CA must match the token)",
            e.message()
        ))
    };
    let ca_pem = ca_client
        .get_root_ca_certificate(shoal_rpc::pb::Empty {})
        .await
        .map_err(unreachable)?
        .into_inner()
        .cert_pem;
    if !token.matches_ca(&ca_pem) {
        return Err(
            ApiError::invalid("JoinToken: the manager's CA does not match the token").into(),
        );
    }
    let key = NodeKey::generate().map_err(|e| ApiError::internal(format!("node key: {e}")))?;
    let probe = Identity {
        node_id: String::new(),
        addr: advertise.clone(),
        role: String::new(),
        raft_id: 0,
        managers: Vec::new(),
    };
    let description = local_node(&d, &probe, &id::now()).await.description;
    // `Availability` is in Docker's API but not in the generated model.
    let availability = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["Availability"].as_str().map(str::to_lowercase))
        .unwrap_or_default();
    let issued = ca_client
        .issue_node_certificate(shoal_rpc::pb::IssueRequest {
            token: token_text,
            csr_pem: key.csr_pem().to_string(),
            description_json: serde_json::to_vec(&description).unwrap_or_default(),
            advertise_addr: advertise.clone(),
            availability,
        })
        .await
        .map_err(|e| match e.code() {
            tonic::Code::PermissionDenied | tonic::Code::InvalidArgument => {
                ApiError::invalid(format!("JoinToken: {}", e.message()))
            }
            _ => unreachable(e),
        })?
        .into_inner();
    let cert = key
        .into_node_cert(issued.cert_pem, issued.ca_pem)
        .map_err(|e| ApiError::internal(format!("node certificate: {e}")))?;
    cert.save(&certs_dir(&d.data_dir))
        .map_err(|e| ApiError::internal(format!("saving the node certificate: {e}")))?;
    let identity = Identity {
        node_id: issued.node_id.clone(),
        addr: advertise,
        role: issued.role.clone(),
        raft_id: issued.raft_id,
        managers: vec![remote.to_string()],
    };
    identity
        .save(&d.data_dir)
        .map_err(|e| ApiError::internal(format!("saving node identity: {e}")))?;
    start_node(&d, identity, &cert, description, false)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(node = %issued.node_id, role = %issued.role, "joined the swarm");
    Ok(json(StatusCode::OK, &serde_json::Value::Null))
}

/// Starts what a node in a swarm runs: the manager if it is one, and always the agent's
/// session. Used by join and by a daemon restart.
pub async fn start_node(
    d: &AppState,
    identity: Identity,
    cert: &NodeCert,
    description: Option<shoal_api::models::NodeDescription>,
    bootstrap: bool,
) -> std::result::Result<(), String> {
    let mut manager = None;
    if identity.role == "manager" {
        let m = Manager::start(&d.data_dir, identity.clone(), cert, bootstrap).await?;
        manager = Some(Arc::new(m));
    }
    // Published before the session starts: a role change it reports must find the manager.
    *d.manager.write().await = manager.clone();
    let session = match NodeSession::start(
        &d.data_dir,
        &identity,
        cert,
        description,
        d.agent.as_ref(),
        role_watcher(d),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            *d.manager.write().await = None;
            if let Some(m) = manager {
                m.shutdown().await;
            }
            return Err(format!("starting the agent: {e}"));
        }
    };
    tokio::spawn(renewal_loop(Arc::downgrade(d), session.stopped()));
    *d.node.write().await = Some((identity, Arc::new(session)));
    Ok(())
}

/// `GET /swarm/unlockkey`: autolock is not offered, so there is no key.
pub async fn unlock_key(State(d): State<AppState>) -> Result<Response> {
    d.manager().await?;
    Ok(json(StatusCode::OK, &serde_json::json!({"UnlockKey": ""})))
}

/// `POST /swarm/unlock`.
pub async fn unlock() -> Result<Response> {
    Err(ApiError::conflict("swarm is not locked").into())
}

/// Reacts to `docker node promote/demote` of this node, seen in its assignments.
fn role_watcher(d: &AppState) -> crate::node::session::OnRole {
    let weak = Arc::downgrade(d);
    Box::new(move |role, raft_id| {
        let Some(d) = weak.upgrade() else { return };
        tokio::spawn(async move {
            // The managers may be electing a leader right now: retry for a while.
            for attempt in 1..=20u32 {
                match change_role(&d, &role, raft_id).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, %role, attempt, "changing this node's role")
                    }
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            tracing::error!(%role, "gave up changing this node's role; restart the daemon to retry");
        });
    })
}

/// Gets a certificate for the new role from the managers, then starts or stops the manager.
async fn change_role(d: &AppState, role: &str, raft_id: u64) -> std::result::Result<(), String> {
    let _lock = d.lifecycle.lock().await;
    let Some(mut identity) = Identity::load(&d.data_dir) else {
        return Ok(());
    };
    if identity.role == role && (role != "manager" || identity.raft_id == raft_id) {
        return Ok(());
    }
    tracing::info!(from = %identity.role, to = %role, "the swarm changed this node's role");
    let dir = certs_dir(&d.data_dir);
    let old = NodeCert::load(&dir).map_err(|e| e.to_string())?;
    let (cert, issued) = renew_certificate(&identity, &old, Some(role)).await?;
    if issued.role != role {
        return Err(format!(
            "the managers issued a {} certificate, not {role}; will retry on the next change",
            issued.role
        ));
    }
    cert.save(&dir).map_err(|e| e.to_string())?;
    identity.role = role.to_string();
    identity.raft_id = issued.raft_id.max(raft_id);
    identity.save(&d.data_dir).map_err(|e| e.to_string())?;
    if role == "manager" {
        if d.manager.read().await.is_none() {
            let m = Manager::start(&d.data_dir, identity, &cert, false).await?;
            *d.manager.write().await = Some(Arc::new(m));
        }
    } else if let Some(m) = d.manager.write().await.take() {
        m.shutdown().await;
        let raft = d.data_dir.join("raft");
        if let Err(e) = std::fs::remove_dir_all(&raft) {
            tracing::warn!(path = %raft.display(), error = %e, "removing the raft state of a demoted manager");
        }
    }
    Ok(())
}

/// Asks the managers for a new certificate for this node (its role as the swarm has it), with a
/// fresh key; authenticated by the current certificate.
async fn renew_certificate(
    identity: &Identity,
    old: &NodeCert,
    want_role: Option<&str>,
) -> std::result::Result<(NodeCert, shoal_rpc::pb::IssueResponse), String> {
    let tls = shoal_pki::client_config(old).map_err(|e| e.to_string())?;
    let key = NodeKey::generate().map_err(|e| e.to_string())?;
    let mut last = String::from("no manager known");
    for addr in &identity.managers {
        let ch = match shoal_rpc::connect(addr, tls.clone()) {
            Ok(ch) => ch,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let r = shoal_rpc::pb::ca_client::CaClient::new(ch)
            .issue_node_certificate(shoal_rpc::pb::IssueRequest {
                csr_pem: key.csr_pem().to_string(),
                ..Default::default()
            })
            .await;
        match r {
            Ok(r) => {
                let issued = r.into_inner();
                // A manager with a stale copy of the state may still see the old role.
                if want_role.is_some_and(|w| w != issued.role) {
                    last = format!("{addr} issued a {} certificate", issued.role);
                    continue;
                }
                let cert = key
                    .into_node_cert(issued.cert_pem.clone(), issued.ca_pem.clone())
                    .map_err(|e| e.to_string())?;
                return Ok((cert, issued));
            }
            Err(e) => last = format!("{addr}: {}", e.message()),
        }
    }
    Err(format!("no manager issued a certificate: {last}"))
}

/// Renews this node's certificate when it reaches its renewal point (between 50% and 80% of its
/// life, as Swarm does), and swaps it into the RPC server and clients without a restart.
async fn renewal_loop(
    d: std::sync::Weak<super::Daemon>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
        }
        let Some(d) = d.upgrade() else { return };
        let dir = certs_dir(&d.data_dir);
        let (Ok(cert), Some(identity)) = (NodeCert::load(&dir), Identity::load(&d.data_dir)) else {
            continue;
        };
        if !cert.needs_renewal(std::time::SystemTime::now()) {
            continue;
        }
        let _lock = d.lifecycle.lock().await;
        match renew_certificate(&identity, &cert, None).await {
            Ok((new, _)) => {
                if let Err(e) = new.save(&dir) {
                    tracing::error!(error = %e, "saving the renewed certificate");
                    continue;
                }
                if let Some(m) = d.manager.read().await.clone() {
                    if let Err(e) = m.set_cert(&new) {
                        tracing::error!(error = %e, "using the renewed certificate");
                    }
                }
                if let Some((_, s)) = d.node.read().await.clone() {
                    if let Err(e) = s.set_cert(&new) {
                        tracing::error!(error = %e, "using the renewed certificate");
                    }
                }
                tracing::info!(not_after = ?new.not_after(), "renewed this node's certificate");
            }
            Err(e) => tracing::warn!(error = %e, "certificate renewal failed; will retry"),
        }
    }
}
