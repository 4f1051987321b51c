//! The raft transport between managers.
//!
//! The store does not know how bytes travel: a [`RaftTransport`] (mutual-TLS gRPC in
//! `shoal-rpc`) carries opaque, postcard-encoded messages, and the receiving side hands them to
//! [`crate::Store::handle_rpc`]. Without a transport every peer is unreachable, which is all a
//! single-voter cluster needs.

use std::future::Future;
use std::io::Cursor;
use std::sync::Arc;

use futures::future::BoxFuture;
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, Snapshot, SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};

use crate::raft_types::{NodeId, TypeConfig};

/// Which store RPC a message is, so the receiver knows how to decode it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcKind {
    /// openraft `append_entries` (also the heartbeat).
    AppendEntries,
    /// openraft `vote`.
    Vote,
    /// A whole snapshot in one message.
    Snapshot,
    /// A follower's write, forwarded to the leader.
    Propose,
}

impl RpcKind {
    /// The name used in logs and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RpcKind::AppendEntries => "append_entries",
            RpcKind::Vote => "vote",
            RpcKind::Snapshot => "snapshot",
            RpcKind::Propose => "propose",
        }
    }

    /// Parses [`RpcKind::as_str`].
    pub fn parse(s: &str) -> Option<RpcKind> {
        Some(match s {
            "append_entries" => RpcKind::AppendEntries,
            "vote" => RpcKind::Vote,
            "snapshot" => RpcKind::Snapshot,
            "propose" => RpcKind::Propose,
            _ => return None,
        })
    }
}

/// Why a message did not get an answer from the peer; the store treats all of them as the peer
/// being unreachable for now and lets raft retry.
#[derive(thiserror::Error, Debug, Clone)]
#[error("raft transport to {addr}: {message}")]
pub struct TransportError {
    /// Where the message was going.
    pub addr: String,
    /// What went wrong.
    pub message: String,
}

/// Carries store messages to another manager; implemented over mutual TLS by `shoal-rpc`.
pub trait RaftTransport: Send + Sync + 'static {
    /// Sends `payload` as a `kind` message to the manager at `addr`; returns its encoded answer.
    fn call(
        &self,
        addr: &str,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>>;
}

/// A snapshot on the wire: the leader's vote, the metadata and the whole state.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotMessage {
    pub(crate) vote: Vote<NodeId>,
    pub(crate) meta: SnapshotMeta<NodeId, BasicNode>,
    #[serde(with = "serde_bytes")]
    pub(crate) data: Vec<u8>,
}

/// A store message between managers that would not encode or decode.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    /// Encoding for the wire failed.
    #[error("encode: {0}")]
    Encode(#[source] postcard::Error),
    /// What arrived is not a message of the expected type (or another version's).
    #[error("decode: {0}")]
    Decode(#[source] postcard::Error),
}

/// Encodes a store message (postcard: compact, and the raft log already uses it).
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_allocvec(v).map_err(CodecError::Encode)
}

/// Decodes a store message.
pub(crate) fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, CodecError> {
    postcard::from_bytes(b).map_err(CodecError::Decode)
}

/// Creates a connection to a peer manager for openraft.
#[derive(Clone, Default)]
pub struct NetworkFactory {
    transport: Option<Arc<dyn RaftTransport>>,
}

impl NetworkFactory {
    /// A factory sending through `transport` (None: every peer is unreachable).
    pub fn new(transport: Option<Arc<dyn RaftTransport>>) -> Self {
        NetworkFactory { transport }
    }
}

/// A connection to one peer.
#[derive(Clone)]
pub struct PeerConnection {
    target: NodeId,
    addr: String,
    transport: Option<Arc<dyn RaftTransport>>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerConnection {
            target,
            addr: node.addr.clone(),
            transport: self.transport.clone(),
        }
    }
}

/// What can go wrong with one exchange, before it is shaped into openraft's error types.
enum CallError {
    /// The peer could not be reached (or no transport is configured).
    Unreachable(String),
    /// The peer's answer (or our request) is not a valid message.
    Protocol(CodecError),
}

impl PeerConnection {
    async fn exchange<Req: Serialize, Resp: for<'a> Deserialize<'a>>(
        &self,
        kind: RpcKind,
        req: &Req,
    ) -> Result<Resp, CallError> {
        let Some(t) = &self.transport else {
            return Err(CallError::Unreachable(format!(
                "no transport configured for node {} at {}",
                self.target, self.addr
            )));
        };
        let payload = encode(req).map_err(CallError::Protocol)?;
        let answer = t
            .call(&self.addr, kind, payload)
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        decode(&answer).map_err(CallError::Protocol)
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        e: CallError,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        match e {
            CallError::Unreachable(m) => {
                RPCError::Unreachable(Unreachable::new(&std::io::Error::other(m)))
            }
            CallError::Protocol(m) => {
                RPCError::Network(NetworkError::new(&std::io::Error::other(m)))
            }
        }
    }

    fn remote<E: std::error::Error>(
        &self,
        e: RaftError<NodeId, E>,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            BasicNode::new(self.addr.clone()),
            e,
        ))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let r: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> = self
            .exchange(RpcKind::AppendEntries, &rpc)
            .await
            .map_err(|e| self.rpc_error(e))?;
        r.map_err(|e| self.remote(e))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        // Snapshots travel whole through `full_snapshot`; openraft calls this only when that
        // is not implemented.
        Err(RPCError::Unreachable(Unreachable::new(
            &std::io::Error::other("chunked snapshots are not used; see full_snapshot"),
        )))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let r: Result<VoteResponse<NodeId>, RaftError<NodeId>> = self
            .exchange(RpcKind::Vote, &rpc)
            .await
            .map_err(|e| self.rpc_error(e))?;
        r.map_err(|e| self.remote(e))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let msg = SnapshotMessage {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot.into_inner(),
        };
        let r: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> =
            match self.exchange(RpcKind::Snapshot, &msg).await {
                Ok(r) => r,
                Err(CallError::Unreachable(m)) => {
                    return Err(StreamingError::Unreachable(Unreachable::new(
                        &std::io::Error::other(m),
                    )))
                }
                Err(CallError::Protocol(m)) => {
                    return Err(StreamingError::Network(NetworkError::new(
                        &std::io::Error::other(m),
                    )))
                }
            };
        r.map_err(|e| {
            StreamingError::RemoteError(RemoteError::new_with_node(
                self.target,
                BasicNode::new(self.addr.clone()),
                e,
            ))
        })
    }
}

/// Rebuilds a snapshot received whole.
pub(crate) fn snapshot_of(msg: SnapshotMessage) -> (Vote<NodeId>, Snapshot<TypeConfig>) {
    (
        msg.vote,
        Snapshot {
            meta: msg.meta,
            snapshot: Box::new(Cursor::new(msg.data)),
        },
    )
}
