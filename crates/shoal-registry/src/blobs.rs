//! The node-local blob store: content-addressed files under one directory.
//!
//! Layout under the root (directories 0700, files 0600):
//! - `blobs/sha256/<hex>`: committed blobs, named by their digest;
//! - `uploads/<id>/{name,data}`: upload sessions, the repository they were opened for and the
//!   bytes so far (the offset is the data file's length), so a session survives a restart;
//! - `tmp/<random>`: single-request uploads and blobs being cached from another node.
//!
//! A blob is written to a file in the same filesystem, fsynced, its sha256 checked, and only
//! then renamed into `blobs/` (and the directory fsynced), so a partial or wrong blob is never
//! visible. A write error removes what was being written; ENOSPC and EDQUOT are told apart
//! (`BlobError::NoSpace`) so the API can say the disk is full.

use crate::reference::Digest;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::fs::{DirBuilder, Permissions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;

/// Why a blob store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The disk (or the quota) is full; what was being written has been removed.
    #[error("no space left on the registry's disk while {what}: {source}")]
    NoSpace {
        /// What the store was doing.
        what: &'static str,
        /// The OS error (ENOSPC or EDQUOT).
        #[source]
        source: io::Error,
    },
    /// Any other I/O failure of the store.
    #[error("{what}: {source}")]
    Io {
        /// What the store was doing.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The content does not hash to the digest the client named; nothing was kept.
    #[error("digest mismatch: expected {expected}, content is {actual}")]
    DigestMismatch {
        /// The digest the client named.
        expected: Digest,
        /// The digest of what it sent.
        actual: Digest,
    },
    /// No upload session of that ID for that repository (never opened, finished, cancelled or
    /// collected).
    #[error("blob upload unknown")]
    UploadUnknown,
    /// A chunk that does not start where the upload is.
    #[error("chunk starts at byte {start} but the upload has {offset} bytes")]
    OutOfOrder {
        /// Where the chunk says it starts.
        start: u64,
        /// How many bytes the session holds.
        offset: u64,
    },
    /// A chunk whose length differs from its `Content-Range`; it was not kept.
    #[error("chunk of {got} bytes does not match its Content-Range of {declared} bytes")]
    ChunkSize {
        /// The length the range declares.
        declared: u64,
        /// The bytes that came.
        got: u64,
    },
    /// The request body failed (the client went away); a session keeps what arrived.
    #[error("request body: {0}")]
    Body(String),
}

/// Classifies an I/O error: a full disk or quota becomes `NoSpace`.
fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> BlobError {
    move |source| {
        if is_no_space(&source) {
            BlobError::NoSpace { what, source }
        } else {
            BlobError::Io { what, source }
        }
    }
}

/// ENOSPC or EDQUOT, however the standard library names them.
fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(28) | Some(122))
}

/// What `BlobStore::gc` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs removed: not referenced and older than the grace period.
    pub blobs: Vec<Digest>,
    /// Upload sessions removed: idle longer than the grace period.
    pub uploads: Vec<String>,
    /// Leftover temporary files removed (a crash mid-write).
    pub temp_files: usize,
    /// Bytes freed by all of the above.
    pub bytes: u64,
}

/// The running hash of a session's data, valid while `at` equals the data file's length.
struct Running {
    hasher: Sha256,
    at: u64,
}

/// The in-memory side of one upload session: serializes its requests and keeps its hash.
type Session = Arc<tokio::sync::Mutex<Option<Running>>>;

struct Inner {
    blobs: PathBuf,
    uploads: PathBuf,
    tmp: PathBuf,
    sessions: parking_lot::Mutex<HashMap<String, Session>>,
}

/// The node-local, content-addressed blob store; cheap to clone (one shared state).
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("blobs", &self.inner.blobs)
            .finish()
    }
}

/// Makes a directory (and its parents) mode 0700, and sets 0700 on it if it existed.
fn private_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(path)?;
    std::fs::set_permissions(path, Permissions::from_mode(0o700))
}

/// Fsyncs a directory, so a rename or removal in it survives a crash.
fn sync_dir(path: &Path) -> io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

/// A new file, 0600, that must not exist yet.
async fn create_private(path: &Path) -> io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
}

/// An upload ID as this store makes them: 32 lowercase hex digits (nothing else reaches the
/// filesystem).
fn valid_upload_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A random name for an upload or a temporary file.
fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Removes a file when dropped unless disarmed: a failed or abandoned write leaves nothing.
struct TempGuard {
    path: Option<PathBuf>,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("registry: removing {}: {e}", p.display());
                }
            }
        }
    }
}

/// A blob being written to a temporary file, hashed as it goes; `commit` checks and publishes
/// it, dropping it removes the file.
pub struct BlobWriter {
    store: BlobStore,
    file: tokio::fs::File,
    guard: TempGuard,
    hasher: Sha256,
    size: u64,
}

impl BlobWriter {
    /// Appends bytes; an error removes the file when the writer is dropped.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.file
            .write_all(chunk)
            .await
            .map_err(io_err("writing a blob"))?;
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Fsyncs, checks the digest and renames the file into place; returns the blob's size.
    pub async fn commit(mut self, expected: &Digest) -> Result<u64, BlobError> {
        self.file.flush().await.map_err(io_err("writing a blob"))?;
        self.file
            .sync_all()
            .await
            .map_err(io_err("syncing a blob"))?;
        let actual = Digest::from_hasher(self.hasher.clone());
        if &actual != expected {
            return Err(BlobError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        let Some(path) = self.guard.path.clone() else {
            return Err(BlobError::Io {
                what: "committing a blob",
                source: io::Error::other("writer already committed"),
            });
        };
        self.store.publish(&path, expected).await?;
        self.guard.path = None;
        Ok(self.size)
    }
}

/// Copies a request body into a file, feeding `hasher` with what was written. Returns the
/// bytes taken from the body and the first failure. The file is flushed either way, so its
/// length is what reached it.
async fn copy_body<S, E>(
    file: &mut tokio::fs::File,
    mut body: S,
    mut hasher: Option<&mut Sha256>,
) -> (u64, Result<(), BlobError>)
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Display,
{
    let mut n = 0u64;
    let mut result = Ok(());
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                result = Err(BlobError::Body(e.to_string()));
                break;
            }
        };
        if let Err(e) = file.write_all(&chunk).await {
            result = Err(io_err("writing an upload")(e));
            break;
        }
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&chunk);
        }
        n += chunk.len() as u64;
    }
    // tokio's file writes in the background: an error shows at the next write or the flush.
    if let Err(e) = file.flush().await {
        if result.is_ok() {
            result = Err(io_err("writing an upload")(e));
        }
    }
    (n, result)
}

/// Hashes a file from the start (a session whose running hash was lost to a restart).
fn hash_file(path: &Path) -> io::Result<Digest> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Digest::from_hasher(hasher))
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, BlobError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(io_err(what)),
        Err(e) => Err(BlobError::Io {
            what,
            source: io::Error::other(e.to_string()),
        }),
    }
}

impl BlobStore {
    /// Opens (creating) a store under `root`; upload sessions left there by an earlier run
    /// stay usable.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let root = root.into();
        let blobs = root.join("blobs").join("sha256");
        let uploads = root.join("uploads");
        let tmp = root.join("tmp");
        for d in [&root, &root.join("blobs"), &blobs, &uploads, &tmp] {
            private_dir(d).map_err(io_err("creating the blob store's directories"))?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                blobs,
                uploads,
                tmp,
                sessions: parking_lot::Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The file a blob lives in once committed.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner.blobs.join(digest.hex())
    }

    /// The size of a blob held here, or `None`.
    pub async fn stat(&self, digest: &Digest) -> Result<Option<u64>, BlobError> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading a blob's metadata")(e)),
        }
    }

    /// A blob held here, opened for reading, with its size.
    pub async fn open_blob(
        &self,
        digest: &Digest,
    ) -> Result<Option<(tokio::fs::File, u64)>, BlobError> {
        let file = match tokio::fs::File::open(self.blob_path(digest)).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("opening a blob")(e)),
        };
        let len = file
            .metadata()
            .await
            .map_err(io_err("reading a blob's metadata"))?
            .len();
        Ok(Some((file, len)))
    }

    /// Marks a blob as just used, so `gc` keeps it for another grace period (a client that was
    /// told a blob exists will reference it in the manifest it pushes next).
    pub async fn touch(&self, digest: &Digest) -> Result<(), BlobError> {
        let path = self.blob_path(digest);
        blocking("touching a blob", move || {
            std::fs::File::open(path)?.set_modified(SystemTime::now())
        })
        .await
    }

    /// Removes a blob held here; false when it was not here.
    pub async fn delete(&self, digest: &Digest) -> Result<bool, BlobError> {
        match tokio::fs::remove_file(self.blob_path(digest)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("removing a blob")(e)),
        }
    }

    /// Every blob held here with its size (what this node can serve to the others).
    pub async fn list(&self) -> Result<Vec<(Digest, u64)>, BlobError> {
        let dir = self.inner.blobs.clone();
        blocking("listing blobs", move || {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let name = entry.file_name();
                let Some(d) = name
                    .to_str()
                    .and_then(|n| Digest::parse(&format!("sha256:{n}")).ok())
                else {
                    continue;
                };
                out.push((d, entry.metadata()?.len()));
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    /// Starts writing a blob to a temporary file (a blob cached from another node as it is
    /// served, or a single-request upload).
    pub async fn writer(&self) -> Result<BlobWriter, BlobError> {
        let path = self.inner.tmp.join(random_id());
        let file = create_private(&path)
            .await
            .map_err(io_err("creating a temporary file"))?;
        Ok(BlobWriter {
            store: self.clone(),
            file,
            guard: TempGuard { path: Some(path) },
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Stores a whole blob from one body (`POST ...?digest=`): written, checked and committed,
    /// or nothing is kept. Returns its size.
    pub async fn put_stream<S, E>(&self, expected: &Digest, body: S) -> Result<u64, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let mut w = self.writer().await?;
        let (n, res) = copy_body(&mut w.file, body, Some(&mut w.hasher)).await;
        res?;
        w.size = n;
        w.commit(expected).await
    }

    /// Renames a checked, synced file into `blobs/` and makes the rename durable. Renaming
    /// over an existing copy is harmless: same name, same content. The file's time becomes
    /// the commit's, so `gc`'s grace period counts from it (not from an upload's last chunk).
    async fn publish(&self, from: &Path, digest: &Digest) -> Result<(), BlobError> {
        let to = self.blob_path(digest);
        let (from, dir) = (from.to_path_buf(), self.inner.blobs.clone());
        blocking("committing a blob", move || {
            std::fs::File::open(&from)?.set_modified(SystemTime::now())?;
            std::fs::rename(&from, &to)?;
            sync_dir(&dir)
        })
        .await
    }

    fn session_dir(&self, id: &str) -> PathBuf {
        self.inner.uploads.join(id)
    }

    /// Opens an upload session for a repository; returns its ID.
    pub async fn begin_upload(&self, name: &str) -> Result<String, BlobError> {
        let id = random_id();
        let dir = self.session_dir(&id);
        let made = async {
            let d = dir.clone();
            blocking("creating an upload", move || {
                DirBuilder::new().mode(0o700).create(&d)
            })
            .await?;
            let mut f = create_private(&dir.join("name"))
                .await
                .map_err(io_err("creating an upload"))?;
            f.write_all(name.as_bytes())
                .await
                .map_err(io_err("creating an upload"))?;
            f.flush().await.map_err(io_err("creating an upload"))?;
            create_private(&dir.join("data"))
                .await
                .map_err(io_err("creating an upload"))?;
            Ok::<_, BlobError>(())
        }
        .await;
        if let Err(e) = made {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(e);
        }
        self.inner.sessions.lock().insert(
            id.clone(),
            Arc::new(tokio::sync::Mutex::new(Some(Running {
                hasher: Sha256::new(),
                at: 0,
            }))),
        );
        Ok(id)
    }

    /// The session's in-memory side, after checking it exists and belongs to `name`.
    async fn session(&self, name: &str, id: &str) -> Result<Session, BlobError> {
        if !valid_upload_id(id) {
            return Err(BlobError::UploadUnknown);
        }
        match tokio::fs::read(self.session_dir(id).join("name")).await {
            Ok(owner) if owner == name.as_bytes() => {}
            Ok(_) => return Err(BlobError::UploadUnknown),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(BlobError::UploadUnknown),
            Err(e) => return Err(io_err("reading an upload")(e)),
        }
        Ok(self
            .inner
            .sessions
            .lock()
            .entry(id.to_string())
            // A session from before a restart: its hash is recomputed at the end.
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(None)))
            .clone())
    }

    /// Removes a session's files and its in-memory side.
    async fn drop_session(&self, id: &str) {
        if let Err(e) = tokio::fs::remove_dir_all(self.session_dir(id)).await {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("registry: removing upload {id}: {e}");
            }
        }
        self.inner.sessions.lock().remove(id);
    }

    /// The session's data file, opened to append; `UploadUnknown` once it is gone (finished,
    /// cancelled or collected while this request waited for the session).
    async fn open_data(&self, id: &str) -> Result<(tokio::fs::File, u64), BlobError> {
        let file = match tokio::fs::OpenOptions::new()
            .append(true)
            .open(self.session_dir(id).join("data"))
            .await
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(BlobError::UploadUnknown),
            Err(e) => return Err(io_err("opening an upload")(e)),
        };
        let len = file
            .metadata()
            .await
            .map_err(io_err("reading an upload"))?
            .len();
        Ok((file, len))
    }

    /// How many bytes a session holds.
    pub async fn upload_offset(&self, name: &str, id: &str) -> Result<u64, BlobError> {
        let session = self.session(name, id).await?;
        let _held = session.lock().await;
        Ok(self.open_data(id).await?.1)
    }

    /// Appends a chunk to a session; `range` is the request's `Content-Range` (inclusive,
    /// start <= end), which must start at the session's offset and match the chunk's length.
    /// Returns the new offset.
    pub async fn append<S, E>(
        &self,
        name: &str,
        id: &str,
        range: Option<(u64, u64)>,
        body: S,
    ) -> Result<u64, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let session = self.session(name, id).await?;
        let mut running = session.lock().await;
        self.append_locked(id, &mut running, range, body).await
    }

    async fn append_locked<S, E>(
        &self,
        id: &str,
        running: &mut Option<Running>,
        range: Option<(u64, u64)>,
        body: S,
    ) -> Result<u64, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let (mut file, offset) = self.open_data(id).await?;
        if let Some((start, _)) = range {
            if start != offset {
                return Err(BlobError::OutOfOrder { start, offset });
            }
        }
        if running.as_ref().is_some_and(|r| r.at != offset) {
            *running = None;
        }
        let (n, res) = copy_body(&mut file, body, running.as_mut().map(|r| &mut r.hasher)).await;
        match res {
            Ok(()) => {}
            Err(e @ BlobError::Body(_)) => {
                // The client went away: keep what reached the disk, as a resumable session.
                if let Some(r) = running.as_mut() {
                    r.at = offset + n;
                }
                if let Ok(m) = file.metadata().await {
                    if running.as_ref().is_some_and(|r| r.at != m.len()) {
                        *running = None;
                    }
                }
                return Err(e);
            }
            Err(e) => {
                // A write failed (a full disk): the session cannot go on; remove it.
                drop(file);
                *running = None;
                self.drop_session(id).await;
                return Err(e);
            }
        }
        if let Some((start, end)) = range {
            let declared = (end + 1).saturating_sub(start);
            if n != declared {
                file.set_len(offset)
                    .await
                    .map_err(io_err("truncating an upload"))?;
                *running = None;
                return Err(BlobError::ChunkSize { declared, got: n });
            }
        }
        if let Some(r) = running.as_mut() {
            r.at = offset + n;
        }
        Ok(offset + n)
    }

    /// Closes a session (`PUT ...?digest=`): appends the last chunk if any, checks the whole
    /// blob's digest and commits it. A mismatch removes the session. Returns the blob's size.
    pub async fn finish<S, E>(
        &self,
        name: &str,
        id: &str,
        range: Option<(u64, u64)>,
        body: S,
        expected: &Digest,
    ) -> Result<u64, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let session = self.session(name, id).await?;
        let mut running = session.lock().await;
        let size = self.append_locked(id, &mut running, range, body).await?;
        let data = self.session_dir(id).join("data");
        let result = async {
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .open(&data)
                .await
                .map_err(io_err("opening an upload"))?;
            file.sync_all().await.map_err(io_err("syncing an upload"))?;
            drop(file);
            let actual = match running.take() {
                Some(r) if r.at == size => Digest::from_hasher(r.hasher),
                _ => {
                    let d = data.clone();
                    blocking("hashing an upload", move || hash_file(&d)).await?
                }
            };
            if &actual != expected {
                return Err(BlobError::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
            self.publish(&data, expected).await
        }
        .await;
        // Committed or refused, the session is over: nothing of a wrong blob is kept.
        self.drop_session(id).await;
        result.map(|()| size)
    }

    /// Cancels a session and removes its data.
    pub async fn cancel(&self, name: &str, id: &str) -> Result<(), BlobError> {
        let session = self.session(name, id).await?;
        let _held = session.lock().await;
        if tokio::fs::metadata(self.session_dir(id)).await.is_err() {
            return Err(BlobError::UploadUnknown);
        }
        self.drop_session(id).await;
        Ok(())
    }

    /// Removes blobs whose digest is not in `referenced` (strings `sha256:<hex>`) and whose
    /// file is older than `grace`, upload sessions idle longer than `grace` (not one a request
    /// is using), and temporary files older than `grace`. Returns what it removed.
    pub async fn gc(
        &self,
        referenced: &HashSet<String>,
        grace: Duration,
    ) -> Result<GcReport, BlobError> {
        let store = self.clone();
        let referenced = referenced.clone();
        blocking("collecting garbage", move || {
            store.gc_blocking(&referenced, grace)
        })
        .await
    }

    fn gc_blocking(&self, referenced: &HashSet<String>, grace: Duration) -> io::Result<GcReport> {
        let now = SystemTime::now();
        let old = |m: &std::fs::Metadata| {
            m.modified()
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= grace)
        };
        let mut report = GcReport::default();

        for entry in std::fs::read_dir(&self.inner.blobs)? {
            let entry = entry?;
            let Some(digest) = entry
                .file_name()
                .to_str()
                .and_then(|n| Digest::parse(&format!("sha256:{n}")).ok())
            else {
                continue;
            };
            if referenced.contains(digest.as_str()) {
                continue;
            }
            let meta = entry.metadata()?;
            if old(&meta) {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => {
                        report.bytes += meta.len();
                        report.blobs.push(digest);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }

        for entry in std::fs::read_dir(&self.inner.uploads)? {
            let entry = entry?;
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            // Hold the session while deciding, so no request appends to what is removed.
            let session = self
                .inner
                .sessions
                .lock()
                .entry(id.clone())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(None)))
                .clone();
            let Ok(held) = session.try_lock() else {
                continue; // a request is using it
            };
            let dir = entry.path();
            let data = std::fs::metadata(dir.join("data"));
            let idle = match &data {
                Ok(m) => old(m),
                Err(_) => entry.metadata().map(|m| old(&m)).unwrap_or(true),
            };
            if idle {
                std::fs::remove_dir_all(&dir)?;
                report.bytes += data.map(|m| m.len()).unwrap_or(0);
                report.uploads.push(id.clone());
                self.inner.sessions.lock().remove(&id);
            }
            drop(held);
        }
        // Sessions of the map that are gone from disk.
        self.inner
            .sessions
            .lock()
            .retain(|id, _| self.inner.uploads.join(id).exists());

        for entry in std::fs::read_dir(&self.inner.tmp)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if old(&meta) && std::fs::remove_file(entry.path()).is_ok() {
                report.temp_files += 1;
                report.bytes += meta.len();
            }
        }
        report.blobs.sort();
        report.uploads.sort();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    type Chunk = Result<Bytes, io::Error>;

    fn body(parts: &[&[u8]]) -> impl Stream<Item = Chunk> + Unpin {
        stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::copy_from_slice(p)))
                .collect::<Vec<_>>(),
        )
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
        out.sort();
        out
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn a_blob_is_committed_private_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("reg")).unwrap();
        let d = Digest::of(b"hello world");
        assert_eq!(store.stat(&d).await.unwrap(), None);
        let size = store
            .put_stream(&d, body(&[b"hello ", b"world"]))
            .await
            .unwrap();
        assert_eq!(size, 11);
        assert_eq!(store.stat(&d).await.unwrap(), Some(11));
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), b"hello world");
        assert_eq!(mode(&store.blob_path(&d)), 0o600);
        for sub in ["", "blobs", "blobs/sha256", "uploads", "tmp"] {
            assert_eq!(mode(&dir.path().join("reg").join(sub)), 0o700, "{sub}");
        }
        assert_eq!(store.list().await.unwrap(), vec![(d.clone(), 11)]);
        assert!(files_under(&dir.path().join("reg/tmp")).is_empty());
        assert!(store.delete(&d).await.unwrap());
        assert!(!store.delete(&d).await.unwrap());
        assert_eq!(store.stat(&d).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_digest_mismatch_or_a_broken_body_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let claimed = Digest::of(b"something else");
        let err = store
            .put_stream(&claimed, body(&[b"actual"]))
            .await
            .unwrap_err();
        match err {
            BlobError::DigestMismatch { expected, actual } => {
                assert_eq!(expected, claimed);
                assert_eq!(actual, Digest::of(b"actual"));
            }
            other => panic!("{other:?}"),
        }
        let broken = stream::iter(vec![
            Ok(Bytes::from_static(b"part")),
            Err(io::Error::other("client gone")),
        ]);
        let err = store
            .put_stream(&Digest::of(b"partial"), broken)
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::Body(_)), "{err:?}");
        assert!(
            files_under(dir.path()).is_empty(),
            "{:?}",
            files_under(dir.path())
        );
    }

    #[tokio::test]
    async fn a_blob_being_written_is_not_visible_until_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = Digest::of(b"first second");
        let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(1);
        let rx = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
        let writer = {
            let (store, d) = (store.clone(), d.clone());
            tokio::spawn(async move { store.put_stream(&d, Box::pin(rx)).await })
        };
        tx.send(Ok(Bytes::from_static(b"first "))).await.unwrap();
        // The first half is on disk in tmp/ (wait for it), and nowhere else.
        let tmp = dir.path().join("tmp");
        for _ in 0..500 {
            if files_under(&tmp)
                .iter()
                .any(|f| std::fs::metadata(f).unwrap().len() == 6)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(files_under(&tmp).len(), 1);
        assert_eq!(store.stat(&d).await.unwrap(), None);
        assert!(store.open_blob(&d).await.unwrap().is_none());
        assert!(files_under(&dir.path().join("blobs")).is_empty());
        tx.send(Ok(Bytes::from_static(b"second"))).await.unwrap();
        drop(tx);
        assert_eq!(writer.await.unwrap().unwrap(), 12);
        assert_eq!(store.stat(&d).await.unwrap(), Some(12));
        assert!(files_under(&tmp).is_empty());
    }

    #[tokio::test]
    async fn chunks_must_come_in_order_and_match_their_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let id = store.begin_upload("app").await.unwrap();
        assert_eq!(store.upload_offset("app", &id).await.unwrap(), 0);
        assert_eq!(
            store
                .append("app", &id, Some((0, 2)), body(&[b"abc"]))
                .await
                .unwrap(),
            3
        );
        // Out of order: refused, nothing written.
        let err = store
            .append("app", &id, Some((5, 7)), body(&[b"xyz"]))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                BlobError::OutOfOrder {
                    start: 5,
                    offset: 3
                }
            ),
            "{err:?}"
        );
        let err = store
            .append("app", &id, Some((0, 2)), body(&[b"abc"]))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                BlobError::OutOfOrder {
                    start: 0,
                    offset: 3
                }
            ),
            "{err:?}"
        );
        // A chunk shorter than its range: refused and undone.
        let err = store
            .append("app", &id, Some((3, 9)), body(&[b"de"]))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                BlobError::ChunkSize {
                    declared: 7,
                    got: 2
                }
            ),
            "{err:?}"
        );
        assert_eq!(store.upload_offset("app", &id).await.unwrap(), 3);
        // Streamed (no range), then the last chunk with the close.
        assert_eq!(
            store
                .append("app", &id, None, body(&[b"de", b"f"]))
                .await
                .unwrap(),
            6
        );
        let d = Digest::of(b"abcdefgh");
        let size = store
            .finish("app", &id, Some((6, 7)), body(&[b"gh"]), &d)
            .await
            .unwrap();
        assert_eq!(size, 8);
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), b"abcdefgh");
        assert!(matches!(
            store.upload_offset("app", &id).await,
            Err(BlobError::UploadUnknown)
        ));
        assert!(files_under(&dir.path().join("uploads")).is_empty());
    }

    #[tokio::test]
    async fn sessions_belong_to_their_repository_and_ids_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let id = store.begin_upload("a").await.unwrap();
        assert!(matches!(
            store.upload_offset("b", &id).await,
            Err(BlobError::UploadUnknown)
        ));
        for bad in ["", "../a", "0123456789abcdef0123456789ABCDEF", "x"] {
            assert!(matches!(
                store.upload_offset("a", bad).await,
                Err(BlobError::UploadUnknown)
            ));
        }
        store.cancel("a", &id).await.unwrap();
        assert!(matches!(
            store.cancel("a", &id).await,
            Err(BlobError::UploadUnknown)
        ));
        assert!(files_under(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_wrong_digest_at_the_close_removes_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let id = store.begin_upload("a").await.unwrap();
        store
            .append("a", &id, None, body(&[b"data"]))
            .await
            .unwrap();
        let wrong = Digest::of(b"other");
        let err = store
            .finish("a", &id, None, body(&[]), &wrong)
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::DigestMismatch { .. }), "{err:?}");
        assert_eq!(store.stat(&wrong).await.unwrap(), None);
        assert_eq!(store.stat(&Digest::of(b"data")).await.unwrap(), None);
        assert!(files_under(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_session_survives_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let store = BlobStore::open(dir.path()).unwrap();
            let id = store.begin_upload("r/s").await.unwrap();
            store
                .append("r/s", &id, Some((0, 3)), body(&[b"1234"]))
                .await
                .unwrap();
            id
        };
        let store = BlobStore::open(dir.path()).unwrap();
        assert_eq!(store.upload_offset("r/s", &id).await.unwrap(), 4);
        store
            .append("r/s", &id, Some((4, 5)), body(&[b"56"]))
            .await
            .unwrap();
        let d = Digest::of(b"123456");
        // The hash of the first part was lost with the old store: recomputed from the file.
        assert_eq!(
            store.finish("r/s", &id, None, body(&[]), &d).await.unwrap(),
            6
        );
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), b"123456");
    }

    #[tokio::test]
    async fn gc_removes_unreferenced_old_blobs_and_idle_sessions_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let (keep, drop_) = (Digest::of(b"keep"), Digest::of(b"drop"));
        store.put_stream(&keep, body(&[b"keep"])).await.unwrap();
        store.put_stream(&drop_, body(&[b"drop"])).await.unwrap();
        let id = store.begin_upload("a").await.unwrap();
        std::fs::write(dir.path().join("tmp/leftover"), b"x").unwrap();
        let referenced: HashSet<String> = [keep.to_string()].into();

        // Everything is younger than an hour: nothing goes.
        let r = store
            .gc(&referenced, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(r, GcReport::default());
        assert_eq!(store.stat(&drop_).await.unwrap(), Some(4));

        // A session a request holds is kept even when idle.
        let session = store.session("a", &id).await.unwrap();
        let held = session.lock().await;
        let r = store.gc(&referenced, Duration::ZERO).await.unwrap();
        assert_eq!(r.blobs, vec![drop_.clone()]);
        assert!(r.uploads.is_empty());
        assert_eq!(r.temp_files, 1);
        assert_eq!(r.bytes, 5);
        drop(held);
        assert_eq!(store.stat(&keep).await.unwrap(), Some(4));
        assert_eq!(store.stat(&drop_).await.unwrap(), None);

        let r = store.gc(&referenced, Duration::ZERO).await.unwrap();
        assert_eq!(r.uploads, vec![id.clone()]);
        assert!(matches!(
            store.upload_offset("a", &id).await,
            Err(BlobError::UploadUnknown)
        ));
        assert_eq!(store.stat(&keep).await.unwrap(), Some(4));
    }

    #[tokio::test]
    async fn touching_a_blob_restarts_its_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = Digest::of(b"t");
        store.put_stream(&d, body(&[b"t"])).await.unwrap();
        let old = SystemTime::now() - Duration::from_secs(7200);
        std::fs::File::open(store.blob_path(&d))
            .unwrap()
            .set_modified(old)
            .unwrap();
        store.touch(&d).await.unwrap();
        let r = store
            .gc(&HashSet::new(), Duration::from_secs(3600))
            .await
            .unwrap();
        assert!(r.blobs.is_empty(), "a touched blob is young again");
        std::fs::File::open(store.blob_path(&d))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let r = store
            .gc(&HashSet::new(), Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(r.blobs, vec![d]);
    }
}
