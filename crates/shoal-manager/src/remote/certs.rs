//! API client certificates (`shoal client-cert`): issued by the cluster CA from a CSR the client
//! made (its key never travels), recorded in the raft store by serial, listed, and revoked by
//! name. A revocation is a write like any other, so every manager's API listener sees it (and
//! ends that certificate's open connections, `remote::serve`).

use crate::cluster::Manager;
use crate::db::{self, ClientCert};
use shoal_api::models::Swarm;
use shoal_api::{id, ApiError};
use shoal_pki::ClusterCa;
use shoal_store::{Expect, Store};
use std::time::Duration;

/// How long a client certificate is valid unless asked otherwise: Swarm's node certificate
/// default, 90 days.
pub const DEFAULT_DAYS: u64 = 90;
/// The longest validity a client certificate may be asked for (ten years; the CA's own
/// expiry caps it too).
pub const MAX_DAYS: u64 = 3650;

/// `POST /shoal/v1/client-certs`: who the certificate is for and the client's CSR.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IssueRequest {
    /// The client's name (the certificate's CN, and what the audit log names).
    #[serde(default)]
    pub name: String,
    /// The client's certificate signing request, PEM.
    #[serde(default, rename = "CSR")]
    pub csr: String,
    /// Validity in days ([`DEFAULT_DAYS`] when absent).
    #[serde(default)]
    pub days: Option<u64>,
}

/// What the client keeps: its certificate and the CA to verify managers with.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Issued {
    /// The record, as `client-cert ls` shows it.
    #[serde(flatten)]
    pub record: ClientCert,
    /// The certificate, PEM (cert.pem).
    pub certificate: String,
    /// The cluster CA, PEM (ca.pem).
    #[serde(rename = "CA")]
    pub ca: String,
}

/// The CA able to sign, from the store.
pub(crate) fn cluster_ca(store: &Store) -> Result<ClusterCa, ApiError> {
    let ca = db::get::<db::RootCa>(store, "root")
        .ok_or_else(|| ApiError::unavailable("the cluster CA is not in the store yet"))?;
    ClusterCa::from_pem_pair(&ca.obj.cert_pem, &ca.obj.key_pem)
        .map_err(|e| ApiError::internal(format!("cluster CA: {e}")))
}

fn cluster_id(store: &Store) -> Result<String, ApiError> {
    db::list::<Swarm>(store)
        .into_iter()
        .find_map(|c| c.obj.id)
        .ok_or_else(|| ApiError::unavailable("this manager has no swarm state yet"))
}

/// Issues a client certificate named `req.name` for the CSR and records it; refused (409) while
/// a certificate of that name is not revoked.
pub async fn issue(m: &Manager, req: IssueRequest) -> Result<Issued, ApiError> {
    shoal_pki::check_client_name(&req.name).map_err(|e| ApiError::invalid(format!("Name: {e}")))?;
    if req.csr.trim().is_empty() {
        return Err(ApiError::invalid(
            "CSR: a PEM certificate signing request is required",
        ));
    }
    let days = req.days.unwrap_or(DEFAULT_DAYS);
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(ApiError::invalid(format!(
            "Days: {days} is out of range; a client certificate is valid for 1 to {MAX_DAYS} days"
        )));
    }
    if let Some(live) = live(&m.store, &req.name) {
        return Err(taken(&live));
    }
    let ca = cluster_ca(&m.store)?;
    let issued = ca
        .issue_api_client(
            &req.csr,
            &req.name,
            &cluster_id(&m.store)?,
            Duration::from_secs(days * 24 * 3600),
        )
        .map_err(|e| ApiError::invalid(format!("CSR: {e}")))?;
    let record = ClientCert {
        serial: issued.serial.clone(),
        name: req.name.clone(),
        fingerprint: issued.fingerprint.clone(),
        created_at: id::now(),
        not_after: id::format_time(issued.not_after.into()),
        revoked_at: None,
    };
    // The store keeps names unique among live records: of two racing issues, one wins.
    match db::write(&m.store, vec![db::put(&record, Expect::Absent)?]).await {
        Ok(_) => {}
        Err(e) if e.status == 409 => {
            return Err(live(&m.store, &req.name).map(|c| taken(&c)).unwrap_or(e))
        }
        Err(e) => return Err(e),
    }
    Ok(Issued {
        record,
        certificate: issued.cert_pem,
        ca: ca.cert_pem().to_string(),
    })
}

/// The live (not revoked) certificate named `name`, if any.
fn live(store: &Store, name: &str) -> Option<ClientCert> {
    store
        .find_by_name(<ClientCert as db::Stored>::KIND, name)
        .and_then(|o| serde_json::from_slice(&o.data).ok())
}

fn taken(c: &ClientCert) -> ApiError {
    ApiError::conflict(format!(
        "client certificate {} already exists (serial {}, expires {}); `shoal client-cert rm {}` revokes it first",
        c.name, c.serial, c.not_after, c.name
    ))
}

/// Every certificate ever issued, revoked ones included, by name then issue time.
pub fn list(m: &Manager) -> Vec<ClientCert> {
    let mut all: Vec<ClientCert> = db::list::<ClientCert>(&m.store)
        .into_iter()
        .map(|c| c.obj)
        .collect();
    all.sort_by(|a, b| (&a.name, &a.created_at).cmp(&(&b.name, &b.created_at)));
    all
}

/// Revokes the live certificate named `name`: from this write on, every manager refuses it at
/// the handshake and ends its open connections.
pub async fn revoke(m: &Manager, name: &str) -> Result<ClientCert, ApiError> {
    let Some(o) = m.store.find_by_name(<ClientCert as db::Stored>::KIND, name) else {
        let revoked = db::list::<ClientCert>(&m.store)
            .iter()
            .any(|c| c.obj.name == name);
        return Err(ApiError::not_found(if revoked {
            format!("client certificate {name} is already revoked")
        } else {
            format!("client certificate {name} not found")
        }));
    };
    let mut cert: ClientCert = serde_json::from_slice(&o.data)
        .map_err(|e| ApiError::internal(format!("client certificate {name}: {e}")))?;
    cert.revoked_at = Some(id::now());
    db::write(&m.store, vec![db::put(&cert, Expect::Version(o.version))?]).await?;
    Ok(cert)
}

/// Whether the certificate with this serial is revoked, as this manager's store says now.
pub fn is_revoked(store: &Store, serial: &str) -> bool {
    db::get::<ClientCert>(store, serial).is_some_and(|c| c.obj.revoked_at.is_some())
}
