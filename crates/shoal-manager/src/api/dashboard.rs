//! shoal's endpoint for the dashboard's admin password (issue 21): `POST
//! /shoal/v1/dashboard/password` with `{"Password": "..."}` sets it (what `shoal dashboard
//! password` sends). Only the API's own clients reach it (the socket, or a client certificate
//! over TCP), never the dashboard. The work is in `crate::admin`.

use super::{done, parse_body, AppState, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;

/// The request body: names match in any case, as Go's `encoding/json` does.
#[derive(serde::Deserialize)]
struct PasswordBody {
    #[serde(rename = "Password")]
    password: String,
}

/// `POST /shoal/v1/dashboard/password`: 200 once the new hash is committed.
pub async fn set_password(State(d): State<AppState>, body: Bytes) -> Result<Response> {
    let m = d.manager().await?;
    let b: PasswordBody = parse_body(&body)?;
    crate::admin::set_password(&m.store, b.password).await?;
    tracing::info!("dashboard admin password set");
    Ok(done())
}
