//! `swarm init`: a new swarm with this node as its first manager (a new CA, cluster object,
//! ingress network, raft store), and `--force-new-cluster`, which restarts a manager that lost
//! its quorum as a single-manager swarm holding its copy of the state.

use super::aside;
use super::local::local_node;
use super::renewal::renewal_loop;
use super::{keys, Identity, NodeError, NodeSession};
use crate::api::AppState;
use crate::cluster::Manager;
use crate::db::{self, Member, RootCa, Stored, UnlockKey};
use shoal_api::models::{
    JoinTokens, Node, NodeSpecRoleEnum, NodeState, NodeStatus, Swarm, SwarmSpec, SwarmSpecCaConfig,
    SwarmSpecDispatcher, SwarmSpecEncryptionConfig, SwarmSpecOrchestration, SwarmSpecRaft,
    SwarmSpecTaskDefaults, TlsInfo,
};
use shoal_api::{id, Role};
use shoal_pki::{ClusterCa, JoinToken, NodeCert, NodeIdentity, NodeKey};
use shoal_store::Expect;
use std::collections::HashMap;
use std::sync::Arc;

/// A validated `swarm init`: what the API checked and resolved.
pub struct InitPlan {
    /// The address this node advertises (`host:port`).
    pub addr: String,
    /// The spec asked for, merged over the defaults.
    pub spec: Option<SwarmSpec>,
    /// VXLAN port (0 or none: 4789).
    pub data_path_port: Option<u32>,
    /// `--autolock`: managers keep their keys sealed with an unlock key the operator holds.
    pub autolock: bool,
}

/// Creates the swarm with this node as its only manager; returns the node's ID.
pub async fn init(d: &AppState, plan: InitPlan) -> Result<String, NodeError> {
    let _lock = d.lifecycle.lock().await;
    if d.lock.is_locked() {
        return Err(NodeError::Locked);
    }
    if d.manager.read().await.is_some() {
        return Err(NodeError::AlreadyInSwarm);
    }
    let addr = plan.addr;
    // Raft state without an identity is what an init or a leave cut short left: it belongs to
    // no swarm. Set aside, and removed once the new state is durable.
    let leftover = aside::set_aside(&d.data_dir, "init").map_err(NodeError::io(
        "setting aside the raft state in",
        &d.data_dir,
    ))?;
    if let Some(a) = &leftover {
        tracing::warn!(path = %a.path().display(), "raft state of an unfinished init or leave set aside");
    }
    // The CA's key lives only in the raft store (sealed on disk), never in a file of its own.
    let ca = ClusterCa::generate().map_err(NodeError::pki("creating the cluster CA"))?;
    let kek = d.lock.kek_for(&d.data_dir)?;
    let cluster_id = id::new_id();
    let identity = Identity {
        node_id: id::new_id(),
        addr: addr.clone(),
        role: Role::Manager,
        raft_id: 1,
        managers: vec![addr.clone()],
    };
    let cert = own_certificate(&ca, &identity, &cluster_id)?;
    keys::save_cert(&d.data_dir, &kek, &cert)?;
    let data_key = keys::data_key(&d.data_dir, &kek)?;
    let manager = Manager::start(&d.data_dir, identity.clone(), &cert, true, data_key).await?;
    let now = id::now();
    let mut spec = default_spec();
    if let Some(s) = plan.spec {
        merge_spec(&mut spec, s);
    }
    if plan.autolock {
        spec.encryption_config = Some(SwarmSpecEncryptionConfig {
            auto_lock_managers: Some(true),
        });
    }
    let autolock = spec
        .encryption_config
        .as_ref()
        .and_then(|e| e.auto_lock_managers)
        .unwrap_or(false);
    let unlock_key = if autolock {
        let key = shoal_store::seal::Key::generate().map_err(|source| keys::KeyError::Seal {
            path: d.data_dir.join(keys::KEYS_DIR),
            source,
        })?;
        Some(super::lock::human_key(&key))
    } else {
        None
    };
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
        data_path_port: Some(plan.data_path_port.filter(|p| *p != 0).unwrap_or(4789)),
        default_addr_pool: Some(vec!["10.0.0.0/8".into()]),
        subnet_size: Some(24),
        join_tokens: Some(JoinTokens {
            worker: Some(join_token(ca_digest)),
            manager: Some(join_token(ca_digest)),
        }),
    };
    let node = local_node(d, &identity, &now).await;
    let ingress = shoal_control::allocator::ingress_network(&id::new_id(), now.clone());
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
        db::put(
            &UnlockKey {
                id: UnlockKey::ID.into(),
                key: unlock_key,
            },
            Expect::Absent,
        )?,
    ];
    if let Err(e) = db::write(&manager.store, ops).await {
        manager.shutdown().await;
        return Err(e.into());
    }
    // The new state is committed (fsynced): the leftover goes, then the identity is saved,
    // which makes this node part of the swarm on its next start. A crash before that leaves a
    // node in no swarm, whose next init sets this state aside in turn.
    let saved = leftover
        .map_or(Ok(()), |a| a.commit())
        .map_err(NodeError::io(
            "removing the set-aside raft state in",
            &d.data_dir,
        ))
        .and_then(|()| {
            identity
                .save(&d.data_dir)
                .map_err(NodeError::io("saving node identity in", &d.data_dir))
        });
    if let Err(e) = saved {
        manager.shutdown().await;
        return Err(e);
    }
    // Sealed with the unlock key before `init` answers: a restart right after is locked.
    if let Err(e) = super::lock::reconcile(&d.data_dir, &d.lock, &manager.store) {
        manager.shutdown().await;
        return Err(e);
    }
    super::lock::spawn_follow(d, &manager);
    let session = match NodeSession::start(d, &identity, &cert, node.description.clone()).await {
        Ok(s) => s,
        Err(e) => {
            manager.shutdown().await;
            return Err(e.into());
        }
    };
    tokio::spawn(renewal_loop(Arc::downgrade(d), session.stopped()));
    *d.node.write().await = Some((identity.clone(), Arc::new(session)));
    *d.manager.write().await = Some(Arc::new(manager));
    tracing::info!(node = %identity.node_id, addr = %addr, "swarm initialized");
    Ok(identity.node_id)
}

/// `swarm init --force-new-cluster` on a manager that lost its quorum: a new single-manager
/// raft cluster holding this manager's copy of the state. The other managers become workers
/// (they demote themselves when they reconnect). The old raft state is set aside until the new
/// one is committed, then removed; a crash before that brings it back at the next start.
pub async fn force_new_cluster(d: &AppState) -> Result<String, NodeError> {
    let _lock = d.lifecycle.lock().await;
    let Some(m) = d.manager.read().await.clone() else {
        return Err(NodeError::NotAManagerToRecover);
    };
    let objects = m.store.dump();
    let identity = m.identity.clone();
    let kek = d.lock.kek_for(&d.data_dir)?;
    let cert = keys::load_cert(&d.data_dir, &kek)?;
    let data_key = keys::data_key(&d.data_dir, &kek)?;
    *d.manager.write().await = None;
    m.shutdown().await;
    let raft = d.data_dir.join("raft");
    let old = aside::set_aside(&d.data_dir, "force-new-cluster")
        .map_err(NodeError::io("setting aside", &raft))?
        .ok_or_else(|| NodeError::Io {
            what: "setting aside",
            path: raft.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
    let started =
        Manager::start(&d.data_dir, identity.clone(), &cert, true, data_key.clone()).await;
    let manager = match started {
        Ok(m) => m,
        Err(e) => {
            resume_previous(d, old, &identity, &cert, data_key).await;
            return Err(e.into());
        }
    };
    let total = match write_forced(&manager, objects, &identity).await {
        Ok(total) => total,
        Err(e) => {
            manager.shutdown().await;
            resume_previous(d, old, &identity, &cert, data_key).await;
            return Err(e);
        }
    };
    // Every object is committed (fsynced) in the new state: the old one can go.
    let old_path = old.path().to_path_buf();
    if let Err(e) = old.commit() {
        tracing::warn!(path = %old_path.display(), error = %e, "removing the old raft state; the next start removes it");
    }
    super::lock::spawn_follow(d, &manager);
    *d.manager.write().await = Some(Arc::new(manager));
    tracing::warn!(
        objects = total,
        "forced a new single-manager cluster from this manager's state"
    );
    Ok(identity.node_id)
}

/// A forced new cluster that failed halfway: the old raft state comes back, as a restart after
/// a crash would bring it back, and the manager runs on it again in place, so the node is the
/// manager it was before the attempt (still without its quorum) instead of none until a restart.
async fn resume_previous(
    d: &AppState,
    old: aside::Aside,
    identity: &Identity,
    cert: &shoal_pki::NodeCert,
    data_key: shoal_store::seal::Key,
) {
    if let Err(e) = old.roll_back() {
        tracing::error!(
            error = %e,
            "--force-new-cluster failed and the previous raft state could not be put back; the next start retries"
        );
        return;
    }
    match Manager::start(&d.data_dir, identity.clone(), cert, false, data_key).await {
        Ok(m) => {
            super::lock::spawn_follow(d, &m);
            *d.manager.write().await = Some(Arc::new(m));
            tracing::warn!("--force-new-cluster failed; the previous raft state is back and its manager runs again");
        }
        Err(e) => tracing::error!(
            error = %e,
            "--force-new-cluster failed; the previous raft state is back but its manager did not start (restart the daemon)"
        ),
    }
}

/// Set by tests to make the next forced new cluster fail after its new store started, the way
/// a full disk would: the one failure a test cannot provoke from outside.
#[cfg(feature = "fault-injection")]
pub static FAIL_NEXT_FORCED_WRITE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Writes this manager's copy of the state into the new cluster's store; returns how many
/// objects. The other managers become workers, down until they reconnect.
async fn write_forced(
    manager: &Manager,
    objects: Vec<shoal_store::Object>,
    identity: &Identity,
) -> Result<usize, NodeError> {
    let mut ops = Vec::with_capacity(objects.len());
    for o in objects {
        let mut data = o.data.to_vec();
        if o.kind == Member::KIND && o.id != identity.node_id {
            continue;
        }
        if o.kind == Member::KIND {
            let mut me: Member =
                serde_json::from_slice(&data).map_err(|source| NodeError::Json {
                    what: "member record",
                    source,
                })?;
            me.raft_id = identity.raft_id;
            me.addr = identity.addr.clone();
            data = serde_json::to_vec(&me).map_err(|source| NodeError::Json {
                what: "member record",
                source,
            })?;
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
                data = serde_json::to_vec(&n).map_err(|source| NodeError::Json {
                    what: "node record",
                    source,
                })?;
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
    #[cfg(feature = "fault-injection")]
    if FAIL_NEXT_FORCED_WRITE.swap(false, std::sync::atomic::Ordering::SeqCst) {
        return Err(NodeError::Io {
            what: "writing the forced cluster's state (injected fault)",
            path: std::path::PathBuf::from("raft"),
            source: std::io::ErrorKind::StorageFull.into(),
        });
    }
    while !ops.is_empty() {
        let rest = ops.split_off(ops.len().min(1000));
        db::write(&manager.store, std::mem::replace(&mut ops, rest)).await?;
    }
    Ok(total)
}

/// A fresh join token for the CA with this digest, in Swarm's format.
pub fn join_token(ca_digest: [u8; 32]) -> String {
    JoinToken::generate(ca_digest).to_string()
}

/// The swarm spec Docker gives a new swarm.
pub fn default_spec() -> SwarmSpec {
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

/// Takes the parts of `from` that are set over `into`, as `swarm init` and `swarm update` do.
pub fn merge_spec(into: &mut SwarmSpec, from: SwarmSpec) {
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

/// The certificate of the node that creates the swarm, signed by the new CA directly.
fn own_certificate(
    ca: &ClusterCa,
    identity: &Identity,
    cluster_id: &str,
) -> Result<NodeCert, NodeError> {
    let key = NodeKey::generate().map_err(NodeError::pki("node key"))?;
    let ident = NodeIdentity {
        node_id: identity.node_id.clone(),
        role: Role::Manager,
        cluster_id: cluster_id.to_string(),
    };
    let pem = ca
        .issue(key.csr_pem(), &ident, crate::rpc::DEFAULT_CERT_EXPIRY)
        .map_err(NodeError::pki("node certificate"))?;
    key.into_node_cert(pem, ca.cert_pem().to_string())
        .map_err(NodeError::pki("node certificate"))
}
