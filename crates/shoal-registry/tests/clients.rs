//! Real clients against the router served on 127.0.0.1:<random port>: skopeo (Docker schema 2,
//! OCI manifests, an OCI index) and the docker CLI with the machine's engine (push, remove,
//! pull back). Needs skopeo, curl and a Docker Engine holding `shoal-test/busybox:latest`
//! (scripts/build-test-images.sh); removes every image it tags.

use axum::extract::Request;
use axum::middleware::Next;
use serde_json::{json, Value};
use shoal_registry::manifest::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use shoal_registry::{BlobStore, Digest, LocalMeta, Registry};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BUSYBOX: &str = "shoal-test/busybox:latest";

struct Server {
    addr: SocketAddr,
    /// "METHOD path status" of every request, for assertions and failure messages.
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("registry")).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        let app = Registry::new(store, Arc::new(LocalMeta::new()))
            .router()
            .layer(axum::middleware::from_fn(
                move |req: Request, next: Next| {
                    let seen = seen.clone();
                    async move {
                        let line = format!("{} {}", req.method(), req.uri());
                        let resp = next.run(req).await;
                        seen.lock()
                            .unwrap()
                            .push(format!("{line} {}", resp.status().as_u16()));
                        resp
                    }
                },
            ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            addr,
            log,
            _dir: dir,
        }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// GET through curl: status line and headers, and the body.
    async fn curl(&self, args: &[&str], path: &str) -> (String, Vec<u8>) {
        let url = format!("http://{}{path}", self.addr);
        let mut all = vec!["-sS", "-D", "/dev/stderr"];
        all.extend_from_slice(args);
        all.push(&url);
        let out = run("curl", &all).await;
        assert!(
            out.status.success(),
            "curl {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stderr).to_lowercase(),
            out.stdout,
        )
    }
}

async fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    let child = tokio::process::Command::new(cmd)
        .args(args)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(300), child).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("running {cmd}: {e}"),
        Err(_) => panic!("{cmd} {args:?} did not finish in 300 s"),
    }
}

/// Runs a command that must succeed; its stdout.
async fn ok(server: &Server, cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args).await;
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}\nregistry saw:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.requests().join("\n")
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256_file(path: &Path) -> Digest {
    Digest::of(&std::fs::read(path).unwrap())
}

/// A `skopeo copy ... dir:` result: every blob file hashes to its name, and the manifest's
/// references are all there.
fn check_dir_copy(dir: &Path) -> Value {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let mut wanted = vec![manifest["config"]["digest"].as_str().unwrap().to_string()];
    for l in manifest["layers"].as_array().unwrap() {
        wanted.push(l["digest"].as_str().unwrap().to_string());
    }
    for d in wanted {
        let d = Digest::parse(&d).unwrap();
        assert_eq!(
            sha256_file(&dir.join(d.hex())),
            d,
            "blob {d} copied back intact"
        );
    }
    manifest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_inspects_and_copies_back() {
    let server = Server::start().await;
    let host = server.host();
    let work = tempfile::tempdir().unwrap();
    let tar = work.path().join("busybox.tar");
    let tar_s = tar.to_str().unwrap();
    ok(&server, "docker", &["save", "-o", tar_s, BUSYBOX]).await;

    // Docker schema 2, as a docker-archive gives it.
    let dest = format!("docker://{host}/app:1");
    ok(
        &server,
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("docker-archive:{tar_s}"),
            &dest,
        ],
    )
    .await;
    let (head, raw) = server.curl(&[], "/v2/app/manifests/1").await;
    assert!(
        head.contains(&format!("content-type: {DOCKER_MANIFEST}")),
        "{head}"
    );
    let digest = Digest::of(&raw);
    assert!(
        head.contains(&format!("docker-content-digest: {digest}")),
        "{head}"
    );

    let inspect: Value = serde_json::from_str(
        &ok(&server, "skopeo", &["inspect", "--tls-verify=false", &dest]).await,
    )
    .unwrap();
    assert_eq!(inspect["Digest"], digest.as_str());
    assert_eq!(inspect["RepoTags"], json!(["1"]));
    assert_eq!(inspect["Architecture"], "amd64");
    let raw_inspect = ok(
        &server,
        "skopeo",
        &["inspect", "--raw", "--tls-verify=false", &dest],
    )
    .await;
    assert_eq!(
        raw_inspect.as_bytes(),
        &raw[..],
        "the manifest comes back byte for byte"
    );

    let back = work.path().join("back");
    ok(
        &server,
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &dest,
            &format!("dir:{}", back.display()),
        ],
    )
    .await;
    let manifest = check_dir_copy(&back);
    assert_eq!(manifest["mediaType"], DOCKER_MANIFEST);
    assert_eq!(std::fs::read(back.join("manifest.json")).unwrap(), raw);

    // HEAD of a blob over a real connection keeps its Content-Length.
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let layer_size = manifest["layers"][0]["size"].as_u64().unwrap();
    let (head, _) = server
        .curl(&["-I"], &format!("/v2/app/blobs/{layer}"))
        .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {layer_size}")),
        "{head}"
    );
    let (head, part) = server
        .curl(&["-r", "0-9"], &format!("/v2/app/blobs/{layer}"))
        .await;
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert_eq!(part.len(), 10);

    // OCI image manifest.
    let oci_dest = format!("docker://{host}/oci/app:1");
    ok(
        &server,
        "skopeo",
        &[
            "copy",
            "--format",
            "oci",
            "--dest-tls-verify=false",
            &format!("docker-archive:{tar_s}"),
            &oci_dest,
        ],
    )
    .await;
    let (head, _) = server.curl(&[], "/v2/oci/app/manifests/1").await;
    assert!(
        head.contains(&format!("content-type: {OCI_MANIFEST}")),
        "{head}"
    );
    let back = work.path().join("back-oci");
    ok(
        &server,
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &oci_dest,
            &format!("dir:{}", back.display()),
        ],
    )
    .await;
    assert_eq!(check_dir_copy(&back)["mediaType"], OCI_MANIFEST);

    // Tags and catalog as skopeo lists them.
    ok(
        &server,
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &dest,
            &format!("docker://{host}/app:2"),
        ],
    )
    .await;
    let tags: Value = serde_json::from_str(
        &ok(
            &server,
            "skopeo",
            &[
                "list-tags",
                "--tls-verify=false",
                &format!("docker://{host}/app"),
            ],
        )
        .await,
    )
    .unwrap();
    assert_eq!(tags["Tags"], json!(["1", "2"]));
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.starts_with("POST /v2/app/blobs/uploads/?mount=") && r.ends_with(" 201"))
            || server
                .requests()
                .iter()
                .any(|r| r.starts_with("HEAD /v2/app/blobs/") && r.ends_with(" 200")),
        "the second tag's push found its blobs already here"
    );
    let (_, catalog) = server.curl(&[], "/v2/_catalog").await;
    assert_eq!(
        serde_json::from_slice::<Value>(&catalog).unwrap(),
        json!({"repositories": ["app", "oci/app"]})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_an_oci_index_with_all_its_images() {
    let server = Server::start().await;
    let host = server.host();
    let work = tempfile::tempdir().unwrap();
    let tar = work.path().join("busybox.tar");
    let tar_s = tar.to_str().unwrap();
    ok(&server, "docker", &["save", "-o", tar_s, BUSYBOX]).await;

    // An OCI layout with two images (the second differs by its config only), then an index
    // naming both as two platforms.
    let layout = work.path().join("layout");
    let l = layout.display().to_string();
    ok(
        &server,
        "skopeo",
        &[
            "copy",
            "--format",
            "oci",
            &format!("docker-archive:{tar_s}"),
            &format!("oci:{l}:amd"),
        ],
    )
    .await;
    let index_path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let amd = index["manifests"][0].clone();
    let amd_digest = Digest::parse(amd["digest"].as_str().unwrap()).unwrap();
    let blob = |d: &Digest| layout.join("blobs/sha256").join(d.hex());
    let mut arm_manifest: Value =
        serde_json::from_slice(&std::fs::read(blob(&amd_digest)).unwrap()).unwrap();
    let cfg_digest = Digest::parse(arm_manifest["config"]["digest"].as_str().unwrap()).unwrap();
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(blob(&cfg_digest)).unwrap()).unwrap();
    cfg["architecture"] = json!("arm64");
    let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
    let new_cfg = Digest::of(&cfg_bytes);
    std::fs::write(blob(&new_cfg), &cfg_bytes).unwrap();
    arm_manifest["config"]["digest"] = json!(new_cfg);
    arm_manifest["config"]["size"] = json!(cfg_bytes.len());
    let arm_bytes = serde_json::to_vec(&arm_manifest).unwrap();
    let arm_digest = Digest::of(&arm_bytes);
    std::fs::write(blob(&arm_digest), &arm_bytes).unwrap();
    let nested = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": amd_digest, "size": amd["size"], "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": arm_digest, "size": arm_bytes.len(), "platform": {"architecture": "arm64", "os": "linux"}},
        ],
    }))
    .unwrap();
    let nested_digest = Digest::of(&nested);
    std::fs::write(blob(&nested_digest), &nested).unwrap();
    index["manifests"].as_array_mut().unwrap().push(json!({
        "mediaType": OCI_INDEX, "digest": nested_digest, "size": nested.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi"},
    }));
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();

    let dest = format!("docker://{host}/multi:1");
    ok(
        &server,
        "skopeo",
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{l}:multi"),
            &dest,
        ],
    )
    .await;
    let (head, raw) = server.curl(&[], "/v2/multi/manifests/1").await;
    assert!(
        head.contains(&format!("content-type: {OCI_INDEX}")),
        "{head}"
    );
    assert_eq!(raw, nested, "the index byte for byte");
    for d in [&amd_digest, &arm_digest] {
        let (head, _) = server
            .curl(&["-I"], &format!("/v2/multi/manifests/{d}"))
            .await;
        assert!(head.starts_with("http/1.1 200"), "{d}: {head}");
    }
    // skopeo resolves the index to the platform it is asked for (the arm64 config is only in
    // the second manifest; its `Digest` is the index's, the reference it was given).
    let arm: Value = serde_json::from_str(
        &ok(
            &server,
            "skopeo",
            &[
                "inspect",
                "--override-arch",
                "arm64",
                "--tls-verify=false",
                &dest,
            ],
        )
        .await,
    )
    .unwrap();
    assert_eq!(arm["Architecture"], "arm64", "{arm}");
    assert_eq!(arm["Digest"], nested_digest.as_str(), "{arm}");
    let amd: Value = serde_json::from_str(
        &ok(
            &server,
            "skopeo",
            &[
                "inspect",
                "--override-arch",
                "amd64",
                "--tls-verify=false",
                &dest,
            ],
        )
        .await,
    )
    .unwrap();
    assert_eq!(amd["Architecture"], "amd64", "{amd}");
}

/// Removes the images a test tagged, also when it fails.
struct Untag(Vec<String>);

impl Drop for Untag {
    fn drop(&mut self) {
        for image in &self.0 {
            let _ = std::process::Command::new("docker")
                .args(["rmi", "-f", image])
                .output();
        }
    }
}

async fn image_id(image: &str) -> Option<String> {
    let out = run(
        "docker",
        &["image", "inspect", "--format", "{{.Id}}", image],
    )
    .await;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pushes_and_pulls_back() {
    let server = Server::start().await;
    let host = server.host();
    let busybox = format!("{host}/t/busybox:1");
    let unique = format!("{host}/t/unique:1");
    let _untag = Untag(vec![busybox.clone(), unique.clone()]);

    let original = image_id(BUSYBOX)
        .await
        .expect("shoal-test/busybox:latest on the engine (scripts/build-test-images.sh)");
    ok(&server, "docker", &["tag", BUSYBOX, &busybox]).await;
    ok(&server, "docker", &["push", &busybox]).await;
    let (_, tags) = server.curl(&[], "/v2/t/busybox/tags/list").await;
    assert_eq!(
        serde_json::from_slice::<Value>(&tags).unwrap(),
        json!({"name": "t/busybox", "tags": ["1"]})
    );
    ok(&server, "docker", &["rmi", &busybox]).await;
    assert_eq!(image_id(&busybox).await, None);
    ok(&server, "docker", &["pull", &busybox]).await;
    assert_eq!(
        image_id(&busybox).await,
        Some(original),
        "the same image came back"
    );

    // An image whose only layer the engine will not have: the pull downloads it from here.
    let work = tempfile::tempdir().unwrap();
    let content = work.path().join("content");
    std::fs::create_dir(&content).unwrap();
    let marker = format!("{:032x}", rand_u128());
    std::fs::write(content.join("marker"), &marker).unwrap();
    std::fs::write(content.join("filler"), vec![7u8; 3 << 20]).unwrap();
    let tar = work.path().join("unique.tar");
    ok(
        &server,
        "tar",
        &[
            "-C",
            content.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ],
    )
    .await;
    ok(
        &server,
        "docker",
        &["import", tar.to_str().unwrap(), &unique],
    )
    .await;
    let imported = image_id(&unique).await.unwrap();
    ok(&server, "docker", &["push", &unique]).await;
    ok(&server, "docker", &["rmi", &unique]).await;
    assert_eq!(image_id(&unique).await, None);
    let before = server.requests().len();
    let pulled = ok(&server, "docker", &["pull", &unique]).await;
    assert!(pulled.contains("Pull complete"), "{pulled}");
    let during: Vec<String> = server.requests()[before..].to_vec();
    assert!(
        during
            .iter()
            .any(|r| r.starts_with("GET /v2/t/unique/blobs/sha256:") && r.ends_with(" 200")),
        "{during:?}"
    );
    assert_eq!(image_id(&unique).await, Some(imported));
    // The layer is the one pushed: the file is in it.
    let saved = work.path().join("pulled.tar");
    ok(
        &server,
        "docker",
        &["save", "-o", saved.to_str().unwrap(), &unique],
    )
    .await;
    let listing = ok(
        &server,
        "tar",
        &["-xOf", saved.to_str().unwrap(), "--wildcards", "*.tar"],
    )
    .await;
    assert!(
        listing.contains(&marker),
        "the pulled layer holds the marker file"
    );
    eprintln!("docker's requests:\n{}", server.requests().join("\n"));
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    let a = h.finish();
    let b = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    ((a as u128) << 64) | b as u128
}
