//! An OpenSSH server for sshfs volume tests: `/usr/sbin/sshd` run in a test namespace with a
//! config, host key and log of its own, and a throwaway local user that logs in with a password
//! and owns the directory it serves.
//!
//! Why a throwaway user and not root: password login as root needs root's password set, which
//! would change the machine's own account. The user (`shoal-t<pid>-ssh<n>`, no home made, shell
//! `/bin/sh`) is removed when the server is dropped, and users left by a test process that died
//! are removed by the next one (the pid in the name says whose it is).

use super::Netns;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Prefix of the users these servers make: `shoal-t<pid>-ssh<n>`.
const USER_PREFIX: &str = "shoal-t";

/// A running sshd serving [`Sshd::dir`] to [`Sshd::user`] with [`Sshd::password`].
pub struct Sshd {
    /// The login name.
    pub user: String,
    /// Its password (random, so a byte search for it finds nothing by chance).
    pub password: String,
    /// The directory the user owns, to mount as `user@host:dir`.
    pub dir: PathBuf,
    /// The server's public host key as `TYPE BASE64` (its `ssh_host_ed25519_key.pub`).
    pub host_key: String,
    /// A private key (OpenSSH PEM) the server accepts for [`Sshd::user`]: an sshfs volume's
    /// `identity`.
    pub client_key: String,
    /// The address it listens on (port 22).
    pub addr: String,
    /// Config, host key, log.
    root: PathBuf,
    child: Option<Child>,
}

/// `n` random bytes from the kernel, as hex.
pub fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("reading /dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes users a test process that is gone left behind.
fn sweep_stale_users() {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for name in passwd.lines().filter_map(|l| l.split(':').next()) {
        let Some(rest) = name.strip_prefix(USER_PREFIX) else {
            continue;
        };
        let Some((pid, tail)) = rest.split_once('-') else {
            continue;
        };
        if !tail.starts_with("ssh") || pid.parse::<u32>().is_err() {
            continue;
        }
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("userdel").arg(name).output();
        }
    }
}

/// Every process descended from `pid` (the server's sessions), deepest last.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // `pid (comm) state ppid ...`; comm may hold spaces, so split after its `)`.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok());
            if let Some(pp) = ppid {
                parent_of.push((p, pp));
            }
        }
    }
    let mut out = vec![];
    let mut frontier = vec![pid];
    while let Some(x) = frontier.pop() {
        for (c, _) in parent_of.iter().filter(|(_, pp)| *pp == x) {
            out.push(*c);
            frontier.push(*c);
        }
    }
    out
}

impl Sshd {
    /// Makes the user and its directory, a host key and a config, and starts sshd in `netns`
    /// listening on `addr` port 22 (password login for the user only; sftp built in). Returns
    /// once the server answers with its key there.
    pub fn start(netns: &Netns, addr: &str) -> Sshd {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        sweep_stale_users();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let user = format!("{USER_PREFIX}{}-ssh{n}", std::process::id());
        let root = std::env::temp_dir().join(&user);
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("served");
        std::fs::create_dir_all(&dir).unwrap();
        let password = format!("pw-{}", random_hex(12));
        let mut sshd = Sshd {
            user: user.clone(),
            password: password.clone(),
            dir: dir.clone(),
            host_key: String::new(),
            client_key: String::new(),
            addr: addr.to_string(),
            root: root.clone(),
            child: None,
        };
        run(
            Command::new("useradd")
                .args(["--no-create-home", "--home-dir"])
                .arg(&dir)
                .args(["--shell", "/bin/sh", &user]),
            "useradd",
        );
        {
            use std::io::Write;
            let mut c = Command::new("chpasswd")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("chpasswd");
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("{user}:{password}\n").as_bytes())
                .unwrap();
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "chpasswd: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        run(Command::new("chown").arg(&user).arg(&dir), "chown");
        let key = root.join("ssh_host_ed25519_key");
        run(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "shoal-test", "-f"])
                .arg(&key),
            "ssh-keygen",
        );
        let public = std::fs::read_to_string(root.join("ssh_host_ed25519_key.pub")).unwrap();
        sshd.host_key = public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let client = root.join("client_ed25519");
        run(
            Command::new("ssh-keygen")
                .args([
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "shoal-test-client",
                    "-f",
                ])
                .arg(&client),
            "ssh-keygen (client)",
        );
        sshd.client_key = std::fs::read_to_string(&client).unwrap();
        let authorized = root.join("authorized_keys");
        std::fs::copy(root.join("client_ed25519.pub"), &authorized).unwrap();
        let config = root.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress {addr}:22\n\
                 HostKey {key}\n\
                 PidFile {pid}\n\
                 UsePAM no\n\
                 PasswordAuthentication yes\n\
                 PermitEmptyPasswords no\n\
                 KbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\n\
                 AuthorizedKeysFile {authorized}\n\
                 PermitRootLogin no\n\
                 AllowUsers {user}\n\
                 StrictModes no\n\
                 X11Forwarding no\n\
                 AllowTcpForwarding no\n\
                 Subsystem sftp internal-sftp\n\
                 LogLevel VERBOSE\n",
                key = key.display(),
                authorized = authorized.display(),
                pid = root.join("sshd.pid").display(),
            ),
        )
        .unwrap();
        // Privilege separation wants it; a fresh container may lack it.
        let _ = std::fs::create_dir_all("/run/sshd");
        let log = std::fs::File::create(root.join("sshd.log")).unwrap();
        let child = netns
            .command("/usr/sbin/sshd")
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting sshd");
        sshd.child = Some(child);
        // Ready when it serves its key on the address (asked from inside the namespace).
        let want = sshd.host_key.clone();
        let start = std::time::Instant::now();
        loop {
            let out = netns
                .command("ssh-keyscan")
                .args(["-T", "2", "-t", "ed25519", addr])
                .output()
                .expect("ssh-keyscan");
            let last = String::from_utf8_lossy(&out.stdout).to_string();
            if last.lines().any(|l| l.ends_with(&want)) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "sshd did not serve its key on {addr}: keyscan {last:?}; log: {}",
                sshd.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        sshd
    }

    /// `user@addr:dir`, an sshfs volume's `device`.
    pub fn device(&self) -> String {
        format!("{}@{}:{}", self.user, self.addr, self.dir.display())
    }

    /// The server's log so far (`-e`: what it would send to syslog).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("sshd.log")).unwrap_or_default()
    }

    /// Stops the server and its sessions (idempotent).
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // Sessions first: they outlive the listener and keep the user busy for userdel.
        let sessions = descendants(c.id());
        let _ = c.kill();
        let _ = c.wait();
        for p in sessions {
            let _ = Command::new("kill")
                .args(["-KILL", &p.to_string()])
                .output();
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
        // userdel refuses while a process of the user lives; they die with their sessions.
        for _ in 0..50 {
            let out = Command::new("userdel").arg(&self.user).output();
            match out {
                Ok(o) if o.status.success() => break,
                // 6: no such user.
                Ok(o) if o.status.code() == Some(6) => break,
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
