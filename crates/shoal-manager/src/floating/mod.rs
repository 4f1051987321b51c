//! Floating addresses (issue 20) as cluster objects: `shoal floating-ip add|ls|rm` through
//! `/shoal/v1/floating-ips` (`api/floating_ips`). An address is checked
//! (`shoal_api::floating::check`) and stored under its canonical form, so a duplicate is refused
//! whatever its spelling; `ls` shows, per address, the nodes that may hold it (healthy, meeting
//! its constraints: "no eligible node" when none does).
//!
//! `leader` runs the lease that gives each address one holder (`shoal_control::vip` decides);
//! the holder's side is the agent's `floating` room.

pub mod leader;

use crate::db;
use shoal_api::floating::{FloatingIpSpec, StoredFloatingGrant, StoredFloatingIp};
use shoal_api::models::Node;
use shoal_api::{id, ApiError};
use shoal_control::ClusterState;
use shoal_store::{Expect, Store};
use std::collections::BTreeMap;

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

/// Removes an address, given in any spelling, with or without its prefix; 404 if there is none.
pub async fn remove(store: &Store, address: &str) -> Result<StoredFloatingIp, ApiError> {
    let bare: Option<std::net::IpAddr> = address.trim().parse().ok();
    let key = match bare {
        // No prefix: the one stored address with this IP (the key carries the prefix).
        Some(ip) => db::list::<StoredFloatingIp>(store)
            .into_iter()
            .map(|v| v.obj.address)
            .find(|a| shoal_api::floating::parse_address(a).is_ok_and(|c| c.addr == ip))
            .unwrap_or_else(|| address.to_string()),
        None => shoal_api::floating::parse_address(address)
            .map(|c| c.to_string())
            .unwrap_or_else(|_| address.to_string()),
    };
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

/// Every address with what `shoal floating-ip ls` shows of it: its holder and since when (the
/// recorded grant) and its lease state. `status` is the leader's view of each lease
/// (`leader::HELD` or why not); a follower has none and shows the recorded grant.
pub fn list(
    store: &Store,
    state: &ClusterState,
    status: &BTreeMap<String, String>,
) -> Vec<serde_json::Value> {
    let name_of = |id: &str| {
        state
            .nodes
            .iter()
            .find(|n| n.obj.id.as_deref() == Some(id))
            .and_then(|n| n.obj.description.as_ref()?.hostname.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let mut out: Vec<serde_json::Value> = db::list::<StoredFloatingIp>(store)
        .into_iter()
        .map(|v| {
            let eligible = eligible(state, &v.obj);
            let grant = db::get::<StoredFloatingGrant>(store, &v.obj.address);
            let seen = status.get(&v.obj.address);
            let held = grant
                .as_ref()
                .filter(|_| seen.is_none_or(|s| s == leader::HELD));
            let lease = match (seen, held) {
                (Some(s), Some(g)) if s == leader::HELD => format!("held (epoch {})", g.obj.epoch),
                (Some(s), _) => s.clone(),
                (None, Some(g)) => format!("held (epoch {})", g.obj.epoch),
                (None, None) if eligible.is_empty() => "no eligible node".to_string(),
                (None, None) => "not held".to_string(),
            };
            serde_json::json!({
                "Address": v.obj.address,
                "Interface": v.obj.interface,
                "Constraints": v.obj.constraints,
                "CreatedAt": v.obj.created_at,
                "Eligible": eligible,
                "Holder": held.map(|g| name_of(&g.obj.node)),
                "Since": held.map(|g| g.obj.since.clone()),
                "Lease": lease,
            })
        })
        .collect();
    out.sort_by(|a, b| a["Address"].as_str().cmp(&b["Address"].as_str()));
    out
}
