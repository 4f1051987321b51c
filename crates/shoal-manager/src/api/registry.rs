//! shoal's own endpoint for the node registries (issue 22): `GET /shoal/v1/registry` lists
//! every tag with its size and the nodes holding all of its content (`shoal registry ls`).

use super::{json, AppState, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

/// `GET /shoal/v1/registry`.
pub async fn list(State(d): State<AppState>) -> Result<Response> {
    let m = d.manager().await?;
    Ok(json(StatusCode::OK, &crate::registry::list(&m.store)))
}
