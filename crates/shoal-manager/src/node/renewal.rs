//! Certificates after the first: renewal when a certificate reaches its renewal point, and new
//! ones for a new role. The key is made here and never leaves the node.

use super::{keys, Identity, NodeError};
use shoal_api::Role;
use shoal_pki::{NodeCert, NodeKey};

/// What the managers put in a new certificate.
pub(crate) struct Issued {
    /// The role the swarm has for this node.
    pub(crate) role: Role,
    /// Its raft id, when a manager.
    pub(crate) raft_id: u64,
}

/// Asks the managers for a new certificate for this node (its role as the swarm has it), with a
/// fresh key; authenticated by the current certificate.
pub(crate) async fn renew_certificate(
    identity: &Identity,
    old: &NodeCert,
    want_role: Option<Role>,
) -> Result<(NodeCert, Issued), NodeError> {
    let tls = shoal_pki::client_config(old).map_err(NodeError::pki("TLS"))?;
    let key = NodeKey::generate().map_err(NodeError::pki("node key"))?;
    let mut last = String::from("no manager known");
    for addr in &identity.managers {
        let ch = match shoal_rpc::connect(addr, tls.clone()) {
            Ok(ch) => ch,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let r = shoal_rpc::pb::ca_client::CaClient::new(ch)
            .issue_node_certificate(shoal_rpc::pb::IssueRequest {
                csr_pem: key.csr_pem().to_string(),
                ..Default::default()
            })
            .await;
        match r {
            Ok(r) => {
                let issued = r.into_inner();
                let role: Role = match issued.role.parse() {
                    Ok(role) => role,
                    Err(e) => {
                        last = format!("{addr}: {e}");
                        continue;
                    }
                };
                // A manager with a stale copy of the state may still see the old role.
                if want_role.is_some_and(|w| w != role) {
                    last = format!("{addr} issued a {role} certificate");
                    continue;
                }
                let cert = key
                    .into_node_cert(issued.cert_pem, issued.ca_pem)
                    .map_err(NodeError::pki("node certificate"))?;
                let raft_id = issued.raft_id;
                return Ok((cert, Issued { role, raft_id }));
            }
            Err(e) => last = format!("{addr}: {}", e.message()),
        }
    }
    Err(NodeError::NoIssuer { last })
}

/// Renews this node's certificate when it reaches its renewal point (between 50% and 80% of its
/// life, as Swarm does), and swaps it into the RPC server and clients without a restart.
pub(crate) async fn renewal_loop(
    d: std::sync::Weak<crate::api::Daemon>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
        }
        let Some(d) = d.upgrade() else { return };
        let Some(kek) = d.lock.kek() else { continue };
        let (Ok(cert), Some(identity)) = (
            keys::load_cert(&d.data_dir, &kek),
            Identity::load(&d.data_dir),
        ) else {
            continue;
        };
        if !cert.needs_renewal(std::time::SystemTime::now()) {
            continue;
        }
        let _lock = d.lifecycle.lock().await;
        match renew_certificate(&identity, &cert, None).await {
            Ok((new, _)) => {
                // The KEK may have changed while the certificate was being issued (autolock).
                let kek = d.lock.kek().unwrap_or(kek);
                if let Err(e) = keys::save_cert(&d.data_dir, &kek, &new) {
                    tracing::error!(error = %e, "saving the renewed certificate");
                    continue;
                }
                if let Some(m) = d.manager.read().await.clone() {
                    if let Err(e) = m.set_cert(&new) {
                        tracing::error!(error = %e, "using the renewed certificate");
                    }
                }
                if let Some((_, s)) = d.node.read().await.clone() {
                    if let Err(e) = s.set_cert(&new) {
                        tracing::error!(error = %e, "using the renewed certificate");
                    }
                }
                tracing::info!(not_after = ?new.not_after(), "renewed this node's certificate");
            }
            Err(e) => tracing::warn!(error = %e, "certificate renewal failed; will retry"),
        }
    }
}
