//! Prints the store's write latency, write throughput and reopen time.
//!
//! `cargo run --release -p shoal-store --example store_bench [-- DIR]` (DIR defaults to a temp dir
//! under the system temp directory; use a path on the disk you care about).

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_store::{Expect, Op, Store, StoreOptions};

fn put(kind: &str, id: String, doc: &[u8]) -> Op {
    Op::Put {
        kind: kind.into(),
        name: Some(id.clone()),
        id,
        expect: Expect::Any,
        data: doc.to_vec(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn open(dir: &std::path::Path) -> Result<Store, Box<dyn std::error::Error>> {
    Ok(Store::open(StoreOptions {
        dir: dir.to_path_buf(),
        raft_node_id: 1,
        raft_addr: "127.0.0.1:2377".into(),
        bootstrap: true,
        transport: None,
        data_key: shoal_store::seal::Key::from_bytes(&[7; 32])?,
        recorder: None,
    })
    .await?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp;
    let dir = match std::env::args().nth(1) {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    // A task-sized JSON document.
    let doc = format!(
        "{{\"Spec\":{{\"ContainerSpec\":{{\"Image\":\"{}\"}}}}}}",
        "x".repeat(450)
    );
    let doc = doc.as_bytes();
    let store = open(&dir).await?;

    // 1. Sequential single-object writes: latency of one acknowledged (fsynced) write.
    let n = 1000;
    let mut lat = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        store.write(vec![put("seq", format!("s{i}"), doc)]).await?;
        lat.push(t.elapsed());
    }
    let total = started.elapsed();
    lat.sort();
    println!(
        "sequential writes: n={n} p50={:?} p99={:?} max={:?} => {:.0} writes/s",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[lat.len() - 1],
        n as f64 / total.as_secs_f64()
    );

    // 2. Concurrent single-object writers: group commit shares one fsync among them.
    for writers in [16usize, 64] {
        let per = 200;
        let started = Instant::now();
        let mut tasks = Vec::new();
        let lats = Arc::new(parking_lot::Mutex::new(Vec::new()));
        for w in 0..writers {
            let s = store.clone();
            let doc = doc.to_vec();
            let lats = lats.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..per {
                    let t = Instant::now();
                    s.write(vec![put("conc", format!("c{w}-{i}"), &doc)])
                        .await?;
                    lats.lock().push(t.elapsed());
                }
                Ok::<_, shoal_store::StoreError>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let total = started.elapsed();
        let mut lat = lats.lock().clone();
        lat.sort();
        println!(
            "concurrent writes: writers={writers} n={} p50={:?} p99={:?} => {:.0} writes/s",
            writers * per,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            (writers * per) as f64 / total.as_secs_f64()
        );
    }

    // 3. Batched writes: 100 objects per raft entry.
    let batches = 200;
    let started = Instant::now();
    for b in 0..batches {
        let ops = (0..100)
            .map(|i| put("batch", format!("b{:05}", b * 100 + i), doc))
            .collect();
        store.write(ops).await?;
    }
    let total = started.elapsed();
    println!(
        "batched writes: {batches} batches x 100 objects in {total:?} => {:.0} objects/s, {:?}/batch",
        (batches * 100) as f64 / total.as_secs_f64(),
        total / batches as u32
    );

    // 4. Reads.
    store
        .write(
            (0..100)
                .map(|i| put("svc", format!("svc{i:03}"), doc))
                .collect(),
        )
        .await?;
    let rounds = 10_000u32;
    let t = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(store.list("svc"));
    }
    let per_list100 = t.elapsed() / rounds;
    let t = Instant::now();
    let mut count = 0;
    for _ in 0..rounds {
        count += store.list("seq").len().min(100);
    }
    let _ = count;
    let per_list = t.elapsed() / rounds;
    let t = Instant::now();
    for i in 0..rounds {
        let _ = store.get("batch", &format!("b{:05}", i % 20000));
    }
    println!(
        "reads: list(100 objects)={per_list100:?} list(1000 objects)={per_list:?} get={:?}",
        t.elapsed() / rounds
    );

    let objects = store.list("seq").len() + store.list("conc").len() + store.list("batch").len();
    store.shutdown().await?;

    // 5. Reopen: log replay, then from a snapshot.
    let t = Instant::now();
    let store = open(&dir).await?;
    println!(
        "reopen by log replay ({objects} objects, {} log entries): {:?}",
        store.last_applied(),
        t.elapsed()
    );
    store.snapshot().await?;
    store.shutdown().await?;
    let t = Instant::now();
    let store = open(&dir).await?;
    println!(
        "reopen from snapshot ({objects} objects): {:?}",
        t.elapsed()
    );
    store.shutdown().await?;
    let size = std::fs::metadata(dir.join(shoal_store::DB_FILE))?.len();
    println!("file size: {} KiB", size / 1024);
    Ok(())
}
