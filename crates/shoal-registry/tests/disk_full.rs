//! A full disk: the store on a 1 MiB tmpfs mounted by the test (root). A blob or chunk that
//! does not fit is refused with 507 `BLOB_UPLOAD_INVALID`, what was written is removed, and
//! the store goes on working for what fits.

use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use shoal_registry::{BlobError, BlobStore, Digest, LocalMeta, Registry};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use tower::ServiceExt;

/// A 1 MiB tmpfs, unmounted and removed on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn two_mib() -> Vec<u8> {
    (0..2u32 << 20).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn a_blob_that_does_not_fit_is_refused_and_removed() {
    let fs = Tmpfs::mount();
    let store = BlobStore::open(fs.path().join("reg")).unwrap();
    let big = two_mib();
    let d = Digest::of(&big);
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = big
        .chunks(64 << 10)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let err = store
        .put_stream(&d, futures::stream::iter(chunks))
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::NoSpace { .. }), "{err:?}");
    assert!(err.to_string().contains("no space left"), "{err}");
    assert!(
        files_under(fs.path()).is_empty(),
        "{:?}",
        files_under(fs.path())
    );
    assert_eq!(store.stat(&d).await.unwrap(), None);

    // What fits still goes in.
    let small = b"small".to_vec();
    let size = store
        .put_stream(
            &Digest::of(&small),
            futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(small))]),
        )
        .await
        .unwrap();
    assert_eq!(size, 5);
}

#[tokio::test]
async fn a_chunk_that_does_not_fit_answers_507_and_ends_the_session() {
    let fs = Tmpfs::mount();
    let store = BlobStore::open(fs.path().join("reg")).unwrap();
    let app = Registry::new(store.clone(), Arc::new(LocalMeta::new())).router();
    let send = |method: Method, uri: String, body: Vec<u8>| {
        let app = app.clone();
        async move {
            let req = Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::from(body))
                .unwrap();
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, headers, body)
        }
    };
    let (status, headers, _) = send(Method::POST, "/v2/app/blobs/uploads/".into(), vec![]).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let loc = headers["location"].to_str().unwrap().to_string();

    let (status, _, body) = send(Method::PATCH, loc.clone(), two_mib()).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["errors"][0]["code"], "BLOB_UPLOAD_INVALID");
    assert!(
        json["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no space left"),
        "{json}"
    );
    let (status, _, _) = send(Method::GET, loc, vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the session is gone");
    assert!(
        files_under(fs.path()).is_empty(),
        "{:?}",
        files_under(fs.path())
    );

    // Single request, same answer, nothing left.
    let big = two_mib();
    let (status, _, _) = send(
        Method::POST,
        format!("/v2/app/blobs/uploads/?digest={}", Digest::of(&big)),
        big,
    )
    .await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
    assert!(
        files_under(fs.path()).is_empty(),
        "{:?}",
        files_under(fs.path())
    );
}
