//! `shoal registry ls` (issue 22): the node registries' tags, their size and the nodes that
//! hold all of their content, through a manager's `/shoal/v1/registry`.

use crate::client;
use std::path::Path;

/// Lists every tag: repository, tag, digest, size, the nodes holding it whole.
pub async fn list(socket: &Path) -> anyhow::Result<()> {
    let all = client::call(socket, "GET", "/shoal/v1/registry", None).await?;
    let rows: Vec<[String; 5]> = all
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap_or("-").to_string();
            let nodes: Vec<&str> = t["CompleteOn"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str())
                .collect();
            let missing = t["Missing"].as_u64().unwrap_or(0);
            let nodes = match (nodes.is_empty(), missing) {
                (_, m) if m > 0 => format!("{m} blob(s) on no node"),
                (true, _) => "-".to_string(),
                (false, _) => nodes.join(","),
            };
            [
                s("Repository"),
                s("Tag"),
                s("Digest"),
                human_size(t["Size"].as_u64().unwrap_or(0)),
                nodes,
            ]
        })
        .collect();
    client::print_table(["REPOSITORY", "TAG", "DIGEST", "SIZE", "NODES"], &rows);
    Ok(())
}

/// Sizes as `docker images` prints them (decimal units).
fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.3}GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1}MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1}kB", b / 1e3)
    } else {
        format!("{bytes}B")
    }
}
