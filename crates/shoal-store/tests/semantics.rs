//! Write semantics: preconditions, names, batch atomicity, deletes, versions, watch events.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{del, open, put};
use shoal_store::{Action, ChangeSet, Expect, StoreError};
use tokio::sync::broadcast;

#[tokio::test]
async fn put_get_list_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    let v1 = s
        .write(vec![put("svc", "b", None, Expect::Absent, r#"{"n":1}"#)])
        .await
        .unwrap();
    let v2 = s
        .write(vec![
            put("svc", "a", None, Expect::Absent, "{}"),
            put("svc", "c", None, Expect::Absent, "{}"),
            put("task", "t1", None, Expect::Absent, "{}"),
        ])
        .await
        .unwrap();
    assert!(v2 > v1);
    assert_eq!(s.last_applied(), v2);
    assert_eq!(s.get("svc", "b").unwrap().version, v1);
    assert_eq!(s.get("svc", "a").unwrap().version, v2);
    assert_eq!(s.get("task", "t1").unwrap().version, v2);
    assert!(s.get("svc", "zz").is_none());
    assert!(s.get("nokind", "a").is_none());
    let ids: Vec<_> = s.list("svc").into_iter().map(|o| o.id).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert!(s.list("nothing").is_empty());

    // Update with Expect::Any bumps the version to the new index.
    let v3 = s
        .write(vec![put("svc", "b", None, Expect::Any, r#"{"n":2}"#)])
        .await
        .unwrap();
    let b = s.get("svc", "b").unwrap();
    assert_eq!(b.version, v3);
    assert_eq!(&*b.data, br#"{"n":2}"#);
    // An empty batch writes nothing.
    assert_eq!(s.write(vec![]).await.unwrap(), v3);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn expect_absent_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    let v = s
        .write(vec![put("svc", "a", None, Expect::Absent, "{}")])
        .await
        .unwrap();
    let err = s
        .write(vec![put("svc", "a", None, Expect::Absent, "{}")])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::AlreadyExists {
            kind: "svc".into(),
            id: "a".into()
        }
    );

    let err = s
        .write(vec![put("svc", "a", None, Expect::Version(v + 100), "{}")])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Conflict {
            kind: "svc".into(),
            id: "a".into(),
            expected: v + 100,
            actual: v
        }
    );
    assert_eq!(err.to_string(), "update out of sequence");

    let err = s
        .write(vec![put("svc", "missing", None, Expect::Version(v), "{}")])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::NotFound {
            kind: "svc".into(),
            id: "missing".into()
        }
    );

    let v2 = s
        .write(vec![put("svc", "a", None, Expect::Version(v), "{\"x\":1}")])
        .await
        .unwrap();
    assert_eq!(s.get("svc", "a").unwrap().version, v2);
    // The old version is now stale.
    assert!(matches!(
        s.write(vec![put("svc", "a", None, Expect::Version(v), "{}")])
            .await,
        Err(StoreError::Conflict { .. })
    ));
    // Rejected writes still consume a log index but change nothing.
    assert_eq!(s.get("svc", "a").unwrap().version, v2);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn delete_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    // Missing + Any: no-op success.
    s.write(vec![del("svc", "nope", Expect::Any)])
        .await
        .unwrap();
    // Missing + Version / Absent: NotFound.
    for expect in [Expect::Version(3), Expect::Absent] {
        assert_eq!(
            s.write(vec![del("svc", "nope", expect)]).await.unwrap_err(),
            StoreError::NotFound {
                kind: "svc".into(),
                id: "nope".into()
            }
        );
    }
    let v = s
        .write(vec![
            put("svc", "a", Some("web"), Expect::Absent, "{}"),
            put("svc", "b", None, Expect::Absent, "{}"),
        ])
        .await
        .unwrap();
    // Present + wrong version: Conflict.
    assert!(matches!(
        s.write(vec![del("svc", "a", Expect::Version(v - 1))]).await,
        Err(StoreError::Conflict { expected, actual, .. }) if expected == v - 1 && actual == v
    ));
    // Present + Absent: the expectation is violated.
    assert!(matches!(
        s.write(vec![del("svc", "a", Expect::Absent)]).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    s.write(vec![del("svc", "a", Expect::Version(v))])
        .await
        .unwrap();
    s.write(vec![del("svc", "b", Expect::Any)]).await.unwrap();
    assert!(s.get("svc", "a").is_none());
    assert!(s.find_by_name("svc", "web").is_none());
    assert!(s.list("svc").is_empty());
    // The name is free again.
    s.write(vec![put("svc", "c", Some("web"), Expect::Absent, "{}")])
        .await
        .unwrap();
    assert_eq!(s.find_by_name("svc", "web").unwrap().id, "c");
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn names_are_unique_per_kind() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    s.write(vec![put("svc", "a", Some("web"), Expect::Absent, "{}")])
        .await
        .unwrap();
    assert_eq!(s.find_by_name("svc", "web").unwrap().id, "a");
    assert!(s.find_by_name("svc", "db").is_none());
    assert_eq!(
        s.write(vec![put("svc", "b", Some("web"), Expect::Absent, "{}")])
            .await
            .unwrap_err(),
        StoreError::NameConflict {
            kind: "svc".into(),
            name: "web".into()
        }
    );
    // Same name, another kind: fine. Unnamed objects never conflict.
    s.write(vec![
        put("net", "n1", Some("web"), Expect::Absent, "{}"),
        put("svc", "u1", None, Expect::Absent, "{}"),
        put("svc", "u2", None, Expect::Absent, "{}"),
    ])
    .await
    .unwrap();
    // Re-putting an object with its own name is not a conflict.
    s.write(vec![put("svc", "a", Some("web"), Expect::Any, "{\"v\":2}")])
        .await
        .unwrap();
    // Rename frees the old name.
    s.write(vec![put("svc", "a", Some("frontend"), Expect::Any, "{}")])
        .await
        .unwrap();
    assert!(s.find_by_name("svc", "web").is_none());
    assert_eq!(s.find_by_name("svc", "frontend").unwrap().id, "a");
    s.write(vec![put("svc", "b", Some("web"), Expect::Absent, "{}")])
        .await
        .unwrap();
    // Dropping a name (None) frees it too.
    s.write(vec![put("svc", "b", None, Expect::Any, "{}")])
        .await
        .unwrap();
    assert!(s.find_by_name("svc", "web").is_none());
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn racing_creates_with_one_name_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    let mut handles = Vec::new();
    for i in 0..16 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            s.write(vec![put(
                "svc",
                &format!("id{i}"),
                Some("web"),
                Expect::Absent,
                "{}",
            )])
            .await
        }));
    }
    let mut ok = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::NameConflict { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(s.list("svc").len(), 1);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn batch_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    let v = s
        .write(vec![
            put("svc", "a", Some("web"), Expect::Absent, "{\"a\":1}"),
            put("svc", "b", None, Expect::Absent, "{}"),
        ])
        .await
        .unwrap();
    let mut rx = s.watch();
    // The last op fails: the earlier update, create and delete must not happen.
    let err = s
        .write(vec![
            put("svc", "a", Some("renamed"), Expect::Version(v), "{\"a\":2}"),
            put("svc", "c", Some("web"), Expect::Absent, "{}"),
            del("svc", "b", Expect::Any),
            put("svc", "b", None, Expect::Version(v + 999), "{}"),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    let a = s.get("svc", "a").unwrap();
    assert_eq!((a.version, &*a.data), (v, &b"{\"a\":1}"[..]));
    assert_eq!(s.find_by_name("svc", "web").unwrap().id, "a");
    assert!(s.find_by_name("svc", "renamed").is_none());
    assert!(s.get("svc", "c").is_none());
    assert_eq!(s.get("svc", "b").unwrap().version, v);
    assert!(matches!(
        rx.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    ));

    // Ops see the effect of earlier ops in the batch: create then update in one go.
    let v2 = s
        .write(vec![
            put("svc", "d", None, Expect::Absent, "{}"),
            put("svc", "d", None, Expect::Version(0), "{}"),
        ])
        .await;
    assert!(matches!(v2, Err(StoreError::Conflict { .. })));
    assert!(s.get("svc", "d").is_none());
    // Empty ids are refused up front.
    assert!(matches!(
        s.write(vec![put("svc", "", None, Expect::Any, "{}")]).await,
        Err(StoreError::Invalid(_))
    ));
    s.shutdown().await.unwrap();
}

async fn next(rx: &mut broadcast::Receiver<Arc<ChangeSet>>) -> Arc<ChangeSet> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("change set in time")
        .expect("channel open")
}

#[tokio::test]
async fn watch_reports_each_applied_batch() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    let mut rx = s.watch();
    let v1 = s
        .write(vec![
            put("svc", "a", None, Expect::Absent, "{}"),
            put("svc", "b", None, Expect::Absent, "{}"),
        ])
        .await
        .unwrap();
    let v2 = s
        .write(vec![
            put("svc", "a", None, Expect::Version(v1), "{\"u\":1}"),
            del("svc", "b", Expect::Version(v1)),
        ])
        .await
        .unwrap();
    // No-op delete and a rejected batch produce no events.
    s.write(vec![del("svc", "zzz", Expect::Any)]).await.unwrap();
    s.write(vec![put("svc", "a", None, Expect::Absent, "{}")])
        .await
        .unwrap_err();
    let v3 = s
        .write(vec![put("svc", "c", None, Expect::Absent, "{}")])
        .await
        .unwrap();

    let cs = next(&mut rx).await;
    assert_eq!(cs.index, v1);
    let actions: Vec<_> = cs
        .changes
        .iter()
        .map(|c| (c.id.as_str(), c.action))
        .collect();
    assert_eq!(actions, [("a", Action::Created), ("b", Action::Created)]);
    assert_eq!(cs.changes[0].object.as_ref().unwrap().version, v1);

    let cs = next(&mut rx).await;
    assert_eq!(cs.index, v2);
    assert_eq!(cs.changes[0].action, Action::Updated);
    assert_eq!(&*cs.changes[0].object.as_ref().unwrap().data, b"{\"u\":1}");
    assert_eq!(cs.changes[1].action, Action::Deleted);
    // A deletion carries the object as it was.
    assert_eq!(cs.changes[1].object.as_ref().unwrap().version, v1);

    let cs = next(&mut rx).await;
    assert_eq!(cs.index, v3);
    assert_eq!(cs.changes.len(), 1);
    assert_eq!(cs.changes[0].action, Action::Created);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn reads_are_cheap() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    let doc = format!("{{\"spec\":\"{}\"}}", "x".repeat(400));
    let ops = (0..100)
        .map(|i| put("task", &format!("{i:04}"), None, Expect::Absent, &doc))
        .collect();
    s.write(ops).await.unwrap();
    let rounds = 10_000u32;
    let started = Instant::now();
    let mut n = 0;
    for _ in 0..rounds {
        n += s.list("task").len();
    }
    let per_list = started.elapsed() / rounds;
    assert_eq!(n, 100 * rounds as usize);
    let started = Instant::now();
    for i in 0..rounds {
        assert!(s.get("task", &format!("{:04}", i % 100)).is_some());
    }
    let per_get = started.elapsed() / rounds;
    println!("list(100 objects): {per_list:?}/call, get: {per_get:?}/call");
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn write_after_shutdown_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    s.write(vec![put("svc", "a", None, Expect::Any, "{}")])
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(
        s.write(vec![put("svc", "b", None, Expect::Any, "{}")])
            .await
            .unwrap_err(),
        StoreError::Shutdown
    );
    // Reads keep answering from memory.
    assert!(s.get("svc", "a").is_some());
}

#[test]
fn handles_and_futures_are_send() {
    fn send_sync<T: Send + Sync + Clone + 'static>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<shoal_store::Store>();
    let opts = common::options(std::path::Path::new("/nonexistent"));
    let open = shoal_store::Store::open(opts);
    send(&open);
    drop(open);
    async fn uses(s: shoal_store::Store) {
        let w = s.write(vec![]);
        send(&w);
        let _ = w.await;
        let sd = s.shutdown();
        send(&sd);
        let _ = sd.await;
    }
    let _ = uses;
}

/// Regression: `open` on a fresh dir must not return before the new node leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_store_accepts_writes_right_after_open() {
    for _ in 0..50 {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path()).await;
        s.write(vec![put("svc", "a", None, Expect::Any, "{}")])
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    }
}
