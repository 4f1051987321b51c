//! Floating addresses (issue 20) as cluster objects: `shoal floating-ip add|ls|rm` through
//! `/shoal/v1/floating-ips` (`api/floating_ips`). An address is checked
//! (`shoal_api::floating::check`) and stored under its canonical form, so a duplicate is refused
//! whatever its spelling; `ls` shows, per address, the nodes that may hold it (healthy, meeting
//! its constraints: "no eligible node" when none does).
//!
//! Not built yet: the lease that gives each address exactly one holder, and the agent's side
//! (adding the address, announcing it, dropping it when the lease runs out). Until then no node
//! holds an address and `ls` says so.

use crate::db;
use shoal_api::floating::{FloatingIpSpec, StoredFloatingIp};
use shoal_api::models::Node;
use shoal_api::{id, ApiError};
use shoal_control::ClusterState;
use shoal_store::{Expect, Store};

/// Adds an address; 409 if it is there already (in any spelling).
pub async fn add(store: &Store, spec: &FloatingIpSpec) -> Result<StoredFloatingIp, ApiError> {
    let obj = shoal_api::floating::check(spec, &id::now())?;
    match db::write(store, vec![db::put(&obj, Expect::Absent)?]).await {
        Err(e) if e.status == 409 => Err(ApiError::conflict(format!(
            "floating address {} already exists",
            obj.address
        ))),
        Err(e) => Err(e),
        Ok(_) => Ok(obj),
    }
}

/// Removes an address, given in any spelling; 404 if there is none.
pub async fn remove(store: &Store, address: &str) -> Result<StoredFloatingIp, ApiError> {
    let key = shoal_api::floating::parse_address(address)
        .map(|c| c.to_string())
        .unwrap_or_else(|_| address.to_string());
    let cur = db::get::<StoredFloatingIp>(store, &key)
        .ok_or_else(|| ApiError::not_found(format!("no floating address {key}")))?;
    db::write(
        store,
        vec![db::delete::<StoredFloatingIp>(
            &key,
            Expect::Version(cur.version),
        )],
    )
    .await?;
    Ok(cur.obj)
}

/// The nodes that may hold `ip` now: ready, active and meeting its constraints.
pub fn eligible(state: &ClusterState, ip: &StoredFloatingIp) -> Vec<String> {
    let ok = |n: &Node| {
        shoal_control::state::node_schedulable(n)
            && ip
                .constraints
                .iter()
                .all(|c| shoal_control::scheduler::constraint_met(c, n))
    };
    state
        .nodes
        .iter()
        .filter(|n| ok(&n.obj))
        .map(|n| {
            n.obj
                .description
                .as_ref()
                .and_then(|d| d.hostname.clone())
                .or_else(|| n.obj.id.clone())
                .unwrap_or_default()
        })
        .collect()
}

/// Every address with what `shoal floating-ip ls` shows of it.
pub fn list(store: &Store, state: &ClusterState) -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = db::list::<StoredFloatingIp>(store)
        .into_iter()
        .map(|v| {
            let eligible = eligible(state, &v.obj);
            serde_json::json!({
                "Address": v.obj.address,
                "Interface": v.obj.interface,
                "Constraints": v.obj.constraints,
                "CreatedAt": v.obj.created_at,
                "Eligible": eligible,
                "Holder": null,
                "Since": null,
                "Lease": if eligible.is_empty() { "no eligible node" } else { "not held (leases are not built yet)" },
            })
        })
        .collect();
    out.sort_by(|a, b| a["Address"].as_str().cmp(&b["Address"].as_str()));
    out
}
