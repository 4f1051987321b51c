//! Durability and recovery: restart, crash (drop without shutdown, SIGKILL), snapshots + purge.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{data, del, open, open_tuned, options, put};
use shoal_store::{Expect, Object, Store, StoreError, StoreTuning};

fn snapshot_tuning(every: u64, keep: u64) -> StoreTuning {
    StoreTuning {
        snapshot_every: every,
        keep_after_snapshot: keep,
        ..StoreTuning::default()
    }
}

/// Everything readable, for comparing a store before and after a restart.
fn dump(s: &Store, kinds: &[&str]) -> Vec<Object> {
    kinds.iter().flat_map(|k| s.list(k)).collect()
}

#[tokio::test]
async fn restart_after_shutdown_restores_state_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    let v1 = s
        .write(vec![
            put("svc", "a", Some("web"), Expect::Absent, "{\"a\":1}"),
            put("svc", "b", None, Expect::Absent, "{}"),
        ])
        .await
        .unwrap();
    s.write(vec![
        put("svc", "a", Some("web"), Expect::Version(v1), "{\"a\":2}"),
        del("svc", "b", Expect::Any),
        put("node", "n1", Some("host1"), Expect::Absent, "{}"),
    ])
    .await
    .unwrap();
    let before = dump(&s, &["svc", "node"]);
    let applied = s.last_applied();
    s.shutdown().await.unwrap();

    let s = open(dir.path()).await;
    assert_eq!(dump(&s, &["svc", "node"]), before);
    assert!(s.last_applied() >= applied);
    assert_eq!(s.find_by_name("svc", "web").unwrap().id, "a");
    assert_eq!(data(&s, "svc", "a").unwrap(), "{\"a\":2}");
    // Writing continues with higher versions; names are still enforced.
    assert!(matches!(
        s.write(vec![put("svc", "x", Some("web"), Expect::Absent, "{}")])
            .await,
        Err(StoreError::NameConflict { .. })
    ));
    let v = s
        .write(vec![put("svc", "c", None, Expect::Absent, "{}")])
        .await
        .unwrap();
    assert!(v > applied);
    s.shutdown().await.unwrap();
}

#[test]
fn drop_without_shutdown_then_reopen_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked = BTreeMap::new();
    {
        // A runtime of its own, dropped without `shutdown`: raft's tasks die mid-flight.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let s = open(dir.path()).await;
            for i in 0..50 {
                let id = format!("o{i}");
                let v = s
                    .write(vec![put("obj", &id, None, Expect::Absent, &format!("{i}"))])
                    .await
                    .unwrap();
                acked.insert(id, v);
            }
            drop(s);
        });
        drop(rt);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = open(dir.path()).await;
        for (id, v) in &acked {
            assert_eq!(s.get("obj", id).map(|o| o.version), Some(*v), "{id}");
        }
        assert_eq!(s.list("obj").len(), acked.len());
        s.shutdown().await.unwrap();
    });
}

#[tokio::test]
async fn other_node_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    s.shutdown().await.unwrap();
    let mut opts = options(dir.path());
    opts.raft_node_id = 2;
    assert!(matches!(
        Store::open(opts).await,
        Err(StoreError::Storage(msg)) if msg.contains("raft node 1")
    ));
}

#[tokio::test]
async fn snapshot_purge_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_tuned(dir.path(), snapshot_tuning(50, 10)).await;
    let mut versions = BTreeMap::new();
    for i in 0..300u32 {
        let id = format!("o{}", i % 120);
        let mut ops = vec![put(
            "obj",
            &id,
            Some(&format!("name-{id}")),
            Expect::Any,
            &format!("{i}"),
        )];
        if i % 7 == 0 {
            let gone = format!("o{}", (i + 60) % 120);
            ops.push(del("obj", &gone, Expect::Any));
            versions.remove(&gone);
        }
        let v = s.write(ops).await.unwrap();
        versions.insert(id, v);
    }
    // Snapshots are built in the background: wait for one past most of the log.
    let raft = s.raft().clone();
    let m = raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.snapshot.map(|l| l.index).unwrap_or(0) >= 250 && m.purged.is_some(),
            "snapshot and purge",
        )
        .await
        .unwrap();
    let purged = m.purged.unwrap().index;
    let snap = m.snapshot.unwrap().index;
    assert!(purged + 10 <= snap, "keeps 10 entries behind the snapshot");
    println!("snapshot at {snap}, log purged up to {purged}");
    let before = dump(&s, &["obj"]);
    s.shutdown().await.unwrap();

    let s = open_tuned(dir.path(), snapshot_tuning(50, 10)).await;
    assert_eq!(dump(&s, &["obj"]), before);
    for (id, v) in &versions {
        let o = s.get("obj", id).unwrap();
        assert_eq!(o.version, *v, "{id}");
        assert_eq!(
            s.find_by_name("obj", &format!("name-{id}")).unwrap().id,
            *id
        );
    }
    let m = s.raft().metrics().borrow().clone();
    assert!(m.purged.is_some(), "purge point survives restart");
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn manual_snapshot_then_restart_loads_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    for i in 0..20 {
        s.write(vec![put("obj", &format!("o{i}"), None, Expect::Any, "{}")])
            .await
            .unwrap();
    }
    s.snapshot().await.unwrap();
    let at = s.raft().metrics().borrow().snapshot.unwrap().index;
    assert_eq!(at, s.last_applied());
    let v = s
        .write(vec![put("obj", "after", None, Expect::Any, "{}")])
        .await
        .unwrap();
    let before = dump(&s, &["obj"]);
    s.shutdown().await.unwrap();
    let s = open(dir.path()).await;
    assert_eq!(dump(&s, &["obj"]), before);
    assert_eq!(s.get("obj", "after").unwrap().version, v);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn reopen_with_20k_objects() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    let doc = format!("{{\"Spec\":{{\"Name\":\"{}\"}}}}", "x".repeat(400));
    let started = Instant::now();
    for batch in 0..200 {
        let ops = (0..100)
            .map(|i| {
                let id = format!("task{:05}", batch * 100 + i);
                put("task", &id, Some(&id), Expect::Absent, &doc)
            })
            .collect();
        s.write(ops).await.unwrap();
    }
    println!(
        "wrote 20000 objects in 200 batches: {:?}",
        started.elapsed()
    );
    s.shutdown().await.unwrap();

    // From the log alone (200 entries of 100 objects, no snapshot yet).
    let started = Instant::now();
    let s = open(dir.path()).await;
    println!("reopen 20k objects by log replay: {:?}", started.elapsed());
    assert_eq!(s.list("task").len(), 20_000);
    s.snapshot().await.unwrap();
    s.shutdown().await.unwrap();

    // From the snapshot.
    let started = Instant::now();
    let s = open(dir.path()).await;
    println!("reopen 20k objects from snapshot: {:?}", started.elapsed());
    assert_eq!(s.list("task").len(), 20_000);
    assert_eq!(s.find_by_name("task", "task12345").unwrap().id, "task12345");
    s.shutdown().await.unwrap();
    let size = std::fs::metadata(dir.path().join(shoal_store::DB_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    println!("redb file size: {} KiB", size / 1024);
}

/// Child process of `sigkill_loses_no_acknowledged_write`: writes until killed, printing acks.
#[test]
#[ignore = "run as a child process by sigkill_loses_no_acknowledged_write"]
fn sigkill_child_writer() {
    let Ok(dir) = std::env::var("SHOAL_STORE_CRASH_DIR") else {
        return;
    };
    let round = std::env::var("SHOAL_STORE_CRASH_ROUND").unwrap_or_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = open(std::path::Path::new(&dir)).await;
        if std::env::var("SHOAL_STORE_CRASH_PREFILL").is_ok() {
            // A realistic amount of state under the crash: 20k task-sized objects + a snapshot.
            let doc = format!("{{\"Spec\":\"{}\"}}", "x".repeat(450));
            for b in 0..200 {
                let ops = (0..100)
                    .map(|i| {
                        put(
                            "task",
                            &format!("t{}", b * 100 + i),
                            None,
                            Expect::Any,
                            &doc,
                        )
                    })
                    .collect();
                s.write(ops).await.unwrap();
            }
            s.snapshot().await.unwrap();
        }
        println!("READY");
        let seq = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for w in 0..4u64 {
            let s = s.clone();
            let seq = seq.clone();
            let round = round.clone();
            tasks.push(tokio::spawn(async move {
                let counter = format!("counter{w}");
                let mut counter_version = None;
                loop {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let id = format!("r{round}e{n}");
                    let expect = counter_version.map_or(Expect::Absent, Expect::Version);
                    let v = s
                        .write(vec![
                            put("entry", &id, None, Expect::Absent, &n.to_string()),
                            put("counter", &counter, None, expect, &n.to_string()),
                        ])
                        .await
                        .unwrap();
                    counter_version = Some(v);
                    println!("ACK {id} {v} {counter}");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn sigkill_loses_no_acknowledged_write() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args([
                "--ignored",
                "--exact",
                "sigkill_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SHOAL_STORE_CRASH_DIR", dir.path())
            .env("SHOAL_STORE_CRASH_ROUND", round.to_string())
            .envs((round == 0).then_some(("SHOAL_STORE_CRASH_PREFILL", "1")))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut acked: BTreeMap<String, u64> = BTreeMap::new();
        let mut counters: BTreeMap<String, u64> = BTreeMap::new();
        let target = 300 + round * 100;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let mut parts = line.split_whitespace();
            if parts.next() != Some("ACK") {
                continue;
            }
            let (id, v, counter) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            let v: u64 = v.parse().unwrap();
            acked.insert(id.to_owned(), v);
            let c = counters.entry(counter.to_owned()).or_default();
            *c = (*c).max(v);
            if acked.len() >= target {
                // Std's kill is SIGKILL on Unix: no destructor, no flush, no shutdown.
                child.kill().unwrap();
                break;
            }
        }
        child.wait().unwrap();
        assert!(acked.len() >= target, "child died early");

        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let started = Instant::now();
            let s = open(dir.path()).await;
            let reopen = started.elapsed();
            for (id, v) in &acked {
                assert_eq!(s.get("entry", id).map(|o| o.version), Some(*v), "acked {id}");
            }
            for (c, v) in &counters {
                assert!(s.get("counter", c).unwrap().version >= *v, "{c}");
            }
            assert_eq!(s.list("task").len(), 20_000);
            println!(
                "round {round}: {} acked writes all present after SIGKILL ({} entries, {} tasks stored, reopen {reopen:?})",
                acked.len(),
                s.list("entry").len(),
                s.list("task").len(),
            );
            // Restart from a clean slate of writers each round: drop the counters.
            let cs: Vec<_> = s.list("counter").into_iter().map(|o| del("counter", &o.id, Expect::Any)).collect();
            s.write(cs).await.unwrap();
            s.shutdown().await.unwrap();
        });
    }
}
