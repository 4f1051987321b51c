//! Shared volumes (issue 19), the pure part: what a user's (driver, options) mean, which options
//! are credentials, and the exact command that mounts a volume. No I/O: the manager parses and
//! stores, the agent writes the credential files [`files_to_write`] names and runs
//! [`mount_command`] once per node, then binds `root/subdir` into each task's container.
//!
//! Users write volumes as Docker users do (`docker volume create -d shoal --opt type=glusterfs
//! --opt device=h1,h2:/gv0 NAME`, compose `driver_opts`, `--mount ...,volume-opt=...`), so every
//! refusal names the option in Docker's words (`invalid volume option "device": ...`) and is a
//! 400. Decisions kept here:
//!
//! - Which volumes are shoal's ([`is_managed`]): driver `shoal`, or driver `local` (or none) with
//!   a `type` naming a network filesystem shoal knows. A plain `local` volume stays the engine's.
//! - `o=` extras are checked against a per-type allowlist, key by key and value by value, never
//!   a denylist: sshfs hands unknown `-o Key=Value` to ssh (`ProxyCommand`, `LocalCommand`,
//!   `KnownHostsCommand` run commands as root on the node), mount.glusterfs takes `log-file=` and
//!   `xlator-option=` (write anywhere) and is a shell script that expands values unquoted. New
//!   options of those tools must be let in one by one, after reading what they do.
//! - Credentials (sshfs `password`/`identity`, cephfs `secret`) never reach `argv` (which `ps`,
//!   `/proc` and logs show) nor an error message: a password goes on stdin (`password_stdin`), a
//!   key into a 0600 file on the agent's tmpfs whose path is the only thing in `argv`. Secrets in
//!   `o=` (ceph's `secret=`) are refused with a pointer to the option that keeps them secret.
//! - sshfs host keys: safe by default. With `host_key` (the server's public key, as in its
//!   `ssh_host_*_key.pub` or `ssh-keyscan`'s output) the key is pinned: a known_hosts file holding
//!   only it, under the alias `shoal-volume`, and `StrictHostKeyChecking=yes`. Without it, the
//!   node's own known_hosts decides (the operator put the key there) and an unknown host fails.
//!   `o=StrictHostKeyChecking=accept-new` (trust on first use, per node) is the user's explicit
//!   choice; `no`/`off` (anyone in the middle gets the password) is refused.
//! - sshfs needs a `password` or an `identity`: without one, ssh would log in with the node's own
//!   root keys, which the user does not own. Public-key login is turned off with a password, and
//!   only the given key is offered with an identity.
//! - Hosts are DNS names, IPv4 or IPv6 addresses (IPv6 in brackets inside `device`; glusterfs
//!   refuses IPv6 because mount.glusterfs splits its backup servers on `:`). No host, user, path
//!   or extra may start with `-`, so none can become a flag of the mount program.
//! - NFS is mounted as `mount -t nfs -o nfsvers=V,...`: type `nfs4` is version 4, Docker's
//!   `o=addr=HOST` plus `device=":/export"` form and `device="HOST:/export"` both give one server.
//! - `subdir` is validated here (relative, no `.`, `..` or empty parts) and ignored by the
//!   command: the agent mounts the volume's root once per node and binds `root/subdir` (creating
//!   it), so volumes sharing a root share one mount.
//! - The parsed [`VolumeConfig`] holds no credential value, so it can be stored and sent to the
//!   agents as it is (it is serde); the values travel as secrets. Options stored without their
//!   credential values parse again with [`parse_stored`], which takes the keys as given.

use crate::error::ApiError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// The driver name users give (`docker volume create -d shoal`), so Docker's CLI and compose
/// files need nothing new.
pub const DRIVER: &str = "shoal";
/// Docker's default driver: shoal takes its network-filesystem volumes so compose files written
/// for `local` NFS volumes work unchanged across nodes.
pub const LOCAL_DRIVER: &str = "local";
/// Types shoal mounts when the driver is `local`: the network filesystems; any other `type`
/// (`none`+`bind`, `tmpfs`, `ext4`...) is a node-local mount the engine does itself.
pub const NETWORK_TYPES: &[&str] = &["nfs", "nfs4", "glusterfs", "cephfs", "sshfs"];
/// Every `type` shoal mounts, in the order error messages list them.
pub const TYPES: &[&str] = &["glusterfs", "cephfs", "nfs", "nfs4", "sshfs", "local"];
/// Options whose values are credentials, for any type: the manager stores these as secrets and
/// never shows or logs them, even on a volume that parse refuses.
pub const CREDENTIAL_KEYS: &[&str] = &["password", "identity", "secret"];
/// Longest value of an option that is not a credential: enough for any real device or option
/// list, short enough that a stored volume stays small.
pub const MAX_VALUE_LEN: usize = 1024;
/// Longest credential (an RSA-8192 private key in PEM is about 6.5 KiB).
pub const MAX_CREDENTIAL_LEN: usize = 16 * 1024;
/// The name ssh looks a pinned host key up under (`HostKeyAlias`), so the known_hosts line does
/// not depend on how ssh spells host and port (`[h]:2222`, bare IPv6...).
pub const HOST_KEY_ALIAS: &str = "shoal-volume";

/// The credential files' keys in `credential_files` and [`files_to_write`]: named after the
/// option they come from, so the agent needs no second naming scheme.
pub mod file {
    /// sshfs private key (the `identity` option's value).
    pub const IDENTITY: &str = "identity";
    /// cephfs keyring built from the `secret` option.
    pub const SECRET: &str = "secret";
    /// sshfs known_hosts holding only the pinned `host_key` (not secret, but per volume).
    pub const HOST_KEY: &str = "host_key";
}

/// How a managed volume reaches its data; one variant per `type`, holding only checked values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backend {
    /// `device` `h1,h2:/gv0`: `h1` serves the volfile, the rest are `backup-volfile-servers`.
    Glusterfs {
        /// Volfile servers, first one first.
        servers: Vec<String>,
        /// The gluster volume's name.
        volume: String,
    },
    /// `device` `m1[:port],m2:/path`; `o=name=USER` (default `admin`), `o=fs=NAME`; the key is
    /// the credential `secret`.
    Cephfs {
        /// Monitor addresses as ceph-fuse's `-m` takes them.
        monitors: Vec<String>,
        /// Directory of the file system mounted as the root.
        path: String,
        /// cephx user, without `client.`.
        user: String,
        /// File system name when the cluster has more than one.
        fs: Option<String>,
    },
    /// `type` nfs or nfs4; `device` `host:/export`, or Docker's `:/export` with `o=addr=HOST`.
    Nfs {
        /// Server host (IPv6 in brackets).
        server: String,
        /// Exported path.
        export: String,
        /// Protocol version (`nfsvers=`), `4` for type nfs4.
        version: Option<String>,
    },
    /// `device` `[user@]host:[path]`, option `port`, credential `password` or `identity`.
    Sshfs {
        /// Login name; ssh's default (root's) when absent.
        user: Option<String>,
        /// Server host (IPv6 in brackets).
        host: String,
        /// ssh port, 22 when absent.
        port: Option<u16>,
        /// Remote directory; empty is the login's home, relative is under it.
        path: String,
        /// Which credential logs in.
        auth: SshAuth,
        /// How the server's host key is checked.
        host_key: HostKeyPolicy,
    },
    /// A directory on one node (`node`, a name or ID, pins the tasks) or on each node; `device`
    /// is the directory, absent for one the agent makes under its data directory.
    Local {
        /// The node the volume lives on, if pinned.
        node: Option<String>,
        /// Absolute host directory.
        path: Option<String>,
    },
}

impl Backend {
    /// The `type` option this backend came from, for messages and listings.
    pub fn type_name(&self) -> &'static str {
        match self {
            Backend::Glusterfs { .. } => "glusterfs",
            Backend::Cephfs { .. } => "cephfs",
            Backend::Nfs { .. } => "nfs",
            Backend::Sshfs { .. } => "sshfs",
            Backend::Local { .. } => "local",
        }
    }
}

/// The credential an sshfs volume logs in with; decides the ssh options that keep the node's own
/// keys out of the login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SshAuth {
    /// `password`, fed on stdin.
    Password,
    /// `identity`, a private key in a file.
    Identity,
}

/// How ssh checks an sshfs server's host key (see the module's header for the policy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostKeyPolicy {
    /// The node's known_hosts must know the host (the default, safe).
    Known,
    /// Trust on first use, per node (`o=StrictHostKeyChecking=accept-new`).
    AcceptNew,
    /// Only this key (`host_key`): `kind` as `ssh-ed25519`, `key` its base64.
    Pinned {
        /// Key type.
        kind: String,
        /// Base64 key blob.
        key: String,
    },
}

/// A parsed, valid volume: what the manager stores and the agent mounts; no credential values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeConfig {
    /// Where the data is.
    pub backend: Backend,
    /// Directory inside the volume the tasks see (relative), bound by the agent.
    pub subdir: Option<String>,
    /// Checked `o=` options passed to the mount program as they are.
    pub extra: Vec<String>,
}

/// The program the agent runs to mount a volume: argv without a shell, so no value is ever
/// interpreted twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountCommand {
    /// Program, looked up on `PATH`.
    pub program: String,
    /// Arguments, credential-free.
    pub args: Vec<String>,
    /// Bytes to write on its stdin (an sshfs password), then close.
    pub stdin: Option<Vec<u8>>,
}

/// Why the agent could not build a command: its own inputs were wrong (the volume was valid), so
/// these are the agent's bugs or a lost secret, reported on the task rather than guessed around.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// A credential or credential file the volume needs was not given.
    #[error("volume credential {0:?} was not given")]
    Missing(&'static str),
    /// A path the command carries is not absolute UTF-8 free of commas, whitespace and control
    /// characters (sshfs splits `-o` on commas).
    #[error(
        "{0} path {1:?} must be absolute, UTF-8, without commas, whitespace or control characters"
    )]
    BadPath(&'static str, String),
    /// A credential value does not have the form parse checked (the secret changed).
    #[error("volume credential {0:?} is malformed")]
    BadCredential(&'static str),
}

type Result<T> = std::result::Result<T, ApiError>;

/// True when shoal mounts this volume itself: driver "shoal", or driver "local" (or none) with a
/// `type` option naming a network filesystem shoal knows; other `local` volumes stay the engine's.
pub fn is_managed(driver: Option<&str>, options: &HashMap<String, String>) -> bool {
    match driver.filter(|d| !d.is_empty()).unwrap_or(LOCAL_DRIVER) {
        DRIVER => true,
        LOCAL_DRIVER => options
            .get("type")
            .is_some_and(|t| NETWORK_TYPES.contains(&t.as_str())),
        _ => false,
    }
}

/// Option keys whose values are credentials: the manager stores their values as secrets and
/// never shows them (any type, so a misplaced password is hidden too).
pub fn credential_keys(options: &HashMap<String, String>) -> Vec<String> {
    CREDENTIAL_KEYS
        .iter()
        .filter(|k| options.contains_key(**k))
        .map(|k| k.to_string())
        .collect()
}

/// Parses and validates a volume's (driver, options) once, at creation, so a bad volume is a 400
/// to the user and never a failed mount on some node later. Messages name the option.
pub fn parse(driver: Option<&str>, options: &HashMap<String, String>) -> Result<VolumeConfig> {
    parse_with(driver, options, true)
}

/// Parses a stored volume whose credential values went to the secret store: `credentials` names
/// the keys that had values (checked by [`parse`] at creation), so they count as given, unread.
pub fn parse_stored<'a>(
    driver: Option<&str>,
    options: &HashMap<String, String>,
    credentials: impl IntoIterator<Item = &'a str>,
) -> Result<VolumeConfig> {
    let mut options = options.clone();
    for k in credentials {
        options.insert(k.to_string(), String::new());
    }
    parse_with(driver, &options, false)
}

fn parse_with(
    driver: Option<&str>,
    options: &HashMap<String, String>,
    check_credentials: bool,
) -> Result<VolumeConfig> {
    let driver = driver.filter(|d| !d.is_empty()).unwrap_or(LOCAL_DRIVER);
    if driver != DRIVER && driver != LOCAL_DRIVER {
        return Err(ApiError::invalid(format!(
            "unknown volume driver {:?}: shoal mounts volumes of driver \"shoal\", and of driver \"local\" with type {}",
            clip(driver),
            NETWORK_TYPES.join(", ")
        )));
    }
    let ty = options
        .get("type")
        .map(String::as_str)
        .ok_or_else(|| missing("type"))?;
    if driver == LOCAL_DRIVER && !NETWORK_TYPES.contains(&ty) {
        return Err(ApiError::invalid(format!(
            "volume type {:?} of driver \"local\" is the engine's own: shoal mounts driver \"local\" only with type {}",
            clip(ty),
            NETWORK_TYPES.join(", ")
        )));
    }
    let keys: &[&str] = match ty {
        "glusterfs" | "nfs" | "nfs4" => &["type", "device", "o", "subdir"],
        "cephfs" => &["type", "device", "o", "subdir", "secret"],
        "sshfs" => &[
            "type", "device", "o", "subdir", "port", "password", "identity", "host_key",
        ],
        "local" => &["type", "device", "subdir", "node"],
        _ => {
            return Err(ApiError::invalid(format!(
                "unknown volume type {:?}: shoal mounts {}",
                clip(ty),
                TYPES.join(", ")
            )))
        }
    };
    let mut given: Vec<&String> = options.keys().collect();
    given.sort();
    for k in &given {
        if !keys.contains(&k.as_str()) {
            return Err(ApiError::invalid(format!(
                "volume option {:?} is not known for type {ty}",
                clip(k)
            )));
        }
    }
    for k in given {
        let v = &options[k];
        if CREDENTIAL_KEYS.contains(&k.as_str()) {
            if check_credentials {
                credential(k, v)?;
            }
        } else if v.len() > MAX_VALUE_LEN {
            return Err(bad(k, format!("longer than {MAX_VALUE_LEN} bytes")));
        } else if v.chars().any(char::is_control) {
            return Err(bad(k, format!("{:?} holds a control character", clip(v))));
        }
    }
    let subdir = options.get("subdir").map(|s| subdir(s)).transpose()?;
    let device = options.get("device").map(String::as_str);
    let extras = split_o(options.get("o").map(String::as_str).unwrap_or(""))?;
    let (backend, extra) = match ty {
        "glusterfs" => glusterfs(device, extras)?,
        "cephfs" => cephfs(device, extras, options)?,
        "nfs" | "nfs4" => nfs(ty, device, extras)?,
        "sshfs" => sshfs(device, extras, options)?,
        _ => local(device, options.get("node").map(String::as_str))?,
    };
    Ok(VolumeConfig {
        backend,
        subdir,
        extra,
    })
}

/// The files the agent writes (0600, on its tmpfs) before [`mount_command`], by key of
/// `credential_files`: built here so the format each tool reads (keyring, known_hosts) is
/// decided and tested in one place.
pub fn files_to_write(
    cfg: &VolumeConfig,
    credentials: &HashMap<String, Vec<u8>>,
) -> std::result::Result<Vec<(&'static str, Vec<u8>)>, CommandError> {
    let mut out = Vec::new();
    match &cfg.backend {
        Backend::Sshfs { auth, host_key, .. } => {
            if *auth == SshAuth::Identity {
                let mut key = credentials
                    .get(file::IDENTITY)
                    .ok_or(CommandError::Missing(file::IDENTITY))?
                    .clone();
                if key.is_empty() || key.contains(&0) {
                    return Err(CommandError::BadCredential(file::IDENTITY));
                }
                // OpenSSH refuses a key file whose last line has no newline.
                if !key.ends_with(b"\n") {
                    key.push(b'\n');
                }
                out.push((file::IDENTITY, key));
            }
            if let HostKeyPolicy::Pinned { kind, key } = host_key {
                out.push((
                    file::HOST_KEY,
                    format!("{HOST_KEY_ALIAS} {kind} {key}\n").into_bytes(),
                ));
            }
        }
        Backend::Cephfs { user, .. } => {
            let raw = credentials
                .get(file::SECRET)
                .ok_or(CommandError::Missing(file::SECRET))?;
            let key = std::str::from_utf8(raw)
                .ok()
                .map(str::trim)
                .filter(|k| is_ceph_key(k))
                .ok_or(CommandError::BadCredential(file::SECRET))?;
            out.push((
                file::SECRET,
                format!("[client.{user}]\n\tkey = {key}\n").into_bytes(),
            ));
        }
        _ => {}
    }
    Ok(out)
}

/// The command that mounts `cfg`'s root on `target`, or None for a local volume (the agent binds
/// its directory). Credentials never appear in `args`: the password goes on stdin, keys are the
/// files [`files_to_write`] made, named in `credential_files`.
pub fn mount_command(
    cfg: &VolumeConfig,
    target: &Path,
    credential_files: &HashMap<String, PathBuf>,
    credentials: &HashMap<String, Vec<u8>>,
) -> std::result::Result<Option<MountCommand>, CommandError> {
    let target = plain_path("target", target)?;
    let file = |key: &'static str| -> std::result::Result<String, CommandError> {
        let p = credential_files
            .get(key)
            .ok_or(CommandError::Missing(key))?;
        plain_path(key, p)
    };
    let mount = |ty: &str, opts: Vec<String>, device: String| {
        let mut args = vec!["-t".to_string(), ty.to_string()];
        if !opts.is_empty() {
            args.extend(["-o".to_string(), opts.join(",")]);
        }
        args.extend([device, target.clone()]);
        MountCommand {
            program: "mount".into(),
            args,
            stdin: None,
        }
    };
    let cmd = match &cfg.backend {
        Backend::Local { .. } => return Ok(None),
        Backend::Glusterfs { servers, volume } => {
            let mut opts = Vec::new();
            if servers.len() > 1 {
                opts.push(format!("backup-volfile-servers={}", servers[1..].join(":")));
            }
            opts.extend(cfg.extra.iter().cloned());
            mount("glusterfs", opts, format!("{}:/{volume}", servers[0]))
        }
        Backend::Nfs {
            server,
            export,
            version,
        } => {
            let mut opts: Vec<String> = version.iter().map(|v| format!("nfsvers={v}")).collect();
            opts.extend(cfg.extra.iter().cloned());
            mount("nfs", opts, format!("{server}:{export}"))
        }
        Backend::Cephfs {
            monitors,
            path,
            user,
            fs,
        } => {
            let mut args = vec![
                target.clone(),
                "-m".into(),
                monitors.join(","),
                "-r".into(),
                path.clone(),
                "--id".into(),
                user.clone(),
                "-k".into(),
                file(file::SECRET)?,
            ];
            if let Some(fs) = fs {
                args.extend(["--client_fs".to_string(), fs.clone()]);
            }
            if !cfg.extra.is_empty() {
                args.extend(["-o".to_string(), cfg.extra.join(",")]);
            }
            MountCommand {
                program: "ceph-fuse".into(),
                args,
                stdin: None,
            }
        }
        Backend::Sshfs {
            user,
            host,
            port,
            path,
            auth,
            host_key,
        } => {
            let set = |k: &str| cfg.extra.iter().any(|e| e.split('=').next() == Some(k));
            let mut opts: Vec<String> = [
                ("reconnect", "reconnect"),
                ("ServerAliveInterval", "ServerAliveInterval=15"),
                ("ServerAliveCountMax", "ServerAliveCountMax=3"),
                // Tasks run as any user; without it only root could enter the mount.
                ("allow_other", "allow_other"),
            ]
            .iter()
            .filter(|(k, _)| !set(k))
            .map(|(_, o)| o.to_string())
            .collect();
            match host_key {
                HostKeyPolicy::Known => opts.push("StrictHostKeyChecking=yes".into()),
                HostKeyPolicy::AcceptNew => opts.push("StrictHostKeyChecking=accept-new".into()),
                HostKeyPolicy::Pinned { .. } => opts.extend([
                    "StrictHostKeyChecking=yes".to_string(),
                    format!("UserKnownHostsFile={}", file(file::HOST_KEY)?),
                    "GlobalKnownHostsFile=/dev/null".to_string(),
                    format!("HostKeyAlias={HOST_KEY_ALIAS}"),
                ]),
            }
            let stdin = match auth {
                SshAuth::Password => {
                    let pw = credentials
                        .get("password")
                        .ok_or(CommandError::Missing("password"))?;
                    if pw.is_empty() || pw.iter().any(|b| matches!(b, b'\n' | b'\r' | 0)) {
                        return Err(CommandError::BadCredential("password"));
                    }
                    opts.extend(["password_stdin", "PubkeyAuthentication=no"].map(String::from));
                    let mut line = pw.clone();
                    line.push(b'\n');
                    Some(line)
                }
                SshAuth::Identity => {
                    opts.extend([
                        format!("IdentityFile={}", file(file::IDENTITY)?),
                        "IdentitiesOnly=yes".into(),
                        "IdentityAgent=none".into(),
                        "PasswordAuthentication=no".into(),
                        "KbdInteractiveAuthentication=no".into(),
                        "BatchMode=yes".into(),
                    ]);
                    None
                }
            };
            opts.extend(cfg.extra.iter().cloned());
            let login = match user {
                Some(u) => format!("{u}@{host}:{path}"),
                None => format!("{host}:{path}"),
            };
            let mut args = vec![login, target.clone(), "-o".into(), opts.join(",")];
            if let Some(p) = port {
                args.extend(["-p".to_string(), p.to_string()]);
            }
            MountCommand {
                program: "sshfs".into(),
                args,
                stdin,
            }
        }
    };
    Ok(Some(cmd))
}

// ---------------------------------------------------------------------------------------------
// Backends.

fn glusterfs(device: Option<&str>, extras: Vec<Extra>) -> Result<(Backend, Vec<String>)> {
    let dev = device.ok_or_else(|| missing("device"))?;
    let form = || {
        bad(
            "device",
            format!(
                "glusterfs wants SERVER[,SERVER...]:/VOLUME, got {:?}",
                clip(dev)
            ),
        )
    };
    let (hosts, volume) = dev.split_once(":/").ok_or_else(form)?;
    let servers = host_list(hosts, form)?;
    for s in &servers {
        if s.starts_with('[') {
            return Err(bad(
                "device",
                format!("glusterfs servers must be host names or IPv4 addresses (mount.glusterfs splits backup servers on \":\"), got {s:?}"),
            ));
        }
    }
    if volume.contains('/') {
        return Err(bad(
            "device",
            format!(
                "{:?} is not a gluster volume name; mount a directory of the volume with option \"subdir\"",
                clip(volume)
            ),
        ));
    }
    if !is_name(volume, 128) {
        return Err(bad(
            "device",
            format!(
                "gluster volume name {:?} must be 1-128 characters [a-zA-Z0-9_.-], starting with a letter or digit",
                clip(volume)
            ),
        ));
    }
    let extra = extras_for("glusterfs", extras, GLUSTER_O, &[])?.1;
    Ok((
        Backend::Glusterfs {
            servers,
            volume: volume.to_string(),
        },
        extra,
    ))
}

fn cephfs(
    device: Option<&str>,
    extras: Vec<Extra>,
    options: &HashMap<String, String>,
) -> Result<(Backend, Vec<String>)> {
    let dev = device.ok_or_else(|| missing("device"))?;
    // Without it ceph-fuse would read the node's own keyrings (/etc/ceph/*.keyring).
    if !options.contains_key("secret") {
        return Err(missing("secret"));
    }
    let form = || {
        bad(
            "device",
            format!(
                "cephfs wants MONITOR[:PORT][,MONITOR...]:/PATH, got {:?}",
                clip(dev)
            ),
        )
    };
    let (mons, rest) = dev.split_once(":/").ok_or_else(form)?;
    let path = format!("/{rest}");
    abs_path("device", &path)?;
    let mut monitors = Vec::new();
    for m in mons.split(',') {
        let (h, port) = split_port(m).ok_or_else(form)?;
        let h = host(h, false).ok_or_else(|| not_a_host("device", h))?;
        monitors.push(match port {
            Some(p) => format!("{h}:{}", port_number("device", p)?),
            None => h,
        });
    }
    let (consumed, extra) = extras_for(
        "cephfs",
        extras,
        CEPH_O,
        &[
            ("name", Val::Name),
            ("fs", Val::Name),
            ("mds_namespace", Val::Name),
        ],
    )?;
    let user = one_of(&consumed, &["name"])?.unwrap_or_else(|| "admin".to_string());
    let fs = one_of(&consumed, &["fs", "mds_namespace"])?;
    Ok((
        Backend::Cephfs {
            monitors,
            path,
            user,
            fs,
        },
        extra,
    ))
}

fn nfs(ty: &str, device: Option<&str>, extras: Vec<Extra>) -> Result<(Backend, Vec<String>)> {
    let dev = device.ok_or_else(|| missing("device"))?;
    let form = || {
        bad(
            "device",
            format!(
                "{ty} wants HOST:/EXPORT, or :/EXPORT with o=addr=HOST, got {:?}",
                clip(dev)
            ),
        )
    };
    let at = dev.find(":/").ok_or_else(form)?;
    let (h, export) = (&dev[..at], &dev[at + 1..]);
    abs_path("device", export)?;
    let (consumed, extra) = extras_for(
        ty,
        extras,
        NFS_O,
        &[
            ("addr", Val::Host),
            ("nfsvers", Val::OneOf(NFS_VERSIONS)),
            ("vers", Val::OneOf(NFS_VERSIONS)),
        ],
    )?;
    let addr = one_of(&consumed, &["addr"])?;
    let server = match (h, addr) {
        ("", None) => return Err(form()),
        ("", Some(a)) => a,
        (h, a) => {
            let h = host(h, false).ok_or_else(|| not_a_host("device", h))?;
            if a.is_some_and(|a| a != h) {
                return Err(bad(
                    "o",
                    format!(
                        "addr= names another server than \"device\" ({h}); give the server once"
                    ),
                ));
            }
            h
        }
    };
    let mut version = one_of(&consumed, &["nfsvers", "vers"])?;
    if ty == "nfs4" {
        match &version {
            None => version = Some("4".into()),
            Some(v) if v.starts_with('4') => {}
            Some(v) => return Err(bad("o", format!("nfsvers={v} contradicts type nfs4"))),
        }
    }
    Ok((
        Backend::Nfs {
            server,
            export: export.to_string(),
            version,
        },
        extra,
    ))
}

fn sshfs(
    device: Option<&str>,
    extras: Vec<Extra>,
    options: &HashMap<String, String>,
) -> Result<(Backend, Vec<String>)> {
    let dev = device.ok_or_else(|| missing("device"))?;
    let form = || {
        bad(
            "device",
            format!("sshfs wants [USER@]HOST:[PATH], got {:?}", clip(dev)),
        )
    };
    // The user ends at an `@` before the host; a later `@` belongs to the path.
    let (user, rest) = match dev.find('@') {
        Some(at) if !dev[..at].contains([':', '[']) => (Some(&dev[..at]), &dev[at + 1..]),
        _ => (None, dev),
    };
    if let Some(u) = user {
        if !is_name(u, 64) {
            return Err(bad(
                "device",
                format!(
                    "user {:?} must be 1-64 characters [a-zA-Z0-9_.-], starting with a letter or digit",
                    clip(u)
                ),
            ));
        }
    }
    let (h, path) = if rest.starts_with('[') {
        let end = rest.find(']').ok_or_else(form)?;
        let after = rest[end + 1..].strip_prefix(':').ok_or_else(form)?;
        (&rest[..=end], after)
    } else {
        rest.split_once(':').ok_or_else(form)?
    };
    let host = host(h, false).ok_or_else(|| not_a_host("device", h))?;
    if path.chars().any(char::is_whitespace) || path.starts_with('-') {
        return Err(bad(
            "device",
            format!(
                "path {:?} must not hold whitespace or start with \"-\"",
                clip(path)
            ),
        ));
    }
    if path.split('/').any(|p| p == "..") {
        return Err(bad(
            "device",
            format!("path {:?} must not hold \"..\"", clip(path)),
        ));
    }
    let port = options
        .get("port")
        .map(|p| port_number("port", p))
        .transpose()?;
    let auth = match (options.contains_key("password"), options.contains_key("identity")) {
        (true, false) => SshAuth::Password,
        (false, true) => SshAuth::Identity,
        (true, true) => {
            return Err(ApiError::invalid(
                "volume options \"password\" and \"identity\": give one, not both",
            ))
        }
        (false, false) => {
            return Err(ApiError::invalid(
                "missing volume option \"password\" or \"identity\": sshfs logs in with one of them, never with the node's own keys",
            ))
        }
    };
    let (consumed, extra) = extras_for(
        "sshfs",
        extras,
        SSHFS_O,
        &[("StrictHostKeyChecking", Val::OneOf(&["yes", "accept-new"]))],
    )?;
    let strict = one_of(&consumed, &["StrictHostKeyChecking"])?;
    let host_key = match (options.get("host_key"), strict.as_deref()) {
        (Some(k), None | Some("yes")) => parse_host_key(k)?,
        (Some(_), Some(_)) => return Err(bad(
            "o",
            "StrictHostKeyChecking=accept-new contradicts option \"host_key\", which pins the key",
        )),
        (None, Some("accept-new")) => HostKeyPolicy::AcceptNew,
        (None, _) => HostKeyPolicy::Known,
    };
    Ok((
        Backend::Sshfs {
            user: user.map(String::from),
            host,
            port,
            path: path.to_string(),
            auth,
            host_key,
        },
        extra,
    ))
}

fn local(device: Option<&str>, node: Option<&str>) -> Result<(Backend, Vec<String>)> {
    if let Some(d) = device {
        abs_path("device", d)?;
    }
    if let Some(n) = node {
        if !is_name(n, 253) {
            return Err(bad(
                "node",
                format!(
                    "{:?} is not a node name or ID: 1-253 characters [a-zA-Z0-9_.-], starting with a letter or digit",
                    clip(n)
                ),
            ));
        }
    }
    Ok((
        Backend::Local {
            node: node.map(String::from),
            path: device.map(String::from),
        },
        Vec::new(),
    ))
}

// ---------------------------------------------------------------------------------------------
// `o=` extras.

/// What an `o=` option's value may be.
#[derive(Clone, Copy)]
enum Val {
    /// No value (`ro`).
    Flag,
    /// Decimal digits, at most 10.
    Num,
    /// Digits with at most one `.` (gluster's timeouts in seconds).
    Dec,
    /// Octal digits, at most 4 (`umask`).
    Octal,
    /// Exactly one of these.
    OneOf(&'static [&'static str]),
    /// A name: [a-zA-Z0-9_.-], starting with a letter or digit, at most 64.
    Name,
    /// A host: DNS name, IPv4, IPv6 (bare or in brackets); stored as the tools want it.
    Host,
}

const YES_NO: &[&str] = &["yes", "no"];
const NFS_VERSIONS: &[&str] = &["3", "4", "4.0", "4.1", "4.2"];

const GLUSTER_O: &[(&str, Val)] = &[
    ("ro", Val::Flag),
    ("rw", Val::Flag),
    ("acl", Val::Flag),
    ("noatime", Val::Flag),
    ("nodev", Val::Flag),
    ("nosuid", Val::Flag),
    ("noexec", Val::Flag),
    ("_netdev", Val::Flag),
    ("auto_unmount", Val::Flag),
    (
        "log-level",
        Val::OneOf(&[
            "CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "TRACE", "NONE", "critical", "error",
            "warning", "info", "debug", "trace", "none",
        ]),
    ),
    ("transport", Val::OneOf(&["tcp", "rdma"])),
    ("direct-io-mode", Val::OneOf(&["enable", "disable"])),
    ("use-readdirp", Val::OneOf(&["yes", "no", "true", "false"])),
    ("attribute-timeout", Val::Dec),
    ("entry-timeout", Val::Dec),
    ("negative-timeout", Val::Dec),
    ("fetch-attempts", Val::Num),
    ("lru-limit", Val::Num),
    ("reader-thread-count", Val::Num),
];

const NFS_O: &[(&str, Val)] = &[
    ("ro", Val::Flag),
    ("rw", Val::Flag),
    ("soft", Val::Flag),
    ("softerr", Val::Flag),
    ("hard", Val::Flag),
    ("noatime", Val::Flag),
    ("nodiratime", Val::Flag),
    ("relatime", Val::Flag),
    ("nosuid", Val::Flag),
    ("nodev", Val::Flag),
    ("noexec", Val::Flag),
    ("lock", Val::Flag),
    ("nolock", Val::Flag),
    ("ac", Val::Flag),
    ("noac", Val::Flag),
    ("cto", Val::Flag),
    ("nocto", Val::Flag),
    ("sharecache", Val::Flag),
    ("nosharecache", Val::Flag),
    ("resvport", Val::Flag),
    ("noresvport", Val::Flag),
    ("tcp", Val::Flag),
    ("udp", Val::Flag),
    ("_netdev", Val::Flag),
    ("timeo", Val::Num),
    ("retrans", Val::Num),
    ("rsize", Val::Num),
    ("wsize", Val::Num),
    ("acregmin", Val::Num),
    ("acregmax", Val::Num),
    ("acdirmin", Val::Num),
    ("acdirmax", Val::Num),
    ("actimeo", Val::Num),
    ("port", Val::Num),
    ("mountport", Val::Num),
    ("nconnect", Val::Num),
    ("minorversion", Val::Num),
    (
        "proto",
        Val::OneOf(&["tcp", "udp", "rdma", "tcp6", "udp6", "rdma6"]),
    ),
    ("mountproto", Val::OneOf(&["tcp", "udp", "tcp6", "udp6"])),
    (
        "sec",
        Val::OneOf(&["sys", "krb5", "krb5i", "krb5p", "none"]),
    ),
    ("local_lock", Val::OneOf(&["none", "all", "flock", "posix"])),
    (
        "lookupcache",
        Val::OneOf(&["all", "none", "pos", "positive"]),
    ),
];

const CEPH_O: &[(&str, Val)] = &[
    ("ro", Val::Flag),
    ("rw", Val::Flag),
    ("nosuid", Val::Flag),
    ("nodev", Val::Flag),
    ("noexec", Val::Flag),
    ("noatime", Val::Flag),
];

const SSHFS_O: &[(&str, Val)] = &[
    ("ro", Val::Flag),
    ("reconnect", Val::Flag),
    ("allow_other", Val::Flag),
    ("default_permissions", Val::Flag),
    ("follow_symlinks", Val::Flag),
    ("transform_symlinks", Val::Flag),
    ("kernel_cache", Val::Flag),
    ("idmap", Val::OneOf(&["none", "user"])),
    ("uid", Val::Num),
    ("gid", Val::Num),
    ("umask", Val::Octal),
    ("dir_cache", Val::OneOf(YES_NO)),
    ("max_conns", Val::Num),
    ("Compression", Val::OneOf(YES_NO)),
    ("ServerAliveInterval", Val::Num),
    ("ServerAliveCountMax", Val::Num),
    ("ConnectTimeout", Val::Num),
];

/// The `o=` options shoal reads itself, as (key, normalized value).
type Consumed = Vec<(String, String)>;

/// One `o=` item: `key` or `key=value`.
struct Extra<'a> {
    raw: &'a str,
    key: &'a str,
    value: Option<&'a str>,
}

/// Splits `o` on commas; empty items (a trailing comma) are dropped. Each item is refused when it
/// could be read as something else: whitespace or control characters (argv and mtab), a leading
/// `-` (a flag of the mount program).
fn split_o(o: &str) -> Result<Vec<Extra<'_>>> {
    let mut out = Vec::new();
    for raw in o.split(',').filter(|s| !s.is_empty()) {
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(
                "o",
                format!("{:?} holds whitespace or a control character", clip(raw)),
            ));
        }
        if raw.starts_with('-') {
            return Err(bad(
                "o",
                format!("{:?} must not start with \"-\"", clip(raw)),
            ));
        }
        let (key, value) = match raw.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (raw, None),
        };
        out.push(Extra { raw, key, value });
    }
    Ok(out)
}

/// Checks each extra against the type's allowlist (see the module header for why an allowlist).
/// `consume` are the keys shoal reads itself (returned as (key, normalized value), not passed on).
fn extras_for(
    ty: &str,
    extras: Vec<Extra>,
    pass: &[(&str, Val)],
    consume: &[(&str, Val)],
) -> Result<(Consumed, Vec<String>)> {
    let mut consumed = Vec::new();
    let mut passed = Vec::new();
    for e in extras {
        if ty == "cephfs" && matches!(e.key, "secret" | "secretfile") {
            return Err(bad(
                "o",
                format!("{}= would show the key to anyone who can read the volume; give it as volume option \"secret\"", e.key),
            ));
        }
        let (val, take) = match consume.iter().find(|(k, _)| *k == e.key) {
            Some((_, v)) => (*v, true),
            None => match pass.iter().find(|(k, _)| *k == e.key) {
                Some((_, v)) => (*v, false),
                None => {
                    let known: Vec<&str> = consume.iter().chain(pass).map(|(k, _)| *k).collect();
                    return Err(bad(
                        "o",
                        format!(
                            "{:?} is not an option shoal passes to {ty} (it takes: {})",
                            clip(e.raw),
                            known.join(", ")
                        ),
                    ));
                }
            },
        };
        let value = check_value(e.key, e.value, val)
            .map_err(|want| bad("o", format!("{:?}: {} wants {want}", clip(e.raw), e.key)))?;
        if take {
            consumed.push((e.key.to_string(), value.unwrap_or_default()));
        } else {
            passed.push(e.raw.to_string());
        }
    }
    Ok((consumed, passed))
}

/// The normalized value, or what the key wants.
fn check_value(
    key: &str,
    value: Option<&str>,
    val: Val,
) -> std::result::Result<Option<String>, String> {
    let digits =
        |v: &str, n: usize| !v.is_empty() && v.len() <= n && v.bytes().all(|b| b.is_ascii_digit());
    match (val, value) {
        (Val::Flag, None) => Ok(None),
        (Val::Flag, Some(_)) => Err("no value".into()),
        (_, None) => Err(format!("a value ({key}=...)")),
        (Val::Num, Some(v)) if digits(v, 10) => Ok(Some(v.into())),
        (Val::Num, _) => Err("a number".into()),
        (Val::Dec, Some(v))
            if v.split_once('.')
                .map_or(digits(v, 10), |(a, b)| digits(a, 10) && digits(b, 10)) =>
        {
            Ok(Some(v.into()))
        }
        (Val::Dec, _) => Err("a number".into()),
        (Val::Octal, Some(v))
            if v.len() <= 4 && !v.is_empty() && v.bytes().all(|b| (b'0'..=b'7').contains(&b)) =>
        {
            Ok(Some(v.into()))
        }
        (Val::Octal, _) => Err("an octal number".into()),
        (Val::OneOf(set), Some(v)) if set.contains(&v) => Ok(Some(v.into())),
        (Val::OneOf(set), _) => Err(format!("one of {}", set.join(", "))),
        (Val::Name, Some(v)) if is_name(v, 64) => Ok(Some(v.into())),
        (Val::Name, _) => Err("a name of 1-64 characters [a-zA-Z0-9_.-]".into()),
        (Val::Host, Some(v)) => host(v, true)
            .map(Some)
            .ok_or_else(|| "a host name or IP address".into()),
    }
}

/// The value of the one consumed key among `keys`; the same option twice with two values is
/// refused rather than one silently winning.
fn one_of(consumed: &[(String, String)], keys: &[&str]) -> Result<Option<String>> {
    let mut found: Option<&(String, String)> = None;
    for c in consumed.iter().filter(|(k, _)| keys.contains(&k.as_str())) {
        if let Some(f) = found {
            if f.1 != c.1 {
                return Err(bad(
                    "o",
                    format!("{}={} and {}={} contradict each other", f.0, f.1, c.0, c.1),
                ));
            }
        }
        found = Some(c);
    }
    Ok(found.map(|f| f.1.clone()))
}

// ---------------------------------------------------------------------------------------------
// Values.

/// Credentials: bounded, and never echoed in a message (it would land in logs and the CLI).
fn credential(key: &str, v: &str) -> Result<()> {
    let len = if key == "identity" {
        MAX_CREDENTIAL_LEN
    } else {
        MAX_VALUE_LEN
    };
    if v.is_empty() || v.len() > len {
        return Err(bad(key, format!("must be 1-{len} bytes")));
    }
    match key {
        "password" if v.chars().any(|c| matches!(c, '\n' | '\r' | '\0')) => Err(bad(
            key,
            "must be one line (sshfs reads it up to the first newline)",
        )),
        "identity"
            if v.contains('\0')
                || !v.trim_start().starts_with("-----BEGIN ")
                || !v.contains("PRIVATE KEY-----") =>
        {
            Err(bad(
                key,
                "must be a private key in PEM or OpenSSH form (-----BEGIN ... PRIVATE KEY-----)",
            ))
        }
        "secret" if !is_ceph_key(v.trim()) => Err(bad(
            key,
            "must be a ceph key in base64, as \"ceph auth get-key\" prints it",
        )),
        _ => Ok(()),
    }
}

fn is_ceph_key(k: &str) -> bool {
    (8..=256).contains(&k.len())
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

/// `subdir`: a relative path inside the volume; the agent creates and binds it, so it must stay
/// inside the volume's root.
fn subdir(s: &str) -> Result<String> {
    let ok = !s.is_empty()
        && !s.starts_with('/')
        && s.split('/').all(|p| !p.is_empty() && p != "." && p != "..");
    if ok {
        Ok(s.to_string())
    } else {
        Err(bad(
            "subdir",
            format!(
                "{:?} must be a relative path such as app or app/data, without \".\", \"..\" or empty parts",
                clip(s)
            ),
        ))
    }
}

/// An absolute path without whitespace or `..` (exports, ceph paths, local directories).
fn abs_path(field: &str, p: &str) -> Result<()> {
    if !p.starts_with('/') || p.chars().any(char::is_whitespace) || p.split('/').any(|c| c == "..")
    {
        return Err(bad(
            field,
            format!(
                "path {:?} must be absolute, without whitespace or \"..\"",
                clip(p)
            ),
        ));
    }
    Ok(())
}

fn parse_host_key(k: &str) -> Result<HostKeyPolicy> {
    const KINDS: &[&str] = &[
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    let words: Vec<&str> = k.split_whitespace().collect();
    // `TYPE KEY [comment]` (a .pub file) or `HOST TYPE KEY` (ssh-keyscan).
    let at = words
        .iter()
        .position(|w| KINDS.contains(w))
        .filter(|i| *i <= 1);
    let pair = at.and_then(|i| Some((words[i], *words.get(i + 1)?)));
    match pair {
        Some((kind, key))
            if (16..=2048).contains(&key.len())
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')) =>
        {
            Ok(HostKeyPolicy::Pinned {
                kind: kind.into(),
                key: key.into(),
            })
        }
        _ => Err(bad(
            "host_key",
            format!(
                "wants the server's public key as TYPE BASE64 (its ssh_host_*_key.pub, or a line of ssh-keyscan), TYPE one of {}",
                KINDS.join(", ")
            ),
        )),
    }
}

/// `h1,h2,...`, each a host, none twice.
fn host_list(hosts: &str, form: impl Fn() -> ApiError) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for h in hosts.split(',') {
        if h.is_empty() {
            return Err(form());
        }
        let h = host(h, false).ok_or_else(|| not_a_host("device", h))?;
        if out.contains(&h) {
            return Err(bad("device", format!("lists server {h} twice")));
        }
        out.push(h);
    }
    Ok(out)
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` (ceph monitors).
fn split_port(m: &str) -> Option<(&str, Option<&str>)> {
    if m.starts_with('[') {
        let end = m.find(']')?;
        let rest = &m[end + 1..];
        match rest {
            "" => Some((m, None)),
            _ => Some((&m[..=end], Some(rest.strip_prefix(':')?))),
        }
    } else {
        match m.split_once(':') {
            Some((h, p)) => Some((h, Some(p))),
            None => Some((m, None)),
        }
    }
}

fn port_number(field: &str, p: &str) -> Result<u16> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(bad(
            field,
            format!("{:?} is not a valid port (1-65535)", clip(p)),
        )),
    }
}

/// A host as the tools take it, or None: a DNS name, an IPv4 address, an IPv6 address in
/// brackets (bare too when `bare_v6`, as `o=addr=` carries it); IPv6 comes back in brackets.
fn host(h: &str, bare_v6: bool) -> Option<String> {
    if let Some(inner) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().ok().map(|_| h.to_string());
    }
    if bare_v6 && h.contains(':') {
        return h.parse::<Ipv6Addr>().ok().map(|_| format!("[{h}]"));
    }
    if h.parse::<Ipv4Addr>().is_ok() || is_dns_name(h) {
        Some(h.to_string())
    } else {
        None
    }
}

/// RFC 1123 names (underscores let in, as /etc/hosts and compose names carry them); a last label
/// of digits only is refused, so `10.0.0.256` is a bad address, not a name.
fn is_dns_name(h: &str) -> bool {
    let labels: Vec<&str> = h.split('.').collect();
    !h.is_empty()
        && h.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && !labels
            .last()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

/// Names of users, volumes, file systems and nodes: safe in argv and in option lists.
fn is_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A path the agent gives, checked so it cannot split an sshfs `-o` list or become a flag.
fn plain_path(what: &'static str, p: &Path) -> std::result::Result<String, CommandError> {
    match p.to_str() {
        Some(s)
            if s.starts_with('/')
                && !s
                    .chars()
                    .any(|c| c == ',' || c.is_whitespace() || c.is_control()) =>
        {
            Ok(s.to_string())
        }
        _ => Err(CommandError::BadPath(
            what,
            p.to_string_lossy().into_owned(),
        )),
    }
}

fn bad(field: &str, why: impl fmt::Display) -> ApiError {
    ApiError::invalid(format!("invalid volume option {field:?}: {why}"))
}

fn missing(field: &str) -> ApiError {
    ApiError::invalid(format!("missing volume option {field:?}"))
}

fn not_a_host(field: &str, h: &str) -> ApiError {
    bad(
        field,
        format!(
            "{:?} is not a host name, IPv4 address or [IPv6] address",
            clip(h)
        ),
    )
}

/// A user's value in a message, cut short: an error must not echo a kilobyte back.
fn clip(s: &str) -> &str {
    match s.char_indices().nth(100) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
// The tables' row types are spelled out once, where they are read.
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "AQBvaBFZAAAAABAA9VHgwCg3rWn8fMaX8KL01A==";
    const ED25519: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    const PEM: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----";

    fn opts(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn cfg(backend: Backend, subdir: Option<&str>, extra: &[&str]) -> VolumeConfig {
        VolumeConfig {
            backend,
            subdir: subdir.map(String::from),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn which_volumes_shoal_mounts() {
        let cases: &[(Option<&str>, &[(&str, &str)], bool)] = &[
            (Some("shoal"), &[], true),
            (Some("shoal"), &[("type", "zfs")], true),
            (Some("local"), &[("type", "nfs")], true),
            (Some("local"), &[("type", "nfs4")], true),
            (Some("local"), &[("type", "glusterfs")], true),
            (Some("local"), &[("type", "cephfs")], true),
            (Some("local"), &[("type", "sshfs")], true),
            (None, &[("type", "nfs")], true),
            (Some(""), &[("type", "nfs")], true),
            (Some("local"), &[], false),
            (None, &[], false),
            (Some("local"), &[("type", "none"), ("o", "bind")], false),
            (Some("local"), &[("type", "tmpfs")], false),
            (Some("local"), &[("type", "local")], false),
            (Some("local"), &[("type", "NFS")], false),
            (Some("rexray"), &[("type", "nfs")], false),
            (Some("Shoal"), &[], false),
        ];
        for (driver, o, want) in cases {
            assert_eq!(is_managed(*driver, &opts(o)), *want, "{driver:?} {o:?}");
        }
    }

    #[test]
    #[rustfmt::skip]
    fn accepted_forms() {
        let gluster = |servers: &[&str], volume: &str| Backend::Glusterfs { servers: strings(servers), volume: volume.into() };
        let nfs = |server: &str, export: &str, version: Option<&str>| Backend::Nfs {
            server: server.into(), export: export.into(), version: version.map(String::from),
        };
        let ssh = |user: Option<&str>, host: &str, port: Option<u16>, path: &str, auth: SshAuth, host_key: HostKeyPolicy| {
            Backend::Sshfs { user: user.map(String::from), host: host.into(), port, path: path.into(), auth, host_key }
        };
        let ceph = |monitors: &[&str], path: &str, user: &str, fs: Option<&str>| Backend::Cephfs {
            monitors: strings(monitors), path: path.into(), user: user.into(), fs: fs.map(String::from),
        };
        let pinned = HostKeyPolicy::Pinned { kind: "ssh-ed25519".into(), key: ED25519.into() };
        let keyscan = format!("files.example ssh-ed25519 {ED25519}");
        let pubfile = format!("ssh-ed25519 {ED25519} root@files");
        let cases: Vec<(Option<&str>, Vec<(&str, &str)>, VolumeConfig)> = vec![
            // glusterfs
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "node1,node2:/gv0"), ("subdir", "app")],
             cfg(gluster(&["node1", "node2"], "gv0"), Some("app"), &[])),
            (Some("local"), vec![("type", "glusterfs"), ("device", "10.0.0.1:/gv-0_x"), ("o", "ro,log-level=ERROR,attribute-timeout=0.5,")],
             cfg(gluster(&["10.0.0.1"], "gv-0_x"), None, &["ro", "log-level=ERROR", "attribute-timeout=0.5"])),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "a.example.com,b,c_1:/gv0"), ("subdir", "a/b/c")],
             cfg(gluster(&["a.example.com", "b", "c_1"], "gv0"), Some("a/b/c"), &[])),
            // nfs: Docker's local-driver form and the host form
            (Some("local"), vec![("type", "nfs"), ("o", "addr=10.0.0.5,nfsvers=4,rw"), ("device", ":/export/pg")],
             cfg(nfs("10.0.0.5", "/export/pg", Some("4")), None, &["rw"])),
            (None, vec![("type", "nfs"), ("device", "nas.lan:/export")],
             cfg(nfs("nas.lan", "/export", None), None, &[])),
            (Some("shoal"), vec![("type", "nfs4"), ("device", "[fd00::5]:/x"), ("o", "hard,timeo=600,proto=tcp6")],
             cfg(nfs("[fd00::5]", "/x", Some("4")), None, &["hard", "timeo=600", "proto=tcp6"])),
            (Some("local"), vec![("type", "nfs"), ("o", "addr=fd00::5,vers=3,nolock"), ("device", ":/")],
             cfg(nfs("[fd00::5]", "/", Some("3")), None, &["nolock"])),
            (Some("local"), vec![("type", "nfs4"), ("o", "addr=nas,nfsvers=4.1"), ("device", "nas:/e")],
             cfg(nfs("nas", "/e", Some("4.1")), None, &[])),
            // cephfs
            (Some("shoal"), vec![("type", "cephfs"), ("device", "m1,m2:6789,[fd00::1]:3300:/vol/a"), ("o", "name=app,fs=data,ro"), ("secret", KEY)],
             cfg(ceph(&["m1", "m2:6789", "[fd00::1]:3300"], "/vol/a", "app", Some("data")), None, &["ro"])),
            (Some("local"), vec![("type", "cephfs"), ("device", "10.0.0.7:/"), ("secret", KEY)],
             cfg(ceph(&["10.0.0.7"], "/", "admin", None), None, &[])),
            // sshfs
            (Some("shoal"), vec![("type", "sshfs"), ("device", "alice@files.example:/srv/share"), ("password", "s3cret pw"), ("port", "2222")],
             cfg(ssh(Some("alice"), "files.example", Some(2222), "/srv/share", SshAuth::Password, HostKeyPolicy::Known), None, &[])),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "files:"), ("identity", PEM), ("o", "StrictHostKeyChecking=accept-new,ro,idmap=user")],
             cfg(ssh(None, "files", None, "", SshAuth::Identity, HostKeyPolicy::AcceptNew), None, &["ro", "idmap=user"])),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "bob@[fd00::9]:data/x@y"), ("identity", PEM), ("host_key", &keyscan)],
             cfg(ssh(Some("bob"), "[fd00::9]", None, "data/x@y", SshAuth::Identity, pinned.clone()), None, &[])),
            (Some("local"), vec![("type", "sshfs"), ("device", "h:/d"), ("password", "x"), ("host_key", &pubfile), ("o", "StrictHostKeyChecking=yes")],
             cfg(ssh(None, "h", None, "/d", SshAuth::Password, pinned.clone()), None, &[])),
            // local
            (Some("shoal"), vec![("type", "local"), ("node", "worker-1"), ("device", "/srv/data")],
             cfg(Backend::Local { node: Some("worker-1".into()), path: Some("/srv/data".into()) }, None, &[])),
            (Some("shoal"), vec![("type", "local")],
             cfg(Backend::Local { node: None, path: None }, None, &[])),
        ];
        for (driver, o, want) in cases {
            let got = parse(driver, &opts(&o));
            assert_eq!(got.as_ref(), Ok(&want), "{driver:?} {o:?}");
            assert!(is_managed(driver, &opts(&o)), "{o:?}");
        }
    }

    #[test]
    #[rustfmt::skip]
    fn refusals_name_the_option() {
        let long = "a".repeat(MAX_VALUE_LEN + 1);
        let long_dev = format!("h:/{long}");
        let cases: Vec<(Option<&str>, Vec<(&str, &str)>, &str)> = vec![
            (Some("rexray"), vec![("type", "nfs")], "unknown volume driver \"rexray\""),
            (Some("shoal"), vec![], "missing volume option \"type\""),
            (Some("shoal"), vec![("type", "zfs")], "unknown volume type \"zfs\": shoal mounts glusterfs, cephfs, nfs, nfs4, sshfs, local"),
            (Some("local"), vec![("type", "tmpfs")], "volume type \"tmpfs\" of driver \"local\" is the engine's own"),
            (None, vec![], "missing volume option \"type\""),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "h:/v"), ("frob", "1")], "volume option \"frob\" is not known for type glusterfs"),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "h:/v"), ("password", "x")], "volume option \"password\" is not known for type glusterfs"),
            (Some("shoal"), vec![("type", "local"), ("o", "bind")], "volume option \"o\" is not known for type local"),
            (Some("shoal"), vec![("type", "glusterfs")], "missing volume option \"device\""),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "x")], "invalid volume option \"device\": glusterfs wants SERVER[,SERVER...]:/VOLUME, got \"x\""),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", ":/gv0")], "invalid volume option \"device\": glusterfs wants"),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "h1,,h2:/gv0")], "invalid volume option \"device\": glusterfs wants"),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "-oops:/gv0")], "invalid volume option \"device\": \"-oops\" is not a host name"),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "10.0.0.256:/gv0")], "\"10.0.0.256\" is not a host name"),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "h;rm:/gv0")], "\"h;rm\" is not a host name"),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "[::1]:/gv0")], "glusterfs servers must be host names or IPv4"),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "h,h:/gv0")], "lists server h twice"),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "h:/gv0/sub")], "mount a directory of the volume with option \"subdir\""),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "h:/$(id)")], "invalid volume option \"device\": gluster volume name \"$(id)\""),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", &long_dev)], "invalid volume option \"device\": longer than 1024 bytes"),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "h:/v\n")], "invalid volume option \"device\": \"h:/v\\n\" holds a control character"),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "h:/v"), ("o", "log-file=/etc/passwd")], "invalid volume option \"o\": \"log-file=/etc/passwd\" is not an option shoal passes to glusterfs"),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "h:/v"), ("o", "backup-volfile-servers=x")], "\"backup-volfile-servers=x\" is not an option"),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "h:/v"), ("o", "ro x")], "invalid volume option \"o\": \"ro x\" holds whitespace"),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "h:/v"), ("o", "-oro")], "invalid volume option \"o\": \"-oro\" must not start with \"-\""),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "h:/v"), ("o", "ro=1")], "\"ro=1\": ro wants no value"),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "h:/v"), ("o", "fetch-attempts=x")], "fetch-attempts wants a number"),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "h:/v"), ("o", "transport")], "transport wants a value (transport=...)"),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "h:/v"), ("o", "log-level=LOUD")], "log-level wants one of CRITICAL"),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "h:/v"), ("subdir", "/abs")], "invalid volume option \"subdir\": \"/abs\" must be a relative path"),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "h:/v"), ("subdir", "a/../b")], "invalid volume option \"subdir\""),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "h:/v"), ("subdir", "a//b")], "invalid volume option \"subdir\""),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "h:/v"), ("subdir", ".")], "invalid volume option \"subdir\""),
            (Some("shoal"), vec![("type", "glusterfs"), ("device", "h:/v"), ("subdir", "")], "invalid volume option \"subdir\""),
            // nfs
            (Some("local"), vec![("type", "nfs"), ("device", ":/export")], "invalid volume option \"device\": nfs wants HOST:/EXPORT, or :/EXPORT with o=addr=HOST"),
            (Some("local"), vec![("type", "nfs"), ("device", "nas:export")], "nfs wants HOST:/EXPORT"),
            (Some("local"), vec![("type", "nfs"), ("device", "nas:/a/../etc")], "invalid volume option \"device\": path \"/a/../etc\" must be absolute"),
            (Some("local"), vec![("type", "nfs"), ("device", ":/e"), ("o", "addr=bad host")], "invalid volume option \"o\": \"addr=bad host\" holds whitespace"),
            (Some("local"), vec![("type", "nfs"), ("device", ":/e"), ("o", "addr=-x")], "addr wants a host name or IP address"),
            (Some("local"), vec![("type", "nfs"), ("device", "a:/e"), ("o", "addr=b")], "invalid volume option \"o\": addr= names another server"),
            (Some("local"), vec![("type", "nfs"), ("device", "a:/e"), ("o", "nfsvers=2")], "nfsvers wants one of 3, 4"),
            (Some("local"), vec![("type", "nfs"), ("device", "a:/e"), ("o", "nfsvers=3,vers=4")], "nfsvers=3 and vers=4 contradict each other"),
            (Some("local"), vec![("type", "nfs4"), ("device", "a:/e"), ("o", "vers=3")], "nfsvers=3 contradicts type nfs4"),
            (Some("local"), vec![("type", "nfs"), ("device", "a:/e"), ("o", "sec=KRB5")], "sec wants one of sys"),
            // cephfs
            (Some("shoal"), vec![("type", "cephfs"), ("device", "m1:/")], "missing volume option \"secret\""),
            (Some("shoal"), vec![("type", "cephfs"), ("device", "m1"), ("secret", KEY)], "invalid volume option \"device\": cephfs wants MONITOR[:PORT][,MONITOR...]:/PATH, got \"m1\""),
            (Some("shoal"), vec![("type", "cephfs"), ("device", "m1:0:/"), ("secret", KEY)], "invalid volume option \"device\": \"0\" is not a valid port"),
            (Some("shoal"), vec![("type", "cephfs"), ("device", "m1:70000:/"), ("secret", KEY)], "\"70000\" is not a valid port"),
            (Some("shoal"), vec![("type", "cephfs"), ("device", "m1:/"), ("secret", "not a key!")], "invalid volume option \"secret\": must be a ceph key"),
            (Some("shoal"), vec![("type", "cephfs"), ("device", "m1:/"), ("secret", KEY), ("o", "secret=abc")], "invalid volume option \"o\": secret= would show the key"),
            (Some("shoal"), vec![("type", "cephfs"), ("device", "m1:/"), ("secret", KEY), ("o", "secretfile=/etc/ceph/k")], "secretfile= would show the key"),
            (Some("shoal"), vec![("type", "cephfs"), ("device", "m1:/"), ("secret", KEY), ("o", "name=-x")], "name wants a name"),
            // sshfs
            (Some("shoal"), vec![("type", "sshfs"), ("device", "h:/d")], "missing volume option \"password\" or \"identity\""),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "h:/d"), ("password", "a"), ("identity", PEM)], "volume options \"password\" and \"identity\": give one"),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "h"), ("password", "a")], "invalid volume option \"device\": sshfs wants [USER@]HOST:[PATH], got \"h\""),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "-oProxyCommand=x:/d"), ("password", "a")], "is not a host name"),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "-l@h:/d"), ("password", "a")], "invalid volume option \"device\": user \"-l\""),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "h:-d"), ("password", "a")], "path \"-d\" must not hold whitespace or start with \"-\""),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "h:/a/../b"), ("password", "a")], "must not hold \"..\""),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "[::1:/d"), ("password", "a")], "sshfs wants"),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "h:/d"), ("password", "a"), ("port", "0")], "invalid volume option \"port\": \"0\" is not a valid port (1-65535)"),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "h:/d"), ("password", "a"), ("port", "+22")], "invalid volume option \"port\""),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "h:/d"), ("password", "a"), ("port", "65536")], "invalid volume option \"port\""),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "h:/d"), ("password", "a\nb")], "invalid volume option \"password\": must be one line"),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "h:/d"), ("password", "")], "invalid volume option \"password\": must be 1-1024 bytes"),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "h:/d"), ("identity", "ssh-ed25519 AAAA")], "invalid volume option \"identity\": must be a private key"),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "h:/d"), ("password", "a"), ("o", "ssh_command=sh")], "invalid volume option \"o\": \"ssh_command=sh\" is not an option shoal passes to sshfs"),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "h:/d"), ("password", "a"), ("o", "ProxyCommand=nc")], "\"ProxyCommand=nc\" is not an option"),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "h:/d"), ("password", "a"), ("o", "ssh_protocol=1")], "\"ssh_protocol=1\" is not an option"),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "h:/d"), ("password", "a"), ("o", "password_stdin")], "\"password_stdin\" is not an option"),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "h:/d"), ("password", "a"), ("o", "IdentityFile=/root/.ssh/id_ed25519")], "is not an option"),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "h:/d"), ("password", "a"), ("o", "StrictHostKeyChecking=no")], "StrictHostKeyChecking wants one of yes, accept-new"),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "h:/d"), ("password", "a"), ("o", "StrictHostKeyChecking=accept-new"), ("host_key", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA")], "contradicts option \"host_key\""),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "h:/d"), ("password", "a"), ("host_key", "ssh-dss AAAAB3NzaC1kc3MAAACBAP")], "invalid volume option \"host_key\": wants the server's public key"),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "h:/d"), ("password", "a"), ("host_key", "ssh-ed25519")], "invalid volume option \"host_key\""),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "h:/d"), ("password", "a"), ("host_key", "ssh-ed25519 AAAA;rm-rf/AAAAAAAAAA")], "invalid volume option \"host_key\""),
            (Some("shoal"), vec![("type", "sshfs"), ("device", "h:/d"), ("password", "a"), ("o", "umask=999")], "umask wants an octal number"),
            // local
            (Some("shoal"), vec![("type", "local"), ("device", "srv/data")], "invalid volume option \"device\": path \"srv/data\" must be absolute"),
            (Some("shoal"), vec![("type", "local"), ("node", "-w1")], "invalid volume option \"node\": \"-w1\" is not a node name or ID"),
            (Some("shoal"), vec![("type", "local"), ("node", "")], "invalid volume option \"node\""),
        ];
        for (driver, o, want) in cases {
            let err = parse(driver, &opts(&o)).expect_err(&format!("{o:?}"));
            assert_eq!(err.status, 400, "{o:?}");
            assert!(
                err.message.contains(want),
                "{o:?}: {:?} should hold {want:?}",
                err.message
            );
        }
    }

    #[test]
    fn credentials_are_never_echoed_in_refusals() {
        let cases: &[(&str, &str, &str)] = &[
            ("password", "hunter2\nline", "sshfs"),
            ("secret", "hunter2 not base64", "cephfs"),
            ("identity", "hunter2-not-a-key", "sshfs"),
            ("password", "hunter2", "glusterfs"),
        ];
        for (key, value, ty) in cases {
            let o = opts(&[("type", ty), ("device", "h:/d"), (key, value)]);
            let err = parse(Some("shoal"), &o).unwrap_err();
            assert!(!err.message.contains("hunter2"), "{}", err.message);
        }
    }

    #[test]
    fn credential_keys_hides_every_credential_of_any_type() {
        let o = opts(&[
            ("type", "sshfs"),
            ("device", "h:/d"),
            ("password", "x"),
            ("identity", "y"),
            ("secret", "z"),
            ("host_key", "k"),
        ]);
        assert_eq!(
            credential_keys(&o),
            strings(&["password", "identity", "secret"])
        );
        assert!(credential_keys(&opts(&[("type", "nfs")])).is_empty());
    }

    fn files(pairs: &[(&str, &str)]) -> HashMap<String, PathBuf> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
            .collect()
    }

    fn creds(pairs: &[(&str, &str)]) -> HashMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    #[rustfmt::skip]
    fn mount_commands() {
        let creds_all = creds(&[
            ("password", "pw-secret"),
            ("identity", PEM),
            ("secret", KEY),
        ]);
        let pubkey = format!("ssh-ed25519 {ED25519}");
        let files_all = files(&[
            ("identity", "/run/shoal/vol/v1/identity"),
            ("secret", "/run/shoal/vol/v1/keyring"),
            ("host_key", "/run/shoal/vol/v1/known_hosts"),
        ]);
        let cases: Vec<(Vec<(&str, &str)>, &str, Vec<&str>, Option<&str>)> = vec![
            (
                vec![("type", "glusterfs"), ("device", "h1,h2,h3:/gv0"), ("o", "ro,log-level=ERROR"), ("subdir", "app")],
                "mount",
                vec!["-t", "glusterfs", "-o", "backup-volfile-servers=h2:h3,ro,log-level=ERROR", "h1:/gv0", "/mnt/v"],
                None,
            ),
            (
                vec![("type", "glusterfs"), ("device", "10.0.0.1:/gv0")],
                "mount",
                vec!["-t", "glusterfs", "10.0.0.1:/gv0", "/mnt/v"],
                None,
            ),
            (
                vec![("type", "nfs"), ("o", "addr=10.0.0.5,nfsvers=4,rw"), ("device", ":/export/pg")],
                "mount",
                vec!["-t", "nfs", "-o", "nfsvers=4,rw", "10.0.0.5:/export/pg", "/mnt/v"],
                None,
            ),
            (
                vec![("type", "nfs4"), ("device", "[fd00::5]:/x")],
                "mount",
                vec!["-t", "nfs", "-o", "nfsvers=4", "[fd00::5]:/x", "/mnt/v"],
                None,
            ),
            (
                vec![("type", "nfs"), ("device", "nas:/x")],
                "mount",
                vec!["-t", "nfs", "nas:/x", "/mnt/v"],
                None,
            ),
            (
                vec![("type", "cephfs"), ("device", "m1,m2:6789:/vol"), ("o", "name=app,mds_namespace=data,ro"), ("secret", KEY)],
                "ceph-fuse",
                vec!["/mnt/v", "-m", "m1,m2:6789", "-r", "/vol", "--id", "app", "-k", "/run/shoal/vol/v1/keyring", "--client_fs", "data", "-o", "ro"],
                None,
            ),
            (
                vec![("type", "sshfs"), ("device", "alice@files.example:/srv/share"), ("password", "pw-secret"), ("port", "2222")],
                "sshfs",
                vec![
                    "alice@files.example:/srv/share", "/mnt/v", "-o",
                    "reconnect,ServerAliveInterval=15,ServerAliveCountMax=3,allow_other,StrictHostKeyChecking=yes,password_stdin,PubkeyAuthentication=no",
                    "-p", "2222",
                ],
                Some("pw-secret\n"),
            ),
            (
                vec![("type", "sshfs"), ("device", "h:"), ("identity", PEM), ("o", "StrictHostKeyChecking=accept-new,ServerAliveInterval=60,ro")],
                "sshfs",
                vec![
                    "h:", "/mnt/v", "-o",
                    "reconnect,ServerAliveCountMax=3,allow_other,StrictHostKeyChecking=accept-new,IdentityFile=/run/shoal/vol/v1/identity,IdentitiesOnly=yes,IdentityAgent=none,PasswordAuthentication=no,KbdInteractiveAuthentication=no,BatchMode=yes,ServerAliveInterval=60,ro",
                ],
                None,
            ),
            (
                vec![("type", "sshfs"), ("device", "bob@[fd00::9]:/d"), ("password", "pw-secret"), ("host_key", &pubkey)],
                "sshfs",
                vec![
                    "bob@[fd00::9]:/d", "/mnt/v", "-o",
                    "reconnect,ServerAliveInterval=15,ServerAliveCountMax=3,allow_other,StrictHostKeyChecking=yes,UserKnownHostsFile=/run/shoal/vol/v1/known_hosts,GlobalKnownHostsFile=/dev/null,HostKeyAlias=shoal-volume,password_stdin,PubkeyAuthentication=no",
                ],
                Some("pw-secret\n"),
            ),
        ];
        for (o, program, args, stdin) in cases {
            let c = parse(Some("shoal"), &opts(&o)).unwrap();
            let cmd = mount_command(&c, Path::new("/mnt/v"), &files_all, &creds_all)
                .unwrap()
                .unwrap();
            assert_eq!(
                cmd,
                MountCommand {
                    program: program.into(),
                    args: strings(&args),
                    stdin: stdin.map(|s| s.as_bytes().to_vec()),
                },
                "{o:?}"
            );
            for secret in ["pw-secret", KEY, "b3BlbnNzaC1rZXkt"] {
                assert!(cmd.args.iter().all(|a| !a.contains(secret)), "{o:?}");
            }
        }
        let local = parse(
            Some("shoal"),
            &opts(&[("type", "local"), ("device", "/srv")]),
        )
        .unwrap();
        assert_eq!(
            mount_command(&local, Path::new("/mnt/v"), &files_all, &creds_all),
            Ok(None)
        );
    }

    #[test]
    fn command_refuses_missing_or_odd_inputs() {
        let sshfs_id = parse(
            Some("shoal"),
            &opts(&[("type", "sshfs"), ("device", "h:/d"), ("identity", PEM)]),
        )
        .unwrap();
        let sshfs_pw = parse(
            Some("shoal"),
            &opts(&[("type", "sshfs"), ("device", "h:/d"), ("password", "p")]),
        )
        .unwrap();
        let ceph = parse(
            Some("shoal"),
            &opts(&[("type", "cephfs"), ("device", "m:/"), ("secret", KEY)]),
        )
        .unwrap();
        let none = HashMap::new();
        let t = Path::new("/mnt/v");
        assert_eq!(
            mount_command(&sshfs_id, t, &files(&[]), &none),
            Err(CommandError::Missing("identity"))
        );
        assert_eq!(
            mount_command(&sshfs_pw, t, &files(&[]), &none),
            Err(CommandError::Missing("password"))
        );
        assert_eq!(
            mount_command(&sshfs_pw, t, &files(&[]), &creds(&[("password", "a\nb")])),
            Err(CommandError::BadCredential("password"))
        );
        assert_eq!(
            mount_command(&ceph, t, &files(&[]), &none),
            Err(CommandError::Missing("secret"))
        );
        assert!(matches!(
            mount_command(
                &sshfs_id,
                t,
                &files(&[("identity", "/run/a,ProxyCommand=x")]),
                &none
            ),
            Err(CommandError::BadPath("identity", _))
        ));
        assert!(matches!(
            mount_command(
                &ceph,
                Path::new("relative"),
                &files(&[("secret", "/k")]),
                &none
            ),
            Err(CommandError::BadPath("target", _))
        ));
        assert!(matches!(
            mount_command(
                &ceph,
                Path::new("/mnt/a b"),
                &files(&[("secret", "/k")]),
                &none
            ),
            Err(CommandError::BadPath("target", _))
        ));
    }

    #[test]
    fn files_the_agent_writes() {
        let pinned = parse(
            Some("shoal"),
            &opts(&[
                ("type", "sshfs"),
                ("device", "h:/d"),
                ("identity", PEM),
                ("host_key", &format!("h ssh-ed25519 {ED25519}")),
            ]),
        )
        .unwrap();
        let got = files_to_write(&pinned, &creds(&[("identity", PEM)])).unwrap();
        assert_eq!(
            got,
            vec![
                ("identity", format!("{PEM}\n").into_bytes()),
                (
                    "host_key",
                    format!("shoal-volume ssh-ed25519 {ED25519}\n").into_bytes()
                ),
            ]
        );
        let ceph = parse(
            Some("shoal"),
            &opts(&[
                ("type", "cephfs"),
                ("device", "m:/"),
                ("secret", KEY),
                ("o", "name=app"),
            ]),
        )
        .unwrap();
        assert_eq!(
            files_to_write(&ceph, &creds(&[("secret", &format!("{KEY}\n"))])).unwrap(),
            vec![(
                "secret",
                format!("[client.app]\n\tkey = {KEY}\n").into_bytes()
            )]
        );
        assert_eq!(
            files_to_write(&ceph, &creds(&[("secret", "[client.x]\nkey=1")])),
            Err(CommandError::BadCredential("secret"))
        );
        assert_eq!(
            files_to_write(&ceph, &HashMap::new()),
            Err(CommandError::Missing("secret"))
        );
        let pw = parse(
            Some("shoal"),
            &opts(&[("type", "sshfs"), ("device", "h:/d"), ("password", "p")]),
        )
        .unwrap();
        assert_eq!(files_to_write(&pw, &HashMap::new()), Ok(vec![]));
    }

    #[test]
    fn stored_volumes_parse_without_their_credential_values() {
        let given = opts(&[("type", "sshfs"), ("device", "h:/d"), ("identity", PEM)]);
        let stored = opts(&[("type", "sshfs"), ("device", "h:/d")]);
        assert_eq!(
            parse_stored(Some("shoal"), &stored, ["identity"]),
            parse(Some("shoal"), &given)
        );
        let ceph = opts(&[("type", "cephfs"), ("device", "m:/")]);
        assert!(parse_stored(Some("shoal"), &ceph, ["secret"]).is_ok());
        assert!(parse_stored(Some("shoal"), &ceph, []).is_err());
        // A credential key the type does not take is still refused.
        assert!(parse_stored(Some("shoal"), &stored, ["secret"]).is_err());
    }

    #[test]
    fn config_round_trips_through_json_without_credentials() {
        let c = parse(
            Some("shoal"),
            &opts(&[
                ("type", "sshfs"),
                ("device", "h:/d"),
                ("password", "pw-secret"),
                ("subdir", "x"),
            ]),
        )
        .unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("pw-secret"));
        assert_eq!(serde_json::from_str::<VolumeConfig>(&json).unwrap(), c);
    }

    /// The only arguments starting with `-` a command may hold: its own flags.
    const FLAGS: &[&str] = &["-t", "-o", "-p", "-m", "-r", "--id", "-k", "--client_fs"];

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-z0-9:/,.@\\[\\]=_ -]{0,40}",
            Just("h1,h2:/gv0".to_string()),
            Just("[::1]:/x".to_string()),
            Just("u@h:/p".to_string()),
            Just("addr=10.0.0.1,nfsvers=4,ro".to_string()),
            Just(format!("-{}", "a".repeat(2000))),
            Just(KEY.to_string()),
            Just(PEM.to_string()),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => proptest::sample::select(vec![
                "type", "device", "o", "subdir", "port", "password", "identity", "host_key",
                "secret", "node",
            ])
            .prop_map(String::from),
            1 => any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 2000,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn no_input_panics_and_valid_ones_mount(
            driver in proptest::option::of(prop_oneof![
                Just("shoal".to_string()), Just("local".to_string()), any::<String>()
            ]),
            ty in proptest::sample::select(vec![
                "glusterfs", "cephfs", "nfs", "nfs4", "sshfs", "local", "zfs",
            ]),
            mut o in proptest::collection::hash_map(key(), value(), 0..8),
        ) {
            o.entry("type".into()).or_insert(ty.to_string());
            if let Ok(c) = parse(driver.as_deref(), &o) {
                prop_assert!(is_managed(driver.as_deref(), &o));
                // A credential whose value is also a plain option's (the device, say) is in the
                // argv as that option, not as a leak.
                let plain: Vec<&String> = o
                    .iter()
                    .filter(|(k, _)| !CREDENTIAL_KEYS.contains(&k.as_str()))
                    .map(|(_, v)| v)
                    .collect();
                let secrets: Vec<Vec<u8>> = ["password", "identity", "secret"]
                    .iter()
                    .filter_map(|k| o.get(*k).map(|v| v.as_bytes().to_vec()))
                    .filter(|s| {
                        !plain
                            .iter()
                            .any(|p| p.as_bytes().windows(s.len()).any(|w| w == &s[..]))
                    })
                    .collect();
                let credentials: HashMap<String, Vec<u8>> = o
                    .iter()
                    .filter(|(k, _)| CREDENTIAL_KEYS.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
                    .collect();
                let f = files(&[("identity", "/f/i"), ("secret", "/f/s"), ("host_key", "/f/h")]);
                let written = files_to_write(&c, &credentials);
                prop_assert!(written.is_ok(), "{:?}", written);
                let cmd = mount_command(&c, Path::new("/mnt/v"), &f, &credentials);
                prop_assert!(cmd.is_ok(), "{:?}", cmd);
                for a in cmd.unwrap().iter().flat_map(|c| c.args.iter()) {
                    prop_assert!(!a.starts_with('-') || FLAGS.contains(&a.as_str()), "{}", a);
                    for s in secrets.iter().filter(|s| s.len() >= 8) {
                        prop_assert!(!a.as_bytes().windows(s.len()).any(|w| w == &s[..]));
                    }
                }
            }
        }
    }

    fn shaped() -> impl Strategy<Value = (String, HashMap<String, String>)> {
        let host = prop_oneof![
            "[a-z0-9_-]{1,12}(\\.[a-z0-9-]{1,8}){0,2}",
            "(25[0-5]|1?[0-9]{1,2})(\\.(25[0-5]|1?[0-9]{1,2})){3}",
            Just("[fd00::1]".to_string()),
            "-?[a-z;$() ]{1,6}",
        ];
        let path = "(/[a-zA-Z0-9_., @$-]{0,8}){0,3}";
        let o = "([a-zA-Z_-]{1,12}(=[a-z0-9.:-]{0,6})?,?){0,3}";
        (
            proptest::sample::select(vec!["glusterfs", "cephfs", "nfs", "nfs4", "sshfs", "local"]),
            proptest::collection::vec(host, 1..4),
            path,
            proptest::option::of("[a-z-]{1,8}"),
            proptest::option::of(o),
            proptest::option::of("[ -~]{1,30}"),
            any::<bool>(),
        )
            .prop_map(|(ty, hosts, path, user, o, password, identity)| {
                let device = match ty {
                    "sshfs" => match &user {
                        Some(u) => format!("{u}@{}:{path}", hosts[0]),
                        None => format!("{}:{path}", hosts[0]),
                    },
                    "local" => path.clone(),
                    "glusterfs" => format!("{}:/{}", hosts.join(","), path.replace('/', "")),
                    _ => format!(
                        "{}:{}",
                        hosts.join(","),
                        if path.is_empty() { "/" } else { &path }
                    ),
                };
                let mut m = opts(&[("type", ty), ("device", &device)]);
                if let Some(o) = o {
                    m.insert("o".into(), o);
                }
                match (ty, identity, password) {
                    ("cephfs", _, _) => {
                        m.insert("secret".into(), KEY.into());
                    }
                    ("sshfs", true, _) => {
                        m.insert("identity".into(), PEM.into());
                    }
                    ("sshfs", false, Some(p)) => {
                        m.insert("password".into(), p);
                    }
                    _ => {}
                }
                (ty.to_string(), m)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 3000,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn plausible_volumes_mount_with_only_their_own_flags((_ty, o) in shaped()) {
            if let Ok(c) = parse(Some(DRIVER), &o) {
                let credentials: HashMap<String, Vec<u8>> = o
                    .iter()
                    .filter(|(k, _)| CREDENTIAL_KEYS.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
                    .collect();
                let f = files(&[("identity", "/f/i"), ("secret", "/f/s"), ("host_key", "/f/h")]);
                prop_assert!(files_to_write(&c, &credentials).is_ok());
                let cmd = mount_command(&c, Path::new("/mnt/v"), &f, &credentials);
                prop_assert!(cmd.is_ok(), "{:?}", cmd);
                for a in cmd.unwrap().iter().flat_map(|c| c.args.iter()) {
                    prop_assert!(!a.starts_with('-') || FLAGS.contains(&a.as_str()), "{}", a);
                }
                if let Some(p) = o.get("password").filter(|p| p.len() >= 4) {
                    let cmd = mount_command(&c, Path::new("/mnt/v"), &f, &credentials).unwrap().unwrap();
                    prop_assert!(cmd.args.iter().all(|a| !a.contains(p.as_str())), "{:?}", cmd.args);
                }
            }
        }
    }
}
