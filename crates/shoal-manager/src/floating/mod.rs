//! Floating addresses (issue 20) as cluster objects: `shoal floating-ip add|ls|rm` through
//! `/shoal/v1/floating-ips` (`api/floating_ips`). An address is checked
//! (`shoal_api::floating::check`) and stored under its canonical form, so a duplicate is refused
//! whatever its spelling; `ls` shows, per address, the nodes that may hold it (healthy, meeting
//! its constraints: "no eligible node" when none does).
//!
//! `leader` runs the lease that gives each address one holder (`shoal_control::vip` decides);
//! the holder's side is the agent's `floating` room.

pub mod leader;
pub mod probe;

use crate::db;
use shoal_api::floating::{
    FloatingIpSpec, NodeInterface, StoredFloatingGrant, StoredFloatingIp, StoredNodeInterfaces,
};
use shoal_api::models::Node;
use shoal_api::{id, ApiError};
use shoal_control::ClusterState;
use shoal_store::{Expect, Store};
use std::collections::BTreeMap;

/// Adds an address; 409 if it is there already (in any spelling) or some host answers for it
/// already; 400 if a node that may hold it lacks the interface or has the address in no subnet
/// of it.
pub async fn add(store: &Store, spec: &FloatingIpSpec) -> Result<StoredFloatingIp, ApiError> {
    let obj = shoal_api::floating::check(spec, &id::now())?;
    let ip = shoal_api::floating::parse_address(&obj.address)?.addr;
    if db::get::<StoredFloatingIp>(store, &obj.address).is_none() {
        fits_the_nodes(store, &obj, ip)?;
        if let Some(mac) = probe::answering(ip, &crate::node::local::interfaces()).await {
            return Err(ApiError::conflict(format!(
                "Address: {ip} already answers on the network (MAC {mac}); choose a free address"
            )));
        }
    }
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

/// Checks `obj` against the interfaces the nodes that may hold it reported: the interface
/// exists (given, or the one carrying the node's address), the address lies in one of its
/// subnets, and it is no node's own address.
fn fits_the_nodes(
    store: &Store,
    obj: &StoredFloatingIp,
    ip: std::net::IpAddr,
) -> Result<(), ApiError> {
    let reported: BTreeMap<String, Vec<NodeInterface>> = db::list::<StoredNodeInterfaces>(store)
        .into_iter()
        .map(|v| (v.obj.node, v.obj.interfaces))
        .collect();
    for n in db::list::<Node>(store) {
        let node = &n.obj;
        let (Some(id), Some(ifaces)) = (
            node.id.as_ref(),
            node.id.as_ref().and_then(|i| reported.get(i)),
        ) else {
            continue;
        };
        let name = node
            .description
            .as_ref()
            .and_then(|d| d.hostname.clone())
            .unwrap_or_else(|| id.clone());
        for i in ifaces {
            if i.addresses
                .iter()
                .any(|a| a.split('/').next() == Some(ip.to_string().as_str()))
            {
                return Err(ApiError::invalid(format!(
                    "Address: {ip} is node {name}'s own address on {}",
                    i.name
                )));
            }
        }
        let may_hold = shoal_control::state::node_schedulable(node)
            && obj
                .constraints
                .iter()
                .all(|c| shoal_control::scheduler::constraint_met(c, node));
        if !may_hold {
            continue;
        }
        let advertise = node.status.as_ref().and_then(|s| s.addr.clone());
        let iface = match &obj.interface {
            Some(want) => match ifaces.iter().find(|i| &i.name == want) {
                Some(i) => i,
                None => {
                    let have: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
                    return Err(ApiError::invalid(format!(
                        "Interface: {want} does not exist on node {name} (it has {})",
                        have.join(", ")
                    )));
                }
            },
            None => {
                let carrying = ifaces.iter().find(|i| {
                    i.addresses.iter().any(|a| {
                        advertise
                            .as_deref()
                            .is_some_and(|adv| a.split('/').next() == Some(adv))
                    })
                });
                match carrying {
                    Some(i) => i,
                    None => continue,
                }
            }
        };
        if !iface
            .addresses
            .iter()
            .any(|a| shoal_api::floating::in_subnet(ip, a))
        {
            return Err(ApiError::invalid(format!(
                "Address: {ip} is in no subnet of {} on node {name} ({}): no client on that network could reach it there",
                iface.name,
                if iface.addresses.is_empty() { "no addresses".to_string() } else { iface.addresses.join(", ") }
            )));
        }
    }
    Ok(())
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
