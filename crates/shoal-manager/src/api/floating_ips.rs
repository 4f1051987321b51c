//! shoal's own endpoints for floating addresses (`shoal floating-ip`, issue 20), beside
//! Docker's: `GET /shoal/v1/floating-ips` lists them, `POST /shoal/v1/floating-ips` adds one
//! (`{"Address", "Interface", "Constraints"}`), `DELETE /shoal/v1/floating-ips/{address}`
//! removes one (the address URL-encoded: `10.0.0.9%2F24`). The work is in `crate::floating`.

use super::{json, parse_body, AppState, Result};
use crate::floating;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

/// `GET /shoal/v1/floating-ips`.
pub async fn list(State(d): State<AppState>) -> Result<Response> {
    let m = d.manager().await?;
    let state = crate::state::load(&m.store);
    Ok(json(
        StatusCode::OK,
        &floating::list(&m.store, &state, &m.floating.status()),
    ))
}

/// `POST /shoal/v1/floating-ips`: 201 with the stored address.
pub async fn add(State(d): State<AppState>, body: Bytes) -> Result<Response> {
    let m = d.manager().await?;
    let spec: shoal_api::floating::FloatingIpSpec = parse_body(&body)?;
    let ip = floating::add(&m.store, &spec).await?;
    tracing::info!(address = %ip.address, interface = ?ip.interface, constraints = ?ip.constraints, "floating address added");
    Ok(json(StatusCode::CREATED, &ip))
}

/// `DELETE /shoal/v1/floating-ips/{address}`.
pub async fn remove(State(d): State<AppState>, Path(address): Path<String>) -> Result<Response> {
    let m = d.manager().await?;
    let ip = floating::remove(&m.store, &address).await?;
    tracing::info!(address = %ip.address, "floating address removed");
    Ok(json(StatusCode::OK, &ip))
}
