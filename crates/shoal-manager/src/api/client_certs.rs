//! shoal's own endpoints for API client certificates (`shoal client-cert`), beside Docker's:
//! `GET /shoal/v1/client-certs` lists them, `POST /shoal/v1/client-certs` issues one for a CSR
//! (`{"Name", "CSR", "Days"}`), `DELETE /shoal/v1/client-certs/{name}` revokes it on every
//! manager. Authorized as every write is: on a manager, unlocked; the work is in
//! `remote::certs`.

use super::{json, parse_body, AppState, Result};
use crate::remote::certs;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

/// `GET /shoal/v1/client-certs`: every certificate issued, revoked ones included.
pub async fn list(State(d): State<AppState>) -> Result<Response> {
    let m = d.manager().await?;
    Ok(json(StatusCode::OK, &certs::list(&m)))
}

/// `POST /shoal/v1/client-certs`: signs the client's CSR; 201 with the certificate and the CA.
pub async fn create(State(d): State<AppState>, body: Bytes) -> Result<Response> {
    let m = d.manager().await?;
    let req: certs::IssueRequest = parse_body(&body)?;
    let issued = certs::issue(&m, req).await?;
    tracing::info!(client = %issued.record.name, serial = %issued.record.serial, not_after = %issued.record.not_after, "issued an API client certificate");
    Ok(json(StatusCode::CREATED, &issued))
}

/// `DELETE /shoal/v1/client-certs/{name}`: revokes the live certificate of that name.
pub async fn revoke(State(d): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    let m = d.manager().await?;
    let revoked = certs::revoke(&m, &name).await?;
    tracing::info!(client = %revoked.name, serial = %revoked.serial, "revoked an API client certificate");
    Ok(json(StatusCode::OK, &revoked))
}
