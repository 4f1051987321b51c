//! The node's lifecycle: what a machine does to be part of a swarm, manager or worker. `init`
//! creates a swarm, `join` enters one, `leave` forgets it, `role` follows promote/demote,
//! `renewal` keeps the certificate fresh, `start` brings it all up (join and daemon restart),
//! `session` and `client` keep its dispatcher session with the leader, `datadir` keeps its
//! data directory root-only, `aside` keeps raft state set aside until its replacement is durable,
//! `keys` keeps its private key and data key sealed at rest, `lock` holds the key-encryption key
//! (or the locked state under autolock). The API's handlers only
//! validate and call in here.

pub mod aside;
pub mod client;
pub mod datadir;
mod error;
mod identity;
pub mod init;
pub mod join;
pub mod keys;
pub mod leave;
pub mod local;
pub mod lock;
pub mod peer;
mod renewal;
mod role;
pub mod session;
mod start;

pub use error::NodeError;
pub use identity::{certs_dir, Identity};
pub use peer::{ImageExport, PeerError, PeerLink, DEFAULT_PEER_PORT};
pub use session::{AgentError, AgentHost, FloatingLink, LogLink, NodeSession};
pub use start::start_node;
