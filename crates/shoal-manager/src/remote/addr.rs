//! `--listen tcp://HOST[:PORT]`: where the API is served over TCP, and the one rule that cannot
//! wait for a swarm: plain TCP (no TLS, so no client certificate) only on loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Docker's port for the API over TLS.
pub const TLS_PORT: u16 = 2376;
/// Docker's port for the API over plain TCP.
pub const PLAIN_PORT: u16 = 2375;

/// One TCP address to serve the API on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr {
    /// Where to bind.
    pub addr: SocketAddr,
    /// Mutual TLS with cluster-issued client certificates (the default); false only on loopback.
    pub tls: bool,
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tcp://{}", self.addr)
    }
}

/// Why a `--listen` value was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ListenError {
    /// Not `tcp://HOST[:PORT]` with an IP address (or `localhost`) and a port number.
    #[error("--listen {given:?}: {reason}")]
    Malformed {
        /// What was given.
        given: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Plain TCP asked for on an address other hosts can reach.
    #[error("--listen {given} with --tls=false: plain TCP has no TLS and no client certificate, so anyone who can reach {addr} would control this node's Docker Engine and the swarm (root on this machine); plain TCP is allowed only on a loopback address (127.0.0.1, ::1, localhost). Serve it with mutual TLS instead (drop --tls=false) and hand out certificates with `shoal client-cert`")]
    PlainNotLoopback {
        /// What was given.
        given: String,
        /// The address it would have bound.
        addr: SocketAddr,
    },
}

/// Parses `tcp://HOST[:PORT]` (HOST an IPv4 address, `[IPv6]`, `localhost` or a host name,
/// resolved once as dockerd resolves it when it binds; the port defaults to Docker's, 2376 with
/// TLS and 2375 without) and refuses plain TCP off loopback, judged on the resolved address.
pub fn parse_listen(given: &str, tls: bool) -> Result<ListenAddr, ListenError> {
    parse_listen_with(given, tls, |host| {
        use std::net::ToSocketAddrs;
        (host, 0).to_socket_addrs().ok()?.map(|a| a.ip()).next()
    })
}

/// [`parse_listen`] with the name lookup given (tests resolve without the network).
pub fn parse_listen_with(
    given: &str,
    tls: bool,
    resolve: impl Fn(&str) -> Option<IpAddr>,
) -> Result<ListenAddr, ListenError> {
    let bad = |reason: &str| ListenError::Malformed {
        given: given.to_string(),
        reason: reason.to_string(),
    };
    let rest = given
        .strip_prefix("tcp://")
        .ok_or_else(|| bad("only tcp://HOST:PORT is served here (the unix socket is --socket)"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let default_port = if tls { TLS_PORT } else { PLAIN_PORT };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 address needs its closing ']'"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad("expected ':PORT' after the IPv6 address"))?,
            ),
        };
        (h, port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| bad(&format!("port {p:?} is not a number from 0 to 65535")))?,
    };
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else if host.is_empty() {
        return Err(bad(
            "no host: give an IP address to bind, e.g. tcp://0.0.0.0:2376",
        ));
    } else if let Ok(ip) = host.parse() {
        ip
    } else {
        let name_like = host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !name_like {
            return Err(bad(&format!(
                "{host:?} is neither an IP address nor a host name"
            )));
        }
        resolve(host).ok_or_else(|| {
            bad(&format!(
                "host name {host:?} does not resolve to an address"
            ))
        })?
    };
    let addr = SocketAddr::new(ip, port);
    if !tls && !ip.is_loopback() {
        return Err(ListenError::PlainNotLoopback {
            given: given.to_string(),
            addr,
        });
    }
    Ok(ListenAddr { addr, tls })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_as_docker_writes_them() {
        // No network in tests: one known name, every other name unknown.
        let resolve = |h: &str| (h == "api.lan").then(|| IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)));
        let parse = |s: &str, tls: bool| parse_listen_with(s, tls, resolve);
        let ok = |s: &str, tls: bool| parse(s, tls).unwrap().addr.to_string();
        assert_eq!(ok("tcp://api.lan:2400", true), "10.0.0.7:2400");
        assert_eq!(ok("tcp://0.0.0.0:2376", true), "0.0.0.0:2376");
        assert_eq!(ok("tcp://10.0.0.5", true), "10.0.0.5:2376");
        assert_eq!(ok("tcp://10.0.0.5/", true), "10.0.0.5:2376");
        assert_eq!(ok("tcp://[::]:2400", true), "[::]:2400");
        assert_eq!(ok("tcp://[::1]", false), "[::1]:2375");
        assert_eq!(ok("tcp://localhost", false), "127.0.0.1:2375");
        assert_eq!(ok("tcp://127.0.0.1:9999", false), "127.0.0.1:9999");
        for bad in [
            "0.0.0.0:2376",
            "unix:///run/x.sock",
            "tcp://",
            "tcp://:2376",
            "tcp://host.example:2376",
            "tcp://10.0.0.1:99999",
            "tcp://10.0.0.1:x",
            "tcp://[::1",
            "tcp://[::1]2376",
            "tcp://bad name:2376",
        ] {
            assert!(
                matches!(parse(bad, true), Err(ListenError::Malformed { .. })),
                "{bad}"
            );
        }
        let e = parse("tcp://host.example:2376", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not resolve"), "{e}");
        // A name is judged on its address: plain TCP on a name for a routable address is refused.
        assert!(matches!(
            parse("tcp://api.lan", false),
            Err(ListenError::PlainNotLoopback { .. })
        ));
    }

    #[test]
    fn plain_tcp_is_refused_off_loopback_and_says_why() {
        for addr in ["tcp://0.0.0.0:2375", "tcp://10.0.0.5", "tcp://[::]:2375"] {
            let e = parse_listen(addr, false).unwrap_err();
            assert!(matches!(e, ListenError::PlainNotLoopback { .. }), "{addr}");
            let msg = e.to_string();
            assert!(
                msg.contains("loopback") && msg.contains("--tls=false"),
                "{msg}"
            );
            // The same address with TLS is fine.
            assert!(parse_listen(addr, true).unwrap().tls);
        }
        assert!(!parse_listen("tcp://127.0.0.2:2375", false).unwrap().tls);
    }
}
