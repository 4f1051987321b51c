//! The HTTP API. One handler routes `/v2/...` by hand: repository names contain slashes, so a
//! path is read from its end (`.../manifests/<ref>`, `.../blobs/uploads/<id>`, ...).

use crate::blobs::BlobError;
use crate::error::{ApiError, ErrorCode};
use crate::manifest;
use crate::meta::{Manifest, MetaError};
use crate::reference::{validate_name, validate_tag, Digest, ParseError, Reference};
use crate::remote::RemoteBlob;
use crate::{BlobSource, Event, Registry};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use sha2::{Digest as _, Sha256};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// `Docker-Distribution-API-Version`, on every answer.
pub const API_VERSION: &str = "docker-distribution-api-version";
const CONTENT_DIGEST: &str = "docker-content-digest";
const UPLOAD_UUID: &str = "docker-upload-uuid";
const OCI_TAG: &str = "oci-tag";

type Result<T> = std::result::Result<T, ApiError>;

/// Builds the router over a registry.
pub(crate) fn router(reg: Arc<Registry>) -> axum::Router {
    axum::Router::new()
        .fallback(handle)
        .layer(axum::middleware::map_response(
            |mut r: Response| async move {
                r.headers_mut()
                    .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
                r
            },
        ))
        .with_state(reg)
}

/// What a path names.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Base,
    Catalog,
    Tags(&'a str),
    Manifest(&'a str, String),
    Blob(&'a str, String),
    UploadStart(&'a str),
    Upload(&'a str, String),
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Reads a path from its end; `None` for anything outside the API.
fn route(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Route::Base);
    }
    let rest = rest.strip_prefix('/')?;
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(name));
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Some(Route::UploadStart(name));
    }
    let (head, last) = rest.rsplit_once('/')?;
    if last.is_empty() {
        return None;
    }
    if let Some(name) = head.strip_suffix("/blobs/uploads") {
        return Some(Route::Upload(name, decode(last)));
    }
    if let Some(name) = head.strip_suffix("/blobs") {
        return Some(Route::Blob(name, decode(last)));
    }
    if let Some(name) = head.strip_suffix("/manifests") {
        return Some(Route::Manifest(name, decode(last)));
    }
    None
}

/// The query string as pairs, repeated keys kept (`?tag=a&tag=b`).
fn query(req: &Request) -> Vec<(String, String)> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(req.uri())
        .map(|q| q.0)
        .unwrap_or_default()
}

fn param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

async fn handle(State(reg): State<Arc<Registry>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let is_head = req.method() == Method::HEAD;
    let result = match route(&path) {
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::Unsupported,
            "no such endpoint of the registry API",
        )),
        Some(r) => dispatch(&reg, r, req).await,
    };
    let mut resp = result.unwrap_or_else(IntoResponse::into_response);
    if is_head {
        // Headers (Content-Length among them) as for GET, no body.
        *resp.body_mut() = Body::empty();
    }
    resp
}

fn check_name(name: &str) -> Result<()> {
    validate_name(name).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::NameInvalid,
            e.to_string(),
        )
        .detail(serde_json::json!({ "name": name }))
    })
}

fn method_not_allowed(method: &Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Unsupported,
        format!("{method} is not served on this endpoint"),
    )
}

async fn dispatch(reg: &Registry, route: Route<'_>, req: Request) -> Result<Response> {
    let method = req.method().clone();
    // Taken out now: a request body is not `Sync`, so `&Request` cannot cross an await.
    let q = query(&req);
    let range = req.headers().get(header::RANGE).cloned();
    match &route {
        Route::Tags(n)
        | Route::Manifest(n, _)
        | Route::Blob(n, _)
        | Route::UploadStart(n)
        | Route::Upload(n, _) => check_name(n)?,
        Route::Base | Route::Catalog => {}
    }
    match (route, method) {
        (Route::Base, Method::GET | Method::HEAD) => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{}",
        )
            .into_response()),
        (Route::Catalog, Method::GET) => catalog(reg, &q).await,
        (Route::Tags(name), Method::GET) => tags(reg, name, &q).await,
        (Route::Manifest(name, r), Method::GET | Method::HEAD) => get_manifest(reg, name, &r).await,
        (Route::Manifest(name, r), Method::PUT) => put_manifest(reg, name, &r, &q, req).await,
        (Route::Manifest(name, r), Method::DELETE) => delete_manifest(reg, name, &r).await,
        (Route::Blob(_, d), Method::GET) => get_blob(reg, &d, range.as_ref(), false).await,
        (Route::Blob(_, d), Method::HEAD) => get_blob(reg, &d, None, true).await,
        (Route::Blob(_, d), Method::DELETE) => delete_blob(reg, &d).await,
        (Route::UploadStart(name), Method::POST) => start_upload(reg, name, &q, req).await,
        (Route::Upload(name, id), Method::GET) => upload_status(reg, name, &id).await,
        (Route::Upload(name, id), Method::PATCH) => patch_upload(reg, name, &id, req).await,
        (Route::Upload(name, id), Method::PUT) => put_upload(reg, name, &id, &q, req).await,
        (Route::Upload(name, id), Method::DELETE) => {
            reg.store
                .cancel(name, &id)
                .await
                .map_err(|e| blob_error(e, name, &id))?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (_, m) => Err(method_not_allowed(&m)),
    }
}

fn meta_error(e: MetaError) -> ApiError {
    match e {
        MetaError::Unavailable(m) => {
            tracing::warn!("registry: metadata unavailable: {m}");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unknown,
                format!("registry metadata unavailable, retry: {m}"),
            )
        }
        MetaError::Other(m) => ApiError::internal("registry metadata", &m),
        MetaError::BlobUnknown(d) => ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::ManifestBlobUnknown,
            format!("blob unknown to registry: {d}"),
        ),
    }
}

fn digest_error(e: ParseError) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::DigestInvalid,
        e.to_string(),
    )
}

fn parse_digest(s: &str) -> Result<Digest> {
    Digest::parse(s).map_err(digest_error)
}

/// `Range: 0-<last byte>` as the spec writes an upload's progress (`0-0` when empty, as
/// Docker's registry does).
fn progress(offset: u64) -> HeaderValue {
    hv(&format!("0-{}", offset.saturating_sub(1)))
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn upload_location(name: &str, id: &str) -> HeaderValue {
    hv(&format!("/v2/{name}/blobs/uploads/{id}"))
}

/// Maps the store's errors to the spec's: a full disk is 507 with `BLOB_UPLOAD_INVALID` (the
/// upload cannot go on, and the client should not retry at once as it would a 5xx of the
/// server; the message says the disk is full).
fn blob_error(e: BlobError, name: &str, id: &str) -> ApiError {
    let msg = e.to_string();
    match e {
        BlobError::NoSpace { .. } => {
            tracing::warn!("registry: {msg}");
            ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                ErrorCode::BlobUploadInvalid,
                msg,
            )
        }
        BlobError::Io { .. } => ApiError::internal("blob store", &msg),
        BlobError::DigestMismatch { expected, actual } => {
            ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid, msg)
                .detail(serde_json::json!({ "expected": expected, "actual": actual }))
        }
        BlobError::UploadUnknown => {
            ApiError::new(StatusCode::NOT_FOUND, ErrorCode::BlobUploadUnknown, msg)
                .detail(serde_json::json!({ "uuid": id }))
        }
        BlobError::OutOfOrder { offset, .. } => ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::BlobUploadInvalid,
            msg,
        )
        .header(header::RANGE, progress(offset))
        .header(header::LOCATION, upload_location(name, id))
        .header(HeaderName::from_static(UPLOAD_UUID), hv(id)),
        BlobError::ChunkSize { .. } => {
            ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::SizeInvalid, msg)
        }
        BlobError::Body(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BlobUploadInvalid, msg)
        }
    }
}

/// The next page: its `n` and `last`.
type Next = (usize, String);

/// `n` and `last` applied to a sorted list; the next page's `last` when one is left.
fn paginate(mut items: Vec<String>, q: &[(String, String)]) -> Result<(Vec<String>, Option<Next>)> {
    items.sort();
    items.dedup();
    let n = match param(q, "n") {
        None | Some("") => None,
        Some(s) => Some(s.parse::<usize>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unsupported,
                format!("n must be a non-negative integer, not {s:?}"),
            )
        })?),
    };
    let start = match param(q, "last") {
        Some(l) if !l.is_empty() => items.partition_point(|x| x.as_str() <= l),
        _ => 0,
    };
    let rest = &items[start..];
    Ok(match n {
        Some(0) => (Vec::new(), None),
        Some(n) if rest.len() > n => (rest[..n].to_vec(), Some((n, rest[n - 1].clone()))),
        _ => (rest.to_vec(), None),
    })
}

fn link(path: &str, next: Option<Next>) -> Option<HeaderValue> {
    next.map(|(n, last)| {
        let last = percent_encoding::utf8_percent_encode(&last, percent_encoding::NON_ALPHANUMERIC);
        hv(&format!("<{path}?n={n}&last={last}>; rel=\"next\""))
    })
}

fn json_page(body: serde_json::Value, link: Option<HeaderValue>) -> Response {
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(l) = link {
        resp.headers_mut().insert(header::LINK, l);
    }
    resp
}

async fn catalog(reg: &Registry, q: &[(String, String)]) -> Result<Response> {
    let repos = reg.meta.repositories().await.map_err(meta_error)?;
    let (page, next) = paginate(repos, q)?;
    Ok(json_page(
        serde_json::json!({ "repositories": page }),
        link("/v2/_catalog", next),
    ))
}

async fn tags(reg: &Registry, name: &str, q: &[(String, String)]) -> Result<Response> {
    let Some(tags) = reg.meta.tags(name).await.map_err(meta_error)? else {
        return Err(name_unknown(name));
    };
    let (page, next) = paginate(tags, q)?;
    Ok(json_page(
        serde_json::json!({ "name": name, "tags": page }),
        link(&format!("/v2/{name}/tags/list"), next),
    ))
}

fn name_unknown(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NameUnknown,
        "repository name not known to registry",
    )
    .detail(serde_json::json!({ "name": name }))
}

/// A reference on a read or delete: a malformed tag names nothing (404), a malformed digest
/// is the client's error (400).
fn lookup_reference(s: &str) -> Result<Reference> {
    Reference::parse(s).map_err(|e| match e {
        ParseError::Tag(_) => ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::ManifestUnknown,
            e.to_string(),
        ),
        other => digest_error(other),
    })
}

/// 404 for a manifest: `NAME_UNKNOWN` when the repository itself does not exist.
async fn manifest_unknown(reg: &Registry, name: &str, reference: &str) -> ApiError {
    match reg.meta.tags(name).await {
        Ok(None) => name_unknown(name),
        _ => ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::ManifestUnknown,
            "manifest unknown to registry",
        )
        .detail(serde_json::json!({ "name": name, "reference": reference })),
    }
}

async fn get_manifest(reg: &Registry, name: &str, r: &str) -> Result<Response> {
    let reference = lookup_reference(r)?;
    let Some(m) = reg
        .meta
        .get_manifest(name, &reference)
        .await
        .map_err(meta_error)?
    else {
        return Err(manifest_unknown(reg, name, r).await);
    };
    let mut resp = Response::new(Body::from(m.bytes.clone()));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, hv(&m.media_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(m.bytes.len()));
    h.insert(CONTENT_DIGEST, hv(m.digest.as_str()));
    h.insert(header::ETAG, hv(&format!("\"{}\"", m.digest)));
    Ok(resp)
}

/// Reads a body whole, refusing more than `max` bytes (413).
async fn read_capped(req: Request, max: usize) -> Result<(HeaderMap, Bytes)> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::ManifestInvalid,
            format!("manifest larger than {max} bytes"),
        )
    };
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut buf = BytesMut::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::ManifestInvalid,
                format!("request body: {e}"),
            )
        })?;
        if buf.len() + chunk.len() > max {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((parts.headers, buf.freeze()))
}

fn invalid_manifest(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::ManifestInvalid, msg)
}

async fn put_manifest(
    reg: &Registry,
    name: &str,
    r: &str,
    q: &[(String, String)],
    req: Request,
) -> Result<Response> {
    let reference = Reference::parse(r).map_err(|e| match e {
        ParseError::Tag(_) => invalid_manifest(e.to_string()),
        other => digest_error(other),
    })?;
    let extra_tags: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.clone())
        .collect();
    for t in &extra_tags {
        validate_tag(t).map_err(|e| invalid_manifest(e.to_string()))?;
    }
    let (headers, bytes) = read_capped(req, reg.config.max_manifest_bytes).await?;
    let digest = Digest::of(&bytes);
    if let Reference::Digest(d) = &reference {
        if d != &digest {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::DigestInvalid,
                format!("manifest pushed as {d} has digest {digest}"),
            ));
        }
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let parsed =
        manifest::parse(content_type, &bytes).map_err(|e| invalid_manifest(e.to_string()))?;

    let mut missing: Option<ApiError> = None;
    let mut note = |what: &str, d: &Digest| {
        let msg = format!("{what} {d} unknown to registry");
        let detail = serde_json::json!({ "digest": d });
        missing = Some(match missing.take() {
            None => ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::ManifestBlobUnknown, msg)
                .detail(detail),
            Some(e) => e.and(ErrorCode::ManifestBlobUnknown, msg, detail),
        });
    };
    for b in &parsed.blobs {
        let here = reg
            .store
            .stat(b)
            .await
            .map_err(|e| blob_error(e, name, ""))?
            .is_some();
        if !here && !reg.meta.blob_known(b).await.map_err(meta_error)? {
            note("blob", b);
        }
    }
    for m in &parsed.manifests {
        let known = reg
            .meta
            .get_manifest(name, &Reference::Digest(m.clone()))
            .await
            .map_err(meta_error)?
            .is_some();
        if !known {
            note("manifest", m);
        }
    }
    if let Some(e) = missing {
        return Err(e);
    }

    let mut tags = extra_tags.clone();
    if let Reference::Tag(t) = &reference {
        tags.insert(0, t.clone());
    }
    let manifest = Manifest {
        digest: digest.clone(),
        media_type: parsed.media_type.clone(),
        bytes,
    };
    reg.meta
        .put_manifest(name, &tags, manifest)
        .await
        .map_err(meta_error)?;
    tracing::debug!(name, %digest, ?tags, "registry: manifest pushed");
    reg.emit(Event::ManifestPut {
        name: name.to_string(),
        tags,
        digest: digest.clone(),
        media_type: parsed.media_type,
    });
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        hv(&format!("/v2/{name}/manifests/{digest}")),
    );
    h.insert(CONTENT_DIGEST, hv(digest.as_str()));
    for t in &extra_tags {
        h.append(OCI_TAG, hv(t));
    }
    Ok(resp)
}

fn deletes_disabled() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Unsupported,
        "deletion is disabled on this registry",
    )
}

async fn delete_manifest(reg: &Registry, name: &str, r: &str) -> Result<Response> {
    if !reg.config.delete_enabled {
        return Err(deletes_disabled());
    }
    let reference = lookup_reference(r)?;
    if !reg
        .meta
        .delete_manifest(name, &reference)
        .await
        .map_err(meta_error)?
    {
        return Err(manifest_unknown(reg, name, r).await);
    }
    reg.emit(Event::ManifestDeleted {
        name: name.to_string(),
        reference,
    });
    Ok(StatusCode::ACCEPTED.into_response())
}

/// What a `Range` header asks of a blob of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Want {
    Whole,
    /// Inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range (RFC 9110); several ranges or a malformed header are ignored, as the
/// RFC allows, and the whole blob is served.
fn want(h: Option<&HeaderValue>, len: u64) -> Want {
    let Some(spec) = h
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().strip_prefix("bytes="))
    else {
        return Want::Whole;
    };
    if spec.contains(',') {
        return Want::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Want::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        return match b.parse::<u64>() {
            Ok(0) => Want::Unsatisfiable,
            Ok(_) if len == 0 => Want::Unsatisfiable,
            Ok(n) => Want::Part(len.saturating_sub(n), len - 1),
            Err(_) => Want::Whole,
        };
    }
    let Ok(start) = a.parse::<u64>() else {
        return Want::Whole;
    };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e,
            _ => return Want::Whole,
        }
    };
    if start >= len {
        Want::Unsatisfiable
    } else {
        Want::Part(start, end.min(len - 1))
    }
}

fn blob_unknown(d: &Digest) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::BlobUnknown,
        "blob unknown to registry",
    )
    .detail(serde_json::json!({ "digest": d }))
}

fn blob_headers(resp: &mut Response, digest: &Digest, len: u64) {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(CONTENT_DIGEST, hv(digest.as_str()));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, hv(&format!("\"{digest}\"")));
}

async fn get_blob(
    reg: &Registry,
    d: &str,
    range: Option<&HeaderValue>,
    head: bool,
) -> Result<Response> {
    let digest = parse_digest(d)?;
    let local = reg
        .store
        .open_blob(&digest)
        .await
        .map_err(|e| blob_error(e, "", ""))?;
    if let Some((mut file, len)) = local {
        if head {
            // A push asks before it uploads, and references the blob next: keep it past gc's
            // grace period.
            if let Err(e) = reg.store.touch(&digest).await {
                tracing::debug!("registry: touching {digest}: {e}");
            }
            let mut resp = StatusCode::OK.into_response();
            blob_headers(&mut resp, &digest, len);
            return Ok(resp);
        }
        return match want(range, len) {
            Want::Whole => {
                let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 << 10);
                let mut resp = Response::new(Body::from_stream(stream));
                blob_headers(&mut resp, &digest, len);
                Ok(resp)
            }
            Want::Part(start, end) => {
                file.seek(std::io::SeekFrom::Start(start))
                    .await
                    .map_err(|e| ApiError::internal("reading a blob", &e))?;
                let n = end - start + 1;
                let stream = tokio_util::io::ReaderStream::with_capacity(file.take(n), 256 << 10);
                let mut resp = Response::new(Body::from_stream(stream));
                blob_headers(&mut resp, &digest, n);
                *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                resp.headers_mut().insert(
                    header::CONTENT_RANGE,
                    hv(&format!("bytes {start}-{end}/{len}")),
                );
                Ok(resp)
            }
            Want::Unsatisfiable => Err(ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::BlobUnknown,
                format!("range outside the blob's {len} bytes"),
            )
            .header(header::CONTENT_RANGE, hv(&format!("bytes */{len}")))),
        };
    }
    let remote_failed = |e: crate::remote::RemoteError| {
        tracing::warn!("registry: {digest}: {e}");
        ApiError::new(StatusCode::BAD_GATEWAY, ErrorCode::Unknown, e.to_string())
    };
    if head {
        let size = reg.remote.stat(&digest).await.map_err(remote_failed)?;
        let Some(size) = size else {
            return Err(blob_unknown(&digest));
        };
        let mut resp = StatusCode::OK.into_response();
        blob_headers(&mut resp, &digest, size);
        return Ok(resp);
    }
    let Some(blob) = reg.remote.fetch(&digest).await.map_err(remote_failed)? else {
        return Err(blob_unknown(&digest));
    };
    let size = blob.size;
    let body = relay(reg, digest.clone(), blob);
    let mut resp = Response::new(body);
    blob_headers(&mut resp, &digest, size);
    // A blob from another node is served whole; a client that asked for a range gets 200.
    resp.headers_mut().remove(header::ACCEPT_RANGES);
    Ok(resp)
}

/// Serves a blob from another node while storing it here. One chunk is held back until the
/// next arrives, and the last until the digest and size are checked, so a client never gets a
/// complete body of the wrong blob; the copy here is committed whether or not the client
/// stays.
fn relay(reg: &Registry, digest: Digest, blob: RemoteBlob) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    let store = reg.store.clone();
    let events = reg.events.clone();
    let RemoteBlob { size, mut body } = blob;
    tokio::spawn(async move {
        let mut writer = match store.writer().await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("registry: not caching {digest} here: {e}");
                None
            }
        };
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        let mut held: Option<Bytes> = None;
        while let Some(item) = body.next().await {
            let chunk = match item {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("registry: {digest} from another node: {e}");
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            hasher.update(&chunk);
            got += chunk.len() as u64;
            if let Some(w) = writer.as_mut() {
                if let Err(e) = w.write(&chunk).await {
                    tracing::warn!("registry: not caching {digest} here: {e}");
                    writer = None;
                }
            }
            if let Some(prev) = held.replace(chunk) {
                // A client gone is no reason to stop: the copy here is still wanted.
                let _ = tx.send(Ok(prev)).await;
            }
        }
        let actual = Digest::from_hasher(hasher);
        if actual != digest || got != size {
            tracing::warn!(
                "registry: another node sent {got} bytes of {actual} for {digest} ({size} bytes)"
            );
            let _ = tx
                .send(Err(std::io::Error::other(
                    "blob from another node failed its digest check",
                )))
                .await;
            return;
        }
        if let Some(w) = writer {
            match w.commit(&digest).await {
                Ok(size) => {
                    if let Some(hook) = &events {
                        hook(Event::BlobCommitted {
                            digest: digest.clone(),
                            size,
                            source: BlobSource::Remote,
                        });
                    }
                }
                Err(e) => tracing::warn!("registry: caching {digest} here: {e}"),
            }
        }
        if let Some(last) = held {
            let _ = tx.send(Ok(last)).await;
        }
    });
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    Body::from_stream(stream)
}

async fn delete_blob(reg: &Registry, d: &str) -> Result<Response> {
    if !reg.config.delete_enabled {
        return Err(deletes_disabled());
    }
    let digest = parse_digest(d)?;
    if !reg
        .store
        .delete(&digest)
        .await
        .map_err(|e| blob_error(e, "", ""))?
    {
        return Err(blob_unknown(&digest));
    }
    reg.emit(Event::BlobDeleted { digest });
    Ok(StatusCode::ACCEPTED.into_response())
}

fn blob_created(name: &str, digest: &Digest) -> Response {
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, hv(&format!("/v2/{name}/blobs/{digest}")));
    h.insert(CONTENT_DIGEST, hv(digest.as_str()));
    resp
}

fn upload_accepted(status: StatusCode, name: &str, id: &str, offset: u64) -> Response {
    let mut resp = status.into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, upload_location(name, id));
    h.insert(header::RANGE, progress(offset));
    h.insert(UPLOAD_UUID, hv(id));
    if status != StatusCode::NO_CONTENT {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    }
    resp
}

async fn start_upload(
    reg: &Registry,
    name: &str,
    q: &[(String, String)],
    req: Request,
) -> Result<Response> {
    if let Some(alg) = param(q, "digest-algorithm") {
        if alg != "sha256" {
            return Err(digest_error(ParseError::Algorithm(alg.to_string())));
        }
    }
    if let Some(m) = param(q, "mount") {
        let digest = parse_digest(m)?;
        if let Some(from) = param(q, "from") {
            check_name(from)?;
        }
        let here = reg
            .store
            .stat(&digest)
            .await
            .map_err(|e| blob_error(e, name, ""))?
            .is_some();
        if here {
            if let Err(e) = reg.store.touch(&digest).await {
                tracing::debug!("registry: touching {digest}: {e}");
            }
        }
        if here || reg.meta.blob_known(&digest).await.map_err(meta_error)? {
            return Ok(blob_created(name, &digest));
        }
        // Not known anywhere: an ordinary session, as the spec says.
    } else if let Some(d) = param(q, "digest") {
        let digest = parse_digest(d)?;
        let body = req.into_body().into_data_stream();
        let size = reg
            .store
            .put_stream(&digest, body)
            .await
            .map_err(|e| blob_error(e, name, ""))?;
        reg.blob_committed(&digest, size);
        return Ok(blob_created(name, &digest));
    }
    let id = reg
        .store
        .begin_upload(name)
        .await
        .map_err(|e| blob_error(e, name, ""))?;
    Ok(upload_accepted(StatusCode::ACCEPTED, name, &id, 0))
}

async fn upload_status(reg: &Registry, name: &str, id: &str) -> Result<Response> {
    let offset = reg
        .store
        .upload_offset(name, id)
        .await
        .map_err(|e| blob_error(e, name, id))?;
    Ok(upload_accepted(StatusCode::NO_CONTENT, name, id, offset))
}

/// `Content-Range: <start>-<end>` of a chunk (the spec's `^[0-9]+-[0-9]+$`; a `bytes ` or
/// `bytes=` prefix is tolerated).
fn content_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>> {
    let Some(v) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BlobUploadInvalid,
            "Content-Range must be <start>-<end>",
        )
    };
    let s = v.to_str().map_err(|_| bad())?.trim();
    let s = s
        .strip_prefix("bytes=")
        .or_else(|| s.strip_prefix("bytes "))
        .unwrap_or(s);
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !digits(b) {
        return Err(bad());
    }
    let (a, b) = (
        a.parse::<u64>().map_err(|_| bad())?,
        b.parse::<u64>().map_err(|_| bad())?,
    );
    if b < a {
        return Err(bad());
    }
    Ok(Some((a, b)))
}

async fn patch_upload(reg: &Registry, name: &str, id: &str, req: Request) -> Result<Response> {
    let range = content_range(req.headers())?;
    let body = req.into_body().into_data_stream();
    let offset = reg
        .store
        .append(name, id, range, body)
        .await
        .map_err(|e| blob_error(e, name, id))?;
    Ok(upload_accepted(StatusCode::ACCEPTED, name, id, offset))
}

async fn put_upload(
    reg: &Registry,
    name: &str,
    id: &str,
    q: &[(String, String)],
    req: Request,
) -> Result<Response> {
    let Some(d) = param(q, "digest") else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::DigestInvalid,
            "the digest query parameter is required to close an upload",
        ));
    };
    let digest = parse_digest(d)?;
    let range = content_range(req.headers())?;
    let body = req.into_body().into_data_stream();
    let size = reg
        .store
        .finish(name, id, range, body, &digest)
        .await
        .map_err(|e| blob_error(e, name, id))?;
    reg.blob_committed(&digest, size);
    Ok(blob_created(name, &digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_read_from_their_end() {
        assert_eq!(route("/v2/"), Some(Route::Base));
        assert_eq!(route("/v2"), Some(Route::Base));
        assert_eq!(route("/v2/_catalog"), Some(Route::Catalog));
        assert_eq!(route("/v2/a/b/tags/list"), Some(Route::Tags("a/b")));
        assert_eq!(route("/v2/a/blobs/uploads/"), Some(Route::UploadStart("a")));
        assert_eq!(route("/v2/a/blobs/uploads"), Some(Route::UploadStart("a")));
        assert_eq!(
            route("/v2/x/blobs/uploads/abc"),
            Some(Route::Upload("x", "abc".into()))
        );
        // A repository may be called "blobs" or "manifests".
        assert_eq!(
            route("/v2/blobs/blobs/sha256%3Aab"),
            Some(Route::Blob("blobs", "sha256:ab".into()))
        );
        assert_eq!(
            route("/v2/manifests/x/manifests/v1"),
            Some(Route::Manifest("manifests/x", "v1".into()))
        );
        assert_eq!(route("/v2/a/manifests/"), None);
        assert_eq!(route("/v3/a/manifests/1"), None);
        assert_eq!(route("/v2/a/other/1"), None);
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(want(None, 10), Want::Whole);
        assert_eq!(want(Some(&h("bytes=0-4")), 10), Want::Part(0, 4));
        assert_eq!(want(Some(&h("bytes=5-")), 10), Want::Part(5, 9));
        assert_eq!(want(Some(&h("bytes=5-100")), 10), Want::Part(5, 9));
        assert_eq!(want(Some(&h("bytes=-3")), 10), Want::Part(7, 9));
        assert_eq!(want(Some(&h("bytes=-30")), 10), Want::Part(0, 9));
        assert_eq!(want(Some(&h("bytes=10-")), 10), Want::Unsatisfiable);
        assert_eq!(want(Some(&h("bytes=-0")), 10), Want::Unsatisfiable);
        assert_eq!(want(Some(&h("bytes=4-2")), 10), Want::Whole);
        assert_eq!(want(Some(&h("bytes=0-1,3-4")), 10), Want::Whole);
        assert_eq!(want(Some(&h("items=0-1")), 10), Want::Whole);
    }

    #[test]
    fn content_ranges_are_start_dash_end() {
        let mut h = HeaderMap::new();
        assert_eq!(content_range(&h).unwrap(), None);
        h.insert(header::CONTENT_RANGE, HeaderValue::from_static("0-9"));
        assert_eq!(content_range(&h).unwrap(), Some((0, 9)));
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_static("bytes=10-19"),
        );
        assert_eq!(content_range(&h).unwrap(), Some((10, 19)));
        for bad in ["9-0", "a-b", "-1", "1-", "1", "+1-2"] {
            h.insert(header::CONTENT_RANGE, HeaderValue::from_static(bad));
            assert!(content_range(&h).is_err(), "{bad}");
        }
    }

    #[test]
    fn pages_start_after_last_and_link_to_the_next() {
        let items: Vec<String> = ["c", "a", "b", "d"].iter().map(|s| s.to_string()).collect();
        let q = |n: &str, last: &str| {
            vec![
                ("n".to_string(), n.to_string()),
                ("last".to_string(), last.to_string()),
            ]
        };
        assert_eq!(
            paginate(items.clone(), &[]).unwrap(),
            (vec!["a".into(), "b".into(), "c".into(), "d".into()], None)
        );
        assert_eq!(
            paginate(items.clone(), &q("2", "")).unwrap(),
            (vec!["a".into(), "b".into()], Some((2, "b".into())))
        );
        assert_eq!(
            paginate(items.clone(), &q("2", "b")).unwrap(),
            (vec!["c".into(), "d".into()], None)
        );
        assert_eq!(
            paginate(items.clone(), &q("0", "")).unwrap(),
            (vec![], None)
        );
        assert!(paginate(items, &q("x", "")).is_err());
    }
}
