//! Task logs for a manager that is not the leader: only the leader holds the nodes' sessions,
//! so a follower's API subscribes through the leader's broker over the `Logs` RPC (swarmkit's
//! managers proxy `SubscribeLogs` to the leader the same way). The leader's side reads the
//! subscription only as fast as the follower takes it (HTTP/2 flow control), so credit flows
//! back to the nodes at the pace of the client at the end; when the follower lets go (its
//! client left), the leader's subscription is dropped and the nodes stop.

use super::{LogBroker, LogItem, Source, Subscription};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use shoal_api::logs::{LogOptions, LogSelector};
use shoal_api::ApiError;
use shoal_rpc::pb;
use shoal_store::Store;
use tokio::sync::mpsc;
use tonic::Status;

/// What a follower asks the leader for.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    selector: LogSelector,
    options: LogOptions,
}

/// A subscription served by the leader, read by a follower.
pub(crate) struct RemoteStream {
    stream: tonic::Streaming<pb::LogItems>,
    ended: bool,
}

impl RemoteStream {
    /// The next item from the leader; a broken stream ends with an error item.
    pub(crate) async fn next(&mut self) -> Option<LogItem> {
        if self.ended {
            return None;
        }
        let item = match self.stream.message().await {
            Ok(Some(m)) => match serde_json::from_slice::<LogItem>(&m.json) {
                Ok(item) => return Some(item),
                Err(e) => LogItem::Error(format!("undecodable log stream from the leader: {e}")),
            },
            Ok(None) => {
                self.ended = true;
                return None;
            }
            Err(s) => LogItem::Error(format!(
                "rpc error: code = {:?} desc = {}",
                s.code(),
                s.message()
            )),
        };
        self.ended = true;
        Some(item)
    }
}

/// Docker's answer when no leader can serve (dockerd's words when a manager has none).
fn no_leader(why: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(format!(
        "rpc error: code = Unavailable desc = {why}; the swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online."
    ))
}

/// Subscribes through the leader.
pub(crate) async fn subscribe(
    store: &Store,
    pool: &shoal_rpc::Pool,
    selector: LogSelector,
    options: LogOptions,
) -> Result<Subscription, ApiError> {
    let (_, addr) = store.leader().ok_or_else(|| no_leader("no leader known"))?;
    let mut client = pool.logs(&addr).map_err(no_leader)?;
    let json = serde_json::to_vec(&Request { selector, options })
        .map_err(|e| ApiError::internal(format!("encoding a log request: {e}")))?;
    let stream = client
        .subscribe(pb::LogRequest { json })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::Unavailable => no_leader(s.message()),
            _ => ApiError::internal(format!(
                "rpc error: code = {:?} desc = {}",
                s.code(),
                s.message()
            )),
        })?
        .into_inner();
    Ok(Subscription(Source::Remote(RemoteStream {
        stream,
        ended: false,
    })))
}

/// The leader's side of a follower's subscription: the items, as fast as the follower reads.
pub(crate) async fn serve(
    broker: &LogBroker,
    req: pb::LogRequest,
) -> Result<shoal_rpc::LogItemStream, Status> {
    let store = &broker.inner.store;
    if !store.is_leader() {
        let leader = store
            .leader()
            .filter(|(id, _)| *id != store.raft_id())
            .map(|(_, addr)| shoal_rpc::LeaderHint { addr });
        return Err(shoal_rpc::not_leader(leader.as_ref()));
    }
    let r: Request = serde_json::from_slice(&req.json)
        .map_err(|e| Status::invalid_argument(format!("log request: {e}")))?;
    let mut sub = broker.subscribe_local(r.selector, r.options).await;
    // A few items ahead at most: the rest waits in the nodes, on their windows.
    let (tx, rx) = mpsc::channel::<Result<pb::LogItems, Status>>(4);
    tokio::spawn(async move {
        loop {
            let item = tokio::select! {
                // The follower let go: dropping `sub` ends the subscription on every node.
                _ = tx.closed() => break,
                item = sub.next() => item,
            };
            let Some(item) = item else { break };
            let json = match serde_json::to_vec(&item) {
                Ok(j) => j,
                Err(e) => {
                    tracing::error!(error = %e, "encoding log lines");
                    break;
                }
            };
            if tx.send(Ok(pb::LogItems { json })).await.is_err() {
                break;
            }
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
}
