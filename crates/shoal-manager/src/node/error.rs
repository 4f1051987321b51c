//! What can go wrong in the node's lifecycle, with the step and object it concerns. The API
//! answers each case with the status Docker uses for it.

use super::session::NodeSessionError;
use crate::cluster::ManagerError;
use shoal_api::{ApiError, Role};
use std::path::PathBuf;

/// Why init, join, leave, a role change or a certificate renewal failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Init or join on a node that is in a swarm already.
    #[error("This node is already part of a swarm. Use \"docker swarm leave\" to leave this swarm and join another one.")]
    AlreadyInSwarm,
    /// Leave on a node outside any swarm.
    #[error("This node is not part of a swarm")]
    NotInSwarm,
    /// Leave on a manager without `--force`, in Swarm's words for the cluster as it is
    /// ([`super::leave::manager_leave_refusal`]).
    #[error("{0}")]
    ManagerLeaveNeedsForce(String),
    /// `--force-new-cluster` on a node that is not a manager.
    #[error("--force-new-cluster needs this node to be a manager of the swarm to recover")]
    NotAManagerToRecover,
    /// A key, certificate or TLS setting could not be made, read or saved.
    #[error("{what}: {source}")]
    Pki {
        /// The step.
        what: &'static str,
        /// What the pki said.
        source: shoal_pki::PkiError,
    },
    /// A file in the data directory could not be written or moved.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// The step.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// A record would not encode or decode.
    #[error("{what}: {source}")]
    Json {
        /// The record.
        what: &'static str,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The manager would not start.
    #[error(transparent)]
    Manager(#[from] ManagerError),
    /// The node's session (and agent) would not start.
    #[error(transparent)]
    Session(#[from] NodeSessionError),
    /// A store write failed, in Docker's words.
    #[error(transparent)]
    Store(#[from] ApiError),
    /// The join address does not make a channel.
    #[error("RemoteAddrs: {0}")]
    RemoteAddr(#[source] shoal_rpc::RpcError),
    /// No manager answered at the join address, or its CA differs from the token's.
    #[error("could not join the swarm through {remote}: {message} (a manager must answer there, and its CA must match the token)")]
    ManagerUnreachable {
        /// The address tried.
        remote: String,
        /// The gRPC status message.
        message: String,
    },
    /// The managers refused the join token.
    #[error("JoinToken: {0}")]
    TokenRefused(String),
    /// The managers refused the address this node announced (another manager's).
    #[error("AdvertiseAddr: {0}")]
    AddressInUse(String),
    /// The manager's CA is not the one the token pins.
    #[error("JoinToken: the manager's CA does not match the token")]
    CaMismatch,
    /// A manager named a role this node does not know.
    #[error("the managers issued a certificate for {0}")]
    UnknownRole(#[from] shoal_api::role::UnknownRole),
    /// The managers still see the node's old role.
    #[error(
        "the managers issued a {issued} certificate, not {wanted}; will retry on the next change"
    )]
    WrongRole {
        /// The role in the new certificate.
        issued: Role,
        /// The role the assignments asked for.
        wanted: Role,
    },
    /// The node's keys could not be read or written.
    #[error(transparent)]
    Keys(#[from] super::keys::KeyError),
    /// The node is locked (autolock): only `docker swarm unlock` opens its keys.
    #[error("Swarm is encrypted and needs to be unlocked before it can be used. Please use \"docker swarm unlock\" to unlock it.")]
    Locked,
    /// `swarm leave` without `--force` on a locked node.
    #[error("Swarm is encrypted and locked. Please unlock it first or use `--force` to ignore this message.")]
    LockedLeave,
    /// `swarm unlock` on a manager that is not locked.
    #[error("swarm is not locked")]
    NotLocked,
    /// `swarm unlock` with text that is not an unlock key.
    #[error("invalid key string")]
    InvalidKeyString,
    /// `swarm unlock` with a key that does not open the node's keys.
    #[error("swarm could not be unlocked: invalid key provided")]
    InvalidUnlockKey,
    /// No manager issued a certificate.
    #[error("no manager issued a certificate: {last}")]
    NoIssuer {
        /// The last manager's answer.
        last: String,
    },
}

impl NodeError {
    /// A pki failure at `what`.
    pub(crate) fn pki(what: &'static str) -> impl FnOnce(shoal_pki::PkiError) -> NodeError {
        move |source| NodeError::Pki { what, source }
    }

    /// A file failure at `what`, on `path`.
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> NodeError {
        let path = path.into();
        move |source| NodeError::Io { what, path, source }
    }
}
