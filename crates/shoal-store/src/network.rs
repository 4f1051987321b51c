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

/// Largest payload one raft message carries by default: a batch of log entries over it goes as
/// several messages, a snapshot as chunks of [`SNAPSHOT_CHUNK`], so the transport's per-message
/// limit stays moderate.
pub const MAX_RAFT_PAYLOAD: usize = 32 << 20;

/// Size of one snapshot chunk by default.
pub const SNAPSHOT_CHUNK: usize = 8 << 20;

/// How big raft messages may get: the transport refuses larger ones.
#[derive(Clone, Copy, Debug)]
pub struct WireLimits {
    /// Largest encoded batch of log entries (a single larger entry still goes alone).
    pub max_payload: usize,
    /// Snapshot chunk size.
    pub snapshot_chunk: usize,
}

impl Default for WireLimits {
    fn default() -> Self {
        WireLimits {
            max_payload: MAX_RAFT_PAYLOAD,
            snapshot_chunk: SNAPSHOT_CHUNK,
        }
    }
}

/// Which store RPC a message is, so the receiver knows how to decode it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcKind {
    /// openraft `append_entries` (also the heartbeat).
    AppendEntries,
    /// openraft `vote`.
    Vote,
    /// A whole snapshot in one message (still accepted; no longer sent).
    Snapshot,
    /// One chunk of a snapshot; the last one installs it.
    SnapshotChunk,
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
            RpcKind::SnapshotChunk => "snapshot_chunk",
            RpcKind::Propose => "propose",
        }
    }

    /// Parses [`RpcKind::as_str`].
    pub fn parse(s: &str) -> Option<RpcKind> {
        Some(match s {
            "append_entries" => RpcKind::AppendEntries,
            "vote" => RpcKind::Vote,
            "snapshot" => RpcKind::Snapshot,
            "snapshot_chunk" => RpcKind::SnapshotChunk,
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

/// One piece of a snapshot: `data` is the bytes at `offset` of `total`.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotChunk {
    pub(crate) vote: Vote<NodeId>,
    pub(crate) meta: SnapshotMeta<NodeId, BasicNode>,
    pub(crate) offset: u64,
    pub(crate) total: u64,
    #[serde(with = "serde_bytes")]
    pub(crate) data: Vec<u8>,
}

/// The answer to a chunk: go on, or (to the last) the outcome of installing the snapshot.
#[derive(Serialize, Deserialize)]
pub(crate) enum ChunkAnswer {
    /// Stored; send the next one.
    More,
    /// The snapshot is complete and was handed to raft.
    Installed(Box<Result<SnapshotResponse<NodeId>, Fatal<NodeId>>>),
}

/// A snapshot being received, chunk by chunk.
pub(crate) struct Incoming {
    snapshot_id: String,
    vote: Vote<NodeId>,
    total: u64,
    data: Vec<u8>,
}

/// Why a chunk was refused (the sender starts the snapshot over).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChunkError {
    /// A chunk that does not continue the snapshot being received.
    #[error(
        "snapshot chunk at {offset} of {snapshot_id}: expected offset {expected} of {receiving}"
    )]
    OutOfOrder {
        snapshot_id: String,
        offset: u64,
        expected: u64,
        receiving: String,
    },
    /// More bytes than the snapshot said it has.
    #[error("snapshot chunk past the announced {total} bytes")]
    TooLong { total: u64 },
}

/// A whole snapshot received, with the vote of the leader that sent it.
pub(crate) type Received = (Vote<NodeId>, Snapshot<TypeConfig>);

/// Adds `chunk` to what is being received; the whole snapshot once its last byte arrived.
pub(crate) fn receive_chunk(
    incoming: &mut Option<Incoming>,
    chunk: SnapshotChunk,
) -> Result<Option<Received>, ChunkError> {
    if chunk.offset == 0 {
        *incoming = Some(Incoming {
            snapshot_id: chunk.meta.snapshot_id.clone(),
            vote: chunk.vote,
            total: chunk.total,
            data: Vec::new(),
        });
    }
    let Some(cur) = incoming.as_mut().filter(|c| {
        c.snapshot_id == chunk.meta.snapshot_id
            && c.total == chunk.total
            && c.data.len() as u64 == chunk.offset
    }) else {
        let (receiving, expected) = incoming
            .as_ref()
            .map(|c| (c.snapshot_id.clone(), c.data.len() as u64))
            .unwrap_or_default();
        *incoming = None;
        return Err(ChunkError::OutOfOrder {
            snapshot_id: chunk.meta.snapshot_id,
            offset: chunk.offset,
            expected,
            receiving,
        });
    };
    let end = chunk.offset.checked_add(chunk.data.len() as u64);
    if end.is_none_or(|e| e > cur.total) {
        let total = cur.total;
        *incoming = None;
        return Err(ChunkError::TooLong { total });
    }
    cur.vote = chunk.vote;
    cur.data.extend_from_slice(&chunk.data);
    if (cur.data.len() as u64) < cur.total {
        return Ok(None);
    }
    let Some(done) = incoming.take() else {
        return Ok(None);
    };
    Ok(Some((
        done.vote,
        Snapshot {
            meta: chunk.meta,
            snapshot: Box::new(Cursor::new(done.data)),
        },
    )))
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
    limits: WireLimits,
}

impl NetworkFactory {
    /// A factory sending through `transport` (None: every peer is unreachable), keeping every
    /// message within `limits`.
    pub fn new(transport: Option<Arc<dyn RaftTransport>>, limits: WireLimits) -> Self {
        NetworkFactory { transport, limits }
    }
}

/// A connection to one peer.
#[derive(Clone)]
pub struct PeerConnection {
    target: NodeId,
    addr: String,
    transport: Option<Arc<dyn RaftTransport>>,
    limits: WireLimits,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerConnection {
            target,
            addr: node.addr.clone(),
            transport: self.transport.clone(),
            limits: self.limits,
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
        let payload = encode(req).map_err(CallError::Protocol)?;
        self.send(kind, payload).await
    }

    async fn send<Resp: for<'a> Deserialize<'a>>(
        &self,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> Result<Resp, CallError> {
        let Some(t) = &self.transport else {
            return Err(CallError::Unreachable(format!(
                "no transport configured for node {} at {}",
                self.target, self.addr
            )));
        };
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

impl PeerConnection {
    /// The longest run of `rpc`'s entries (at least one) whose encoding fits the payload limit,
    /// as a request of its own, with the last entry's log id. The commit index sent is capped
    /// at that entry, so the follower never commits past what it holds.
    #[allow(clippy::type_complexity)]
    fn fitting_prefix(
        &self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Result<
        (
            AppendEntriesRequest<TypeConfig>,
            Option<openraft::LogId<NodeId>>,
        ),
        CodecError,
    > {
        // The envelope (vote, ids, lengths) is small; 4 KiB covers it with room to spare.
        let mut room = self.limits.max_payload.saturating_sub(4096);
        let mut keep = 0usize;
        for e in &rpc.entries {
            let size = encode(e)?.len();
            if keep > 0 && size > room {
                break;
            }
            room = room.saturating_sub(size);
            keep += 1;
        }
        rpc.entries.truncate(keep.max(1));
        let last = rpc.entries.last().map(|e| e.log_id);
        rpc.leader_commit = rpc.leader_commit.min(last);
        Ok((rpc, last))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let payload = encode(&rpc).map_err(|e| self.rpc_error(CallError::Protocol(e)))?;
        if payload.len() <= self.limits.max_payload || rpc.entries.len() <= 1 {
            let r: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> = self
                .send(RpcKind::AppendEntries, payload)
                .await
                .map_err(|e| self.rpc_error(e))?;
            return r.map_err(|e| self.remote(e));
        }
        // Too big for one message: send the entries that fit and tell raft how far it got;
        // it sends the rest next.
        let (rpc, last) = self
            .fitting_prefix(rpc)
            .map_err(|e| self.rpc_error(CallError::Protocol(e)))?;
        let r: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> = self
            .exchange(RpcKind::AppendEntries, &rpc)
            .await
            .map_err(|e| self.rpc_error(e))?;
        match r.map_err(|e| self.remote(e))? {
            AppendEntriesResponse::Success => Ok(AppendEntriesResponse::PartialSuccess(last)),
            other => Ok(other),
        }
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
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let data = snapshot.snapshot.into_inner();
        let total = data.len() as u64;
        let step = self.limits.snapshot_chunk.max(1);
        let mut cancel = std::pin::pin!(cancel);
        let mut offset = 0usize;
        let r: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> = loop {
            if let Some(closed) = futures::FutureExt::now_or_never(cancel.as_mut()) {
                return Err(StreamingError::Closed(closed));
            }
            let end = offset.saturating_add(step).min(data.len());
            let chunk = SnapshotChunk {
                vote,
                meta: snapshot.meta.clone(),
                offset: offset as u64,
                total,
                data: data.get(offset..end).unwrap_or_default().to_vec(),
            };
            match self.exchange(RpcKind::SnapshotChunk, &chunk).await {
                Ok(ChunkAnswer::Installed(r)) => break *r,
                Ok(ChunkAnswer::More) if end < data.len() => offset = end,
                Ok(ChunkAnswer::More) => {
                    return Err(StreamingError::Network(NetworkError::new(
                        &std::io::Error::other(
                            "the peer wants more of a snapshot already sent whole",
                        ),
                    )))
                }
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
