//! Where the dashboard listens: plain HTTP on loopback only, HTTPS anywhere (a certificate the
//! user gives, PEM files). The listener is bound before [`start`] returns, so a taken port or a
//! refused address stops the daemon's start with the reason.

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

/// Binds `addr` and serves the dashboard there until `stop`.
pub async fn start(
    addr: SocketAddr,
    dash: Arc<Dashboard>,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: CancellationToken,
) -> Result<SocketAddr, ServeError> {
    if tls.is_none() && !addr.ip().is_loopback() {
        return Err(ServeError::PlainOffLoopback(addr));
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    let app = crate::router(dash);
    match tls {
        None => {
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
        Some(config) => {
            tracing::info!(addr = %local, "dashboard on https://{local}/");
            tokio::spawn(accept_tls(listener, app, config, stop));
        }
    }
    Ok(local)
}

async fn accept_tls(
    listener: TcpListener,
    app: axum::Router,
    config: Arc<rustls::ServerConfig>,
    stop: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
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
        let acceptor = acceptor.clone();
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
            let svc = tower::ServiceExt::map_request(
                app,
                move |req: http::Request<hyper::body::Incoming>| {
                    let (mut parts, body) = req.into_parts();
                    parts.extensions.insert(axum::extract::ConnectInfo(peer));
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
