//! The API socket: whoever can connect to it commands the swarm, so it must never be reachable
//! with a looser mode than asked for, not even for a moment, and the daemon must never delete a
//! file it did not make just because it sits where the socket goes.

use anyhow::{bail, Context};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Listens on `path` with exactly `mode`, from the moment the path exists.
///
/// The socket is bound in a fresh 0700 directory beside `path` (nobody else can reach it
/// there), given its mode, then renamed over `path` in one step, so no umask and no window
/// between bind and chmod decide who may connect. A stale socket at `path` (a daemon that
/// died) is replaced; a live one (another daemon serving) or anything that is not a socket is
/// refused with a message, and left alone.
pub fn bind(path: &Path, mode: u32) -> anyhow::Result<tokio::net::UnixListener> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    check_free(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "socket".into());
    let private = parent.join(format!(".{name}.{}.{}", std::process::id(), nonce()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("creating {}", private.display()))?;
    let result = bind_in(&private, path, mode);
    if let Err(e) = std::fs::remove_dir_all(&private) {
        tracing::warn!(path = %private.display(), error = %e, "removing the socket's private directory");
    }
    result
}

/// Binds inside `private`, sets `mode`, moves the socket to `path`.
fn bind_in(private: &Path, path: &Path, mode: u32) -> anyhow::Result<tokio::net::UnixListener> {
    let staged = private.join("s");
    let listener = std::os::unix::net::UnixListener::bind(&staged)
        .with_context(|| format!("listening on {}", staged.display()))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", staged.display()))?;
    std::fs::rename(&staged, path)
        .with_context(|| format!("moving the socket into place at {}", path.display()))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("making {} non-blocking", path.display()))?;
    tokio::net::UnixListener::from_std(listener)
        .with_context(|| format!("listening on {}", path.display()))
}

/// Refuses a path holding anything but a dead socket (checked again at bind; the daemon also
/// checks first thing, so a wrong path fails before the node starts).
pub fn check_free(path: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("looking at {}", path.display())),
    };
    let kind = meta.file_type();
    if !kind.is_socket() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_symlink() {
            "a symbolic link"
        } else if kind.is_file() {
            "a regular file"
        } else {
            "not a socket"
        };
        bail!(
            "{} exists and is {what}, not a socket; refusing to replace it (move it away, or \
             give the daemon another --socket)",
            path.display()
        );
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!(
            "{} is in use: another daemon is serving on it (stop it first, or give this one \
             another --socket)",
            path.display()
        );
    }
    Ok(())
}

/// A few random-enough bytes for the private directory's name (its 0700 mode, not its name,
/// is what keeps others out; `create` fails rather than reuse an existing one).
fn nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ u64::from(std::process::id()).rotate_left(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_at_the_socket_path_survives_and_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        std::fs::write(&path, b"precious").unwrap();
        let err = format!("{:#}", bind(&path, 0o660).unwrap_err());
        assert!(
            err.contains(&path.display().to_string())
                && err.contains("a regular file, not a socket"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        // A directory too.
        let sub = dir.path().join("sub.sock");
        std::fs::create_dir(&sub).unwrap();
        let err = format!("{:#}", bind(&sub, 0o660).unwrap_err());
        assert!(err.contains("a directory, not a socket"), "{err}");
        assert!(sub.is_dir());
        // Nothing left behind beside them.
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["docker.sock", "sub.sock"]);
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let live = bind(&path, 0o660).unwrap();
        let err = format!("{:#}", bind(&path, 0o660).unwrap_err());
        assert!(err.contains("another daemon is serving"), "{err}");
        // The live one still answers.
        let client = tokio::net::UnixStream::connect(&path);
        let (accepted, connected) = tokio::join!(live.accept(), client);
        accepted.unwrap();
        connected.unwrap();
    }

    /// What happened to names in a directory while `f` ran, from the kernel (inotify): each
    /// event's name and mask, in order.
    fn events_during(dir: &Path, f: impl FnOnce()) -> Vec<(String, u32)> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: plain syscalls on a descriptor this function owns and closes; the buffer
        // outlives the read and events are parsed within the length it returned.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            assert!(fd >= 0, "inotify_init1");
            let mask = libc::IN_CREATE | libc::IN_ATTRIB | libc::IN_MOVED_TO;
            assert!(libc::inotify_add_watch(fd, c.as_ptr(), mask) >= 0);
            f();
            let mut buf = vec![0u8; 64 * 1024];
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            libc::close(fd);
            let mut out = Vec::new();
            let mut at = 0usize;
            let head = std::mem::size_of::<libc::inotify_event>();
            while n > 0 && at + head <= n as usize {
                let ev: libc::inotify_event = std::ptr::read_unaligned(buf[at..].as_ptr().cast());
                let name = &buf[at + head..at + head + ev.len as usize];
                let name = String::from_utf8_lossy(name)
                    .trim_end_matches('\0')
                    .to_string();
                out.push((name, ev.mask));
                at += head + ev.len as usize;
            }
            out
        }
    }

    /// The kernel's own account: the socket's name appears by a rename of a finished socket,
    /// and its mode is never changed once it is there (a chmod after bind would show as an
    /// attribute change of that name). The mode it appears with is the final one.
    #[tokio::test]
    async fn the_socket_has_its_final_mode_from_the_first_moment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let mut listener = None;
        let events = events_during(dir.path(), || {
            listener = Some(bind(&path, 0o660).unwrap());
        });
        let at_path: Vec<_> = events.iter().filter(|(n, _)| n == "docker.sock").collect();
        assert!(
            at_path
                .iter()
                .all(|(_, m)| m & (libc::IN_ATTRIB | libc::IN_CREATE) == 0),
            "the socket was created at its path and then changed: {events:?}"
        );
        assert!(
            at_path.iter().any(|(_, m)| m & libc::IN_MOVED_TO != 0),
            "{events:?}"
        );
        let mode = std::fs::symlink_metadata(&path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(format!("{mode:o}"), "660");
        drop(listener);
    }
}
