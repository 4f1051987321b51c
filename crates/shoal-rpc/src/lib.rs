//! The node-to-node protocol: gRPC (tonic) over mutual TLS (rustls) on port 2377.
//!
//! This crate owns the wire and the TLS plumbing; what each call does is the manager's business,
//! through [`Handlers`]. Every connection's peer certificate chain reaches the handler as
//! [`PeerInfo`], so authorization (manager-only calls, removed nodes) is decided with the
//! cluster's state in hand. Refused handshakes and calls are logged with the reason.

#![warn(missing_docs)]

mod client;
mod leader;
mod peer;
mod server;

/// The generated protocol types and tonic stubs.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("shoal.v1");
}

pub use client::{connect, Pool};
pub use leader::{leader_hint, not_leader, LeaderHint};
pub use peer::{
    images_client, serve_peer, ImageChunkStream, ImageExporter, MAX_IMAGE_CHUNK, MAX_PEER_REQUEST,
};
pub use server::{
    bind, serve, Handlers, LogItemStream, PeerInfo, RefusalLog, ServerTls, SessionStream,
    REFUSAL_LOG_EVERY,
};

mod redact;

/// Largest CA message: joiners have no certificate yet, so anyone who can reach the port may
/// send one; a join request is a CSR and a node description, a few KiB.
pub const MAX_CA_MESSAGE: usize = 64 << 10;

/// Largest message a node sends up its session: status reports, heartbeats, its description.
pub const MAX_SESSION_UP: usize = 16 << 20;

/// Largest message a manager sends down a session: a node's whole assignments, with the
/// secret and config payloads its tasks use (Swarm caps each at 500 KB).
pub const MAX_SESSION_DOWN: usize = 256 << 20;

/// Largest log request a manager sends the leader: a selector and options, a few hundred bytes.
pub const MAX_LOG_REQUEST: usize = 64 << 10;

/// Largest item of a log stream the leader sends another manager: a batch of lines from one
/// node (a few hundred KiB of lines, some JSON around them).
pub const MAX_LOG_ITEMS: usize = 16 << 20;

/// Largest raft message between managers: the store keeps log batches below
/// [`shoal_store::MAX_RAFT_PAYLOAD`] and sends snapshots in chunks; the headroom is for a single
/// entry larger than a batch, which goes alone.
pub const MAX_RAFT_MESSAGE: usize = 2 * shoal_store::MAX_RAFT_PAYLOAD;

/// Name every manager certificate carries and every client verifies, as in Swarm.
pub const MANAGER_NAME: &str = "swarm-manager";

/// Why a connection or call failed, for callers that log or retry.
#[derive(thiserror::Error, Debug)]
pub enum RpcError {
    /// The address is not `host:port`.
    #[error("bad address {addr:?}: {reason}")]
    Address {
        /// The address given.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Listening on the address failed.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The remote answered with a gRPC error.
    #[error("{0}")]
    Status(#[from] tonic::Status),
    /// The channel could not be set up.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}
