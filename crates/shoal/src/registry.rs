//! `shoal registry ls` (issue 22): the node registries' tags, their size and the nodes that
//! hold all of their content, through a manager's `/shoal/v1/registry`.

use crate::client;
use std::path::Path;

/// Lists every tag: repository, tag, digest, size, how many copies of its content the swarm
/// holds, and on which nodes.
pub async fn list(socket: &Path) -> anyhow::Result<()> {
    let all = client::call(socket, "GET", "/shoal/v1/registry", None).await?;
    let rows: Vec<[String; 6]> = all
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap_or("-").to_string();
            let list = |k: &str| -> Vec<String> {
                t[k].as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            };
            let missing = t["Missing"].as_u64().unwrap_or(0);
            let copies = if missing > 0 {
                format!("0 ({missing} blob(s) on no node)")
            } else {
                t["Copies"].as_u64().unwrap_or(0).to_string()
            };
            let nodes = list("Nodes");
            let whole = list("CompleteOn");
            let nodes = if nodes.is_empty() {
                "-".to_string()
            } else {
                // Nodes holding all of it first, marked.
                let mut shown: Vec<String> = whole.iter().map(|n| format!("{n}*")).collect();
                shown.extend(nodes.into_iter().filter(|n| !whole.contains(n)));
                shown.join(",")
            };
            [
                s("Repository"),
                s("Tag"),
                s("Digest"),
                human_size(t["Size"].as_u64().unwrap_or(0)),
                copies,
                nodes,
            ]
        })
        .collect();
    client::print_table(
        ["REPOSITORY", "TAG", "DIGEST", "SIZE", "COPIES", "NODES"],
        &rows,
    );
    println!("(COPIES: the fewest nodes holding any one of its blobs; * a node holding all of it)");
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
