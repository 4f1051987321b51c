//! The TCP listeners: accept, handshake off the accept loop, then the API over HTTP (upgrades
//! included, for attach and exec) on each connection. Every TLS connection is recorded under its
//! client certificate's serial, so a revocation ends the connections already open, hijacked
//! streams included: their I/O fails from the moment they are cut.

use super::audit::{self, App, Who};
use parking_lot::{Mutex, RwLock};
use shoal_rpc::RefusalLog;
use shoal_store::Store;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// How long a client has to send its first byte and finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// What Go's HTTP server (and so dockerd) answers plain HTTP on a TLS port.
const HTTP_ON_TLS_PORT: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// The server's TLS settings, swapped when its certificate is renewed.
pub(crate) type SharedTls = Arc<RwLock<Arc<shoal_pki::rustls::ServerConfig>>>;

/// What every TLS connection of one manager's listeners shares.
pub(crate) struct TlsContext {
    /// The current server config.
    pub tls: SharedTls,
    /// The manager's store: revocations are read from it.
    pub store: Store,
    /// Open connections by certificate serial.
    pub conns: Arc<Conns>,
    /// Refused handshakes logged lately.
    refusals: Mutex<RefusalLog<(IpAddr, String)>>,
}

impl TlsContext {
    /// A context serving with `tls`, revocations read from `store`.
    pub(crate) fn new(tls: SharedTls, store: Store) -> TlsContext {
        TlsContext {
            tls,
            store,
            conns: Arc::default(),
            refusals: Mutex::new(RefusalLog::default()),
        }
    }
}

/// Open TLS connections by client certificate serial, each with the token that ends it.
#[derive(Default)]
pub(crate) struct Conns {
    next: AtomicU64,
    open: Mutex<HashMap<String, HashMap<u64, CancellationToken>>>,
}

impl Conns {
    fn add(&self, serial: &str, token: CancellationToken) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.open
            .lock()
            .entry(serial.to_string())
            .or_default()
            .insert(id, token);
        id
    }

    fn remove(&self, serial: &str, id: u64) {
        let mut open = self.open.lock();
        if let Some(m) = open.get_mut(serial) {
            m.remove(&id);
            if m.is_empty() {
                open.remove(serial);
            }
        }
    }

    /// Ends every open connection of the certificate with this serial; how many there were.
    pub(crate) fn cut(&self, serial: &str) -> usize {
        let ended = self.open.lock().remove(serial).unwrap_or_default();
        for t in ended.values() {
            t.cancel();
        }
        ended.len()
    }

    /// The serials with open connections.
    pub(crate) fn serials(&self) -> Vec<String> {
        self.open.lock().keys().cloned().collect()
    }
}

/// The next connection on `listener` (Nagle off), or `None` once `serving` is cancelled. A
/// failed accept (EMFILE and the like) is logged and retried after a moment instead of spinning.
async fn next_connection(
    listener: &TcpListener,
    serving: &CancellationToken,
) -> Option<(TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            _ = serving.cancelled() => return None,
            r = listener.accept() => match r {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    return Some((tcp, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a TCP API connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Accepts on `listener` until `serving` is cancelled, each connection on a task of its own.
pub(crate) async fn accept_tls(
    listener: TcpListener,
    app: App,
    ctx: Arc<TlsContext>,
    serving: CancellationToken,
) {
    while let Some((tcp, peer)) = next_connection(&listener, &serving).await {
        tokio::spawn(tls_connection(
            tcp,
            peer,
            app.clone(),
            ctx.clone(),
            serving.child_token(),
        ));
    }
}

/// Accepts plain TCP (loopback only, checked when parsed) until `serving` is cancelled.
pub(crate) async fn accept_plain(listener: TcpListener, app: App, serving: CancellationToken) {
    while let Some((tcp, peer)) = next_connection(&listener, &serving).await {
        let who = Who {
            name: "plain-tcp".into(),
            peer,
        };
        let token = serving.child_token();
        tokio::spawn(http(Cut::new(tcp, token.clone()), who, app.clone(), token));
    }
}

/// One TLS connection: refuses plain HTTP as Go's server does, handshakes (the config's
/// verifier refuses other CAs, node certificates and revoked ones), then serves the API until
/// the client goes, the listener stops or the certificate is revoked.
async fn tls_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: App,
    ctx: Arc<TlsContext>,
    token: CancellationToken,
) {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] != 0x16 => {
            // Not a TLS handshake record: most likely HTTP sent to the TLS port.
            refused(&ctx, peer, "plain HTTP sent to the TLS port");
            let mut tcp = tcp;
            let _ = tcp.write_all(HTTP_ON_TLS_PORT).await;
            let _ = tcp.shutdown().await;
            return;
        }
        Ok(Ok(1)) => {}
        _ => return,
    }
    let config = ctx.tls.read().clone();
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            refused(&ctx, peer, &handshake_error(&e));
            return;
        }
        Err(_) => {
            refused(&ctx, peer, "the handshake took too long");
            return;
        }
    };
    ack_now(tls.get_ref().0);
    let client = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|leaf| shoal_pki::api_client_of_der(leaf));
    let Some(Ok(client)) = client else {
        // The verifier requires an API client certificate: this cannot happen.
        refused(&ctx, peer, "no readable API client certificate");
        return;
    };
    let conn = ctx.conns.add(&client.serial, token.clone());
    // Revoked between the handshake and now: the revocation's cut may have run before `add`.
    if super::certs::is_revoked(&ctx.store, &client.serial) {
        ctx.conns.remove(&client.serial, conn);
        return;
    }
    tracing::debug!(client = %client.name, %peer, "TCP API connection opened");
    let who = Who {
        name: client.name.clone(),
        peer,
    };
    http(Cut::new(tls, token.clone()), who, app, token).await;
    ctx.conns.remove(&client.serial, conn);
    tracing::debug!(client = %client.name, %peer, "TCP API connection closed");
}

/// Acknowledges the client's last handshake flight at once. A TLS 1.3 server (sending no session
/// tickets, so that no session is ever resumed) has nothing to say after the client's Finished,
/// so the kernel would delay that ACK by up to 40 ms; a client that leaves Nagle's algorithm on
/// (Python's plain `ssl` sockets do) holds its first request back until the ACK comes. Go
/// servers do not meet this because they send tickets.
fn ack_now(tcp: &TcpStream) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a socket this task owns, with a pointer to a live c_int of the
    // length given; a failure only means the ACK goes out on the kernel's usual schedule.
    unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// rustls' reason, without tokio's wrapping.
fn handshake_error(e: &std::io::Error) -> String {
    match e
        .get_ref()
        .and_then(|i| i.downcast_ref::<shoal_pki::rustls::Error>())
    {
        Some(r) => r.to_string(),
        None => e.to_string(),
    }
}

fn refused(ctx: &TlsContext, peer: SocketAddr, reason: &str) {
    if let Some(suppressed) = ctx
        .refusals
        .lock()
        .due((peer.ip(), reason.to_string()), Instant::now())
    {
        tracing::warn!(%peer, reason, suppressed, "refused a TCP API connection");
    }
}

/// Serves HTTP/1.1 (and upgrades) on `io` until it closes or `token` is cancelled.
async fn http<I>(io: Cut<I>, who: Who, app: App, token: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |req| audit::serve(app.clone(), who.clone(), req));
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service);
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "TCP API connection ended with an error");
            }
        }
        _ = token.cancelled() => {}
    }
}

/// A connection that fails every read and write once its token is cancelled, so a cut reaches
/// streams that outlive their request (attach, exec, follow) as well.
struct Cut<I> {
    inner: I,
    token: CancellationToken,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<I> Cut<I> {
    fn new(inner: I, token: CancellationToken) -> Cut<I> {
        Cut {
            inner,
            cancelled: Box::pin(token.clone().cancelled_owned()),
            token,
        }
    }

    /// Ready with an error once cut; otherwise registers for the cut and lets the I/O go on.
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        if self.token.is_cancelled() || self.cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the connection was ended (certificate revoked or listener stopped)",
            ));
        }
        Poll::Pending
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Cut<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Poll::Ready(e) = self.poll_cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Cut<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Poll::Ready(e) = self.poll_cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Poll::Ready(e) = self.poll_cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_rpc::REFUSAL_LOG_EVERY;

    #[test]
    fn refusals_are_logged_once_per_peer_and_reason_per_window() {
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let k = |r: &str| (ip, r.to_string());
        assert_eq!(log.due(k("revoked"), t0), Some(0));
        assert_eq!(log.due(k("revoked"), t0 + Duration::from_secs(1)), None);
        // Another reason from the same peer is its own line.
        assert_eq!(log.due(k("unknown ca"), t0), Some(0));
        assert_eq!(
            log.due(
                k("revoked"),
                t0 + REFUSAL_LOG_EVERY + Duration::from_secs(1)
            ),
            Some(1)
        );
    }

    #[tokio::test]
    async fn a_cut_connection_fails_its_reads_and_writes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, mut b) = tokio::io::duplex(64);
        let token = CancellationToken::new();
        let mut cut = Cut::new(a, token.clone());
        b.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        cut.read_exact(&mut buf).await.unwrap();
        // A read waiting for data wakes up failed when the connection is cut.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1];
            let r = cut.read(&mut buf).await;
            (r, cut)
        });
        token.cancel();
        let (r, mut cut) = reader.await.unwrap();
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::ConnectionAborted);
        assert!(cut.write_all(b"x").await.is_err());
        drop(b);
    }

    #[test]
    fn open_connections_are_cut_by_serial() {
        let conns = Conns::default();
        let (a, b, c) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        conns.add("aa", a.clone());
        let id = conns.add("aa", b.clone());
        conns.add("bb", c.clone());
        conns.remove("aa", id);
        assert_eq!(conns.cut("aa"), 1);
        assert!(a.is_cancelled() && !b.is_cancelled() && !c.is_cancelled());
        assert_eq!(conns.serials(), ["bb"]);
        assert_eq!(conns.cut("aa"), 0);
    }
}
