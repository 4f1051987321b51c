//! Every endpoint over the router in process (tower `oneshot`): what a client sees, statuses,
//! headers and the spec's error codes. The fast tier (no root, no Docker).

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use shoal_registry::manifest::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use shoal_registry::{
    BlobSource, BlobStore, Config, Digest, Event, LocalMeta, Registry, Remote, RemoteBlob,
    RemoteError,
};
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

struct Harness {
    app: Router,
    meta: Arc<LocalMeta>,
    store: BlobStore,
    events: Arc<Mutex<Vec<Event>>>,
    _dir: tempfile::TempDir,
}

fn harness_with(config: Config, remote: Option<Arc<dyn Remote>>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let meta = Arc::new(LocalMeta::new());
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let mut reg = Registry::new(store.clone(), meta.clone())
        .with_config(config)
        .with_events(Arc::new(move |e| seen.lock().unwrap().push(e)));
    if let Some(r) = remote {
        reg = reg.with_remote(r);
    }
    Harness {
        app: reg.router(),
        meta,
        store,
        events,
        _dir: dir,
    }
}

fn harness() -> Harness {
    harness_with(Config::default(), None)
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }
    /// The spec's error codes of an error answer.
    fn codes(&self) -> Vec<String> {
        self.json()["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["code"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Harness {
    async fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .app
            .clone()
            .oneshot(req.body(body.into()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        assert_eq!(
            headers
                .get("docker-distribution-api-version")
                .map(|v| v.to_str().unwrap()),
            Some("registry/2.0"),
            "{uri}"
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, uri: &str) -> Answer {
        self.send(Method::GET, uri, &[], Body::empty()).await
    }

    /// Pushes a blob in one request; returns its digest.
    async fn push_blob(&self, name: &str, data: &[u8]) -> Digest {
        let d = Digest::of(data);
        let a = self
            .send(
                Method::POST,
                &format!("/v2/{name}/blobs/uploads/?digest={d}"),
                &[],
                data.to_vec(),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        d
    }

    /// Pushes a manifest; returns the answer.
    async fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Answer {
        self.send(
            Method::PUT,
            &format!("/v2/{name}/manifests/{reference}"),
            &[("content-type", media_type)],
            body.to_vec(),
        )
        .await
    }
}

fn image_manifest(media_type: &str, config: &Digest, layers: &[&Digest]) -> Vec<u8> {
    serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": layers.iter().map(|l| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l, "size": 5})).collect::<Vec<_>>(),
    }))
    .unwrap()
}

#[tokio::test]
async fn the_base_endpoint_says_v2() {
    let h = harness();
    let a = h.get("/v2/").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), json!({}));
    assert_eq!(h.get("/v2").await.status, StatusCode::OK);
    let a = h.get("/v1/").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = h
        .send(Method::POST, "/v2/app/tags/list", &[], Body::empty())
        .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.codes(), ["UNSUPPORTED"]);
}

#[tokio::test]
async fn a_monolithic_blob_is_served_whole_in_ranges_and_by_head() {
    let h = harness();
    let data = b"0123456789";
    let d = Digest::of(data);
    let a = h
        .send(
            Method::POST,
            &format!("/v2/app/blobs/uploads/?digest={d}"),
            &[],
            data.to_vec(),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(a.header("location"), format!("/v2/app/blobs/{d}"));
    assert_eq!(a.header("docker-content-digest"), d.as_str());
    assert_eq!(
        h.events.lock().unwrap().as_slice(),
        [Event::BlobCommitted {
            digest: d.clone(),
            size: 10,
            source: BlobSource::Push
        }]
    );

    let a = h.get(&format!("/v2/app/blobs/{d}")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(&a.body[..], data);
    assert_eq!(a.header("content-length"), "10");
    assert_eq!(a.header("docker-content-digest"), d.as_str());
    // Any repository serves it, the digest may be percent-encoded.
    let a = h
        .get(&format!(
            "/v2/other/x/blobs/{}",
            d.as_str().replace(':', "%3A")
        ))
        .await;
    assert_eq!(&a.body[..], data);

    let a = h
        .send(
            Method::HEAD,
            &format!("/v2/app/blobs/{d}"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-length"), "10");
    assert_eq!(a.header("docker-content-digest"), d.as_str());
    assert!(a.body.is_empty());

    let a = h
        .send(
            Method::GET,
            &format!("/v2/app/blobs/{d}"),
            &[("range", "bytes=2-5")],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&a.body[..], b"2345");
    assert_eq!(a.header("content-range"), "bytes 2-5/10");
    assert_eq!(a.header("content-length"), "4");
    let a = h
        .send(
            Method::GET,
            &format!("/v2/app/blobs/{d}"),
            &[("range", "bytes=-3")],
            Body::empty(),
        )
        .await;
    assert_eq!(&a.body[..], b"789");
    let a = h
        .send(
            Method::GET,
            &format!("/v2/app/blobs/{d}"),
            &[("range", "bytes=10-")],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(a.header("content-range"), "bytes */10");
}

#[tokio::test]
async fn unknown_blobs_bad_digests_and_bad_names_are_the_specs_errors() {
    let h = harness();
    let d = Digest::of(b"nope");
    let a = h.get(&format!("/v2/app/blobs/{d}")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.codes(), ["BLOB_UNKNOWN"]);
    let a = h
        .send(
            Method::HEAD,
            &format!("/v2/app/blobs/{d}"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.body.is_empty());

    for bad in ["sha256:abc", "md5:abc", "nodigest", "sha512:abcd"] {
        let a = h.get(&format!("/v2/app/blobs/{bad}")).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(a.codes(), ["DIGEST_INVALID"], "{bad}");
    }
    for bad in ["App", "a//b", "-a", "a__-b"] {
        let a = h.get(&format!("/v2/{bad}/tags/list")).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(a.codes(), ["NAME_INVALID"], "{bad}");
    }
    let long = "a".repeat(256);
    let a = h
        .send(
            Method::POST,
            &format!("/v2/{long}/blobs/uploads/"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(a.codes(), ["NAME_INVALID"]);
    let a = h
        .send(
            Method::POST,
            "/v2/app/blobs/uploads/?digest-algorithm=sha512",
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.codes(), ["DIGEST_INVALID"]);
}

#[tokio::test]
async fn a_chunked_upload_checks_order_and_reports_progress() {
    let h = harness();
    let a = h
        .send(
            Method::POST,
            "/v2/t/app/blobs/uploads/",
            &[("content-length", "0")],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.header("range"), "0-0");
    let uuid = a.header("docker-upload-uuid").to_string();
    let loc = a.header("location").to_string();
    assert_eq!(loc, format!("/v2/t/app/blobs/uploads/{uuid}"));

    let a = h
        .send(
            Method::PATCH,
            &loc,
            &[("content-range", "0-3")],
            &b"abcd"[..],
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.header("range"), "0-3");
    assert_eq!(a.header("location"), loc);

    // Out of order: 416 and where the upload is.
    let a = h
        .send(
            Method::PATCH,
            &loc,
            &[("content-range", "8-11")],
            &b"ijkl"[..],
        )
        .await;
    assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(a.codes(), ["BLOB_UPLOAD_INVALID"]);
    assert_eq!(a.header("range"), "0-3");
    let a = h
        .send(
            Method::PATCH,
            &loc,
            &[("content-range", "0-3")],
            &b"abcd"[..],
        )
        .await;
    assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE);
    // A chunk whose length differs from its range.
    let a = h
        .send(Method::PATCH, &loc, &[("content-range", "4-9")], &b"ef"[..])
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.codes(), ["SIZE_INVALID"]);
    let a = h
        .send(Method::PATCH, &loc, &[("content-range", "x")], &b"ef"[..])
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    let a = h.get(&loc).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(a.header("range"), "0-3");
    assert_eq!(a.header("docker-upload-uuid"), uuid);

    let a = h
        .send(
            Method::PATCH,
            &loc,
            &[("content-range", "4-7")],
            &b"efgh"[..],
        )
        .await;
    assert_eq!(a.header("range"), "0-7");
    // A streamed chunk (no Content-Range), as docker sends.
    let a = h.send(Method::PATCH, &loc, &[], &b"ij"[..]).await;
    assert_eq!(a.header("range"), "0-9");

    let d = Digest::of(b"abcdefghijkl");
    let a = h
        .send(
            Method::PUT,
            &format!("{loc}?digest={d}"),
            &[("content-range", "10-11")],
            &b"kl"[..],
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(a.header("location"), format!("/v2/t/app/blobs/{d}"));
    assert_eq!(a.header("docker-content-digest"), d.as_str());
    assert_eq!(
        &h.get(&format!("/v2/t/app/blobs/{d}")).await.body[..],
        b"abcdefghijkl"
    );

    let a = h.get(&loc).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.codes(), ["BLOB_UPLOAD_UNKNOWN"]);
}

#[tokio::test]
async fn a_digest_mismatch_keeps_nothing() {
    let h = harness();
    let a = h
        .send(Method::POST, "/v2/app/blobs/uploads/", &[], Body::empty())
        .await;
    let loc = a.header("location").to_string();
    h.send(Method::PATCH, &loc, &[], &b"payload"[..]).await;
    let claimed = Digest::of(b"something else");
    let a = h
        .send(
            Method::PUT,
            &format!("{loc}?digest={claimed}"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.codes(), ["DIGEST_INVALID"]);
    assert_eq!(
        a.json()["errors"][0]["detail"]["actual"],
        Digest::of(b"payload").as_str()
    );
    for d in [&claimed, &Digest::of(b"payload")] {
        assert_eq!(
            h.get(&format!("/v2/app/blobs/{d}")).await.status,
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(
        h.get(&loc).await.codes(),
        ["BLOB_UPLOAD_UNKNOWN"],
        "the session is gone"
    );
    // Single request: the same.
    let a = h
        .send(
            Method::POST,
            &format!("/v2/app/blobs/uploads/?digest={claimed}"),
            &[],
            &b"payload"[..],
        )
        .await;
    assert_eq!(a.codes(), ["DIGEST_INVALID"]);
    assert!(h.store.list().await.unwrap().is_empty());
    // A close without a digest is refused and the session stays.
    let a = h
        .send(Method::POST, "/v2/app/blobs/uploads/", &[], Body::empty())
        .await;
    let loc = a.header("location").to_string();
    let a = h.send(Method::PUT, &loc, &[], Body::empty()).await;
    assert_eq!(a.codes(), ["DIGEST_INVALID"]);
    assert_eq!(h.get(&loc).await.status, StatusCode::NO_CONTENT);
    assert!(h.events.lock().unwrap().is_empty());
}

#[tokio::test]
async fn uploads_are_cancelled_and_bound_to_their_repository() {
    let h = harness();
    let a = h
        .send(Method::POST, "/v2/app/blobs/uploads/", &[], Body::empty())
        .await;
    let uuid = a.header("docker-upload-uuid").to_string();
    let other = format!("/v2/other/blobs/uploads/{uuid}");
    assert_eq!(h.get(&other).await.codes(), ["BLOB_UPLOAD_UNKNOWN"]);
    let loc = format!("/v2/app/blobs/uploads/{uuid}");
    let a = h.send(Method::DELETE, &loc, &[], Body::empty()).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let a = h.send(Method::DELETE, &loc, &[], Body::empty()).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.codes(), ["BLOB_UPLOAD_UNKNOWN"]);
    let a = h
        .send(
            Method::PATCH,
            "/v2/app/blobs/uploads/../../etc",
            &[],
            &b"x"[..],
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn mounting_a_known_blob_creates_it_and_an_unknown_one_opens_a_session() {
    let h = harness();
    let d = h.push_blob("src", b"layer").await;
    let a = h
        .send(
            Method::POST,
            &format!("/v2/dst/blobs/uploads/?mount={d}&from=src"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(a.header("location"), format!("/v2/dst/blobs/{d}"));
    assert_eq!(a.header("docker-content-digest"), d.as_str());

    let unknown = Digest::of(b"elsewhere");
    let a = h
        .send(
            Method::POST,
            &format!("/v2/dst/blobs/uploads/?mount={unknown}&from=src"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert!(a.header("location").starts_with("/v2/dst/blobs/uploads/"));

    // Held by another node of the cluster: mounted too.
    h.meta.mark_blob_known(unknown.clone()).unwrap();
    let a = h
        .send(
            Method::POST,
            &format!("/v2/dst/blobs/uploads/?mount={unknown}&from=src"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_manifest_needs_its_blobs_and_is_served_as_pushed() {
    let h = harness();
    let config = Digest::of(b"{}");
    let layer = Digest::of(b"layer");
    let body = image_manifest(DOCKER_MANIFEST, &config, &[&layer]);
    let digest = Digest::of(&body);

    let a = h.put_manifest("app", "1", DOCKER_MANIFEST, &body).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        a.codes(),
        ["MANIFEST_BLOB_UNKNOWN", "MANIFEST_BLOB_UNKNOWN"]
    );
    assert_eq!(a.json()["errors"][1]["detail"]["digest"], layer.as_str());
    assert_eq!(h.get("/v2/app/manifests/1").await.codes(), ["NAME_UNKNOWN"]);

    h.push_blob("app", b"{}").await;
    let a = h.put_manifest("app", "1", DOCKER_MANIFEST, &body).await;
    assert_eq!(
        a.codes(),
        ["MANIFEST_BLOB_UNKNOWN"],
        "the layer is still missing"
    );
    // A layer another node holds counts.
    h.meta.mark_blob_known(layer.clone()).unwrap();
    let a = h.put_manifest("app", "1", DOCKER_MANIFEST, &body).await;
    assert_eq!(
        a.status,
        StatusCode::CREATED,
        "{:?}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.header("location"), format!("/v2/app/manifests/{digest}"));
    assert_eq!(a.header("docker-content-digest"), digest.as_str());

    for r in ["1", digest.as_str()] {
        let a = h.get(&format!("/v2/app/manifests/{r}")).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(&a.body[..], &body[..], "exact bytes");
        assert_eq!(a.header("content-type"), DOCKER_MANIFEST);
        assert_eq!(a.header("docker-content-digest"), digest.as_str());
        let a = h
            .send(
                Method::HEAD,
                &format!("/v2/app/manifests/{r}"),
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.header("content-length"), body.len().to_string());
        assert!(a.body.is_empty());
    }
    let a = h.get("/v2/app/manifests/2").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.codes(), ["MANIFEST_UNKNOWN"]);
    assert_eq!(
        h.get("/v2/app/manifests/bad!tag").await.codes(),
        ["MANIFEST_UNKNOWN"]
    );

    let events = h.events.lock().unwrap().clone();
    assert!(events.contains(&Event::ManifestPut {
        name: "app".into(),
        tags: vec!["1".into()],
        digest: digest.clone(),
        media_type: DOCKER_MANIFEST.into(),
    }));
}

#[tokio::test]
async fn manifests_by_digest_with_tags_and_bad_manifests() {
    let h = harness();
    let config = h.push_blob("app", b"{}").await;
    let body = image_manifest(OCI_MANIFEST, &config, &[]);
    let digest = Digest::of(&body);

    // By a digest that is not the body's.
    let wrong = Digest::of(b"x");
    let a = h
        .put_manifest("app", wrong.as_str(), OCI_MANIFEST, &body)
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.codes(), ["DIGEST_INVALID"]);

    let a = h
        .put_manifest(
            "app",
            &format!("{digest}?tag=v1&tag=latest"),
            OCI_MANIFEST,
            &body,
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let oci_tags: Vec<_> = a
        .headers
        .get_all("oci-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(oci_tags, ["v1", "latest"]);
    assert_eq!(&h.get("/v2/app/manifests/latest").await.body[..], &body[..]);

    // Content-Type and mediaType disagree; not JSON; schema 1; bad tag.
    let a = h.put_manifest("app", "2", OCI_INDEX, &body).await;
    assert_eq!(a.codes(), ["MANIFEST_INVALID"]);
    let a = h.put_manifest("app", "2", OCI_MANIFEST, b"{not json").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.codes(), ["MANIFEST_INVALID"]);
    let a = h
        .put_manifest(
            "app",
            "2",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            b"{\"schemaVersion\":1}",
        )
        .await;
    assert_eq!(a.codes(), ["MANIFEST_INVALID"]);
    let a = h.put_manifest("app", ".bad", OCI_MANIFEST, &body).await;
    assert_eq!(a.codes(), ["MANIFEST_INVALID"]);

    // Over 4 MiB: 413, by Content-Length or by what came.
    let mut big = image_manifest(OCI_MANIFEST, &config, &[]);
    big.pop();
    big.extend_from_slice(
        format!(",\"annotations\":{{\"x\":\"{}\"}}}}", "y".repeat(4 << 20)).as_bytes(),
    );
    let a = h.put_manifest("app", "big", OCI_MANIFEST, &big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.codes(), ["MANIFEST_INVALID"]);
    let chunks = futures::stream::iter(
        big.chunks(1 << 20)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let a = h
        .send(
            Method::PUT,
            "/v2/app/manifests/big",
            &[("content-type", OCI_MANIFEST)],
            Body::from_stream(chunks),
        )
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        h.get("/v2/app/manifests/big").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn an_index_needs_its_manifests_in_the_repository() {
    let h = harness();
    let config = h.push_blob("multi", b"{}").await;
    let child = image_manifest(OCI_MANIFEST, &config, &[]);
    let child_digest = Digest::of(&child);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child_digest, "size": child.len(), "platform": {"architecture": "amd64", "os": "linux"}}],
    }))
    .unwrap();
    let a = h.put_manifest("multi", "1", OCI_INDEX, &index).await;
    assert_eq!(a.codes(), ["MANIFEST_BLOB_UNKNOWN"]);
    // The child in another repository does not count.
    assert_eq!(
        h.put_manifest("elsewhere", child_digest.as_str(), OCI_MANIFEST, &child)
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        h.put_manifest("multi", "1", OCI_INDEX, &index)
            .await
            .codes(),
        ["MANIFEST_BLOB_UNKNOWN"]
    );
    assert_eq!(
        h.put_manifest("multi", child_digest.as_str(), OCI_MANIFEST, &child)
            .await
            .status,
        StatusCode::CREATED
    );
    let a = h.put_manifest("multi", "1", OCI_INDEX, &index).await;
    assert_eq!(a.status, StatusCode::CREATED);
    let a = h.get("/v2/multi/manifests/1").await;
    assert_eq!(a.header("content-type"), OCI_INDEX);
    assert_eq!(&a.body[..], &index[..]);
}

#[tokio::test]
async fn deleting_manifests_tags_and_blobs() {
    let h = harness();
    let config = h.push_blob("app", b"{}").await;
    let body = image_manifest(OCI_MANIFEST, &config, &[]);
    let digest = Digest::of(&body);
    h.put_manifest("app", "1", OCI_MANIFEST, &body).await;
    h.put_manifest("app", "2", OCI_MANIFEST, &body).await;

    let a = h
        .send(Method::DELETE, "/v2/app/manifests/2", &[], Body::empty())
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(
        h.get("/v2/app/manifests/2").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(h.get("/v2/app/manifests/1").await.status, StatusCode::OK);

    let a = h
        .send(
            Method::DELETE,
            &format!("/v2/app/manifests/{digest}"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(
        h.get("/v2/app/manifests/1").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.get(&format!("/v2/app/manifests/{digest}")).await.status,
        StatusCode::NOT_FOUND
    );
    let a = h
        .send(
            Method::DELETE,
            &format!("/v2/app/manifests/{digest}"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(
        a.codes(),
        ["NAME_UNKNOWN"],
        "the repository went with its last manifest"
    );

    let a = h
        .send(
            Method::DELETE,
            &format!("/v2/app/blobs/{config}"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(
        h.get(&format!("/v2/app/blobs/{config}")).await.status,
        StatusCode::NOT_FOUND
    );
    let a = h
        .send(
            Method::DELETE,
            &format!("/v2/app/blobs/{config}"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(a.codes(), ["BLOB_UNKNOWN"]);
    assert!(h
        .events
        .lock()
        .unwrap()
        .contains(&Event::BlobDeleted { digest: config }));

    let h = harness_with(
        Config {
            delete_enabled: false,
            ..Config::default()
        },
        None,
    );
    let config = h.push_blob("app", b"{}").await;
    let a = h
        .send(
            Method::DELETE,
            &format!("/v2/app/blobs/{config}"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.codes(), ["UNSUPPORTED"]);
    assert_eq!(
        h.get(&format!("/v2/app/blobs/{config}")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn tags_and_catalog_paginate_with_links() {
    let h = harness();
    let config = h.push_blob("r", b"{}").await;
    let body = image_manifest(OCI_MANIFEST, &config, &[]);
    for t in ["b", "a", "d", "c", "E"] {
        h.put_manifest("r", t, OCI_MANIFEST, &body).await;
    }
    for repo in ["z/y", "m", "a0"] {
        h.put_manifest(repo, "1", OCI_MANIFEST, &body).await;
    }
    let a = h.get("/v2/r/tags/list").await;
    assert_eq!(
        a.json(),
        json!({"name": "r", "tags": ["E", "a", "b", "c", "d"]})
    );
    assert!(a.headers.get("link").is_none());

    let a = h.get("/v2/r/tags/list?n=2").await;
    assert_eq!(a.json()["tags"], json!(["E", "a"]));
    let next = a.header("link").to_string();
    assert_eq!(next, "</v2/r/tags/list?n=2&last=a>; rel=\"next\"");
    let url = next.trim_start_matches('<').split('>').next().unwrap();
    let a = h.get(url).await;
    assert_eq!(a.json()["tags"], json!(["b", "c"]));
    let a = h.get("/v2/r/tags/list?n=2&last=c").await;
    assert_eq!(a.json()["tags"], json!(["d"]));
    assert!(a.headers.get("link").is_none());
    let a = h.get("/v2/r/tags/list?last=b").await;
    assert_eq!(a.json()["tags"], json!(["c", "d"]));
    let a = h.get("/v2/r/tags/list?n=0").await;
    assert_eq!(a.json()["tags"], json!([]));
    assert!(a.headers.get("link").is_none());
    assert_eq!(
        h.get("/v2/r/tags/list?n=x").await.status,
        StatusCode::BAD_REQUEST
    );

    let a = h.get("/v2/nothing/tags/list").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.codes(), ["NAME_UNKNOWN"]);

    let a = h.get("/v2/_catalog").await;
    assert_eq!(a.json(), json!({"repositories": ["a0", "m", "r", "z/y"]}));
    let a = h.get("/v2/_catalog?n=3").await;
    assert_eq!(a.json()["repositories"], json!(["a0", "m", "r"]));
    assert_eq!(a.header("link"), "</v2/_catalog?n=3&last=r>; rel=\"next\"");
    let a = h.get("/v2/_catalog?n=3&last=r").await;
    assert_eq!(a.json()["repositories"], json!(["z/y"]));
}

/// Another node, as the cluster would give one: holds some blobs, maybe lies about one.
struct FakeRemote {
    blobs: Vec<(Digest, Vec<u8>)>,
}

impl Remote for FakeRemote {
    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<u64>, RemoteError>> {
        let size = self
            .blobs
            .iter()
            .find(|(d, _)| d == digest)
            .map(|(_, b)| b.len() as u64);
        Box::pin(async move { Ok(size) })
    }

    fn fetch<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<RemoteBlob>, RemoteError>> {
        let found = self.blobs.iter().find(|(d, _)| d == digest).map(|(_, b)| {
            let chunks: Vec<Result<Bytes, RemoteError>> =
                b.chunks(3).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            RemoteBlob {
                size: b.len() as u64,
                body: Box::pin(futures::stream::iter(chunks)),
            }
        });
        Box::pin(async move { Ok(found) })
    }
}

#[tokio::test]
async fn a_blob_from_another_node_is_served_and_kept_here_only_when_it_checks_out() {
    let good = b"the blob another node holds".to_vec();
    let good_d = Digest::of(&good);
    let liar_d = Digest::of(b"what was asked for");
    let remote = FakeRemote {
        blobs: vec![
            (good_d.clone(), good.clone()),
            (liar_d.clone(), b"something else entirely".to_vec()),
        ],
    };
    let h = harness_with(Config::default(), Some(Arc::new(remote)));

    let a = h
        .send(
            Method::HEAD,
            &format!("/v2/app/blobs/{good_d}"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-length"), good.len().to_string());
    assert_eq!(
        h.store.stat(&good_d).await.unwrap(),
        None,
        "HEAD fetches nothing"
    );

    let a = h.get(&format!("/v2/app/blobs/{good_d}")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, good);
    assert_eq!(
        h.store.stat(&good_d).await.unwrap(),
        Some(good.len() as u64)
    );
    assert!(h.events.lock().unwrap().contains(&Event::BlobCommitted {
        digest: good_d.clone(),
        size: good.len() as u64,
        source: BlobSource::Remote,
    }));

    // The wrong bytes: the body fails before its end, nothing kept.
    let req = Request::get(format!("/v2/app/blobs/{liar_d}"))
        .body(Body::empty())
        .unwrap();
    let resp = h.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let lie_len = b"something else entirely".len();
    let mut body = resp.into_body();
    let mut got = 0;
    let failed = loop {
        match body.frame().await {
            Some(Ok(f)) => got += f.into_data().map(|d| d.len()).unwrap_or(0),
            Some(Err(_)) => break true,
            None => break false,
        }
    };
    assert!(failed, "the body must fail");
    assert!(
        got < lie_len,
        "a wrong blob must not arrive whole: {got} of {lie_len} bytes before the error"
    );
    assert_eq!(h.store.stat(&liar_d).await.unwrap(), None);
    assert!(h
        .store
        .list()
        .await
        .unwrap()
        .iter()
        .all(|(d, _)| d != &liar_d));
}
