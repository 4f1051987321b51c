//! The manager's RPC service over real mutual TLS on loopback, with node certificates from a
//! cluster CA: a node acts only as the node its certificate names, a removed node is cut off at
//! once, and a demoted manager loses write access and then raft membership. Task logs travel
//! over the nodes' sessions: from the nodes that run the tasks, within their windows, ending
//! on every node when the subscriber leaves, and only in part when a node goes away; another
//! manager reads them through the leader.

use futures::StreamExt;
use shoal_api::dispatch::{AgentMessage, ManagerMessage, TaskStatusReport};
use shoal_api::logs::{
    LogBatch, LogMessage, LogOptions, LogSelector, LogStream, LogSubscription, LogTime, LOG_WINDOW,
    MAX_LOG_LINE,
};
use shoal_api::models::{
    Node, NodeDescription, NodeSpec, NodeSpecRoleEnum, NodeState, NodeStatus, TaskState, TaskStatus,
};
use shoal_api::objects::StoredTask;
use shoal_manager::db::{self, Member, Removed};
use shoal_manager::dispatcher::Dispatcher;
use shoal_manager::logbroker::{LogBroker, LogItem, Subscription};
use shoal_manager::rpc::ManagerRpc;
use shoal_manager::state::SharedState;
use shoal_pki::{ClusterCa, NodeCert, NodeIdentity, NodeKey, Role};
use shoal_rpc::pb;
use shoal_store::{Expect, Store, StoreOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Cluster {
    store: Store,
    logs: LogBroker,
    addr: String,
    ca: ClusterCa,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn cert(ca: &ClusterCa, id: &str, role: Role) -> NodeCert {
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

fn node(id: &str, role: NodeSpecRoleEnum, hostname: &str) -> Node {
    Node {
        id: Some(id.into()),
        spec: Some(NodeSpec {
            role: Some(role),
            ..Default::default()
        }),
        description: Some(NodeDescription {
            hostname: Some(hostname.into()),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: Some(NodeState::READY),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn task(id: &str, node: &str, state: TaskState) -> StoredTask {
    let mut t = StoredTask::default();
    t.task.id = Some(id.into());
    t.task.service_id = Some("svc".into());
    t.task.node_id = Some(node.into());
    t.task.desired_state = Some(TaskState::RUNNING);
    t.task.status = Some(TaskStatus {
        state: Some(state),
        ..Default::default()
    });
    t
}

/// A single-manager store with nodes `mgr` (manager, raft id 1), `node-a` and `node-b`
/// (workers, a task each), served by the manager's real RPC handlers over mutual TLS.
async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreOptions {
        dir: dir.path().join("raft"),
        raft_node_id: 1,
        raft_addr: "127.0.0.1:1".into(),
        bootstrap: true,
        transport: None,
        data_key: shoal_store::seal::Key::generate().unwrap(),
        recorder: None,
    })
    .await
    .unwrap();
    let ops = vec![
        db::put(
            &node("mgr", NodeSpecRoleEnum::MANAGER, "mgr-host"),
            Expect::Absent,
        )
        .unwrap(),
        db::put(
            &node("node-a", NodeSpecRoleEnum::WORKER, "a-host"),
            Expect::Absent,
        )
        .unwrap(),
        db::put(
            &node("node-b", NodeSpecRoleEnum::WORKER, "b-host"),
            Expect::Absent,
        )
        .unwrap(),
        db::put(
            &Member {
                node_id: "mgr".into(),
                raft_id: 1,
                addr: "127.0.0.1:1".into(),
            },
            Expect::Absent,
        )
        .unwrap(),
        db::put(&task("ta", "node-a", TaskState::ASSIGNED), Expect::Absent).unwrap(),
        db::put(&task("tb", "node-b", TaskState::RUNNING), Expect::Absent).unwrap(),
    ];
    db::write(&store, ops).await.unwrap();
    let ca = ClusterCa::generate().unwrap();
    let stop = CancellationToken::new();
    let view = SharedState::new(store.clone());
    let server_cert = cert(&ca, "mgr", Role::Manager);
    let pool = shoal_rpc::Pool::new(shoal_pki::client_config(&server_cert).unwrap());
    let logs = LogBroker::new(store.clone(), pool);
    let (floating, _inbox) = shoal_manager::floating::leader::FloatingHub::new();
    let dispatcher = Dispatcher::start(
        store.clone(),
        view.reader(),
        logs.clone(),
        floating,
        Default::default(),
        stop.clone(),
    );
    let handlers = Arc::new(ManagerRpc {
        store: store.clone(),
        dispatcher,
        logs: logs.clone(),
    });
    let listener = shoal_rpc::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(shoal_rpc::serve(
        listener,
        Arc::new(parking_lot::RwLock::new(
            shoal_pki::server_config(&server_cert).unwrap(),
        )),
        handlers,
        stop.clone(),
    ));
    Cluster {
        store,
        logs,
        addr,
        ca,
        stop,
        _dir: dir,
    }
}

/// A node's session: what it sends, and what the manager answers.
struct Session {
    up: mpsc::Sender<pb::AgentMessage>,
    down: tonic::Streaming<pb::ManagerMessage>,
}

impl Session {
    async fn open(c: &Cluster, cert: &NodeCert) -> Result<Session, tonic::Status> {
        let ch = shoal_rpc::connect(&c.addr, shoal_pki::client_config(cert).unwrap()).unwrap();
        let (up, rx) = mpsc::channel(16);
        let down = pb::dispatcher_client::DispatcherClient::new(ch)
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Session { up, down })
    }

    async fn send(&self, m: &AgentMessage) {
        let json = serde_json::to_vec(m).unwrap();
        self.up.send(pb::AgentMessage { json }).await.unwrap();
    }

    /// The next message down, or how the session ended; `None` if nothing came in `wait`.
    async fn next(
        &mut self,
        wait: Duration,
    ) -> Option<Result<Option<ManagerMessage>, tonic::Status>> {
        let m = tokio::time::timeout(wait, self.down.next()).await.ok()?;
        Some(match m {
            None => Ok(None),
            Some(Ok(m)) => Ok(Some(serde_json::from_slice(&m.json).unwrap())),
            Some(Err(e)) => Err(e),
        })
    }
}

fn report(task: &str, state: TaskState) -> AgentMessage {
    AgentMessage::Reports(vec![TaskStatusReport {
        task_id: task.into(),
        status: TaskStatus {
            state: Some(state),
            ..Default::default()
        },
    }])
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn state_of(store: &Store, task: &str) -> TaskState {
    db::get::<StoredTask>(store, task).unwrap().obj.state()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_speaks_only_for_itself() {
    let c = cluster().await;
    let a = cert(&c.ca, "node-a", Role::Worker);
    let s = Session::open(&c, &a).await.unwrap();
    let b_before = db::get::<Node>(&c.store, "node-b").unwrap();
    let tb_before = db::get::<StoredTask>(&c.store, "tb").unwrap();

    // Node A claims node B's host name and reports node B's task as failed.
    s.send(&AgentMessage::Hello {
        description: Some(Box::new(NodeDescription {
            hostname: Some("b-host".into()),
            ..Default::default()
        })),
        interfaces: Vec::new(),
    })
    .await;
    s.send(&report("tb", TaskState::FAILED)).await;
    s.send(&report("ta", TaskState::RUNNING)).await;
    wait_until("node A's own task runs", || {
        state_of(&c.store, "ta") == TaskState::RUNNING
    })
    .await;
    let desc = |id: &str| {
        db::get::<Node>(&c.store, id)
            .unwrap()
            .obj
            .description
            .and_then(|d| d.hostname)
    };
    wait_until("node A's description is stored", || {
        desc("node-a").as_deref() == Some("b-host")
    })
    .await;

    // Node B's record and task are as they were: the claim changed only node A's own record.
    let b_after = db::get::<Node>(&c.store, "node-b").unwrap();
    assert_eq!(
        b_after.version, b_before.version,
        "node B's record was written"
    );
    assert_eq!(desc("node-b").as_deref(), Some("b-host"));
    let tb_after = db::get::<StoredTask>(&c.store, "tb").unwrap();
    assert_eq!(
        tb_after.obj.state(),
        TaskState::RUNNING,
        "node A rewrote node B's task"
    );
    assert_eq!(tb_after.version, tb_before.version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_cut_off_at_once() {
    let c = cluster().await;
    let a = cert(&c.ca, "node-a", Role::Worker);
    let mut s = Session::open(&c, &a).await.unwrap();
    // The session is live: the welcome comes first.
    match s.next(Duration::from_secs(5)).await {
        Some(Ok(Some(ManagerMessage::Welcome { .. }))) => {}
        other => panic!("expected the welcome, got {other:?}"),
    }

    // `docker node rm --force node-a`, as the API writes it.
    let n = db::get::<Node>(&c.store, "node-a").unwrap();
    let ops = vec![
        db::delete::<Node>("node-a", Expect::Version(n.version)),
        db::put(
            &Removed {
                node_id: "node-a".into(),
            },
            Expect::Any,
        )
        .unwrap(),
    ];
    db::write(&c.store, ops).await.unwrap();
    let removed_at = Instant::now();

    // The open session ends now (not at its next heartbeat), saying why.
    let end = loop {
        match s.next(Duration::from_secs(3)).await {
            Some(Ok(Some(_))) => continue,
            Some(end) => break end,
            None => panic!("the removed node's session is still open"),
        }
    };
    let e = end.expect_err("the session ends with an error");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("removed"), "{e:?}");
    eprintln!("session ended {:?} after the removal", removed_at.elapsed());

    // Its certificate opens nothing any more; its reports change nothing.
    let e = match Session::open(&c, &a).await {
        Ok(mut s) => s.next(Duration::from_secs(3)).await.unwrap().unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("removed"), "{e:?}");
}

async fn raft_call(c: &Cluster, cert: &NodeCert, kind: &str) -> tonic::Status {
    let ch = shoal_rpc::connect(&c.addr, shoal_pki::client_config(cert).unwrap()).unwrap();
    pb::raft_client::RaftClient::new(ch)
        .call(pb::RaftMessage {
            kind: kind.into(),
            // Not a valid message: a call that passes authorization fails to decode.
            payload: vec![0xff; 3],
        })
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_manager_loses_write_access_then_raft_membership() {
    let c = cluster().await;
    // A second manager, known to the store (not yet added to raft).
    let ops = vec![
        db::put(
            &node("mgr2", NodeSpecRoleEnum::MANAGER, "mgr2-host"),
            Expect::Absent,
        )
        .unwrap(),
        db::put(
            &Member {
                node_id: "mgr2".into(),
                raft_id: 5,
                addr: "127.0.0.1:2".into(),
            },
            Expect::Absent,
        )
        .unwrap(),
    ];
    db::write(&c.store, ops).await.unwrap();
    let m2 = cert(&c.ca, "mgr2", Role::Manager);
    let passed = |e: &tonic::Status| e.code() == tonic::Code::Internal;
    let e = raft_call(&c, &m2, "propose").await;
    assert!(passed(&e), "a manager may forward writes: {e:?}");

    // `docker node demote mgr2`: its certificate still says manager until it renews.
    let mut n = db::get::<Node>(&c.store, "mgr2").unwrap();
    if let Some(spec) = n.obj.spec.as_mut() {
        spec.role = Some(NodeSpecRoleEnum::WORKER);
    }
    db::write(
        &c.store,
        vec![db::put(&n.obj, Expect::Version(n.version)).unwrap()],
    )
    .await
    .unwrap();
    let e = raft_call(&c, &m2, "propose").await;
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("no longer a manager"), "{e:?}");

    // Once raft no longer counts it, the leader forgets its raft identity: nothing of raft
    // answers its certificate any more.
    let stop = CancellationToken::new();
    tokio::spawn(shoal_manager::membership::run(
        c.store.clone(),
        stop.clone(),
    ));
    wait_until("the demoted manager's member record goes", || {
        db::get::<Member>(&c.store, "mgr2").is_none()
    })
    .await;
    assert!(
        db::get::<Member>(&c.store, "mgr").is_some(),
        "the leader's own record stays"
    );
    let e = raft_call(&c, &m2, "vote").await;
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("not a raft member"), "{e:?}");
    stop.cancel();
}

/// A join with the manager token, over the bootstrap TLS a joiner uses (no certificate of its
/// own), announcing `addr`.
async fn join_as_manager(c: &Cluster, token: &shoal_pki::JoinToken, addr: &str) -> tonic::Status {
    let tls = shoal_pki::bootstrap_client_config(shoal_pki::digest_of(c.ca.cert_pem())).unwrap();
    let ch = shoal_rpc::connect(&c.addr, tls).unwrap();
    let key = NodeKey::generate().unwrap();
    match pb::ca_client::CaClient::new(ch)
        .issue_node_certificate(pb::IssueRequest {
            token: token.to_string(),
            csr_pem: key.csr_pem().to_string(),
            description_json: Vec::new(),
            advertise_addr: addr.into(),
            availability: String::new(),
        })
        .await
    {
        Ok(_) => tonic::Status::ok("joined"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_cannot_join_with_the_address_of_a_live_manager() {
    let c = cluster().await;
    let token = shoal_pki::JoinToken::generate(shoal_pki::digest_of(c.ca.cert_pem()));
    let (cert_pem, key_pem) = c.ca.to_pem_pair();
    let swarm = shoal_api::models::Swarm {
        id: Some("cluster1".into()),
        join_tokens: Some(shoal_api::models::JoinTokens {
            worker: Some("SWMTKN-1-unused".into()),
            manager: Some(token.to_string()),
        }),
        ..Default::default()
    };
    let ca = db::RootCa {
        id: "root".into(),
        cert_pem,
        key_pem,
    };
    let ops = vec![
        db::put(&swarm, Expect::Absent).unwrap(),
        db::put(&ca, Expect::Absent).unwrap(),
    ];
    db::write(&c.store, ops).await.unwrap();

    // "mgr" is up at 127.0.0.1:1: a joiner announcing that address is refused, nothing written.
    let members = db::list::<Member>(&c.store).len();
    let e = join_as_manager(&c, &token, "127.0.0.1:1").await;
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    assert!(e.message().contains("address of manager mgr"), "{e:?}");
    assert_eq!(db::list::<Member>(&c.store).len(), members);

    // Its own address is fine.
    let e = join_as_manager(&c, &token, "127.0.0.1:3").await;
    assert_eq!(e.code(), tonic::Code::Ok, "{e:?}");

    // Once "mgr" is down, its machine may come back with a fresh data dir at the same address.
    let mut n = db::get::<Node>(&c.store, "mgr").unwrap();
    n.obj.status = Some(NodeStatus {
        state: Some(NodeState::DOWN),
        ..Default::default()
    });
    db::write(
        &c.store,
        vec![db::put(&n.obj, Expect::Version(n.version)).unwrap()],
    )
    .await
    .unwrap();
    let e = join_as_manager(&c, &token, "127.0.0.1:1").await;
    assert_eq!(e.code(), tonic::Code::Ok, "{e:?}");
}

/// A line of task `task` as an agent sends it.
fn line(task: &str, text: &str) -> LogMessage {
    LogMessage {
        task_id: task.into(),
        stream: LogStream::Stdout,
        time: LogTime::now(),
        data: text.as_bytes().to_vec(),
    }
}

fn logs(id: &str, messages: Vec<LogMessage>, done: bool) -> AgentMessage {
    AgentMessage::Logs(LogBatch {
        id: id.into(),
        messages,
        done,
    })
}

impl Session {
    /// The next log message down the session (assignments and the like skipped).
    async fn log_message(&mut self) -> ManagerMessage {
        let t = Instant::now();
        loop {
            let left = Duration::from_secs(10).saturating_sub(t.elapsed());
            match self.next(left).await {
                Some(Ok(Some(m @ ManagerMessage::LogSubscribe(_))))
                | Some(Ok(Some(m @ ManagerMessage::LogCredit { .. })))
                | Some(Ok(Some(m @ ManagerMessage::LogClose { .. }))) => return m,
                Some(Ok(Some(_))) => continue,
                other => panic!("no log message down the session: {other:?}"),
            }
        }
    }

    /// The subscription the manager sends next (credit and closes of others skipped).
    async fn subscription(&mut self) -> LogSubscription {
        loop {
            if let ManagerMessage::LogSubscribe(s) = self.log_message().await {
                return *s;
            }
        }
    }
}

/// Everything a subscription gives until its end: (node, task, text) lines and errors.
async fn read_all(sub: &mut Subscription) -> (Vec<(String, String, String)>, Vec<String>) {
    let (mut lines, mut errors) = (Vec::new(), Vec::new());
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("the log stream ended within 10 s");
        match item {
            None => break,
            Some(LogItem::Lines(l)) => lines.extend(
                l.into_iter()
                    .map(|l| (l.node_id, l.task_id, String::from_utf8(l.data).unwrap())),
            ),
            Some(LogItem::Error(e)) => errors.push(e),
        }
    }
    lines.sort();
    (lines, errors)
}

fn stdout(follow: bool) -> LogOptions {
    LogOptions {
        follow,
        stdout: true,
        ..Default::default()
    }
}

fn service_svc() -> LogSelector {
    LogSelector {
        service_ids: vec!["svc".into()],
        task_ids: vec![],
    }
}

/// Both nodes with a session and their task running.
async fn two_nodes(c: &Cluster) -> (Session, Session) {
    let a = Session::open(c, &cert(&c.ca, "node-a", Role::Worker))
        .await
        .unwrap();
    let b = Session::open(c, &cert(&c.ca, "node-b", Role::Worker))
        .await
        .unwrap();
    a.send(&report("ta", TaskState::RUNNING)).await;
    wait_until("node A's task runs", || {
        state_of(&c.store, "ta") == TaskState::RUNNING
    })
    .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_come_from_the_nodes_that_run_the_tasks_and_credit_goes_back() {
    let c = cluster().await;
    let (mut a, mut b) = two_nodes(&c).await;
    let mut sub = c
        .logs
        .subscribe(service_svc(), stdout(false))
        .await
        .unwrap();
    let (sa, sb) = (a.subscription().await, b.subscription().await);
    assert_eq!(sa.id, sb.id);
    assert_eq!((sa.selector, sa.options), (service_svc(), stdout(false)));
    assert_eq!(sa.window, LOG_WINDOW);
    let id = sa.id;

    let from_a = line("ta", "from a\n");
    let cost = from_a.cost();
    a.send(&logs(&id, vec![from_a], false)).await;
    let first = sub.next().await;
    assert!(
        matches!(&first, Some(LogItem::Lines(l)) if l[0].node_id == "node-a"),
        "{first:?}"
    );
    // What the subscriber read is given back to the node that sent it.
    assert_eq!(
        a.log_message().await,
        ManagerMessage::LogCredit {
            id: id.clone(),
            bytes: cost
        }
    );
    // Node B speaks for its own task, and tries to for node A's: that line is dropped.
    b.send(&logs(
        &id,
        vec![line("tb", "from b\n"), line("ta", "b as a\n")],
        true,
    ))
    .await;
    a.send(&logs(&id, vec![], true)).await;
    let (lines, errors) = read_all(&mut sub).await;
    assert_eq!(lines, [("node-b".into(), "tb".into(), "from b\n".into())]);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(c.logs.open_subscriptions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_goes_away_ends_only_its_part_of_the_stream() {
    let c = cluster().await;
    let (mut a, mut b) = two_nodes(&c).await;

    // Following: node B's lines keep coming after node A is gone.
    let mut sub = c.logs.subscribe(service_svc(), stdout(true)).await.unwrap();
    let id = a.subscription().await.id;
    b.subscription().await;
    let a1 = line("ta", "a1\n");
    let a1_time = a1.time;
    a.send(&logs(&id, vec![a1], false)).await;
    let first = sub.next().await;
    assert!(
        matches!(&first, Some(LogItem::Lines(l)) if l[0].task_id == "ta"),
        "{first:?}"
    );
    drop(a);
    b.send(&logs(&id, vec![line("tb", "b1\n")], false)).await;
    let next = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap();
    assert!(
        matches!(&next, Some(LogItem::Lines(l)) if l[0].task_id == "tb"),
        "{next:?}"
    );
    // Node A comes back: asked again, from just after the last line it sent.
    let mut a = Session::open(&c, &cert(&c.ca, "node-a", Role::Worker))
        .await
        .unwrap();
    let again = a.subscription().await;
    assert_eq!(again.id, id);
    assert!(again.options.since > Some(a1_time), "{:?}", again.options);
    assert_eq!(again.options.tail, None);
    drop(sub);

    // Not following: the stream ends once node B is done, saying node A's part is missing.
    let mut sub = c
        .logs
        .subscribe(service_svc(), stdout(false))
        .await
        .unwrap();
    let id = a.subscription().await.id;
    assert_eq!(b.subscription().await.id, id);
    b.send(&logs(&id, vec![line("tb", "b2\n")], false)).await;
    drop(a);
    b.send(&logs(&id, vec![], true)).await;
    let (lines, errors) = read_all(&mut sub).await;
    assert_eq!(lines, [("node-b".into(), "tb".into(), "b2\n".into())]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("incomplete log stream")
            && errors[0].contains("node node-a disconnected unexpectedly"),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_leaves_closes_the_subscription_on_every_node() {
    let c = cluster().await;
    let (mut a, mut b) = two_nodes(&c).await;
    let sub = c.logs.subscribe(service_svc(), stdout(true)).await.unwrap();
    let id = a.subscription().await.id;
    b.subscription().await;
    assert_eq!(c.logs.open_subscriptions(), 1);
    drop(sub);
    for s in [&mut a, &mut b] {
        assert_eq!(
            s.log_message().await,
            ManagerMessage::LogClose { id: id.clone() }
        );
    }
    assert_eq!(c.logs.open_subscriptions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_sends_past_its_window_loses_its_part() {
    let c = cluster().await;
    let (mut a, mut b) = two_nodes(&c).await;
    let mut sub = c
        .logs
        .subscribe(service_svc(), stdout(false))
        .await
        .unwrap();
    let id = a.subscription().await.id;
    b.subscription().await;
    // Nobody reads: node A sends more than its window all the same.
    let big = "x".repeat(MAX_LOG_LINE - 1) + "\n";
    let n = (LOG_WINDOW as usize / MAX_LOG_LINE) + 2;
    for _ in 0..n {
        a.send(&logs(&id, vec![line("ta", &big)], false)).await;
    }
    assert_eq!(
        a.log_message().await,
        ManagerMessage::LogClose { id: id.clone() }
    );
    b.send(&logs(&id, vec![], true)).await;
    let (lines, errors) = read_all(&mut sub).await;
    assert!(lines.len() < n, "{} lines kept of {n}", lines.len());
    assert!(
        errors.len() == 1
            && errors[0].contains("node node-a sent more logs than it was given credit for"),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_manager_reads_task_logs_through_the_leader() {
    let c = cluster().await;
    let (_a, mut b) = two_nodes(&c).await;
    db::write(
        &c.store,
        vec![db::put(
            &node("mgr2", NodeSpecRoleEnum::MANAGER, "m2-host"),
            Expect::Absent,
        )
        .unwrap()],
    )
    .await
    .unwrap();
    let request = serde_json::json!({
        "selector": {"task_ids": ["tb"]},
        "options": {"follow": true, "stdout": true}
    });
    let call = |who: &NodeCert| {
        let ch = shoal_rpc::connect(&c.addr, shoal_pki::client_config(who).unwrap()).unwrap();
        let req = pb::LogRequest {
            json: serde_json::to_vec(&request).unwrap(),
        };
        async move { pb::logs_client::LogsClient::new(ch).subscribe(req).await }
    };
    // A worker may not.
    let e = call(&cert(&c.ca, "node-a", Role::Worker))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    let mut stream = call(&cert(&c.ca, "mgr2", Role::Manager))
        .await
        .unwrap()
        .into_inner();
    let s = b.subscription().await;
    assert_eq!(s.selector.task_ids, ["tb"]);
    b.send(&logs(
        &s.id,
        vec![line("tb", "to the other manager\n")],
        false,
    ))
    .await;
    let item = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let item: LogItem = serde_json::from_slice(&item.json).unwrap();
    match item {
        LogItem::Lines(l) => {
            assert_eq!(l.len(), 1);
            assert_eq!(
                (l[0].node_id.as_str(), l[0].service_id.as_str()),
                ("node-b", "svc")
            );
            assert_eq!(l[0].data, b"to the other manager\n");
        }
        other => panic!("{other:?}"),
    }
    // The other manager's client leaves: the node is told to stop.
    drop(stream);
    assert_eq!(
        b.log_message().await,
        ManagerMessage::LogCredit {
            id: s.id.clone(),
            bytes: line("tb", "to the other manager\n").cost()
        }
    );
    assert_eq!(b.log_message().await, ManagerMessage::LogClose { id: s.id });
}
