//! The routing mesh's return path: replies of connections that another node forwarded to a task
//! here go back through that node, which holds the connection's NAT state, so the client's
//! address reaches the task unchanged (Swarm SNATs instead and loses it, moby#25526).
//!
//! How: `nft.rs` marks such a connection with the forwarding peer's mark (known from the source
//! MAC, which is that node's bridge MAC) and copies the mark onto every reply packet. A task
//! replies through its default gateway, which may be the bridge of another network than the one
//! the request came in on (Docker picks the gateway by network name), so the reply is routed:
//! per peer, a policy rule `fwmark <mark> lookup <table>` whose table sends everything through
//! the ingress bridge to a made-up next hop (169.254.x.y, `onlink`) whose static neighbour entry
//! is the peer's bridge MAC. The VXLAN device carries the frame to that node.
//!
//! Rules, routes and neighbours change only when peers come and go: `ip -batch` is enough.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use tokio::io::AsyncWriteExt;

use super::{names, NetworkError};

/// Priority of our policy rules (before `main`, 32766).
const RULE_PRIORITY: u32 = 1789;
/// Routing tables are this plus the peer's mark.
const TABLE_BASE: u32 = 0x5300_0000;

/// What the return path is set up for: the ingress bridge and the peers (MAC -> mark).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ReturnPath {
    pub bridge: Option<String>,
    pub peers: BTreeMap<[u8; 6], u32>,
}

fn next_hop(mark: u32) -> Ipv4Addr {
    Ipv4Addr::new(169, 254, (mark >> 8) as u8, mark as u8)
}

/// Brings rules, tables and neighbours from `old` to `new`.
pub(crate) async fn apply(old: &ReturnPath, new: &ReturnPath) -> Result<(), NetworkError> {
    if old == new {
        return Ok(());
    }
    let mut script = String::new();
    // Tear down what `old` had, where it differs.
    for (mac, mark) in &old.peers {
        let same = old.bridge == new.bridge && new.peers.get(mac) == Some(mark);
        if same {
            continue;
        }
        script.push_str(&format!(
            "rule del priority {RULE_PRIORITY} fwmark {mark:#x}/{:#x} lookup {}\n",
            super::nft::PEER_MARK_MASK,
            TABLE_BASE + mark
        ));
        script.push_str(&format!("route flush table {}\n", TABLE_BASE + mark));
        if let Some(b) = &old.bridge {
            script.push_str(&format!("neigh del {} dev {b}\n", next_hop(*mark)));
        }
    }
    if let Some(b) = &new.bridge {
        for (mac, mark) in &new.peers {
            let same = old.bridge == new.bridge && old.peers.get(mac) == Some(mark);
            if same {
                continue;
            }
            let hop = next_hop(*mark);
            script.push_str(&format!(
                "neigh replace {hop} lladdr {} dev {b} nud permanent\n",
                names::mac_string(mac)
            ));
            script.push_str(&format!(
                "route replace default via {hop} dev {b} onlink table {}\n",
                TABLE_BASE + mark
            ));
            script.push_str(&format!(
                "rule add priority {RULE_PRIORITY} fwmark {mark:#x}/{:#x} lookup {}\n",
                super::nft::PEER_MARK_MASK,
                TABLE_BASE + mark
            ));
        }
    }
    run(&script).await
}

/// Removes every rule of ours and the tables they point to (cleanup, or a fresh start).
pub(crate) async fn clear() -> Result<(), NetworkError> {
    let out = tokio::process::Command::new("ip")
        .args(["-o", "rule", "show", "priority", &RULE_PRIORITY.to_string()])
        .output()
        .await
        .map_err(|e| NetworkError::io("run ip rule", "ip", e))?;
    let mut script = String::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let table = words
            .iter()
            .position(|w| *w == "lookup")
            .and_then(|i| words.get(i + 1));
        if let Some(t) = table {
            script.push_str(&format!(
                "rule del priority {RULE_PRIORITY} lookup {t}\nroute flush table {t}\n"
            ));
        }
    }
    run(&script).await
}

/// `ip -force -batch -`: goes on past lines that fail (a rule already gone), reports the rest.
async fn run(script: &str) -> Result<(), NetworkError> {
    if script.is_empty() {
        return Ok(());
    }
    tracing::debug!(script, "ip -batch -");
    let mut child = tokio::process::Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| NetworkError::io("run ip -batch", "ip", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| NetworkError::io("write to ip -batch", "ip", e))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| NetworkError::io("wait for ip -batch", "ip", e))?;
    let err = String::from_utf8_lossy(&out.stderr);
    // Deleting what is already gone is fine; anything else is reported.
    let real: Vec<&str> = err
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            !l.contains("No such") && !l.contains("Cannot find") && !l.contains("Command failed")
        })
        .collect();
    if real.is_empty() {
        Ok(())
    } else {
        Err(NetworkError::invalid("mesh return path", real.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops_are_link_local_and_distinct() {
        assert_eq!(next_hop(0x1234), Ipv4Addr::new(169, 254, 0x12, 0x34));
        assert_ne!(next_hop(1), next_hop(0x100));
    }
}
