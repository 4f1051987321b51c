//! `shoal client-cert`: certificates for the Docker API over TCP (`shoal daemon --listen`).
//! `NAME --out DIR` makes a key here, sends only its CSR to the manager, and writes what
//! `DOCKER_CERT_PATH` wants (ca.pem, cert.pem, key.pem with the key 0600); `ls` lists the
//! certificates issued; `rm NAME` revokes one on every manager.

use crate::client;
use anyhow::{bail, Context};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The files `DOCKER_CERT_PATH` holds, as the docker CLI and the SDKs read them.
const FILES: [&str; 3] = ["ca.pem", "cert.pem", "key.pem"];

/// Writes `data` to a new file `path` with `mode`; never replaces an existing file.
fn write_new(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Issues a client certificate named `name` and writes ca.pem, cert.pem and key.pem in `out`.
pub async fn issue(socket: &Path, name: &str, out: &Path, days: Option<u64>) -> anyhow::Result<()> {
    shoal_pki::check_client_name(name)?;
    let paths: Vec<PathBuf> = FILES.iter().map(|f| out.join(f)).collect();
    if let Some(p) = paths.iter().find(|p| p.exists()) {
        bail!(
            "{} exists; give --out a directory without ca.pem, cert.pem and key.pem",
            p.display()
        );
    }
    if !out.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(out)
            .with_context(|| format!("creating {}", out.display()))?;
    }
    let key = shoal_pki::ClientKey::generate()?;
    // The key first: a directory we cannot write fails before anything is issued.
    write_new(&paths[2], key.key_pem().as_bytes(), 0o600)?;
    let mut body = serde_json::json!({"Name": name, "CSR": key.csr_pem()});
    if let Some(d) = days {
        body["Days"] = serde_json::json!(d);
    }
    let issued = match client::call(socket, "POST", "/shoal/v1/client-certs", Some(body)).await {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&paths[2]);
            return Err(e);
        }
    };
    let (Some(ca), Some(cert)) = (issued["CA"].as_str(), issued["Certificate"].as_str()) else {
        bail!("the manager's answer lacks the certificate or the CA");
    };
    write_new(&paths[0], ca.as_bytes(), 0o644)?;
    write_new(&paths[1], cert.as_bytes(), 0o644)?;
    println!(
        "issued client certificate {name} (serial {}, expires {}) in {}",
        issued["Serial"].as_str().unwrap_or("?"),
        client::short_time(issued["NotAfter"].as_str()),
        out.display()
    );
    println!(
        "use it with: DOCKER_HOST=tcp://<manager>:2376 DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH={}",
        out.display()
    );
    Ok(())
}

/// Lists the certificates issued: name, serial, fingerprint, expiry and whether revoked.
pub async fn list(socket: &Path) -> anyhow::Result<()> {
    let all = client::call(socket, "GET", "/shoal/v1/client-certs", None).await?;
    let rows: Vec<[String; 5]> = all
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
            let fingerprint = s("Fingerprint");
            [
                s("Name"),
                s("Serial"),
                format!("SHA256:{}", &fingerprint[..fingerprint.len().min(16)]),
                client::short_time(c["NotAfter"].as_str()),
                match c["RevokedAt"].as_str() {
                    Some(t) => format!("yes ({})", client::short_time(Some(t))),
                    None => "no".into(),
                },
            ]
        })
        .collect();
    client::print_table(
        ["NAME", "SERIAL", "FINGERPRINT", "EXPIRES", "REVOKED"],
        &rows,
    );
    Ok(())
}

/// Revokes the certificate named `name` on every manager.
pub async fn revoke(socket: &Path, name: &str) -> anyhow::Result<()> {
    let c = client::call(
        socket,
        "DELETE",
        &format!(
            "/shoal/v1/client-certs/{}",
            percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
        ),
        None,
    )
    .await?;
    println!(
        "revoked client certificate {name} (serial {}): every manager refuses it from now on and ends its open connections",
        c["Serial"].as_str().unwrap_or("?")
    );
    Ok(())
}
