//! Telling the LAN that a floating address moved here: gratuitous ARP (IPv4) and an unsolicited
//! neighbour advertisement (IPv6), so neighbours replace the old holder's MAC at once instead
//! of after their entry goes stale.
//!
//! Linux neighbours update an existing entry from these (a gratuitous ARP overrides even within
//! `locktime`); they create no entry for an address they never asked for (unless `arp_accept` /
//! `accept_untracked_na`), which is fine: whoever asks next gets this node's answer. One call
//! sends one round; the caller repeats it a few times, spaced, against loss. The IPv6
//! advertisement passes the gate's output hook: hold the address first (`gate.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::kernel::Link;
use super::FloatingError;

const ETH_P_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

/// `aa:bb:cc:dd:ee:ff`, for logs and `ip` arguments.
pub(crate) fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Sends one gratuitous ARP request and one gratuitous ARP reply (IPv4), or one unsolicited
/// neighbour advertisement to all nodes (IPv6), saying `addr` is at `link.mac`.
pub fn announce(link: &Link, addr: IpAddr) -> Result<(), FloatingError> {
    if link.mac == [0; 6] || link.mac[0] & 1 == 1 {
        return Err(FloatingError::invalid(
            &link.name,
            format!("no unicast MAC address to announce {addr} with"),
        ));
    }
    match addr {
        IpAddr::V4(a) => announce_v4(link, a),
        IpAddr::V6(a) => announce_v6(link, a),
    }
}

/// A socket that closes when dropped.
fn socket(domain: i32, ty: i32, protocol: i32, what: &str) -> Result<OwnedFd, FloatingError> {
    // SAFETY: plain socket(2); the fd is owned by the OwnedFd below.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(FloatingError::io(
            "open socket",
            what,
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An Ethernet frame carrying an ARP packet for `addr` (sender = target = `addr`), padded to
/// the 60-byte minimum.
fn arp_frame(mac: &[u8; 6], addr: Ipv4Addr, op: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&BROADCAST);
    f.extend_from_slice(mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f.push(6);
    f.push(4);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(mac);
    f.extend_from_slice(&addr.octets());
    // Target MAC: zero in a request (RFC 5227); in a reply Linux treats it as gratuitous only
    // when it equals the sender's.
    if op == ARP_REPLY {
        f.extend_from_slice(mac);
    } else {
        f.extend_from_slice(&[0; 6]);
    }
    f.extend_from_slice(&addr.octets());
    f.resize(60, 0);
    f
}

fn announce_v4(link: &Link, addr: Ipv4Addr) -> Result<(), FloatingError> {
    let what = format!("{addr} on {}", link.name);
    let proto = i32::from(ETH_P_ARP.to_be());
    let fd = socket(libc::AF_PACKET, libc::SOCK_RAW, proto, &what)?;
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ARP.to_be();
    sll.sll_ifindex = i32::try_from(link.index)
        .map_err(|_| FloatingError::invalid(&link.name, "interface index out of range"))?;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&BROADCAST);
    for (op, name) in [
        (ARP_REQUEST, "send gratuitous ARP request"),
        (ARP_REPLY, "send gratuitous ARP reply"),
    ] {
        let frame = arp_frame(&link.mac, addr, op);
        // SAFETY: frame and sll outlive the call; the lengths are theirs.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(FloatingError::io(
                name,
                &what,
                std::io::Error::last_os_error(),
            ));
        }
    }
    tracing::debug!(%addr, link = %link.name, mac = %mac_string(&link.mac), "gratuitous ARP sent");
    Ok(())
}

/// An unsolicited neighbour advertisement for `target` (ICMPv6 type 136; override set,
/// solicited and router clear; the target link-layer address option). The kernel fills the
/// checksum of a raw ICMPv6 socket.
fn na_packet(mac: &[u8; 6], target: Ipv6Addr) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.push(136); // type: neighbour advertisement
    p.push(0); // code
    p.extend_from_slice(&[0, 0]); // checksum, filled by the kernel
    p.extend_from_slice(&0x2000_0000u32.to_be_bytes()); // flags: O
    p.extend_from_slice(&target.octets());
    p.push(2); // option: target link-layer address
    p.push(1); // length in units of 8 bytes
    p.extend_from_slice(mac);
    p
}

fn set_int_opt(
    fd: &OwnedFd,
    level: i32,
    name: i32,
    value: i32,
    what: &str,
) -> Result<(), FloatingError> {
    // SAFETY: value outlives the call; the length is an int's.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(FloatingError::io(
            "set socket option for neighbour advertisement",
            what,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn sockaddr_in6(addr: Ipv6Addr, scope_id: u32) -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as u16;
    sa.sin6_addr.s6_addr = addr.octets();
    sa.sin6_scope_id = scope_id;
    sa
}

fn announce_v6(link: &Link, addr: Ipv6Addr) -> Result<(), FloatingError> {
    let what = format!("{addr} on {}", link.name);
    let fd = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6, &what)?;
    let index = i32::try_from(link.index)
        .map_err(|_| FloatingError::invalid(&link.name, "interface index out of range"))?;
    // Receivers drop neighbour discovery that crossed a router: hop limit 255.
    set_int_opt(
        &fd,
        libc::IPPROTO_IPV6,
        libc::IPV6_MULTICAST_HOPS,
        255,
        &what,
    )?;
    set_int_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 255, &what)?;
    set_int_opt(
        &fd,
        libc::IPPROTO_IPV6,
        libc::IPV6_MULTICAST_IF,
        index,
        &what,
    )?;
    set_int_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, 0, &what)?;
    // From the address itself (it must be on the link already; added without DAD it is usable
    // at once).
    let src = sockaddr_in6(addr, link.index);
    // SAFETY: src outlives the call; the length is its own.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(src).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(FloatingError::io(
            "bind neighbour advertisement to its address",
            &what,
            std::io::Error::last_os_error(),
        ));
    }
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let dst = sockaddr_in6(all_nodes, link.index);
    let packet = na_packet(&link.mac, addr);
    // SAFETY: packet and dst outlive the call; the lengths are theirs.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            std::ptr::addr_of!(dst).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(FloatingError::io(
            "send unsolicited neighbour advertisement",
            &what,
            std::io::Error::last_os_error(),
        ));
    }
    tracing::debug!(%addr, link = %link.name, mac = %mac_string(&link.mac), "unsolicited NA sent");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    use super::super::kernel::testnet::{self, Lan, Netns, MAC_A, MAC_B};
    use super::super::kernel::Addresses;
    use super::*;

    #[test]
    fn frames_are_laid_out_as_the_rfcs_say() {
        let mac = [2, 0, 0, 0, 0, 0x0b];
        let f = arp_frame(&mac, Ipv4Addr::new(10, 99, 0, 200), ARP_REQUEST);
        assert_eq!(f.len(), 60);
        assert_eq!(&f[0..6], &BROADCAST);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[10, 99, 0, 200]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[10, 99, 0, 200]);
        let r = arp_frame(&mac, Ipv4Addr::new(10, 99, 0, 200), ARP_REPLY);
        assert_eq!(&r[20..22], &[0, 2]);
        assert_eq!(&r[32..38], &mac);
        let na = na_packet(&mac, "fd00:99::200".parse().unwrap());
        assert_eq!(na.len(), 32);
        assert_eq!(na[0], 136);
        assert_eq!(na[4], 0x20);
        assert_eq!(&na[24..26], &[2, 1]);
        assert_eq!(&na[26..32], &mac);
    }

    #[test]
    fn refuses_a_link_without_mac() {
        let lo = Link {
            index: 1,
            name: "lo".into(),
            mac: [0; 6],
        };
        assert!(announce(&lo, "10.0.0.1".parse().unwrap()).is_err());
    }

    fn neigh(c: &Netns, addr: IpAddr) -> String {
        c.ip(&["neigh", "show", &addr.to_string(), "dev", "br0"])
            .trim()
            .to_string()
    }

    fn move_and_announce(lan: &Lan, addr: IpAddr, prefix: u8) {
        let (a, b, c) = (&lan.a, &lan.b, &lan.c);
        let mac_a = mac_string(&MAC_A);
        let mac_b = mac_string(&MAC_B);
        let lifetime = Duration::from_secs(30);
        a.block_on(|| async {
            let k = Addresses::connect().unwrap();
            let l = k.link_by_name("eth0").await.unwrap().unwrap();
            k.add(&l, addr, prefix, lifetime).await.unwrap();
        });
        // The client talks to the first holder: a real, REACHABLE entry.
        c.run(|| {
            let _ = TcpStream::connect_timeout(&SocketAddr::new(addr, 9), Duration::from_secs(2));
        });
        let before = neigh(c, addr);
        assert!(
            before.contains(&mac_a) && before.contains("REACHABLE"),
            "{before}"
        );
        // The address moves: gone from a, added on b and announced (at once: within ARP's
        // locktime of the client's last update, which only a gratuitous ARP overrides).
        a.block_on(|| async {
            let k = Addresses::connect().unwrap();
            let l = k.link_by_name("eth0").await.unwrap().unwrap();
            k.remove(&l, addr, prefix).await.unwrap();
        });
        b.block_on(|| async {
            let k = Addresses::connect().unwrap();
            let l = k.link_by_name("eth0").await.unwrap().unwrap();
            assert_eq!(l.mac, MAC_B);
            k.add(&l, addr, prefix, lifetime).await.unwrap();
            announce(&l, addr).unwrap();
        });
        let start = std::time::Instant::now();
        let mut after = neigh(c, addr);
        while !after.contains(&mac_b) && start.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(5));
            after = neigh(c, addr);
        }
        eprintln!(
            "{addr}: before {before:?}, after the announce {after:?} ({:?})",
            start.elapsed()
        );
        assert!(after.contains(&mac_b), "client still has {after}");
        // And the client reaches the new holder (a reset from b's port 9).
        let answered = c.run(|| {
            matches!(
                TcpStream::connect_timeout(&SocketAddr::new(addr, 9), Duration::from_secs(1)),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
            )
        });
        assert!(answered);
    }

    #[test]
    fn client_neighbour_entry_moves_to_the_new_holder_v4() {
        if !testnet::can_run("client_neighbour_entry_moves_to_the_new_holder_v4") {
            return;
        }
        let lan = Lan::create();
        move_and_announce(&lan, "10.99.0.200".parse().unwrap(), 24);
    }

    #[test]
    fn client_neighbour_entry_moves_to_the_new_holder_v6() {
        if !testnet::can_run("client_neighbour_entry_moves_to_the_new_holder_v6") {
            return;
        }
        let lan = Lan::create();
        move_and_announce(&lan, "fd00:99::200".parse().unwrap(), 64);
    }
}
