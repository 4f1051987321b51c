//! `shoal floating-ip add ADDR/PREFIX [--interface NAME] [--constraint EXPR]... | ls | rm ADDR`
//! (issue 20): the swarm's floating addresses, through a manager's `/shoal/v1/floating-ips`.

use crate::client;
use std::path::Path;

/// Adds an address; the manager checks it and refuses a duplicate.
pub async fn add(
    socket: &Path,
    address: &str,
    interface: Option<&str>,
    constraints: &[String],
) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "Address": address,
        "Interface": interface,
        "Constraints": constraints,
    });
    let ip = client::call(socket, "POST", "/shoal/v1/floating-ips", Some(body)).await?;
    println!("{}", ip["Address"].as_str().unwrap_or(address));
    Ok(())
}

/// Lists the addresses: address, interface, constraints, eligible nodes, holder and lease.
pub async fn list(socket: &Path) -> anyhow::Result<()> {
    let all = client::call(socket, "GET", "/shoal/v1/floating-ips", None).await?;
    let join = |v: &serde_json::Value| {
        let items: Vec<&str> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str())
            .collect();
        if items.is_empty() {
            "-".to_string()
        } else {
            items.join(",")
        }
    };
    let rows: Vec<[String; 7]> = all
        .as_array()
        .into_iter()
        .flatten()
        .map(|ip| {
            let s = |k: &str| ip[k].as_str().unwrap_or("-").to_string();
            [
                s("Address"),
                s("Interface"),
                join(&ip["Constraints"]),
                join(&ip["Eligible"]),
                s("Holder"),
                client::short_time(ip["Since"].as_str()),
                s("Lease"),
            ]
        })
        .collect();
    client::print_table(
        [
            "ADDRESS",
            "INTERFACE",
            "CONSTRAINTS",
            "ELIGIBLE",
            "HOLDER",
            "SINCE",
            "LEASE",
        ],
        &rows,
    );
    Ok(())
}

/// Removes an address.
pub async fn remove(socket: &Path, address: &str) -> anyhow::Result<()> {
    let ip = client::call(
        socket,
        "DELETE",
        &format!(
            "/shoal/v1/floating-ips/{}",
            percent_encoding::utf8_percent_encode(address, percent_encoding::NON_ALPHANUMERIC)
        ),
        None,
    )
    .await?;
    println!("{}", ip["Address"].as_str().unwrap_or(address));
    Ok(())
}
