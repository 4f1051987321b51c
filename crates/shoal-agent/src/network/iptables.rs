//! Accept rules in Docker's `DOCKER-USER` chain for shoal bridges.
//!
//! With `br_netfilter`, even traffic bridged between two ports of one shoal bridge traverses
//! the iptables `FORWARD` chain, whose policy Docker sets to DROP. Our own nftables table cannot
//! overrule that (an accept in one base chain does not stop another from dropping), so the agent
//! inserts `-i <bridge> -j ACCEPT` and `-o <bridge> -j ACCEPT` into `DOCKER-USER`, the chain
//! Docker leaves to its users, tagged with a comment naming the node. The actual policy
//! (isolation, internal networks) lives in the nftables table, which can drop.

use super::NetworkError;

const CHAIN: &str = "DOCKER-USER";

async fn iptables(args: &[&str]) -> Result<std::process::Output, std::io::Error> {
    tokio::process::Command::new("iptables")
        .arg("-w")
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
}

/// Runs an iptables command that changes a rule; it failing to run or exiting non-zero is an
/// error naming `op` (what was being done) and iptables' own words.
async fn change(args: &[&str], op: impl Fn() -> String) -> Result<(), NetworkError> {
    let out = iptables(args).await.map_err(|e| NetworkError::Iptables {
        op: op(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(NetworkError::Iptables {
            op: op(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Whether Docker's `DOCKER-USER` chain exists (Docker manages iptables on this host).
pub(crate) async fn docker_user_chain_exists() -> bool {
    matches!(iptables(&["-S", CHAIN]).await, Ok(o) if o.status.success())
}

fn rule<'a>(dir: &'a str, bridge: &'a str, comment: &'a str) -> Vec<&'a str> {
    vec![
        dir,
        bridge,
        "-m",
        "comment",
        "--comment",
        comment,
        "-j",
        "ACCEPT",
    ]
}

/// Inserts the accept rules for `bridge` unless present.
pub(crate) async fn allow_bridge(bridge: &str, comment: &str) -> Result<(), NetworkError> {
    if !docker_user_chain_exists().await {
        tracing::debug!(bridge, "no DOCKER-USER chain; nothing to open");
        return Ok(());
    }
    for dir in ["-i", "-o"] {
        let spec = rule(dir, bridge, comment);
        let check: Vec<&str> = ["-C", CHAIN]
            .into_iter()
            .chain(spec.iter().copied())
            .collect();
        if matches!(iptables(&check).await, Ok(o) if o.status.success()) {
            continue;
        }
        let insert: Vec<&str> = ["-I", CHAIN]
            .into_iter()
            .chain(spec.iter().copied())
            .collect();
        change(&insert, || format!("allow bridge {bridge}")).await?;
    }
    Ok(())
}

/// Removes every `DOCKER-USER` rule carrying `comment` whose interface is `bridge` (all of them
/// when `bridge` is `None`).
pub(crate) async fn remove_rules(comment: &str, bridge: Option<&str>) -> Result<(), NetworkError> {
    let out = match iptables(&["-S", CHAIN]).await {
        Ok(o) if o.status.success() => o,
        _ => return Ok(()),
    };
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    for line in listing.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() < 3 || words[0] != "-A" || words[1] != CHAIN {
            continue;
        }
        let ours = words
            .windows(2)
            .any(|w| w[0] == "--comment" && w[1].trim_matches('"') == comment);
        let iface_matches = match bridge {
            None => true,
            Some(b) => words
                .windows(2)
                .any(|w| (w[0] == "-i" || w[0] == "-o") && w[1] == b),
        };
        if !ours || !iface_matches {
            continue;
        }
        let mut args = vec!["-D", CHAIN];
        args.extend(words[2..].iter().map(|w| w.trim_matches('"')));
        change(&args, || format!("remove rule `{line}`")).await?;
    }
    Ok(())
}
