//! Links and addresses through rtnetlink: bridges, veth pairs, VIP addresses.
//!
//! rtnetlink rather than `ip`: `Join` sits on the container start path and a netlink round trip
//! is cheaper than a process; errors come back typed (EEXIST, ENODEV) so idempotency does not
//! depend on parsing `ip`'s messages; moving a link into dockerd's namespace is one attribute.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::MetadataExt;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, LinkVxlan};

use super::NetworkError;

const EEXIST: i32 = libc::EEXIST;
const ENODEV: i32 = libc::ENODEV;
const EADDRNOTAVAIL: i32 = libc::EADDRNOTAVAIL;

/// The errno of a netlink NACK.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// A netlink connection to this process's network namespace.
#[derive(Clone)]
pub(crate) struct Links {
    handle: rtnetlink::Handle,
}

impl Links {
    /// Opens the netlink socket; its connection task runs on the current tokio runtime.
    pub fn connect() -> Result<Links, NetworkError> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NetworkError::io("open netlink socket", "rtnetlink", e))?;
        tokio::spawn(conn);
        Ok(Links { handle })
    }

    /// The index of link `name`, `None` if there is none.
    pub async fn index(&self, name: &str) -> Result<Option<u32>, NetworkError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(msg)) => Ok(Some(msg.header.index)),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(NetworkError::netlink("look up link", name, e)),
        }
    }

    /// Creates bridge `name` if missing, marks it with `alias`, gives it `gw/prefix` and brings
    /// it up; returns its index. Idempotent (adopts an existing bridge).
    pub async fn ensure_bridge(
        &self,
        name: &str,
        alias: &str,
        gw: Ipv4Addr,
        prefix: u8,
    ) -> Result<u32, NetworkError> {
        let index = match self.index(name).await? {
            Some(i) => i,
            None => {
                match self
                    .handle
                    .link()
                    // nf_call_iptables: bridged frames pass conntrack/NAT even where the global
                    // bridge-nf-call-iptables sysctl is off; the VIP return path depends on it.
                    .add(LinkBridge::new(name).nf_call_iptables(true).build())
                    .execute()
                    .await
                {
                    Ok(()) => {}
                    Err(e) if errno(&e) == Some(EEXIST) => {}
                    Err(e) => return Err(NetworkError::netlink("create bridge", name, e)),
                }
                self.index(name).await?.ok_or_else(|| {
                    NetworkError::invalid(name, "bridge vanished right after creation")
                })?
            }
        };
        self.set_link(
            LinkUnspec::new_with_index(index).alias(alias).up().build(),
            "bring up bridge",
            name,
        )
        .await?;
        self.add_address(index, name, gw, prefix).await?;
        Ok(index)
    }

    /// Changes a link's attributes; every `set` here fails the same way, naming what it did.
    async fn set_link(
        &self,
        msg: LinkMessage,
        op: &'static str,
        object: &str,
    ) -> Result<(), NetworkError> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| NetworkError::netlink(op, object, e))
    }

    /// Gives link `index` the MAC address `mac`.
    pub async fn set_mac(&self, index: u32, name: &str, mac: [u8; 6]) -> Result<(), NetworkError> {
        self.set_link(
            LinkUnspec::new_with_index(index)
                .address(mac.to_vec())
                .build(),
            "set MAC address",
            name,
        )
        .await
    }

    /// Creates VXLAN device `name` (VNI `vni`, UDP 4789, no learning, ARP answered locally from
    /// its neighbour table) if missing, enslaves it to `bridge_index` and brings it up; returns
    /// its index. An existing device with another VNI is replaced.
    pub async fn ensure_vxlan(
        &self,
        name: &str,
        alias: &str,
        vni: u32,
        bridge_index: u32,
        mtu: u32,
    ) -> Result<u32, NetworkError> {
        if let Some(i) = self.index(name).await? {
            if self.vxlan_id(i).await? == Some(vni) {
                return self.enslave_up(i, name, alias, bridge_index).await;
            }
            self.delete_link(name).await?;
        }
        let add = LinkVxlan::new(name, vni)
            .port(super::names::VXLAN_PORT)
            .learning(false)
            .proxy(true)
            .mtu(mtu)
            .build();
        match self.handle.link().add(add).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(EEXIST) => {}
            Err(e) => return Err(NetworkError::netlink("create vxlan", name, e)),
        }
        let i = self
            .index(name)
            .await?
            .ok_or_else(|| NetworkError::invalid(name, "vxlan vanished right after creation"))?;
        self.enslave_up(i, name, alias, bridge_index).await
    }

    async fn enslave_up(
        &self,
        index: u32,
        name: &str,
        alias: &str,
        bridge_index: u32,
    ) -> Result<u32, NetworkError> {
        self.set_link(
            LinkUnspec::new_with_index(index)
                .controller(bridge_index)
                .alias(alias)
                .up()
                .build(),
            "attach vxlan to bridge",
            name,
        )
        .await?;
        Ok(index)
    }

    /// The VNI of VXLAN link `index`, `None` if it is not a VXLAN device.
    async fn vxlan_id(&self, index: u32) -> Result<Option<u32>, NetworkError> {
        use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkInfo};
        let mut s = self.handle.link().get().match_index(index).execute();
        let msg = match s.try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(e) => return Err(NetworkError::netlink("look up link", index.to_string(), e)),
        };
        for a in &msg.attributes {
            if let LinkAttribute::LinkInfo(infos) = a {
                for i in infos {
                    if let LinkInfo::Data(InfoData::Vxlan(v)) = i {
                        for x in v {
                            if let InfoVxlan::Id(id) = x {
                                return Ok(Some(*id));
                            }
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// The remote entries of VXLAN device `index`: (MAC, node address).
    pub async fn vxlan_fdb(&self, index: u32) -> Result<Vec<([u8; 6], Ipv4Addr)>, NetworkError> {
        let msgs = self.neighbours(AddressFamily::Bridge).await?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index)
            .filter_map(|m| Some((lladdr(m)?, dest_v4(m)?)))
            .collect())
    }

    /// The static neighbours (address, MAC) of link `index`.
    pub async fn static_neighbours(
        &self,
        index: u32,
    ) -> Result<Vec<(Ipv4Addr, [u8; 6])>, NetworkError> {
        let msgs = self.neighbours(AddressFamily::Inet).await?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index)
            .filter(|m| {
                m.header.state == rtnetlink::packet_route::neighbour::NeighbourState::Permanent
            })
            .filter_map(|m| Some((dest_v4(m)?, lladdr(m)?)))
            .collect())
    }

    async fn neighbours(
        &self,
        family: AddressFamily,
    ) -> Result<Vec<NeighbourMessage>, NetworkError> {
        self.handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetworkError::netlink("list neighbours", "all", e))
    }

    /// Points `mac` at node `dst` on VXLAN device `index` (replacing any earlier entry).
    pub async fn fdb_set(
        &self,
        index: u32,
        mac: [u8; 6],
        dst: Ipv4Addr,
    ) -> Result<(), NetworkError> {
        self.handle
            .neighbours()
            .add_bridge(index, &mac)
            .flags(NeighbourFlags::Own)
            .destination(IpAddr::V4(dst))
            .replace()
            .execute()
            .await
            .map_err(|e| {
                NetworkError::netlink("add vxlan fdb entry", super::names::mac_string(&mac), e)
            })
    }

    /// Removes `mac`'s entry from VXLAN device `index`; already gone is fine.
    pub async fn fdb_del(
        &self,
        index: u32,
        mac: [u8; 6],
        dst: Ipv4Addr,
    ) -> Result<(), NetworkError> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
        self.del_neighbour(m, "delete vxlan fdb entry", super::names::mac_string(&mac))
            .await
    }

    /// Makes `addr` resolve to `mac` on link `index` without ARP.
    pub async fn neigh_set(
        &self,
        index: u32,
        addr: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), NetworkError> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(addr))
            .link_layer_address(&mac)
            .replace()
            .execute()
            .await
            .map_err(|e| NetworkError::netlink("add neighbour", addr.to_string(), e))
    }

    /// Removes the neighbour entry of `addr` on link `index`; already gone is fine.
    pub async fn neigh_del(&self, index: u32, addr: Ipv4Addr) -> Result<(), NetworkError> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = index;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                addr,
            )));
        self.del_neighbour(m, "delete neighbour", addr.to_string())
            .await
    }

    /// Deletes one neighbour or fdb entry; one already gone is what the caller wanted.
    async fn del_neighbour(
        &self,
        m: NeighbourMessage,
        op: &'static str,
        object: String,
    ) -> Result<(), NetworkError> {
        match self.handle.neighbours().del(m).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::ENOENT)) => Ok(()),
            Err(e) => Err(NetworkError::netlink(op, object, e)),
        }
    }

    /// The IPv4 addresses (with prefix length) on link `index`.
    pub async fn addresses(
        &self,
        index: u32,
        name: &str,
    ) -> Result<Vec<(Ipv4Addr, u8)>, NetworkError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetworkError::netlink("list addresses", name, e))?;
        let mut out = Vec::new();
        for m in msgs {
            if m.header.index != index {
                continue;
            }
            for a in &m.attributes {
                if let AddressAttribute::Local(IpAddr::V4(ip)) = a {
                    out.push((*ip, m.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// Adds `addr/prefix` to link `index`; already present is fine.
    pub async fn add_address(
        &self,
        index: u32,
        name: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetworkError> {
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(addr), prefix)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(NetworkError::netlink(
                "add address",
                format!("{addr}/{prefix} on {name}"),
                e,
            )),
        }
    }

    /// Removes `addr/prefix` from link `index`; already absent is fine.
    pub async fn del_address(
        &self,
        index: u32,
        name: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetworkError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(IpAddr::V4(addr))
            .set_prefix_length_filter(prefix)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetworkError::netlink("list addresses", name, e))?;
        for m in msgs {
            match self.handle.address().del(m).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(EADDRNOTAVAIL) => {}
                Err(e) => {
                    return Err(NetworkError::netlink(
                        "delete address",
                        format!("{addr}/{prefix} on {name}"),
                        e,
                    ))
                }
            }
        }
        Ok(())
    }

    /// Deletes link `name`; already gone is fine.
    pub async fn delete_link(&self, name: &str) -> Result<(), NetworkError> {
        let Some(index) = self.index(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(()),
            Err(e) => Err(NetworkError::netlink("delete link", name, e)),
        }
    }

    /// Creates veth pair `host`/`peer`, enslaves `host` to the bridge `bridge_index` and brings it
    /// up, and moves `peer` into the network namespace of process `peer_netns_pid` if given.
    pub async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        bridge_index: u32,
        alias: &str,
        peer_netns_pid: Option<u32>,
        mtu: u32,
    ) -> Result<(), NetworkError> {
        // A leftover pair from an endpoint Docker retried is replaced.
        self.delete_link(host).await?;
        self.handle
            .link()
            .add(LinkVeth::new(host, peer).mtu(mtu).build())
            .execute()
            .await
            .map_err(|e| NetworkError::netlink("create veth", format!("{host}/{peer}"), e))?;
        let host_index = self
            .index(host)
            .await?
            .ok_or_else(|| NetworkError::invalid(host, "veth vanished right after creation"))?;
        self.set_link(
            LinkUnspec::new_with_index(host_index)
                .mtu(mtu)
                .controller(bridge_index)
                .alias(alias)
                .up()
                .build(),
            "attach veth to bridge",
            host,
        )
        .await?;
        // A task reaching its own service through the VIP: the DNAT-ed packet goes back out
        // of the port it came in on, which a bridge refuses unless the port is in hairpin mode.
        self.handle
            .link()
            .set_port(LinkBridgePort::new(host_index).hairpin(true).build())
            .execute()
            .await
            .map_err(|e| NetworkError::netlink("set hairpin mode", host, e))?;
        // The container's end too: frames bigger than the overlay carries would be dropped.
        self.set_link(
            LinkUnspec::new_with_name(peer).mtu(mtu).build(),
            "set veth MTU",
            peer,
        )
        .await?;
        if let Some(pid) = peer_netns_pid {
            self.set_link(
                LinkUnspec::new_with_name(peer).setns_by_pid(pid).build(),
                "move veth into dockerd's namespace",
                peer,
            )
            .await?;
        }
        Ok(())
    }

    /// Names of the links whose alias is `alias` (the ones this node created).
    pub async fn links_with_alias(&self, alias: &str) -> Result<Vec<String>, NetworkError> {
        let msgs: Vec<_> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetworkError::netlink("list links", "all", e))?;
        let mut out = Vec::new();
        for m in msgs {
            let mut name = None;
            let mut ours = false;
            for a in &m.attributes {
                match a {
                    LinkAttribute::IfName(n) => name = Some(n.clone()),
                    LinkAttribute::IfAlias(a) if a == alias => ours = true,
                    _ => {}
                }
            }
            if let (true, Some(n)) = (ours, name) {
                out.push(n);
            }
        }
        Ok(out)
    }
}

fn lladdr(m: &NeighbourMessage) -> Option<[u8; 6]> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => l.as_slice().try_into().ok(),
        _ => None,
    })
}

fn dest_v4(m: &NeighbourMessage) -> Option<Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

/// The process listening on the unix socket `path`, from the peer credentials of a connection
/// to it (the kernel's record of who called `listen`).
fn listener_pid(path: &std::path::Path) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let conn = std::os::unix::net::UnixStream::connect(path).ok()?;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given, and the descriptor is
    // open for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid as u32)
}

/// Whether `br_netfilter` is loaded (without it bridged traffic skips conntrack and replies
/// from a task on the client's own bridge would not be un-DNAT-ed).
pub(crate) fn br_netfilter_loaded() -> bool {
    std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists()
}

/// Sets `net.ipv4.conf.<link>.<key>`.
pub(crate) fn set_link_sysctl(link: &str, key: &str, value: &str) -> Result<(), NetworkError> {
    let path = format!("/proc/sys/net/ipv4/conf/{link}/{key}");
    std::fs::write(&path, value).map_err(|e| NetworkError::io("write sysctl", &path, e))
}

/// dockerd's PID when it runs in another network namespace than this process (then veth ends
/// must be moved there before Docker can take them); `None` when they share one, or when it
/// cannot be told (then we assume they do, as on a plain host). The engine is the one listening
/// on `socket` (a node's own dockerd need not be the host's), else the host's pid file.
pub(crate) fn dockerd_pid_in_other_netns(socket: Option<&std::path::Path>) -> Option<u32> {
    let pid = socket.and_then(listener_pid).or_else(|| {
        ["/run/docker.pid", "/var/run/docker.pid"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| s.trim().parse::<u32>().ok())
    })?;
    let ours = std::fs::metadata("/proc/self/ns/net").ok()?;
    let theirs = match std::fs::metadata(format!("/proc/{pid}/ns/net")) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(pid, error = %e, "cannot read dockerd's network namespace; assuming ours");
            return None;
        }
    };
    (ours.dev() != theirs.dev() || ours.ino() != theirs.ino()).then_some(pid)
}
