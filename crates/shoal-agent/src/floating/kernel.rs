//! A floating address on a link, by rtnetlink: added or refreshed with a lifetime, removed,
//! looked for.
//!
//! The address carries `valid_lft` = `preferred_lft` = the lease's remainder rounded up to whole
//! seconds, so a dead agent's address also goes away by itself (the nftables gate in `gate.rs`
//! is what stops the node answering at the lease's end; the lifetime only tidies up). `add` is
//! `ip addr replace`: the same call adds the address and refreshes its lifetime. IPv6 addresses
//! are added with `IFA_F_NODAD`: the holder announces itself and must not wait a second for DAD.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, CacheInfo,
};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::RouteProtocol;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;

use super::FloatingError;

/// The errno of a netlink NACK.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// A network interface a floating address goes on (and whose MAC announces it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The kernel's interface index.
    pub index: u32,
    /// The interface name, e.g. `eth0`.
    pub name: String,
    /// Its hardware address (all zeros for links without one, e.g. `lo`).
    pub mac: [u8; 6],
}

/// A netlink connection to this process's network namespace, for floating addresses.
#[derive(Clone)]
pub struct Addresses {
    handle: rtnetlink::Handle,
}

/// The lifetime in whole seconds the kernel gets for a lease of `lifetime`: rounded up, at
/// least 1 s (0 would mean "expired"; `u32::MAX` would mean "forever", so it is capped below).
fn lifetime_secs(lifetime: Duration) -> u32 {
    let mut s = lifetime.as_secs();
    if lifetime.subsec_nanos() > 0 {
        s = s.saturating_add(1);
    }
    s.clamp(1, u64::from(u32::MAX - 1)) as u32
}

/// The address a message describes: `IFA_LOCAL` (IPv4, and the local end of a point-to-point
/// link) or else `IFA_ADDRESS` (IPv6 dumps carry only that).
fn message_address(m: &AddressMessage) -> Option<IpAddr> {
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

fn check_prefix(addr: IpAddr, prefix: u8) -> Result<(), FloatingError> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(FloatingError::invalid(
            format!("{addr}/{prefix}"),
            format!("prefix length above {max}"),
        ));
    }
    Ok(())
}

impl Addresses {
    /// Opens the netlink socket; its connection task runs on the current tokio runtime.
    pub fn connect() -> Result<Self, FloatingError> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| FloatingError::io("open netlink socket", "rtnetlink", e))?;
        tokio::spawn(conn);
        Ok(Addresses { handle })
    }

    /// The link named `name`, `None` if there is none.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, FloatingError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_of(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(FloatingError::netlink("look up link", name, e)),
        }
    }

    /// The link with index `index`, `None` if there is none.
    async fn link_by_index(&self, index: u32) -> Result<Option<Link>, FloatingError> {
        let mut s = self.handle.link().get().match_index(index).execute();
        match s.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_of(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(FloatingError::netlink("look up link", index, e)),
        }
    }

    /// Every address of the namespace, as netlink reports them.
    async fn dump(&self, family: Option<IpAddr>) -> Result<Vec<AddressMessage>, FloatingError> {
        let mut req = self.handle.address().get();
        if let Some(a) = family {
            req.message_mut().header.family = if a.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
        }
        req.execute()
            .try_collect()
            .await
            .map_err(|e| FloatingError::netlink("list addresses", "all links", e))
    }

    /// The interface carrying `addr` (the node's advertise address: its default interface);
    /// the first one if several do.
    pub async fn link_with_address(&self, addr: IpAddr) -> Result<Option<Link>, FloatingError> {
        match self.present(addr).await?.into_iter().next() {
            Some(l) => Ok(Some(l)),
            None => Ok(None),
        }
    }

    /// Adds `addr/prefix` to `link`, or refreshes it if already there (`ip addr replace`), with
    /// both lifetimes `lifetime` rounded up to whole seconds (at least 1 s). IPv6: no DAD.
    pub async fn add(
        &self,
        link: &Link,
        addr: IpAddr,
        prefix: u8,
        lifetime: Duration,
    ) -> Result<(), FloatingError> {
        check_prefix(addr, prefix)?;
        let secs = lifetime_secs(lifetime);
        let mut req = self
            .handle
            .address()
            .add(link.index, addr, prefix)
            .replace();
        let m = req.message_mut();
        let mut cache = CacheInfo::default();
        cache.ifa_preferred = secs;
        cache.ifa_valid = secs;
        m.attributes.push(AddressAttribute::CacheInfo(cache));
        if addr.is_ipv6() {
            m.header.flags = AddressHeaderFlags::Nodad;
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await.map_err(|e| {
            FloatingError::netlink(
                "add floating address",
                format!("{addr}/{prefix} on {}", link.name),
                e,
            )
        })?;
        tracing::debug!(%addr, prefix, link = %link.name, lifetime_s = secs, "floating address added or refreshed");
        Ok(())
    }

    /// Removes `addr/prefix` from `link`; already absent is fine.
    pub async fn remove(&self, link: &Link, addr: IpAddr, prefix: u8) -> Result<(), FloatingError> {
        check_prefix(addr, prefix)?;
        let object = || format!("{addr}/{prefix} on {}", link.name);
        let msgs = self.dump(Some(addr)).await?;
        for m in msgs {
            if m.header.index != link.index
                || m.header.prefix_len != prefix
                || message_address(&m) != Some(addr)
            {
                continue;
            }
            match self.handle.address().del(m).execute().await {
                Ok(()) => {}
                Err(e) if matches!(errno(&e), Some(libc::EADDRNOTAVAIL | libc::ENOENT)) => {}
                Err(e) => {
                    return Err(FloatingError::netlink(
                        "delete floating address",
                        object(),
                        e,
                    ))
                }
            }
        }
        if let IpAddr::V6(a) = addr {
            self.drop_orphan_prefix_route(link, a, prefix).await?;
        }
        Ok(())
    }

    /// Deletes the kernel's prefix route of `addr/prefix` on `link` when no address of the link
    /// is left in that prefix. IPv6 keeps the prefix route of an address with a finite lifetime
    /// after the address goes (until the lifetime ends); a floating address in no subnet of the
    /// link would otherwise leave its route behind. IPv4 removes it by itself.
    async fn drop_orphan_prefix_route(
        &self,
        link: &Link,
        addr: Ipv6Addr,
        prefix: u8,
    ) -> Result<(), FloatingError> {
        if prefix == 128 {
            return Ok(());
        }
        let net = ipnet::Ipv6Net::new(addr, prefix)
            .map_err(|e| FloatingError::invalid(format!("{addr}/{prefix}"), e.to_string()))?
            .trunc();
        let covered = self.dump(Some(IpAddr::V6(addr))).await?.iter().any(|m| {
            m.header.index == link.index
                && m.header.prefix_len == prefix
                && matches!(message_address(m), Some(IpAddr::V6(a)) if net.contains(&a))
        });
        if covered {
            return Ok(());
        }
        // Only the kernel's own route (proto kernel) on this link: never a static or RA route.
        let route = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(net.network(), prefix)
            .output_interface(link.index)
            .protocol(RouteProtocol::Kernel)
            .build();
        match self.handle.route().del(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::ESRCH | libc::ENOENT)) => Ok(()),
            Err(e) => Err(FloatingError::netlink(
                "delete prefix route",
                format!("{net} on {}", link.name),
                e,
            )),
        }
    }

    /// The links carrying `addr` (with any prefix): what an earlier run left behind.
    pub async fn present(&self, addr: IpAddr) -> Result<Vec<Link>, FloatingError> {
        let msgs = self.dump(Some(addr)).await?;
        let mut indexes: Vec<u32> = msgs
            .iter()
            .filter(|m| message_address(m) == Some(addr))
            .map(|m| m.header.index)
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        let mut out = Vec::new();
        for i in indexes {
            // A link deleted between the two dumps no longer carries anything.
            if let Some(l) = self.link_by_index(i).await? {
                out.push(l);
            }
        }
        Ok(out)
    }

    /// The link's own addresses with their prefix lengths (IPv4 and IPv6): its subnets.
    pub async fn subnets(&self, link: &Link) -> Result<Vec<(IpAddr, u8)>, FloatingError> {
        let msgs = self.dump(None).await?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == link.index)
            .filter_map(|m| Some((message_address(m)?, m.header.prefix_len)))
            .collect())
    }
}

fn link_of(msg: &rtnetlink::packet_route::link::LinkMessage) -> Link {
    let mut name = String::new();
    let mut mac = [0u8; 6];
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Address(m) => {
                if let Ok(m) = <[u8; 6]>::try_from(m.as_slice()) {
                    mac = m;
                }
            }
            _ => {}
        }
    }
    Link {
        index: msg.header.index,
        name,
        mac,
    }
}

/// Scratch network namespaces for the floating module's tests (root only).
#[cfg(test)]
pub(crate) mod testnet {
    use std::os::fd::AsRawFd;
    use std::process::{Command, Output};
    use std::sync::atomic::{AtomicU32, Ordering};

    static NEXT: AtomicU32 = AtomicU32::new(0);
    const PREFIX: &str = "shfl-";

    /// Whether namespace tests can run here; prints why not.
    pub fn can_run(test: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping {test}: needs root for network namespaces");
            return false;
        }
        for tool in ["ip", "nft", "nsenter"] {
            if Command::new(tool).arg("-V").output().is_err()
                && Command::new(tool).arg("--version").output().is_err()
            {
                eprintln!("skipping {test}: `{tool}` is not installed");
                return false;
            }
        }
        true
    }

    /// A network namespace, deleted on drop (with everything in it).
    pub struct Netns {
        pub name: String,
    }

    /// Removes namespaces of test processes that died without cleaning up.
    fn sweep() {
        let Ok(dir) = std::fs::read_dir("/run/netns") else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(rest) = name.strip_prefix(PREFIX) else {
                continue;
            };
            let Some(pid) = rest.split('-').next() else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
            }
        }
    }

    impl Netns {
        /// A new namespace whose name ends with `tag`, `lo` up.
        pub fn create(tag: &str) -> Netns {
            sweep();
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("{PREFIX}{}-{n}-{tag}", std::process::id());
            let ns = Netns { name };
            ns.must(Command::new("ip").args(["netns", "add", &ns.name]));
            ns.ip(&["link", "set", "lo", "up"]);
            ns
        }

        fn must(&self, c: &mut Command) -> Output {
            let out = c.output().unwrap_or_else(|e| panic!("running {c:?}: {e}"));
            assert!(
                out.status.success(),
                "{c:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out
        }

        /// `ip -n NS ARGS`, which must succeed; its stdout.
        pub fn ip(&self, args: &[&str]) -> String {
            let out = self.must(Command::new("ip").arg("-n").arg(&self.name).args(args));
            String::from_utf8_lossy(&out.stdout).to_string()
        }

        /// A command run inside the namespace (nsenter; not `ip netns exec`, which remounts /sys).
        pub fn command(&self, program: &str) -> Command {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{}", self.name))
                .arg(program);
            c
        }

        /// Runs `f` on a thread that entered the namespace (sockets it opens, processes it
        /// spawns, live there).
        pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
            let path = format!("/run/netns/{}", self.name);
            std::thread::scope(|s| {
                s.spawn(|| {
                    let file = std::fs::File::open(&path).expect("open netns");
                    // SAFETY: a valid namespace fd; only this thread changes namespace.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e))
            })
        }

        /// Runs the future `f` makes on a one-thread tokio runtime inside the namespace.
        pub fn block_on<F: std::future::Future>(&self, f: impl FnOnce() -> F + Send) -> F::Output
        where
            F::Output: Send,
        {
            self.run(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(f())
            })
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .output();
        }
    }

    /// Two nodes and a client on one bridge (in the client's namespace):
    /// client `br0` 10.99.0.1/24 fd00:99::1/64, node `a` `eth0` .2/::2, node `b` `eth0` .3/::3.
    pub struct Lan {
        pub a: Netns,
        pub b: Netns,
        pub c: Netns,
    }

    /// The fixed MACs of the nodes' `eth0`.
    pub const MAC_A: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0a];
    pub const MAC_B: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0b];

    impl Lan {
        pub fn create() -> Lan {
            let lan = Lan {
                a: Netns::create("a"),
                b: Netns::create("b"),
                c: Netns::create("c"),
            };
            let c = &lan.c;
            c.ip(&["link", "add", "br0", "type", "bridge"]);
            c.ip(&["addr", "add", "10.99.0.1/24", "dev", "br0"]);
            c.ip(&["addr", "add", "fd00:99::1/64", "dev", "br0", "nodad"]);
            c.ip(&["link", "set", "br0", "up"]);
            for (n, port, last, mac) in [(&lan.a, "pa", "2", MAC_A), (&lan.b, "pb", "3", MAC_B)] {
                c.ip(&[
                    "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &n.name,
                ]);
                c.ip(&["link", "set", port, "master", "br0", "up"]);
                let mac = super::super::announce::mac_string(&mac);
                n.ip(&["link", "set", "eth0", "address", &mac, "up"]);
                n.ip(&["addr", "add", &format!("10.99.0.{last}/24"), "dev", "eth0"]);
                n.ip(&[
                    "addr",
                    "add",
                    &format!("fd00:99::{last}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ]);
            }
            lan
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testnet::{Lan, Netns};
    use super::*;

    #[test]
    fn lifetime_rounds_up_to_a_second_at_least() {
        assert_eq!(lifetime_secs(Duration::ZERO), 1);
        assert_eq!(lifetime_secs(Duration::from_millis(1)), 1);
        assert_eq!(lifetime_secs(Duration::from_millis(1000)), 1);
        assert_eq!(lifetime_secs(Duration::from_millis(1001)), 2);
        assert_eq!(lifetime_secs(Duration::from_secs(u64::MAX)), u32::MAX - 1);
    }

    /// `ip -o addr show` of `dev` in `ns`, the lines naming `addr/`.
    fn ip_addr_line(ns: &Netns, dev: &str, addr: &str) -> Option<String> {
        ns.ip(&["-o", "addr", "show", "dev", dev])
            .lines()
            .find(|l| l.contains(&format!(" {addr}/")))
            .map(str::to_string)
    }

    #[test]
    fn add_refresh_find_and_remove() {
        if !testnet::can_run("add_refresh_find_and_remove") {
            return;
        }
        let lan = Lan::create();
        let a = &lan.a;
        a.ip(&[
            "link", "add", "spare0", "type", "veth", "peer", "name", "spare1",
        ]);
        a.block_on(|| async {
            let k = Addresses::connect().expect("connect");
            let eth0 = k.link_by_name("eth0").await.unwrap().expect("eth0");
            assert_eq!(eth0.mac, testnet::MAC_A);
            assert!(k.link_by_name("nope0").await.unwrap().is_none());
            let by_addr = k
                .link_with_address("10.99.0.2".parse().unwrap())
                .await
                .unwrap()
                .expect("link of 10.99.0.2");
            assert_eq!(by_addr, eth0);
            let by_v6 = k
                .link_with_address("fd00:99::2".parse().unwrap())
                .await
                .unwrap();
            assert_eq!(by_v6.as_ref(), Some(&eth0));
            assert!(k
                .link_with_address("10.99.0.77".parse().unwrap())
                .await
                .unwrap()
                .is_none());

            let subnets = k.subnets(&eth0).await.unwrap();
            assert!(
                subnets.contains(&("10.99.0.2".parse().unwrap(), 24)),
                "{subnets:?}"
            );
            assert!(
                subnets.contains(&("fd00:99::2".parse().unwrap(), 64)),
                "{subnets:?}"
            );

            let v4: IpAddr = "10.99.0.200".parse().unwrap();
            let v6: IpAddr = "fd00:99::200".parse().unwrap();
            k.add(&eth0, v4, 24, Duration::from_millis(1500))
                .await
                .unwrap();
            k.add(&eth0, v6, 64, Duration::from_millis(1500))
                .await
                .unwrap();
            let l4 = ip_addr_line(a, "eth0", "10.99.0.200").expect("v4 added");
            assert!(l4.contains("secondary"), "{l4}");
            assert!(
                l4.contains("valid_lft 2sec") || l4.contains("valid_lft 1sec"),
                "{l4}"
            );
            let l6 = ip_addr_line(a, "eth0", "fd00:99::200").expect("v6 added");
            assert!(!l6.contains("tentative"), "no DAD: {l6}");
            assert!(l6.contains("nodad"), "{l6}");

            // A refresh: the same call, no EEXIST, a new lifetime.
            k.add(&eth0, v4, 24, Duration::from_secs(30)).await.unwrap();
            k.add(&eth0, v6, 64, Duration::from_secs(30)).await.unwrap();
            let l4 = ip_addr_line(a, "eth0", "10.99.0.200").unwrap();
            assert!(
                l4.contains("valid_lft 30sec") || l4.contains("valid_lft 29sec"),
                "{l4}"
            );
            let l6 = ip_addr_line(a, "eth0", "fd00:99::200").unwrap();
            assert!(
                l6.contains("valid_lft 30sec") || l6.contains("valid_lft 29sec"),
                "{l6}"
            );

            assert_eq!(k.present(v4).await.unwrap(), vec![eth0.clone()]);
            assert_eq!(k.present(v6).await.unwrap(), vec![eth0.clone()]);
            // A leftover on another link is found too.
            let spare = k.link_by_name("spare0").await.unwrap().expect("spare0");
            k.add(&spare, v4, 32, Duration::from_secs(30))
                .await
                .unwrap();
            let mut found = k.present(v4).await.unwrap();
            found.sort_by_key(|l| l.index);
            let mut want = vec![eth0.clone(), spare.clone()];
            want.sort_by_key(|l| l.index);
            assert_eq!(found, want);
            k.remove(&spare, v4, 32).await.unwrap();

            k.remove(&eth0, v4, 24).await.unwrap();
            k.remove(&eth0, v6, 64).await.unwrap();
            assert!(ip_addr_line(a, "eth0", "10.99.0.200").is_none());
            assert!(ip_addr_line(a, "eth0", "fd00:99::200").is_none());
            assert!(k.present(v4).await.unwrap().is_empty());
            // Absent is fine.
            k.remove(&eth0, v4, 24).await.unwrap();
            k.remove(&eth0, v6, 64).await.unwrap();
            // The node's own addresses and their prefix routes are untouched.
            let routes4 = a.ip(&["route", "show", "dev", "eth0"]);
            assert!(routes4.contains("10.99.0.0/24"), "{routes4}");
            let routes6 = a.ip(&["-6", "route", "show", "dev", "eth0"]);
            assert!(routes6.contains("fd00:99::/64"), "{routes6}");
            assert!(ip_addr_line(a, "eth0", "10.99.0.2").is_some());
            assert!(ip_addr_line(a, "eth0", "fd00:99::2").is_some());

            assert!(k.add(&eth0, v4, 33, Duration::from_secs(1)).await.is_err());

            // An address in no subnet of the link brings its prefix route and takes it away.
            let out4: IpAddr = "10.98.0.200".parse().unwrap();
            let out6: IpAddr = "fd00:98::200".parse().unwrap();
            k.add(&eth0, out4, 24, Duration::from_secs(30))
                .await
                .unwrap();
            k.add(&eth0, out6, 64, Duration::from_secs(30))
                .await
                .unwrap();
            assert!(a
                .ip(&["route", "show", "dev", "eth0"])
                .contains("10.98.0.0/24"));
            assert!(a
                .ip(&["-6", "route", "show", "dev", "eth0"])
                .contains("fd00:98::/64"));
            k.remove(&eth0, out4, 24).await.unwrap();
            k.remove(&eth0, out6, 64).await.unwrap();
            let routes4 = a.ip(&["route", "show", "dev", "eth0"]);
            assert!(!routes4.contains("10.98.0.0/24"), "{routes4}");
            let routes6 = a.ip(&["-6", "route", "show", "dev", "eth0"]);
            assert!(!routes6.contains("fd00:98::/64"), "{routes6}");
            assert!(routes6.contains("fd00:99::/64"), "{routes6}");
        });
    }

    #[test]
    fn lifetime_removes_the_address() {
        if !testnet::can_run("lifetime_removes_the_address") {
            return;
        }
        let ns = Netns::create("life");
        ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
        ns.ip(&["link", "set", "v0", "up"]);
        ns.ip(&["link", "set", "v1", "up"]);
        ns.block_on(|| async {
            let k = Addresses::connect().expect("connect");
            let l = k.link_by_name("v0").await.unwrap().expect("v0");
            let v4: IpAddr = "10.250.0.9".parse().unwrap();
            let v6: IpAddr = "fd00:250::9".parse().unwrap();
            let start = std::time::Instant::now();
            k.add(&l, v4, 32, Duration::from_millis(300)).await.unwrap();
            k.add(&l, v6, 128, Duration::from_millis(300))
                .await
                .unwrap();
            let mut gone = [None, None];
            while gone.iter().any(Option::is_none) && start.elapsed() < Duration::from_secs(4) {
                for (i, a) in [v4, v6].into_iter().enumerate() {
                    if gone[i].is_none() && k.present(a).await.unwrap().is_empty() {
                        gone[i] = Some(start.elapsed());
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            eprintln!(
                "lifetime 1 s: IPv4 gone after {:?}, IPv6 after {:?}",
                gone[0], gone[1]
            );
            for g in gone {
                let g = g.expect("address expired");
                assert!(
                    g >= Duration::from_millis(900) && g < Duration::from_millis(1500),
                    "{g:?}"
                );
            }
        });
    }
}
