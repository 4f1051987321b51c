//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;

use shoal_store::{Expect, Op, Store, StoreOptions, StoreTuning};

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,shoal_store=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The data key the tests seal with: fixed, so a reopened directory opens with it.
pub fn test_key() -> shoal_store::seal::Key {
    shoal_store::seal::Key::from_bytes(&[0x42; shoal_store::seal::KEY_LEN]).expect("key")
}

pub fn options(dir: &Path) -> StoreOptions {
    StoreOptions {
        dir: dir.to_path_buf(),
        raft_node_id: 1,
        raft_addr: "127.0.0.1:2377".into(),
        bootstrap: true,
        transport: None,
        data_key: test_key(),
        recorder: None,
    }
}

pub async fn open(dir: &Path) -> Store {
    init_tracing();
    Store::open(options(dir)).await.expect("open store")
}

pub async fn open_tuned(dir: &Path, tuning: StoreTuning) -> Store {
    init_tracing();
    Store::open_with(options(dir), tuning)
        .await
        .expect("open store")
}

pub fn put(kind: &str, id: &str, name: Option<&str>, expect: Expect, data: &str) -> Op {
    Op::Put {
        kind: kind.into(),
        id: id.into(),
        name: name.map(Into::into),
        expect,
        data: data.as_bytes().to_vec(),
    }
}

pub fn del(kind: &str, id: &str, expect: Expect) -> Op {
    Op::Delete {
        kind: kind.into(),
        id: id.into(),
        expect,
    }
}

pub fn data(store: &Store, kind: &str, id: &str) -> Option<String> {
    store
        .get(kind, id)
        .map(|o| String::from_utf8(o.data.to_vec()).expect("utf8"))
}
