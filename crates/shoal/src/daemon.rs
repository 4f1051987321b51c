//! `shoal daemon`: serves the API on a unix socket, restarts the manager and agent of a node that
//! was already in a swarm, and stops cleanly on SIGTERM (containers keep running and are adopted
//! on the next start).

use crate::lock::DataDirLock;
use crate::DaemonArgs;
use anyhow::Context;
use futures::future::BoxFuture;
use shoal_agent::executor::{DockerExecutor, PullPolicy};
use shoal_agent::files::Files;
use shoal_agent::network::{NetworkAgent, NetworkConfig};
use shoal_agent::volumes::Volumes;
use shoal_agent::worker::{self, NetworkBackend, WorkerConfig};
use shoal_api::dispatch::{NodeAssignments, TaskStatusReport};
use shoal_manager::api::{self, Daemon};
use shoal_manager::node::{
    self, certs_dir, keys, AgentError, AgentHost, FloatingLink, Identity, ImageExport, LogLink,
    PeerLink,
};
use shoal_manager::proxy::EngineProxy;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// The agent side of this node, started when the node joins a swarm.
struct LocalAgent {
    engine: PathBuf,
    files_root: PathBuf,
    /// The data directory, absolute: it marks this daemon's trees under `files_root`.
    data_dir: PathBuf,
    pull: PullPolicy,
    registry: crate::node_registry::RegistrySettings,
    running: Mutex<Option<Running>>,
}

struct Running {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
    executor: Arc<DockerExecutor>,
    files: Files,
    network: Option<Arc<dyn NetworkBackend>>,
    volumes: Volumes,
    floating: shoal_agent::floating::holder::HandOver,
    /// This node's registry's blobs, which the peer port serves other nodes.
    blobs: Option<shoal_registry::BlobStore>,
}

impl LocalAgent {
    fn docker(&self) -> anyhow::Result<bollard::Docker> {
        let path = self.engine.display().to_string();
        bollard::Docker::connect_with_unix(&path, 300, bollard::API_DEFAULT_VERSION)
            .with_context(|| format!("connecting to the engine at {path}"))
    }

    /// The Docker executor, secret files, node networking and the worker over them, and the
    /// log subscriptions that read the tasks' logs through the same executor.
    async fn start_worker(
        &self,
        node_id: String,
        assignments: watch::Receiver<NodeAssignments>,
        reports: mpsc::Sender<Vec<TaskStatusReport>>,
        logs: LogLink,
        floating: FloatingLink,
        peers: PeerLink,
    ) -> anyhow::Result<()> {
        let docker = self
            .docker()?
            .negotiate_version()
            .await
            .context("negotiating the engine API version")?;
        let stop = CancellationToken::new();
        let blobs = crate::node_registry::start(
            &self.registry,
            &self.data_dir,
            peers.clone(),
            stop.clone(),
        )
        .context("starting the node registry")?;
        let transfers = shoal_agent::images::Transfers::new(
            docker.clone(),
            Arc::new(SwarmPeers(peers)),
            &node_id,
        );
        let executor = Arc::new(
            DockerExecutor::new(docker.clone(), node_id.clone(), self.pull)
                .with_transfers(Arc::new(transfers)),
        );
        let files = Files::for_node(&self.files_root, &node_id, &self.data_dir)?;
        let net = NetworkAgent::start(NetworkConfig {
            node_id: node_id.clone(),
            docker: docker.clone(),
            plugin_dir: PathBuf::from("/run/docker/plugins"),
            upstream_dns: upstream_dns(),
            engine_socket: Some(self.engine.clone()),
        })
        .await
        .context("starting node networking")?;
        let network: Option<Arc<dyn NetworkBackend>> = Some(Arc::new(net));
        let volumes = Volumes::new(self.data_dir.join("volumes"), files.root().to_path_buf());
        let cfg = WorkerConfig {
            node_id: node_id.clone(),
            executor: executor.clone(),
            files: files.clone(),
            network: network.clone(),
            volumes: volumes.clone(),
        };
        tokio::spawn(shoal_agent::logs::run(
            executor.clone(),
            assignments.clone(),
            logs.commands,
            logs.batches,
            stop.clone(),
        ));
        let (hand_over, hand_over_rx) = mpsc::channel(4);
        let holder = shoal_agent::floating::holder::HolderConfig {
            node_id: node_id.clone(),
            advertise: floating
                .advertise
                .parse::<std::net::SocketAddr>()
                .map(|a| a.ip())
                .ok(),
            state_file: self.data_dir.join("floating.json"),
            guard_program: std::env::current_exe().ok(),
        };
        tokio::spawn(shoal_agent::floating::holder::run(
            holder,
            floating.down,
            floating.up,
            hand_over_rx,
            stop.clone(),
        ));
        let handle = tokio::spawn(worker::run(cfg, assignments, reports, stop.clone()));
        if let Ok(mut g) = self.running.lock() {
            *g = Some(Running {
                stop,
                handle,
                executor,
                files,
                network,
                volumes,
                floating: hand_over,
                blobs,
            });
        }
        Ok(())
    }
}

impl AgentHost for LocalAgent {
    fn start(
        &self,
        node_id: String,
        assignments: watch::Receiver<NodeAssignments>,
        reports: mpsc::Sender<Vec<TaskStatusReport>>,
        logs: LogLink,
        floating: FloatingLink,
        peers: PeerLink,
    ) -> BoxFuture<'_, Result<(), AgentError>> {
        Box::pin(async move {
            self.start_worker(node_id, assignments, reports, logs, floating, peers)
                .await
                .map_err(|e| format!("{e:#}").into())
        })
    }

    fn export_image(&self, image_id: String) -> BoxFuture<'_, Result<ImageExport, AgentError>> {
        Box::pin(async move {
            let docker = self.docker().map_err(|e| format!("{e:#}"))?;
            let export = shoal_agent::images::export(&docker, &image_id).await?;
            Ok(ImageExport {
                size: export.size,
                chunks: Box::pin(futures::StreamExt::map(export.chunks, |r| {
                    r.map(|b| b.to_vec())
                })),
            })
        })
    }

    fn export_blob(&self, digest: String) -> BoxFuture<'_, Result<ImageExport, AgentError>> {
        Box::pin(async move {
            let store = self
                .running
                .lock()
                .ok()
                .and_then(|g| g.as_ref().and_then(|r| r.blobs.clone()));
            let Some(store) = store else {
                return Err("this node runs no registry".into());
            };
            Ok(crate::node_registry::export_blob(&store, &digest).await?)
        })
    }

    fn hand_over(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let chan = self
                .running
                .lock()
                .ok()
                .and_then(|g| g.as_ref().map(|r| r.floating.clone()));
            let Some(hand_over) = chan else { return };
            let (done, released) = tokio::sync::oneshot::channel();
            if hand_over.send(done).await.is_err() {
                return;
            }
            // The holder answers once the leader confirmed its releases (or after 0.5 s).
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), released).await;
        })
    }

    fn stop(&self, remove: bool) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let running = self.running.lock().ok().and_then(|mut g| g.take());
            let Some(r) = running else { return };
            r.stop.cancel();
            let _ = r.handle.await;
            if remove {
                worker::remove_all(r.executor.as_ref(), &r.files, &r.volumes).await;
                // The registry's blobs belong to the swarm this node leaves.
                if r.blobs.is_some() {
                    let dir = self.data_dir.join("registry");
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        tracing::warn!(dir = %dir.display(), error = %e, "removing the node registry's blobs");
                    }
                }
                if let Some(n) = &r.network {
                    n.cleanup().await;
                }
            } else {
                // Shutdown: containers run on with their own mounts of their files; the host
                // keeps no copy of the secrets while the daemon is down.
                r.files.unmount();
            }
        })
    }
}

/// The agent's transfers over the swarm: the leader's index through the session, holders'
/// exports through their peer ports.
struct SwarmPeers(PeerLink);

impl shoal_agent::images::Peers for SwarmPeers {
    fn sources(
        &self,
        image: &str,
    ) -> BoxFuture<'static, Result<Vec<shoal_api::images::ImageSource>, String>> {
        let (link, image) = (self.0.clone(), image.to_string());
        Box::pin(async move { link.sources(&image).await.map_err(|e| e.to_string()) })
    }

    fn export(
        &self,
        source: &shoal_api::images::ImageSource,
        image_id: &str,
    ) -> BoxFuture<'static, Result<shoal_agent::images::Export, String>> {
        let (link, source, id) = (self.0.clone(), source.clone(), image_id.to_string());
        Box::pin(async move {
            let e = link.export(&source, &id).await.map_err(|e| e.to_string())?;
            Ok(shoal_agent::images::Export {
                size: e.size,
                chunks: Box::pin(futures::StreamExt::map(e.chunks, |r| {
                    r.map(bytes::Bytes::from)
                })),
            })
        })
    }
}

/// `--floating-ip`: adds the address once this node leads a swarm that lacks it; gives up
/// (with the reason in the log) when the manager refuses it.
async fn add_floating_ip(
    daemon: Arc<Daemon>,
    spec: shoal_api::floating::FloatingIpSpec,
    stop: CancellationToken,
) {
    loop {
        let manager = daemon.manager.read().await.clone();
        if let Some(m) = manager.filter(|m| m.store.is_leader()) {
            match shoal_manager::floating::add(&m.store, &spec).await {
                Ok(ip) => {
                    tracing::info!(address = %ip.address, "floating address added (--floating-ip)");
                    return;
                }
                Err(e) if e.status == 409 && e.message.contains("already exists") => return,
                Err(e) if e.status < 500 => {
                    tracing::error!(address = %spec.address, error = %e.message, "--floating-ip refused");
                    return;
                }
                Err(e) => tracing::debug!(error = %e.message, "--floating-ip: retrying"),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

/// `--registry-addr`: `ADDR:PORT`, or "off".
fn registry_addr(value: &str) -> anyhow::Result<Option<std::net::SocketAddr>> {
    if value == "off" {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .with_context(|| format!("--registry-addr {value:?}: ADDR:PORT, or \"off\""))
}

/// `--peer-port`: a port, or "off".
fn peer_port(value: &str) -> anyhow::Result<Option<u16>> {
    if value == "off" {
        return Ok(None);
    }
    match value.parse::<u16>() {
        Ok(p) if p > 0 => Ok(Some(p)),
        _ => anyhow::bail!("--peer-port {value:?}: a port from 1 to 65535, or \"off\""),
    }
}

/// The host's resolvers, where names that are not services are forwarded.
fn upstream_dns() -> Vec<std::net::SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| std::net::SocketAddr::new(ip, 53))
        .collect()
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(args: DaemonArgs) -> anyhow::Result<()> {
    // Before anything: a --listen the daemon would refuse later is refused now.
    let listen = listen_addrs(&args)?;
    let peer_port = peer_port(&args.peer_port)?;
    // First, before anything that can wait (the engine, the store, the network): an operator
    // who sees nothing else still knows the daemon started, with what, and as which process.
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        pid = std::process::id(),
        data_dir = %args.data_dir.display(),
        engine = %args.engine.display(),
        socket = %args.socket.display(),
        "shoal daemon starting"
    );
    // Everything the daemon creates is for root alone (keys, the raft store, sockets), whatever
    // umask it was started with; files meant for others (secrets given to containers) get their
    // modes set explicitly.
    // SAFETY: umask only sets this process's file mode creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data dir {}", args.data_dir.display()))?;
    // Held until this function returns (and by the kernel until the process is gone).
    let lock = DataDirLock::acquire(&args.data_dir)?;
    tracing::debug!(lock = %lock.path().display(), "data dir locked");
    let repaired = shoal_manager::node::datadir::secure(&args.data_dir)
        .with_context(|| format!("securing the data dir {}", args.data_dir.display()))?;
    for r in &repaired {
        tracing::warn!(
            path = %r.path.display(),
            was = format_args!("{:o}", r.was),
            now = format_args!("{:o}", r.now),
            "data dir: repaired a mode looser than root-only"
        );
    }
    // Before anything starts: a file where the socket goes is the operator's, not ours.
    crate::socket::check_free(&args.socket)?;
    // A swarm init or --force-new-cluster cut short by a crash: back to one raft state.
    for r in node::aside::recover(&args.data_dir).with_context(|| {
        format!(
            "recovering set-aside raft state in {}",
            args.data_dir.display()
        )
    })? {
        match r {
            node::aside::Recovered::RolledBack(p) => tracing::warn!(
                aside = %p.display(),
                "an unfinished change of the raft state (init or --force-new-cluster) was undone"
            ),
            node::aside::Recovered::Removed(p) => {
                tracing::info!(path = %p.display(), "removed raft state set aside by a finished change")
            }
        }
    }
    let engine = connect_engine(&args.engine).await?;
    let agent = Arc::new(LocalAgent {
        engine: args.engine.clone(),
        files_root: PathBuf::from("/run/shoal/files"),
        data_dir: std::fs::canonicalize(&args.data_dir).unwrap_or_else(|_| args.data_dir.clone()),
        pull: if args.pull == "never" {
            PullPolicy::Never
        } else {
            PullPolicy::Missing
        },
        registry: crate::node_registry::RegistrySettings {
            addr: registry_addr(&args.registry_addr)?,
            copies: args.registry_copies.max(1),
        },
        running: Mutex::new(None),
    });
    let daemon = Arc::new(Daemon {
        lock: Default::default(),
        engine,
        data_dir: args.data_dir.clone(),
        agent: agent.clone(),
        manager: Default::default(),
        node: Default::default(),
        hostname: args.hostname.clone(),
        lifecycle: Default::default(),
        peer_port,
    });
    if let Some(identity) = Identity::load(&args.data_dir) {
        match keys::kek(&args.data_dir).context("reading this node's key-encryption key")? {
            keys::Kek::Open(kek) => {
                tracing::info!(node = %identity.node_id, role = %identity.role, addr = %identity.addr, "rejoining the swarm this node was part of");
                warn_if_not_local(&identity.addr);
                let cert = keys::load_cert(&args.data_dir, &kek).with_context(|| {
                    format!(
                        "loading this node's certificate from {}; `docker swarm leave --force` resets the node",
                        certs_dir(&args.data_dir).display()
                    )
                })?;
                daemon.lock.set_kek(kek);
                let bootstrap = identity.raft_id == 1;
                node::start_node(&daemon, identity, &cert, None, bootstrap)
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
            }
            keys::Kek::Locked => {
                warn_if_not_local(&identity.addr);
                tracing::warn!(node = %identity.node_id, "this manager is locked (autolock): `docker swarm unlock` starts it");
                daemon.lock.set_locked(identity);
            }
        }
    }

    let listener = crate::socket::bind(&args.socket, 0o660)?;
    tracing::info!(socket = %args.socket.display(), "serving the Docker API");

    let stop = CancellationToken::new();
    shoal_manager::remote::start(daemon.clone(), &listen, stop.clone()).await?;

    for address in &args.floating_ip {
        // Checked now, so a typo stops the daemon instead of waiting for a swarm.
        let spec = shoal_api::floating::FloatingIpSpec {
            address: address.clone(),
            ..Default::default()
        };
        shoal_api::floating::check(&spec, "")
            .map_err(|e| anyhow::anyhow!("--floating-ip {address}: {}", e.message))?;
        tokio::spawn(add_floating_ip(daemon.clone(), spec, stop.clone()));
    }
    start_dashboard(&args, daemon.clone(), stop.clone()).await?;
    crate::metrics::start(&args, daemon.clone(), agent_metrics(&agent), stop.clone()).await?;
    let app = api::app(daemon.clone());
    let s = stop.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        s.cancel();
    });
    axum::serve(
        listener,
        axum::ServiceExt::<axum::extract::Request>::into_make_service(app),
    )
    .with_graceful_shutdown(stop.clone().cancelled_owned())
    .await
    .context("serving the API")?;
    tracing::info!("shutting down; task containers keep running");
    if let Some((_, session)) = daemon.node.read().await.clone() {
        // While the session is open: the leader hears the release and moves the address at once.
        agent.hand_over().await;
        session.stop();
    }
    agent.stop(false).await;
    if let Some(m) = daemon.manager.read().await.clone() {
        m.shutdown().await;
    }
    let _ = std::fs::remove_file(&args.socket);
    drop(lock);
    Ok(())
}

/// The engine client `/metrics` counts task containers with (None if the socket is unusable).
fn agent_metrics(agent: &LocalAgent) -> Option<bollard::Docker> {
    agent.docker().ok()
}

/// `--dashboard-addr` (default 127.0.0.1:9000): refused at start when given and unusable; the
/// default only warns when its port is taken (another daemon on this machine has it).
async fn start_dashboard(
    args: &DaemonArgs,
    daemon: Arc<Daemon>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let Some((addr, given)) = optional_addr(
        args.dashboard_addr.as_deref(),
        DEFAULT_DASHBOARD,
        "--dashboard-addr",
    )?
    else {
        return Ok(());
    };
    use shoal_dashboard::serve::{tls_config, TlsFiles, Transport};
    // Plain HTTP on loopback; elsewhere HTTPS, with the user's certificate or the cluster's.
    let transport = match (&args.dashboard_cert, &args.dashboard_key) {
        (Some(cert), Some(key)) => Transport::Files(tls_config(&TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        })?),
        _ if addr.ip().is_loopback() => Transport::Plain,
        _ => Transport::Cluster,
    };
    let secure = !matches!(transport, Transport::Plain);
    let dash = shoal_dashboard::Dashboard::new(daemon, secure);
    match shoal_dashboard::serve::start(addr, dash, transport, stop).await {
        Ok(_) => Ok(()),
        Err(e @ shoal_dashboard::serve::ServeError::Bind { .. }) if !given => {
            tracing::warn!(error = %e, "the dashboard is not served (its default port is taken); pick another with --dashboard-addr");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// The dashboard's default address: loopback, so nothing is exposed until the operator says so.
const DEFAULT_DASHBOARD: &str = "127.0.0.1:9000";

/// An optional listener's address: None when "off", with whether the operator gave it.
pub(crate) fn optional_addr(
    given: Option<&str>,
    default: &str,
    flag: &str,
) -> anyhow::Result<Option<(std::net::SocketAddr, bool)>> {
    let text = given.unwrap_or(default);
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let addr = text.parse::<std::net::SocketAddr>().map_err(|e| {
        anyhow::anyhow!("{flag} {text}: {e} (want ADDR:PORT, e.g. 127.0.0.1:9000, or off)")
    })?;
    Ok(Some((addr, given.is_some())))
}

/// The `--listen` addresses, refused at start when malformed, plain TCP off loopback, or not an
/// address of this machine.
fn listen_addrs(args: &DaemonArgs) -> anyhow::Result<Vec<shoal_manager::remote::ListenAddr>> {
    let mut out = Vec::new();
    for given in &args.listen {
        let l = shoal_manager::remote::parse_listen(given, args.tls)?;
        let ip = l.addr.ip();
        if !ip.is_unspecified() && address_is_local(&ip.to_string()) == Some(false) {
            anyhow::bail!(
                "--listen {given}: {ip} is on none of this machine's interfaces; give one of its addresses, or 0.0.0.0 for all"
            );
        }
        if !out.contains(&l) {
            out.push(l);
        }
    }
    Ok(out)
}

/// The engine's first answer, saying every 10 s that it is still awaited (a stopped or hung
/// engine would otherwise look like a hung daemon).
async fn connect_engine(socket: &std::path::Path) -> anyhow::Result<EngineProxy> {
    let started = std::time::Instant::now();
    let connect = EngineProxy::connect(socket.to_path_buf());
    tokio::pin!(connect);
    let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
    every.tick().await;
    let engine = loop {
        tokio::select! {
            r = &mut connect => break r,
            _ = every.tick() => tracing::warn!(
                engine = %socket.display(),
                waited_s = started.elapsed().as_secs(),
                "the Docker Engine has not answered yet; still waiting"
            ),
        }
    }
    .with_context(|| format!("connecting to the Docker Engine at {}", socket.display()))?;
    tracing::info!(engine_api = engine.engine_api_version(), "engine reachable");
    Ok(engine)
}

/// Whether the IP of `addr` (`ip:port`) is one of this machine's (this namespace's) addresses:
/// binding to it succeeds only then. `None` for a host name, which is not resolved here.
fn address_is_local(addr: &str) -> Option<bool> {
    let ip = addr
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| addr.parse::<std::net::IpAddr>())
        .ok()?;
    match std::net::UdpSocket::bind((ip, 0)) {
        Ok(_) => Some(true),
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => Some(false),
        Err(_) => None,
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Says so at start when the address in this node's identity is on none of its interfaces:
/// the node was moved, and the others will not reach it there.
fn warn_if_not_local(addr: &str) {
    if address_is_local(addr) == Some(false) {
        tracing::warn!(
            addr = %addr,
            "this node's address is on none of its interfaces: the other nodes will not reach it here (moved to another machine or namespace? `docker swarm leave --force` and join again)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::address_is_local;

    #[test]
    fn an_address_is_local_only_when_an_interface_has_it() {
        assert_eq!(address_is_local("127.0.0.1:2377"), Some(true));
        assert_eq!(address_is_local("127.0.0.1"), Some(true));
        // TEST-NET-3 (RFC 5737): on no interface of any machine.
        assert_eq!(address_is_local("203.0.113.77:2377"), Some(false));
        assert_eq!(address_is_local("manager.example:2377"), None);
    }
}
