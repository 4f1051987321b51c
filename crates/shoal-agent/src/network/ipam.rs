//! The plugin's `IpamDriver` side. Docker's default IPAM keeps one address space per engine and
//! refuses a second network whose subnet overlaps an existing one; several shoal nodes sharing
//! one Docker Engine each create an engine network per shoal network, all with the same subnet.
//! With the plugin as the networks' IPAM driver Docker does no overlap check, and the plugin
//! hands out exactly the addresses it is asked for: shoal's allocator already chose them (the
//! executor passes them as `--ip`), and the gateway comes from the network's IPAM config.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// IPAM option (`IPAM.Options`) carrying the shoal network ID; makes pool IDs per network.
pub(crate) const OPT_IPAM_NETWORK: &str = "com.shoal.network.id";
/// IPAM option carrying the gateway, in case Docker asks for one without naming it.
pub(crate) const OPT_IPAM_GATEWAY: &str = "com.shoal.gateway";
/// Key of `RequestAddress` options saying what the address is for.
const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
/// Its value when Docker asks for a network's gateway.
const GATEWAY_TYPE: &str = "com.docker.network.gateway";
/// Separates the CIDR from the network in a pool ID (a CIDR never contains it).
const POOL_ID_SEP: char = '@';

/// Why an IPAM request was refused; each names the pool or address concerned.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IpamError {
    /// Shoal networks always carry their subnet; there is no pool to choose from.
    #[error("address space {space:?}: no RequestedPool given; shoal networks are created with an explicit subnet")]
    NoPool { space: String },
    /// The pool is not an IPv4 CIDR.
    #[error("pool {pool:?} is not an IPv4 CIDR: {reason}")]
    BadPool { pool: String, reason: String },
    /// Shoal networks are IPv4 only.
    #[error("pool {pool:?}: IPv6 pools are not supported by shoal")]
    V6 { pool: String },
    /// The pool ID was not made by this plugin.
    #[error("pool {pool_id:?} is unknown to this plugin")]
    UnknownPool { pool_id: String },
    /// The address is not an IPv4 address.
    #[error("pool {pool_id}: {address:?} is not an IPv4 address")]
    BadAddress { pool_id: String, address: String },
    /// The address lies outside the pool.
    #[error("pool {pool_id}: {address} is outside {subnet}")]
    OutsidePool {
        pool_id: String,
        address: Ipv4Addr,
        subnet: Ipv4Net,
    },
    /// Docker asked for any address; shoal's allocator chooses them.
    #[error("pool {pool_id}: no address given; shoal assigns addresses explicitly (the container needs --ip from shoal's allocator)")]
    NoAddress { pool_id: String },
}

/// One pool as Docker requested it for one network.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RequestedPool {
    subnet: Ipv4Net,
    gateway: Option<Ipv4Addr>,
    /// Docker asks for a pool once per network; identical requests share the pool ID.
    refs: usize,
}

/// The pools Docker holds from this plugin.
#[derive(Debug, Default)]
pub(crate) struct Pools {
    pools: HashMap<String, RequestedPool>,
}

/// The subnet a pool ID stands for: its prefix up to [`POOL_ID_SEP`]. Lets the plugin serve a
/// pool that Docker requested before the agent restarted.
fn subnet_of(pool_id: &str) -> Option<Ipv4Net> {
    pool_id.split(POOL_ID_SEP).next()?.parse().ok()
}

impl Pools {
    /// `RequestPool`: registers `pool` and returns (pool ID, canonical CIDR). The ID is the CIDR
    /// plus the shoal network from the options, so identical requests get the same ID and two
    /// networks with one subnet get different ones.
    pub fn request_pool(
        &mut self,
        space: &str,
        pool: &str,
        options: &HashMap<String, String>,
        v6: bool,
    ) -> Result<(String, Ipv4Net), IpamError> {
        if pool.is_empty() {
            return Err(IpamError::NoPool {
                space: space.to_string(),
            });
        }
        if v6 {
            return Err(IpamError::V6 {
                pool: pool.to_string(),
            });
        }
        let subnet: Ipv4Net = pool
            .parse::<Ipv4Net>()
            .map_err(|e| IpamError::BadPool {
                pool: pool.to_string(),
                reason: e.to_string(),
            })?
            .trunc();
        let network = options.get(OPT_IPAM_NETWORK).map_or("", String::as_str);
        let gateway = options
            .get(OPT_IPAM_GATEWAY)
            .and_then(|g| g.parse::<Ipv4Addr>().ok())
            .filter(|g| subnet.contains(g));
        let id = format!("{subnet}{POOL_ID_SEP}{network}");
        let entry = self.pools.entry(id.clone()).or_insert(RequestedPool {
            subnet,
            gateway,
            refs: 0,
        });
        entry.refs += 1;
        if gateway.is_some() {
            entry.gateway = gateway;
        }
        Ok((id, subnet))
    }

    /// `ReleasePool`: drops one reference; unknown pools are fine (the agent restarted).
    pub fn release_pool(&mut self, pool_id: &str) {
        if let Some(p) = self.pools.get_mut(pool_id) {
            p.refs = p.refs.saturating_sub(1);
            if p.refs == 0 {
                self.pools.remove(pool_id);
            }
        }
    }

    /// `RequestAddress`: the address asked for, as `<ip>/<prefix>` of the pool; with no
    /// address, the pool's gateway when Docker asks for the gateway, else a refusal.
    pub fn request_address(
        &self,
        pool_id: &str,
        address: &str,
        options: &HashMap<String, String>,
    ) -> Result<String, IpamError> {
        let known = self.pools.get(pool_id);
        let subnet = known
            .map(|p| p.subnet)
            .or_else(|| subnet_of(pool_id))
            .ok_or_else(|| IpamError::UnknownPool {
                pool_id: pool_id.to_string(),
            })?;
        let addr = if address.is_empty() {
            let is_gateway =
                options.get(REQUEST_ADDRESS_TYPE).map(String::as_str) == Some(GATEWAY_TYPE);
            match known.and_then(|p| p.gateway) {
                Some(gw) if is_gateway => gw,
                _ => {
                    return Err(IpamError::NoAddress {
                        pool_id: pool_id.to_string(),
                    })
                }
            }
        } else {
            address
                .parse::<Ipv4Addr>()
                .map_err(|_| IpamError::BadAddress {
                    pool_id: pool_id.to_string(),
                    address: address.to_string(),
                })?
        };
        if !subnet.contains(&addr) {
            return Err(IpamError::OutsidePool {
                pool_id: pool_id.to_string(),
                address: addr,
                subnet,
            });
        }
        Ok(format!("{addr}/{}", subnet.prefix_len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pools_are_per_network_and_refcounted() {
        let mut p = Pools::default();
        let a = opts(&[(OPT_IPAM_NETWORK, "neta"), (OPT_IPAM_GATEWAY, "10.1.2.1")]);
        let b = opts(&[(OPT_IPAM_NETWORK, "netb")]);
        let (ida, net) = p
            .request_pool("shoal-local", "10.1.2.0/24", &a, false)
            .unwrap();
        assert_eq!(net.to_string(), "10.1.2.0/24");
        let (ida2, _) = p
            .request_pool("shoal-local", "10.1.2.0/24", &a, false)
            .unwrap();
        let (idb, _) = p
            .request_pool("shoal-local", "10.1.2.0/24", &b, false)
            .unwrap();
        assert_eq!(ida, ida2);
        assert_ne!(ida, idb);
        p.release_pool(&ida);
        assert!(p.pools.contains_key(&ida));
        p.release_pool(&ida);
        assert!(!p.pools.contains_key(&ida));
        p.release_pool("nonsense");
    }

    #[test]
    fn bad_pools_are_refused() {
        let mut p = Pools::default();
        let none = HashMap::new();
        let e = p.request_pool("shoal-local", "", &none, false).unwrap_err();
        assert!(e.to_string().contains("no RequestedPool given"), "{e}");
        assert!(p.request_pool("s", "10.1.2.0/24", &none, true).is_err());
        assert!(p.request_pool("s", "fe80::/64", &none, false).is_err());
        assert!(p.request_pool("s", "nonsense", &none, false).is_err());
    }

    #[test]
    fn addresses_are_exactly_what_was_asked() {
        let mut p = Pools::default();
        let o = opts(&[(OPT_IPAM_NETWORK, "n"), (OPT_IPAM_GATEWAY, "10.1.2.1")]);
        let (id, _) = p.request_pool("s", "10.1.2.0/24", &o, false).unwrap();
        let none = HashMap::new();
        let gw = opts(&[(REQUEST_ADDRESS_TYPE, GATEWAY_TYPE)]);
        assert_eq!(
            p.request_address(&id, "10.1.2.7", &none).unwrap(),
            "10.1.2.7/24"
        );
        assert_eq!(p.request_address(&id, "", &gw).unwrap(), "10.1.2.1/24");
        let e = p.request_address(&id, "", &none).unwrap_err();
        assert!(
            e.to_string().contains("assigns addresses explicitly"),
            "{e}"
        );
        assert!(p.request_address(&id, "10.1.3.7", &none).is_err());
        assert!(p.request_address(&id, "x", &none).is_err());
        // A pool from before a restart still serves explicit addresses.
        assert_eq!(
            p.request_address("10.9.0.0/16@old", "10.9.1.1", &none)
                .unwrap(),
            "10.9.1.1/16"
        );
        assert!(p.request_address("garbage", "10.9.1.1", &none).is_err());
    }
}
