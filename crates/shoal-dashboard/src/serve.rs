//! Where the dashboard listens: plain HTTP on loopback, HTTPS anywhere else, with the user's
//! certificate (PEM files) or one from the cluster CA (made once the node is a manager, renewed
//! with its node certificate). Over HTTPS an API client certificate of the cluster
//! (`shoal client-cert`) logs its browser in without the password. The listener is bound before
//! [`start`] returns, so a taken port stops the daemon's start with the reason.

use crate::Dashboard;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

/// Why the dashboard cannot be served as asked.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Plain HTTP off loopback would send the password and session cookies in the clear.
    #[error("--dashboard-addr {0}: plain HTTP is served on loopback only; give --dashboard-cert and --dashboard-key for HTTPS")]
    PlainOffLoopback(SocketAddr),
    /// The address could not be bound.
    #[error("--dashboard-addr {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What bind said.
        #[source]
        source: std::io::Error,
    },
    /// The certificate or key could not be read or used.
    #[error("dashboard certificate {path}: {message}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// The user's certificate chain and key for HTTPS.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The server side of HTTPS from the user's PEM files (TLS 1.2 and 1.3, ring's defaults).
pub fn tls_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |path: &PathBuf, message: String| ServeError::Certificate {
        path: path.clone(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad(&files.cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&files.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(&files.cert, "no certificate in the file".into()));
    }
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| bad(&files.key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&files.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(&files.key, e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How the dashboard speaks on its address.
#[derive(Clone)]
pub enum Transport {
    /// Plain HTTP (loopback only).
    Plain,
    /// HTTPS with the user's certificate.
    Files(Arc<rustls::ServerConfig>),
    /// HTTPS with a certificate from the cluster CA.
    Cluster,
}

/// The name of the API client certificate a request's connection presented (over HTTPS).
#[derive(Clone, Debug)]
pub struct ClientCertUser(pub String);

/// Binds `addr` and serves the dashboard there until `stop`.
pub async fn start(
    addr: SocketAddr,
    dash: Arc<Dashboard>,
    transport: Transport,
    stop: CancellationToken,
) -> Result<SocketAddr, ServeError> {
    if matches!(transport, Transport::Plain) && !addr.ip().is_loopback() {
        return Err(ServeError::PlainOffLoopback(addr));
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    let app = crate::router(dash.clone());
    match transport {
        Transport::Plain => {
            tracing::info!(addr = %local, "dashboard on http://{local}/ (loopback)");
            tokio::spawn(async move {
                let served = axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the dashboard stopped");
                }
            });
        }
        Transport::Files(config) => {
            tracing::info!(addr = %local, "dashboard on https://{local}/ (your certificate)");
            let current = Arc::new(parking_lot::RwLock::new(Some(config)));
            tokio::spawn(accept_tls(listener, app, current, stop));
        }
        Transport::Cluster => {
            tracing::info!(addr = %local, "dashboard on https://{local}/ (a certificate from the cluster CA, once this node is a manager)");
            let current = Arc::new(parking_lot::RwLock::new(None));
            tokio::spawn(follow_cluster_cert(
                dash,
                local,
                current.clone(),
                stop.clone(),
            ));
            tokio::spawn(accept_tls(listener, app, current, stop));
        }
    }
    Ok(local)
}

type CurrentTls = Arc<parking_lot::RwLock<Option<Arc<rustls::ServerConfig>>>>;

/// Keeps `current` at the cluster-issued settings of this node's manager: made when the node
/// becomes a manager (and the CA is in its store), remade when its certificate is renewed,
/// cleared when it stops being one.
async fn follow_cluster_cert(
    dash: Arc<Dashboard>,
    addr: SocketAddr,
    current: CurrentTls,
    stop: CancellationToken,
) {
    let d = dash.daemon().clone();
    let mut managers = d.manager.changes();
    loop {
        managers.borrow_and_update();
        let manager = d.manager.read().await.clone();
        match manager {
            None => *current.write() = None,
            Some(m) => {
                let mut certs = m.certificate();
                let mut store = m.store.watch();
                let manager_stop = m.stopping();
                loop {
                    certs.borrow_and_update();
                    match shoal_manager::remote::dashboard_tls(&d, &m, addr) {
                        Ok(c) => *current.write() = Some(c),
                        Err(e) => {
                            tracing::debug!(error = %e, "the dashboard's certificate waits for the cluster CA")
                        }
                    }
                    let ready = current.read().is_some();
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        r = certs.changed() => if r.is_err() { break },
                        _ = store.recv(), if !ready => {}
                        _ = manager_stop.cancelled() => break,
                        r = managers.changed() => { if r.is_err() { return } break }
                    }
                }
                continue;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            r = managers.changed() => if r.is_err() { return },
        }
    }
}

async fn accept_tls(
    listener: TcpListener,
    app: axum::Router,
    current: CurrentTls,
    stop: CancellationToken,
) {
    let mut said_waiting = false;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "dashboard accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(config) = current.read().clone() else {
            if !said_waiting {
                tracing::info!("dashboard connection refused: no certificate yet (this node is not a swarm manager)");
                said_waiting = true;
            }
            continue;
        };
        said_waiting = false;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let app = app.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            // A peer that never finishes its handshake holds nothing for long.
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "dashboard TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            // Verified by the handshake (cluster CA, API client, not revoked): its name.
            let user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|der| shoal_pki::api_client_of_der(der).ok())
                .map(|c| ClientCertUser(c.name));
            let svc = tower::ServiceExt::map_request(
                app,
                move |req: http::Request<hyper::body::Incoming>| {
                    let (mut parts, body) = req.into_parts();
                    parts.extensions.insert(axum::extract::ConnectInfo(peer));
                    if let Some(u) = &user {
                        parts.extensions.insert(u.clone());
                    }
                    axum::extract::Request::from_parts(parts, axum::body::Body::new(body))
                },
            );
            let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(
                    TokioIo::new(tls),
                    hyper_util::service::TowerToHyperService::new(svc),
                )
                .into_owned();
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}
