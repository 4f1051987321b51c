//! What a copy of the store's files reveals: nothing of the objects in them. Log entries and
//! snapshots are sealed with the data key; the store opens only with that key.

mod common;

use std::path::Path;

use common::{open, options, put};
use shoal_store::seal::Key;
use shoal_store::{Expect, Store, StoreError, StoreTuning};

const MARKER: &str = "SEAL-MARKER-5d1c0b7e";
const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";

/// Every occurrence of `needle` in the files under `dir`, as "path@offset".
fn find_bytes(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(p) = pending.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                pending.push(e.unwrap().path());
            }
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            hits.push(format!("{}@{at}", p.display()));
        }
    }
    hits
}

fn base64(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..=c.len() {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn doc() -> String {
    format!(
        "{{\"Data\":{:?},\"Plain\":{:?},\"Key\":{:?}}}",
        base64(MARKER),
        MARKER,
        PEM
    )
}

#[tokio::test]
async fn neither_the_log_nor_the_snapshot_holds_plain_text_and_only_the_key_opens_them() {
    let dir = tempfile::tempdir().unwrap();
    // Snapshot early, so the object is in the snapshot as well as in log entries after it.
    let s = common::open_tuned(
        dir.path(),
        StoreTuning {
            snapshot_every: 5,
            keep_after_snapshot: 2,
            ..Default::default()
        },
    )
    .await;
    s.write(vec![put("secret", "a", Some("a"), Expect::Absent, &doc())])
        .await
        .unwrap();
    for i in 0..10 {
        s.write(vec![put(
            "filler",
            &format!("f{i}"),
            None,
            Expect::Any,
            "{}",
        )])
        .await
        .unwrap();
    }
    s.snapshot().await.unwrap();
    s.write(vec![put("secret", "b", Some("b"), Expect::Absent, &doc())])
        .await
        .unwrap();
    s.shutdown().await.unwrap();

    for needle in [
        MARKER.to_string(),
        base64(MARKER),
        "PRIVATE KEY".to_string(),
    ] {
        assert_eq!(
            find_bytes(dir.path(), needle.as_bytes()),
            Vec::<String>::new(),
            "{needle:?} is in the store's files"
        );
    }

    let s = open(dir.path()).await;
    for id in ["a", "b"] {
        let o = s.get("secret", id).expect("read back after reopening");
        assert_eq!(std::str::from_utf8(&o.data).unwrap(), doc());
    }
    s.shutdown().await.unwrap();

    let mut wrong = options(dir.path());
    wrong.data_key = Key::generate().unwrap();
    match Store::open(wrong).await {
        Err(StoreError::Storage(msg)) => {
            assert!(msg.contains("the data key does not open"), "{msg}")
        }
        Err(other) => panic!("wrong key: unexpected error {other}"),
        Ok(_) => panic!("a wrong key opened the store"),
    }
}
