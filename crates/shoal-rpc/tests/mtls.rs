//! Three managers' stores replicating over the real transport (gRPC, mutual TLS on loopback),
//! and the refusals the transport and handlers owe: no certificate, a worker's certificate on a
//! manager-only call, a certificate from another cluster, a CA that does not match the token.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use shoal_pki::{ClusterCa, NodeCert, NodeIdentity, NodeKey, Role};
use shoal_rpc::{pb, Handlers, PeerInfo, Pool, SessionStream};
use shoal_store::{Expect, Op, RpcKind, Store, StoreOptions, StoreTuning};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

struct TestHandlers {
    ca_pem: String,
    store: OnceLock<Store>,
}

impl Handlers for TestHandlers {
    fn root_ca(&self) -> Result<String, Status> {
        Ok(self.ca_pem.clone())
    }
    fn issue(
        &self,
        _peer: PeerInfo,
        _req: pb::IssueRequest,
    ) -> BoxFuture<'static, Result<pb::IssueResponse, Status>> {
        Box::pin(async { Err(Status::unimplemented("not in this test")) })
    }
    fn raft(
        &self,
        peer: PeerInfo,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, Status>> {
        let store = self.store.get().cloned();
        Box::pin(async move {
            peer.manager("raft")?;
            let store = store.ok_or_else(|| Status::unavailable("starting"))?;
            store
                .handle_rpc(kind, &payload)
                .await
                .map_err(|e| Status::internal(e.to_string()))
        })
    }
    fn session(
        &self,
        _peer: PeerInfo,
        _inbound: Streaming<pb::AgentMessage>,
    ) -> BoxFuture<'static, Result<SessionStream, Status>> {
        Box::pin(async { Err(Status::unimplemented("not in this test")) })
    }
}

fn node_cert(ca: &ClusterCa, id: &str, role: Role) -> NodeCert {
    let key = NodeKey::generate().unwrap();
    let ident = NodeIdentity {
        node_id: id.into(),
        role,
        cluster_id: "cluster1".into(),
    };
    let pem = ca
        .issue(key.csr_pem(), &ident, Duration::from_secs(3600))
        .unwrap();
    key.into_node_cert(pem, ca.cert_pem().to_string()).unwrap()
}

struct Manager {
    store: Store,
    addr: String,
    stop: CancellationToken,
}

async fn manager(ca: &ClusterCa, dir: &std::path::Path, i: u64, bootstrap: bool) -> Manager {
    let cert = node_cert(ca, &format!("manager{i}"), Role::Manager);
    let listener = shoal_rpc::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handlers = Arc::new(TestHandlers {
        ca_pem: ca.cert_pem().to_string(),
        store: OnceLock::new(),
    });
    let stop = CancellationToken::new();
    tokio::spawn(shoal_rpc::serve(
        listener,
        Arc::new(parking_lot::RwLock::new(
            shoal_pki::server_config(&cert).unwrap(),
        )),
        handlers.clone(),
        stop.clone(),
    ));
    let pool = Pool::new(shoal_pki::client_config(&cert).unwrap());
    let store = Store::open_with(
        StoreOptions {
            dir: dir.join(format!("m{i}")),
            raft_node_id: i,
            raft_addr: addr.clone(),
            bootstrap,
            transport: Some(pool),
            data_key: shoal_store::seal::Key::generate().expect("data key"),
        },
        StoreTuning {
            write_timeout: Duration::from_secs(3),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let _ = handlers.store.set(store.clone());
    Manager { store, addr, stop }
}

fn put(id: &str) -> Vec<Op> {
    vec![Op::Put {
        kind: "svc".into(),
        id: id.into(),
        name: None,
        expect: Expect::Absent,
        data: b"{}".to_vec(),
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn managers_replicate_over_mutual_tls_and_survive_leader_loss() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate().unwrap();
    let m1 = manager(&ca, dir.path(), 1, true).await;
    let m2 = manager(&ca, dir.path(), 2, false).await;
    let m3 = manager(&ca, dir.path(), 3, false).await;
    m1.store.add_learner(2, m2.addr.clone()).await.unwrap();
    m1.store.add_learner(3, m3.addr.clone()).await.unwrap();
    let t = Instant::now();
    while !(m1.store.caught_up(2, 0) && m1.store.caught_up(3, 0)) {
        assert!(t.elapsed() < Duration::from_secs(10), "learners catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    m1.store
        .set_voters(BTreeSet::from([1, 2, 3]), false)
        .await
        .unwrap();
    m1.store.write(put("a")).await.unwrap();
    // Forwarded from a follower over TLS, readable there at once.
    m3.store.write(put("b")).await.unwrap();
    assert!(m3.store.get("svc", "b").is_some());

    // Kill the leader's transport and raft: the other two carry on.
    m1.stop.cancel();
    m1.store.shutdown().await.unwrap();
    let t = Instant::now();
    m2.store
        .write(put("c"))
        .await
        .expect("write after leader loss");
    eprintln!("write accepted {:?} after the leader stopped", t.elapsed());
    // Committed on the leader; the other follower applies it soon after.
    let t = Instant::now();
    while m3.store.get("svc", "c").is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "m3 never applied the write made after the leader loss"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for m in [&m2, &m3] {
        m.stop.cancel();
        m.store.shutdown().await.unwrap();
    }
}

async fn raft_call(tls: Arc<shoal_pki::rustls::ClientConfig>, addr: &str) -> Result<(), Status> {
    let ch = shoal_rpc::connect(addr, tls).map_err(|e| Status::unknown(e.to_string()))?;
    let mut c = pb::raft_client::RaftClient::new(ch);
    c.call(pb::RaftMessage {
        kind: "vote".into(),
        payload: vec![],
    })
    .await
    .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_the_right_certificate_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate().unwrap();
    let m = manager(&ca, dir.path(), 1, true).await;

    // A worker's certificate: TLS is fine, the manager-only call is not.
    let worker = node_cert(&ca, "worker1", Role::Worker);
    let e = raft_call(shoal_pki::client_config(&worker).unwrap(), &m.addr)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("worker"), "{e:?}");

    // No certificate at all (a joining node's bootstrap config): may fetch the CA, not call raft.
    let boot = shoal_pki::bootstrap_client_config(ca.digest()).unwrap();
    let ch = shoal_rpc::connect(&m.addr, boot.clone()).unwrap();
    let root = pb::ca_client::CaClient::new(ch)
        .get_root_ca_certificate(pb::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(root.cert_pem.trim(), ca.cert_pem().trim());
    let e = raft_call(boot, &m.addr).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("no client certificate"), "{e:?}");

    // A token whose digest is another CA's: the joiner refuses the manager in the handshake.
    let other = ClusterCa::generate().unwrap();
    let wrong = shoal_pki::bootstrap_client_config(other.digest()).unwrap();
    let ch = shoal_rpc::connect(&m.addr, wrong).unwrap();
    let e = pb::ca_client::CaClient::new(ch)
        .get_root_ca_certificate(pb::Empty {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");

    // A manager certificate from another cluster's CA: the server refuses the handshake.
    let stranger = node_cert(&other, "manager9", Role::Manager);
    let e = raft_call(shoal_pki::client_config(&stranger).unwrap(), &m.addr)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");

    m.stop.cancel();
    m.store.shutdown().await.unwrap();
}
