//! The Docker API over TCP (`shoal daemon --listen tcp://ADDR`), as `dockerd --tlsverify` serves
//! it: the same router as the unix socket, behind mutual TLS with certificates of the cluster
//! CA. `addr` parses `--listen` (plain TCP only on loopback), `certs` issues, lists and revokes
//! API client certificates (records in the raft store), `serve` accepts, handshakes and ends
//! revoked connections, `audit` logs every request with its client's name.
//!
//! TLS listeners need the cluster CA, so they run while this node is a manager: they start
//! when it becomes one (`swarm init`, a join as manager, a promotion, a restart) with a server
//! certificate the CA signs in memory for the node's host names and addresses, valid as long as
//! the node certificate and renewed with it, and they stop (ending every connection) when it
//! leaves the swarm or is demoted. Until then only the unix socket serves, as the log says.

mod addr;
mod audit;
pub mod certs;
mod serve;

pub use addr::{parse_listen, ListenAddr, ListenError, PLAIN_PORT, TLS_PORT};

use crate::api::AppState;
use crate::cluster::Manager;
use crate::db;
use serve::{SharedTls, TlsContext};
use shoal_api::models::Node;
use shoal_pki::{ApiServerCert, NodeCert};
use shoal_store::Store;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::util::BoxCloneService;

/// Why the TCP API could not start.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// A plain loopback listener could not bind.
    #[error("--listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: ListenAddr,
        /// What bind said.
        #[source]
        source: std::io::Error,
    },
}

/// Starts the TCP API for `listen`: plain loopback listeners at once (bound before this returns,
/// so a taken port fails the daemon's start), TLS listeners whenever this node is a manager.
/// Everything stops with `stop`.
pub async fn start(
    d: AppState,
    listen: &[ListenAddr],
    stop: CancellationToken,
) -> Result<(), RemoteError> {
    for l in listen.iter().filter(|l| !l.tls) {
        let listener = TcpListener::bind(l.addr)
            .await
            .map_err(|source| RemoteError::Bind { addr: *l, source })?;
        tracing::warn!(listen = %l, "serving the Docker API over plain TCP on loopback: no TLS and no client certificate, so every local user who can connect to it controls this node and the swarm");
        tokio::spawn(serve::accept_plain(listener, app(&d), stop.clone()));
    }
    let tls: Vec<ListenAddr> = listen.iter().filter(|l| l.tls).copied().collect();
    if !tls.is_empty() {
        tokio::spawn(follow_manager(d, tls, stop));
    }
    Ok(())
}

/// The API router as one service for the remote connections.
fn app(d: &AppState) -> audit::App {
    BoxCloneService::new(crate::api::app(d.clone()))
}

/// Serves the TLS listeners while this node is a manager, following its comings and goings.
async fn follow_manager(d: AppState, addrs: Vec<ListenAddr>, stop: CancellationToken) {
    let mut changes = d.manager.changes();
    let listed = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let mut said_waiting = false;
    loop {
        changes.borrow_and_update();
        let current = d.manager.read().await.clone();
        if let Some(m) = current {
            said_waiting = false;
            serve_manager(&d, &m, &addrs, &mut changes, &stop).await;
        } else {
            if !said_waiting {
                tracing::info!(listen = %listed, "the TCP API (mutual TLS) starts once this node is a swarm manager: its certificates come from the cluster CA; until then only the unix socket serves");
                said_waiting = true;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                r = changes.changed() => if r.is_err() { return },
            }
        }
        if stop.is_cancelled() {
            return;
        }
    }
}

/// Serves `addrs` for manager `m` until it stops, another takes its place, or `stop`.
async fn serve_manager(
    d: &AppState,
    m: &Arc<Manager>,
    addrs: &[ListenAddr],
    changes: &mut watch::Receiver<u64>,
    stop: &CancellationToken,
) {
    let manager_stop = m.stopping();
    let mut node_certs = m.certificate();
    // A manager that just joined may not have the CA in its copy of the store yet.
    let mut store_changes = m.store.watch();
    let mut said_waiting = false;
    let cert = loop {
        let node_cert = node_certs.borrow_and_update().clone();
        match server_cert(d, m, addrs, &node_cert) {
            Ok(c) => break c,
            Err(e) => {
                if !said_waiting {
                    tracing::warn!(error = %e, "the TCP API waits for the cluster CA to make its certificate");
                    said_waiting = true;
                }
            }
        }
        tokio::select! {
            _ = store_changes.recv() => {}
            _ = manager_stop.cancelled() => return,
            _ = stop.cancelled() => return,
            _ = changes.changed() => return,
        }
    };
    let config = match tls_config(&cert, &m.store) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the TCP API's TLS settings; not serving it");
            wait_for_end(m, changes, stop).await;
            return;
        }
    };
    let shared: SharedTls = Arc::new(parking_lot::RwLock::new(config));
    let ctx = Arc::new(TlsContext::new(shared.clone(), m.store.clone()));
    let serving = stop.child_token();
    let mut tasks = Vec::new();
    for a in addrs {
        match TcpListener::bind(a.addr).await {
            Ok(listener) => {
                tracing::info!(listen = %a, not_after = %shoal_api::id::format_time(cert.not_after().into()), "serving the Docker API over TCP with mutual TLS (client certificates from `shoal client-cert`)");
                tasks.push(tokio::spawn(serve::accept_tls(
                    listener,
                    app(d),
                    ctx.clone(),
                    serving.clone(),
                )));
            }
            Err(e) => tracing::error!(listen = %a, error = %e, "cannot serve the Docker API there"),
        }
    }
    tasks.push(tokio::spawn(cut_revoked(
        m.store.clone(),
        ctx.clone(),
        serving.clone(),
    )));
    loop {
        tokio::select! {
            r = node_certs.changed() => {
                if r.is_err() { break; }
                let node_cert = node_certs.borrow_and_update().clone();
                match server_cert(d, m, addrs, &node_cert).and_then(|c| {
                    let cfg = tls_config(&c, &m.store)?;
                    Ok((c, cfg))
                }) {
                    Ok((c, cfg)) => {
                        *shared.write() = cfg;
                        tracing::info!(not_after = %shoal_api::id::format_time(c.not_after().into()), "renewed the TCP API's server certificate with the node certificate");
                    }
                    Err(e) => tracing::error!(error = %e, "renewing the TCP API's server certificate; the old one serves on"),
                }
            }
            _ = manager_stop.cancelled() => break,
            _ = stop.cancelled() => break,
            r = changes.changed() => {
                let same = d.manager.read().await.as_ref().is_some_and(|now| Arc::ptr_eq(now, m));
                if r.is_err() || !same { break; }
            }
        }
    }
    serving.cancel();
    for t in tasks {
        let _ = t.await;
    }
    if !stop.is_cancelled() {
        tracing::info!("the TCP API stopped: this node is no longer a swarm manager");
    }
}

/// Waits until the manager stops or is replaced, or `stop`.
async fn wait_for_end(
    m: &Arc<Manager>,
    changes: &mut watch::Receiver<u64>,
    stop: &CancellationToken,
) {
    tokio::select! {
        _ = m.stopping().cancelled_owned() => {}
        _ = stop.cancelled() => {}
        _ = changes.changed() => {}
    }
}

/// The dashboard's HTTPS settings for manager `m` serving on `addr` (issue 21): a server
/// certificate from the cluster CA, as the TCP API's, and API client certificates accepted but
/// not required (one that is presented logs its browser in). Redo it when the node certificate
/// is renewed ([`Manager::certificate`]).
pub fn dashboard_tls(
    d: &AppState,
    m: &Manager,
    addr: std::net::SocketAddr,
) -> Result<Arc<shoal_pki::rustls::ServerConfig>, String> {
    let addrs = [ListenAddr { addr, tls: true }];
    let node_cert = m.certificate().borrow().clone();
    let cert = server_cert(d, m, &addrs, &node_cert).map_err(|e| e.to_string())?;
    shoal_pki::dashboard_server_config(&cert, Arc::new(StoreRevocations(m.store.clone())))
        .map_err(|e| e.to_string())
}

/// Why the API server certificate or its TLS settings could not be made.
#[derive(Debug, thiserror::Error)]
enum CertError {
    #[error("{0}")]
    Api(#[from] shoal_api::ApiError),
    #[error("{0}")]
    Pki(#[from] shoal_pki::PkiError),
}

/// Signs this manager's API server certificate: valid until the node certificate expires, naming
/// the node's host names and the addresses clients may dial.
fn server_cert(
    d: &AppState,
    m: &Manager,
    addrs: &[ListenAddr],
    node_cert: &NodeCert,
) -> Result<ApiServerCert, CertError> {
    let ca = certs::cluster_ca(&m.store)?;
    let (dns, ips) = names_and_addresses(d, m, addrs);
    let cluster = &node_cert.identity().cluster_id;
    let not_after = node_cert
        .not_after()
        .max(std::time::SystemTime::now() + std::time::Duration::from_secs(3600));
    Ok(ca.issue_api_server(&m.identity.node_id, cluster, &dns, &ips, not_after)?)
}

fn tls_config(
    cert: &ApiServerCert,
    store: &Store,
) -> Result<Arc<shoal_pki::rustls::ServerConfig>, CertError> {
    Ok(shoal_pki::api_server_config(
        cert,
        Arc::new(StoreRevocations(store.clone())),
    )?)
}

/// Revocations as this manager's copy of the store has them, read at each handshake.
#[derive(Debug)]
struct StoreRevocations(Store);

impl shoal_pki::Revocations for StoreRevocations {
    fn is_revoked(&self, serial: &str) -> bool {
        certs::is_revoked(&self.0, serial)
    }
}

/// Ends the open connections of certificates as their revocation is applied here; runs until
/// `serving` is cancelled.
async fn cut_revoked(store: Store, ctx: Arc<TlsContext>, serving: CancellationToken) {
    let mut changes = store.watch();
    loop {
        let serials: Vec<String> = tokio::select! {
            _ = serving.cancelled() => return,
            r = changes.recv() => match r {
                Ok(set) => set
                    .changes
                    .iter()
                    .filter(|c| c.kind == <db::ClientCert as db::Stored>::KIND)
                    .map(|c| c.id.clone())
                    .collect(),
                // Missed some changes: look at every certificate with an open connection.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => ctx.conns.serials(),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        };
        for serial in serials {
            if !certs::is_revoked(&store, &serial) {
                continue;
            }
            let n = ctx.conns.cut(&serial);
            if n > 0 {
                let name = db::get::<db::ClientCert>(&store, &serial)
                    .map(|c| c.obj.name)
                    .unwrap_or_default();
                tracing::info!(client = %name, %serial, connections = n, "client certificate revoked: its open TCP API connections ended");
            }
        }
    }
}

/// The SANs of the API server certificate: `localhost`, the node's host name (as the swarm and
/// the system know it); the listen addresses, every interface address for a wildcard one, the
/// node's advertised address and loopback.
fn names_and_addresses(
    d: &AppState,
    m: &Manager,
    addrs: &[ListenAddr],
) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = vec!["localhost".to_string()];
    if let Some(h) = db::get::<Node>(&m.store, &m.identity.node_id)
        .and_then(|n| n.obj.description.and_then(|d| d.hostname))
    {
        dns.push(h);
    }
    if let Some(h) = &d.hostname {
        dns.push(h.clone());
    }
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        dns.push(h.trim().to_string());
    }
    let mut ips = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    let mut interfaces = None;
    for a in addrs {
        let ip = a.addr.ip();
        if ip.is_unspecified() {
            let all = interfaces.get_or_insert_with(interface_addresses);
            ips.extend(all.iter().filter(|i| i.is_ipv4() || ip.is_ipv6()).copied());
        } else {
            ips.push(ip);
        }
    }
    if let Some(ip) = m.identity.addr.rsplit_once(':').and_then(|(h, _)| {
        h.trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .ok()
    }) {
        ips.push(ip);
    }
    dns.dedup();
    ips.sort();
    ips.dedup();
    (dns, ips)
}

/// The addresses on this machine's (this namespace's) interfaces, IPv6 link-local left out (a
/// URL cannot carry their zone).
fn interface_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that is only read below and freed once.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not freed yet.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: a non-null ifa_addr points at a sockaddr whose family says its real type.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: AF_INET: it is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            } else if family == libc::AF_INET6 {
                // SAFETY: AF_INET6: it is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                if ip.segments()[0] & 0xffc0 != 0xfe80 {
                    out.push(IpAddr::V6(ip));
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_addresses_include_loopback() {
        let all = interface_addresses();
        assert!(all.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{all:?}");
    }
}
