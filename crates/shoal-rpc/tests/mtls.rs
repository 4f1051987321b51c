//! Three managers' stores replicating over the real transport (gRPC, mutual TLS on loopback),
//! and the refusals the transport and handlers owe: no certificate, a worker's certificate on a
//! manager-only call, a certificate from another cluster, a CA that does not match the token,
//! an oversized message from a peer without a certificate. Snapshots and large log batches
//! travel in bounded messages.

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
    /// Every raft message received: its kind and payload size.
    seen: parking_lot::Mutex<Vec<(RpcKind, usize)>>,
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
        Box::pin(async { Err(Status::invalid_argument("invalid join token")) })
    }
    fn raft(
        &self,
        peer: PeerInfo,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, Status>> {
        let store = self.store.get().cloned();
        self.seen.lock().push((kind, payload.len()));
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
    fn logs(
        &self,
        _peer: PeerInfo,
        _req: pb::LogRequest,
    ) -> BoxFuture<'static, Result<shoal_rpc::LogItemStream, Status>> {
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
    handlers: Arc<TestHandlers>,
}

async fn manager(ca: &ClusterCa, dir: &std::path::Path, i: u64, bootstrap: bool) -> Manager {
    let tuning = StoreTuning {
        write_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    manager_tuned(ca, dir, i, bootstrap, tuning).await
}

async fn manager_tuned(
    ca: &ClusterCa,
    dir: &std::path::Path,
    i: u64,
    bootstrap: bool,
    tuning: StoreTuning,
) -> Manager {
    let cert = node_cert(ca, &format!("manager{i}"), Role::Manager);
    let listener = shoal_rpc::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handlers = Arc::new(TestHandlers {
        ca_pem: ca.cert_pem().to_string(),
        store: OnceLock::new(),
        seen: Default::default(),
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
            recorder: None,
        },
        tuning,
    )
    .await
    .unwrap();
    let _ = handlers.store.set(store.clone());
    Manager {
        store,
        addr,
        stop,
        handlers,
    }
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
    // Nor may it read task logs through the leader, which is for managers' API clients.
    let ch = shoal_rpc::connect(&m.addr, shoal_pki::client_config(&worker).unwrap()).unwrap();
    let e = pb::logs_client::LogsClient::new(ch)
        .subscribe(pb::LogRequest {
            json: b"{}".to_vec(),
        })
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
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("certificate"), "{e:?}");

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

/// A joining node has no certificate, so anyone who reaches the port can call the CA: a 10 MB
/// join request is refused as RESOURCE_EXHAUSTED from its length prefix alone, and the same
/// bytes sent to raft are refused before they are read. The manager runs in a child process
/// (this test binary again, in `manager_for_a_parent`), so its memory is its own: its RSS must
/// not grow by anything like the 30 MB sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_peer_cannot_make_a_manager_buffer_a_big_message() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate().unwrap();
    let (cert_pem, key_pem) = ca.to_pem_pair();
    std::fs::write(dir.path().join("ca.crt"), cert_pem).unwrap();
    std::fs::write(dir.path().join("ca.key"), key_pem).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "manager_for_a_parent",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SHOAL_TEST_MANAGER_DIR", dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the child manager starts").unwrap();
        // The harness may print the test's name on the same line first.
        if let Some((_, a)) = line.split_once("MANAGER ") {
            break a.trim().to_string();
        }
    };
    let rss = |pid: u32| rss_kib(&format!("/proc/{pid}/status"));
    let boot = shoal_pki::bootstrap_client_config(ca.digest()).unwrap();
    let big = "x".repeat(10 << 20);
    let ch = shoal_rpc::connect(&addr, boot.clone()).unwrap();
    // A small one reaches the handler (whose answer the child stubs); it also warms up the
    // connection, so the memory compared is that of handling messages.
    let e = pb::ca_client::CaClient::new(ch.clone())
        .issue_node_certificate(pb::IssueRequest {
            token: "SWMTKN-1-x".into(),
            csr_pem: "x".repeat(1000),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let before = rss(child.id());

    for _ in 0..2 {
        let e = pb::ca_client::CaClient::new(ch.clone())
            .max_encoding_message_size(64 << 20)
            .issue_node_certificate(pb::IssueRequest {
                token: "SWMTKN-1-x".into(),
                csr_pem: big.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    }
    let ch = shoal_rpc::connect(&addr, boot).unwrap();
    let e = pb::raft_client::RaftClient::new(ch)
        .max_encoding_message_size(64 << 20)
        .call(pb::RaftMessage {
            kind: "vote".into(),
            payload: big.clone().into_bytes(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let after = rss(child.id());
    eprintln!("manager RSS: {before} KiB before, {after} KiB after three 10 MB messages");
    drop(child.stdin.take());
    let _ = child.wait();
    assert!(
        after < before + 8 * 1024,
        "the manager's RSS grew from {before} to {after} KiB"
    );
}

/// The manager [`an_unauthenticated_peer_cannot_make_a_manager_buffer_a_big_message`] talks to;
/// does nothing unless started by it. Serves until its stdin closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_for_a_parent() {
    let Some(dir) = std::env::var_os("SHOAL_TEST_MANAGER_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let ca = ClusterCa::from_pem_pair(&read("ca.crt"), &read("ca.key")).unwrap();
    let m = manager(&ca, &dir, 1, true).await;
    // Straight to the pipe: the test harness may capture `println!`.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "MANAGER {}", m.addr).unwrap();
        out.flush().unwrap();
    }
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut sink);
    })
    .await
    .unwrap();
    assert!(m.handlers.seen.lock().is_empty(), "raft read a message");
    m.stop.cancel();
    m.store.shutdown().await.unwrap();
}

fn rss_kib(status: &str) -> u64 {
    std::fs::read_to_string(status)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A follower that needs a snapshot gets it in chunks, and a batch of log entries larger than
/// one message is sent as several: no raft message exceeds the limits, and the follower ends
/// up with everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_and_big_log_batches_travel_in_bounded_messages() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate().unwrap();
    let wire = shoal_store::WireLimits {
        max_payload: 16 << 10,
        snapshot_chunk: 4 << 10,
    };
    let tuning = || StoreTuning {
        write_timeout: Duration::from_secs(3),
        snapshot_every: 20,
        keep_after_snapshot: 0,
        wire,
        ..Default::default()
    };
    let m1 = manager_tuned(&ca, dir.path(), 1, true, tuning()).await;
    let blob = vec![b'y'; 3000];
    for i in 0..50 {
        m1.store
            .write(vec![Op::Put {
                kind: "svc".into(),
                id: format!("s{i}"),
                name: None,
                expect: Expect::Absent,
                data: blob.clone(),
            }])
            .await
            .unwrap();
    }
    // Entries 1-40 are in a snapshot and purged; the rest only in the log.
    let t = Instant::now();
    while m1.store.raft().metrics().borrow().purged.is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the leader purges its log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m2 = manager_tuned(&ca, dir.path(), 2, false, tuning()).await;
    m1.store.add_learner(2, m2.addr.clone()).await.unwrap();
    let t = Instant::now();
    while m2.store.list("svc").len() < 50 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the learner has {} of 50 objects",
            m2.store.list("svc").len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = m2.handlers.seen.lock().clone();
    let chunks = seen
        .iter()
        .filter(|(k, _)| *k == RpcKind::SnapshotChunk)
        .count();
    assert!(
        chunks >= 2,
        "the snapshot came in {chunks} chunk(s): {seen:?}"
    );
    let biggest = seen.iter().map(|(_, n)| *n).max().unwrap_or(0);
    assert!(
        biggest <= wire.max_payload,
        "a {biggest}-byte raft message: {seen:?}"
    );
    // The entries after the snapshot (ten of 3 KB) did not fit one 16 KiB message.
    let appends = seen
        .iter()
        .filter(|(k, n)| *k == RpcKind::AppendEntries && *n > 3000)
        .count();
    assert!(
        appends >= 2,
        "log entries came in {appends} message(s): {seen:?}"
    );
    for m in [&m1, &m2] {
        m.stop.cancel();
        m.store.shutdown().await.unwrap();
    }
}
