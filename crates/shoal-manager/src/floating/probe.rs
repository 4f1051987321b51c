//! Is an address already in use on the network? Asked before a floating address is stored: a
//! datagram to the address (UDP port 9, discard) makes this machine's kernel resolve it (ARP
//! for IPv4, neighbour solicitation for IPv6); if some host answers, the kernel's neighbour
//! table then holds its MAC. Only for an address in a subnet of one of this machine's own
//! interfaces (elsewhere the kernel would ask the router, which proves nothing).

use shoal_api::floating::NodeInterface;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// How long to wait for an answer (a LAN answers ARP in well under a millisecond).
const WAIT: Duration = Duration::from_millis(300);

/// The MAC of the host already answering for `ip`, if one does.
pub async fn answering(ip: IpAddr, local: &[NodeInterface]) -> Option<String> {
    let on_link = local
        .iter()
        .flat_map(|i| i.addresses.iter())
        .any(|a| shoal_api::floating::in_subnet(ip, a));
    if !on_link {
        return None;
    }
    tokio::task::spawn_blocking(move || probe(ip))
        .await
        .ok()
        .flatten()
}

fn probe(ip: IpAddr) -> Option<String> {
    if let Some(mac) = neighbour(ip) {
        return Some(mac);
    }
    let bind: SocketAddr = match ip {
        IpAddr::V4(_) => "0.0.0.0:0".parse().ok()?,
        IpAddr::V6(_) => "[::]:0".parse().ok()?,
    };
    let sock = UdpSocket::bind(bind).ok()?;
    let start = Instant::now();
    let _ = sock.send_to(b"shoal floating address probe", SocketAddr::new(ip, 9));
    while start.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(mac) = neighbour(ip) {
            return Some(mac);
        }
    }
    None
}

/// The neighbour table's MAC for `ip`, if the entry is resolved.
fn neighbour(ip: IpAddr) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["neigh", "show", &ip.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let words: Vec<&str> = text.split_whitespace().collect();
    let unresolved = words.iter().any(|w| *w == "FAILED" || *w == "INCOMPLETE");
    let i = words.iter().position(|w| *w == "lladdr")?;
    (!unresolved)
        .then(|| words.get(i + 1).map(|s| s.to_string()))
        .flatten()
}
