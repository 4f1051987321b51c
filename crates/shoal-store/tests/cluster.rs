//! Three stores replicating through raft in one process. The transport here hands messages to
//! the peer's `Store::handle_rpc` directly (the real one, mutual-TLS gRPC, is tested in
//! `shoal-rpc` and end to end); everything else is the real store on real files.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{data, init_tracing, put};
use futures::future::BoxFuture;
use shoal_store::{
    Action, Change, Expect, Object, RaftTransport, Recorder, RpcKind, Store, StoreError,
    StoreOptions, StoreTuning, TransportError,
};

/// Records "<action> <id>" for every change of a `svc`.
struct Ids;

impl Recorder for Ids {
    fn keep(&self) -> usize {
        100
    }
    fn wants(&self, kind: &str) -> bool {
        kind == "svc"
    }
    fn record(&self, change: &Change, _previous: Option<&Object>) -> Option<Vec<u8>> {
        let verb = match change.action {
            Action::Created => "create",
            Action::Updated => "update",
            Action::Deleted => "remove",
        };
        Some(format!("{verb} {}", change.id).into_bytes())
    }
}

/// A store's journal: (position, time, record).
fn journal(s: &Store) -> Vec<(u64, u32, i64, String)> {
    s.journal_after(None)
        .into_iter()
        .map(|r| {
            (
                r.position.index,
                r.position.ordinal,
                r.time,
                String::from_utf8(r.data.to_vec()).unwrap(),
            )
        })
        .collect()
}

fn records(j: &[(u64, u32, i64, String)]) -> Vec<&str> {
    j.iter().map(|r| r.3.as_str()).collect()
}

/// Peers by address; a cut address answers nothing.
#[derive(Default)]
struct Net {
    peers: Mutex<HashMap<String, Store>>,
    cut: Mutex<HashSet<String>>,
}

struct Local {
    from: String,
    net: Arc<Net>,
}

impl RaftTransport for Local {
    fn call(
        &self,
        addr: &str,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>> {
        let cut = {
            let c = self.net.cut.lock().unwrap();
            c.contains(addr) || c.contains(&self.from)
        };
        let peer = self.net.peers.lock().unwrap().get(addr).cloned();
        let addr = addr.to_string();
        Box::pin(async move {
            let err = |m: &str| TransportError {
                addr: addr.clone(),
                message: m.into(),
            };
            if cut {
                tokio::time::sleep(Duration::from_millis(20)).await;
                return Err(err("cut off"));
            }
            let peer = peer.ok_or_else(|| err("connection refused"))?;
            peer.handle_rpc(kind, &payload)
                .await
                .map_err(|e| err(&e.to_string()))
        })
    }
}

fn addr(i: u64) -> String {
    format!("10.99.9.{i}:2377")
}

async fn start(net: &Arc<Net>, dir: &std::path::Path, i: u64, bootstrap: bool) -> Store {
    let opts = StoreOptions {
        dir: dir.join(format!("m{i}")),
        raft_node_id: i,
        raft_addr: addr(i),
        bootstrap,
        transport: Some(Arc::new(Local {
            from: addr(i),
            net: net.clone(),
        })),
        data_key: shoal_store::seal::Key::from_bytes(&[i as u8; 32]).expect("key"),
        recorder: Some(Arc::new(Ids)),
    };
    let tuning = StoreTuning {
        write_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let s = Store::open_with(opts, tuning).await.expect("open");
    net.peers.lock().unwrap().insert(addr(i), s.clone());
    s
}

async fn three(net: &Arc<Net>, dir: &std::path::Path) -> Vec<Store> {
    init_tracing();
    let s1 = start(net, dir, 1, true).await;
    let s2 = start(net, dir, 2, false).await;
    let s3 = start(net, dir, 3, false).await;
    s1.add_learner(2, addr(2)).await.expect("learner 2");
    s1.add_learner(3, addr(3)).await.expect("learner 3");
    wait("learners catch up", || {
        s1.caught_up(2, 0) && s1.caught_up(3, 0)
    })
    .await;
    s1.set_voters(BTreeSet::from([1, 2, 3]), false)
        .await
        .expect("voters");
    vec![s1, s2, s3]
}

async fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_replicate_and_followers_forward_to_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let net = Arc::new(Net::default());
    let s = three(&net, dir.path()).await;
    let m = s[0].membership();
    assert_eq!(m.voters.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(s[0].is_leader());

    s[0].write(vec![put("svc", "a", Some("web"), Expect::Absent, "1")])
        .await
        .unwrap();
    wait("followers see the leader's write", || {
        data(&s[1], "svc", "a").is_some() && data(&s[2], "svc", "a").is_some()
    })
    .await;

    // A follower's write goes to the leader; it is readable on that follower when write returns.
    let v = s[2]
        .write(vec![put("svc", "b", Some("api"), Expect::Absent, "2")])
        .await
        .unwrap();
    assert_eq!(data(&s[2], "svc", "b").as_deref(), Some("2"));
    assert_eq!(s[2].get("svc", "b").unwrap().version, v);
    // Preconditions are still decided once, at the leader.
    let e = s[1]
        .write(vec![put("svc", "c", Some("web"), Expect::Absent, "3")])
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NameConflict { .. }), "{e:?}");
    for st in &s {
        st.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_loss_elects_another_and_quorum_loss_fails_writes_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let net = Arc::new(Net::default());
    let s = three(&net, dir.path()).await;
    s[0].write(vec![put("svc", "a", None, Expect::Absent, "1")])
        .await
        .unwrap();

    // Cut the leader off: the other two elect one of themselves and keep taking writes.
    net.cut.lock().unwrap().insert(addr(1));
    let started = Instant::now();
    s[1].write(vec![put("svc", "b", None, Expect::Absent, "2")])
        .await
        .expect("write after leader loss");
    eprintln!(
        "write accepted {:?} after the leader was cut off",
        started.elapsed()
    );
    wait("a new leader among the two", || {
        matches!(s[1].leader().map(|l| l.0), Some(2) | Some(3))
    })
    .await;
    // Acknowledged means applied on s[1] and on a quorum's disks; s[2] applies it soon after.
    wait("the write applied on the third node", || {
        data(&s[2], "svc", "b").as_deref() == Some("2")
    })
    .await;

    // The old leader cannot commit alone: its write fails as unavailable, not silently.
    let e = s[0]
        .write(vec![put("svc", "lost", None, Expect::Absent, "x")])
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");

    // Heal: it rejoins as a follower and catches up; its uncommitted write never appears.
    net.cut.lock().unwrap().clear();
    wait("old leader catches up", || {
        data(&s[0], "svc", "b").is_some()
    })
    .await;
    assert!(s[1].get("svc", "lost").is_none());

    // Two of three gone: no quorum, writes fail with a clear error and reads still work.
    wait("a leader after healing", || s[1].leader().is_some()).await;
    let leader = s[1].leader().map(|l| l.0).unwrap();
    let survivor = [1u64, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    for i in [1u64, 2, 3] {
        if i != survivor {
            net.cut.lock().unwrap().insert(addr(i));
        }
    }
    let e = s[survivor as usize - 1]
        .write(vec![put("svc", "c", None, Expect::Absent, "3")])
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert!(e.to_string().contains("quorum"), "{e}");
    assert_eq!(
        data(&s[survivor as usize - 1], "svc", "a").as_deref(),
        Some("1")
    );
    net.cut.lock().unwrap().clear();
    for st in &s {
        st.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_journal_is_the_same_on_every_manager_and_outlives_its_leader() {
    let dir = tempfile::tempdir().unwrap();
    let net = Arc::new(Net::default());
    let mut s = three(&net, dir.path()).await;
    s[0].write(vec![
        put("svc", "a", None, Expect::Absent, "1"),
        put("svc", "b", None, Expect::Absent, "1"),
    ])
    .await
    .unwrap();
    s[0].write(vec![put("svc", "a", None, Expect::Any, "2")])
        .await
        .unwrap();

    // The leader goes: the next one carries on from the same history.
    net.cut.lock().unwrap().insert(addr(1));
    s[1].write(vec![put("svc", "c", None, Expect::Absent, "1")])
        .await
        .expect("write after leader loss");
    wait("s[2] applied the write", || {
        data(&s[2], "svc", "c").is_some()
    })
    .await;
    let want = ["create a", "create b", "update a", "create c"];
    let j1 = journal(&s[1]);
    assert_eq!(records(&j1), want, "{j1:?}");
    assert_eq!(journal(&s[2]), j1, "every manager holds the same journal");
    let positions: Vec<(u64, u32)> = j1.iter().map(|r| (r.0, r.1)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert_eq!(
        (positions[0].0, positions[0].1, positions[1].1),
        (positions[1].0, 0, 1)
    );
    assert!(
        j1.iter().all(|r| r.2 > 0),
        "every record has its entry's time"
    );

    // The old leader's write that never committed makes no record anywhere; healed, it holds
    // the same journal as the others.
    let _ = s[0]
        .write(vec![put("svc", "lost", None, Expect::Absent, "x")])
        .await
        .unwrap_err();
    net.cut.lock().unwrap().clear();
    wait("old leader catches up", || {
        data(&s[0], "svc", "c").is_some()
    })
    .await;
    assert_eq!(journal(&s[0]), j1);

    // A restart rebuilds it from the log: nothing lost, nothing twice.
    let follower = if s[1].is_leader() { 2 } else { 1 };
    s[follower].shutdown().await.unwrap();
    s[follower] = start(&net, dir.path(), follower as u64 + 1, false).await;
    wait("the restarted manager caught up", || {
        journal(&s[follower]).len() == j1.len()
    })
    .await;
    assert_eq!(journal(&s[follower]), j1);
    for st in &s {
        st.shutdown().await.unwrap();
    }
}
