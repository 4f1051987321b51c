//! The log broker (swarmkit's `manager/logbroker`): how `docker service logs` reads the logs of
//! tasks on any node. Only the leader holds the nodes' sessions, so it serves subscriptions:
//! it works out which nodes run the selected tasks, sends each a
//! [`ManagerMessage::LogSubscribe`] down its session, and passes the batches their agents send
//! up ([`AgentMessage::Logs`](shoal_api::dispatch::AgentMessage::Logs)) to the subscriber,
//! giving each node credit back as the subscriber takes its lines, so a slow client holds at
//! most [`LOG_WINDOW`] per node here and never stalls a session. Another manager's API asks the
//! leader over the `Logs` RPC ([`remote`]).
//!
//! A subscription ends when its client goes away (its [`Subscription`] is dropped: every node
//! is told to stop), or, not following, once every node has sent all it has. A node whose
//! session ends takes only its own part of the stream with it; not following, the stream then
//! ends with swarmkit's "incomplete log stream" error naming it. Following, tasks that start
//! later on other nodes join the stream, and a node that comes back is asked again, from the
//! time of the last line it sent.

pub mod remote;

use crate::db;
use crate::dispatcher::session::send;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use shoal_api::dispatch::ManagerMessage;
use shoal_api::logs::{
    LogBatch, LogOptions, LogSelector, LogStream, LogSubscription, LogTime, LOG_WINDOW,
};
use shoal_api::models::TaskState;
use shoal_api::objects::{state_rank, StoredTask};
use shoal_api::ApiError;
use shoal_rpc::pb;
use shoal_store::Store;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// Where a node's session takes messages to the node.
pub type SessionTx = mpsc::Sender<Result<pb::ManagerMessage, Status>>;

/// One line of a task's output with where it comes from: what the API prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The node that ran the task (the session's node, never what the node says).
    pub node_id: String,
    /// The task's service.
    pub service_id: String,
    /// The task.
    pub task_id: String,
    /// Where the container wrote it.
    pub stream: LogStream,
    /// When.
    pub time: LogTime,
    /// The line, its newline included.
    #[serde(with = "shoal_api::logs::text_or_bytes")]
    pub data: Vec<u8>,
}

/// What a subscriber reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogItem {
    /// Lines from one node.
    Lines(Vec<LogLine>),
    /// Why the stream is incomplete; the stream ends after it.
    Error(String),
}

/// The leader's log subscriptions and the sessions they travel on; on every manager, so any
/// manager's API can subscribe (a follower through the leader).
#[derive(Clone)]
pub struct LogBroker {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    pool: Arc<shoal_rpc::Pool>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Each node's current session.
    sessions: HashMap<String, Session>,
    subs: HashMap<String, Sub>,
}

/// A node's session as the broker sees it: its messages go through one queue, in the order
/// the broker decided them (a subscription's close never overtakes its start).
struct Session {
    id: u64,
    queue: mpsc::UnboundedSender<ManagerMessage>,
}

impl Session {
    /// Queues `m` for the node; a session that has ended drops it.
    fn send(&self, m: ManagerMessage) {
        let _ = self.queue.send(m);
    }
}

/// What a subscription's reader gets from the broker.
enum Event {
    /// Lines from a node's session, which are given back as credit once read.
    Lines {
        node: String,
        session: u64,
        cost: u64,
        lines: Vec<LogLine>,
    },
    Error(String),
}

struct Sub {
    selector: LogSelector,
    options: LogOptions,
    /// None once the subscription is complete (the reader sees the end after what is queued).
    out: Option<mpsc::UnboundedSender<Event>>,
    /// Nodes serving it now.
    parts: HashMap<String, Part>,
    /// Following: every node known to run a selected task, asked again when it comes back.
    wanted: HashSet<String>,
    /// Following: the time of the last line each node sent, where a new part starts.
    resume: HashMap<String, LogTime>,
    /// Why the stream is incomplete (not following).
    errors: Vec<String>,
}

struct Part {
    session: u64,
    /// Bytes sent by the node and not yet read by the subscriber.
    outstanding: u64,
}

impl Sub {
    fn follow(&self) -> bool {
        self.options.follow
    }

    /// Asks `node` (whose session is `s`) to serve the subscription.
    fn start_part(&mut self, id: &str, node: &str, s: &Session) {
        let mut options = self.options.clone();
        if let Some(t) = self.resume.get(node) {
            // Back after its session ended: from just after the last line it sent.
            let next = LogTime {
                secs: t.secs + i64::from(t.nanos == 999_999_999),
                nanos: if t.nanos == 999_999_999 {
                    0
                } else {
                    t.nanos + 1
                },
            };
            options.since = Some(options.since.map_or(next, |s| s.max(next)));
            options.tail = None;
        }
        self.parts.insert(
            node.to_string(),
            Part {
                session: s.id,
                outstanding: 0,
            },
        );
        let sub = LogSubscription {
            id: id.to_string(),
            selector: self.selector.clone(),
            options,
            window: LOG_WINDOW,
        };
        s.send(ManagerMessage::LogSubscribe(Box::new(sub)));
    }

    /// `node`'s part is over, with `error` if it did not finish. True when the whole
    /// subscription is complete (not following, no node left).
    fn end_part(&mut self, id: &str, node: &str, error: Option<String>) -> bool {
        if self.parts.remove(node).is_none() {
            return false;
        }
        if let Some(e) = error {
            if self.follow() {
                tracing::info!(subscription = %id, node = %node, error = %e, "a node left a followed log stream");
            } else {
                self.errors.push(e);
            }
        }
        !self.follow() && self.parts.is_empty()
    }

    /// Ends the stream: the reader gets the error, if any, then the end.
    fn complete(&mut self) {
        if let Some(out) = self.out.take() {
            if !self.errors.is_empty() {
                let _ = out.send(Event::Error(incomplete(&self.errors)));
            }
        }
    }
}

/// Swarmkit's words for a stream some nodes could not serve, as dockerd passes them on.
fn incomplete(reasons: &[String]) -> String {
    format!(
        "rpc error: code = Unknown desc = warning: incomplete log stream. some logs could not be retrieved for the following reasons: {}",
        reasons.join(", ")
    )
}

impl LogBroker {
    /// A broker for this manager's store; `pool` reaches the leader when this manager is not.
    pub fn new(store: Store, pool: Arc<shoal_rpc::Pool>) -> LogBroker {
        LogBroker {
            inner: Arc::new(Inner {
                store,
                pool,
                state: Mutex::default(),
            }),
        }
    }

    /// Subscribes to the logs of the tasks `selector` picks: here on the leader, through the
    /// leader elsewhere.
    pub async fn subscribe(
        &self,
        selector: LogSelector,
        options: LogOptions,
    ) -> Result<Subscription, ApiError> {
        if self.inner.store.is_leader() {
            return Ok(self.subscribe_local(selector, options).await);
        }
        remote::subscribe(&self.inner.store, &self.inner.pool, selector, options).await
    }

    /// Log subscriptions open on this manager now.
    pub fn open_subscriptions(&self) -> usize {
        self.inner.state.lock().subs.len()
    }

    /// Serves a subscription from this manager's sessions (the leader's).
    pub(crate) async fn subscribe_local(
        &self,
        selector: LogSelector,
        options: LogOptions,
    ) -> Subscription {
        let id = shoal_api::id::new_id();
        let store = &self.inner.store;
        // Watched before the tasks are read, so a task placed in between is not missed.
        let changes = options.follow.then(|| store.watch());
        let (nodes, pending) = selected_nodes(store, &selector, options.follow);
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut st = self.inner.state.lock();
            let State { sessions, subs } = &mut *st;
            let mut sub = Sub {
                selector: selector.clone(),
                options: options.clone(),
                out: Some(tx),
                parts: HashMap::new(),
                wanted: HashSet::new(),
                resume: HashMap::new(),
                errors: Vec::new(),
            };
            for node in &nodes {
                match sessions.get(node) {
                    Some(s) => sub.start_part(&id, node, s),
                    None if !options.follow => {
                        sub.errors.push(format!("node {node} is not available"))
                    }
                    None => {}
                }
                if options.follow {
                    sub.wanted.insert(node.clone());
                }
            }
            if !options.follow {
                sub.errors.extend(
                    pending
                        .iter()
                        .map(|t| format!("task {t} has not been scheduled")),
                );
            }
            tracing::debug!(subscription = %id, nodes = sub.parts.len(), follow = options.follow, "log subscription");
            if !options.follow && sub.parts.is_empty() {
                sub.complete();
            } else {
                subs.insert(id.clone(), sub);
            }
        }
        let watcher = CancellationToken::new();
        if let Some(changes) = changes {
            tokio::spawn(follow_tasks(
                self.clone(),
                id.clone(),
                changes,
                watcher.clone(),
            ));
        }
        Subscription(Source::Local {
            id,
            rx,
            broker: self.clone(),
            _watcher: watcher.drop_guard(),
        })
    }

    /// A node's session opened: subscriptions that follow its tasks ask it again.
    pub(crate) fn node_connected(&self, node: &str, session: u64, tx: SessionTx) {
        let (queue, mut rx) = mpsc::unbounded_channel::<ManagerMessage>();
        // Until the session ends or the broker forgets it (a newer session of the node).
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if !send(&tx, &m).await {
                    break;
                }
            }
        });
        let mut st = self.inner.state.lock();
        let State { sessions, subs } = &mut *st;
        let s = Session { id: session, queue };
        for (id, sub) in subs.iter_mut() {
            if sub.follow() && sub.wanted.contains(node) && !sub.parts.contains_key(node) {
                sub.start_part(id, node, &s);
            }
        }
        sessions.insert(node.to_string(), s);
    }

    /// A node's session ended: its parts of every subscription end with it.
    pub(crate) fn node_disconnected(&self, node: &str, session: u64) {
        let mut st = self.inner.state.lock();
        if st.sessions.get(node).is_some_and(|s| s.id == session) {
            st.sessions.remove(node);
        }
        let mut complete = Vec::new();
        let State { sessions, subs } = &mut *st;
        for (id, sub) in subs.iter_mut() {
            if sub.parts.get(node).is_some_and(|p| p.session == session) {
                let why = format!("node {node} disconnected unexpectedly");
                if sub.end_part(id, node, Some(why)) {
                    complete.push(id.clone());
                }
                // Back already on a new session (the old one's end was noticed late): ask it
                // there.
                if let Some(s) = sessions.get(node).filter(|_| sub.follow()) {
                    sub.start_part(id, node, s);
                }
            }
        }
        for id in complete {
            if let Some(mut sub) = subs.remove(&id) {
                sub.complete();
            }
        }
    }

    /// A batch from `node`'s session `session`: its lines go to the subscriber, if they are
    /// lines of that node's selected tasks and within its window.
    pub(crate) fn publish(&self, node: &str, session: u64, batch: LogBatch) {
        // Read outside the lock: which service each task is of, and whether it is this node's.
        let mut owner: HashMap<String, Option<String>> = HashMap::new();
        for m in &batch.messages {
            owner.entry(m.task_id.clone()).or_insert_with(|| {
                db::get::<StoredTask>(&self.inner.store, &m.task_id)
                    .filter(|t| t.obj.node_id() == Some(node))
                    .map(|t| t.obj.service_id().to_string())
            });
        }
        let mut st = self.inner.state.lock();
        let State { sessions, subs } = &mut *st;
        let Some(sub) = subs.get_mut(&batch.id) else {
            // Ended here already (its client left); the node has been told.
            return;
        };
        if sub.parts.get(node).is_none_or(|p| p.session != session) {
            return;
        }
        let mut complete = false;
        let cost: u64 = batch.messages.iter().map(|m| m.cost()).sum();
        let over = sub
            .parts
            .get(node)
            .is_some_and(|p| p.outstanding.saturating_add(cost) > LOG_WINDOW);
        if over {
            tracing::warn!(node = %node, subscription = %batch.id, "a node sent logs past its window; its part of the stream ends");
            if let Some(s) = sessions.get(node) {
                s.send(ManagerMessage::LogClose {
                    id: batch.id.clone(),
                });
            }
            let why = format!("node {node} sent more logs than it was given credit for");
            complete = sub.end_part(&batch.id, node, Some(why));
        } else if !batch.messages.is_empty() {
            let mut lines = Vec::with_capacity(batch.messages.len());
            let mut last = None;
            for m in batch.messages {
                let service = owner.get(&m.task_id).cloned().flatten();
                let Some(service_id) = service.filter(|s| sub.selector.matches(&m.task_id, s))
                else {
                    tracing::debug!(node = %node, task = %m.task_id, "dropped log lines of a task the node does not run");
                    continue;
                };
                last = Some(last.map_or(m.time, |l: LogTime| l.max(m.time)));
                lines.push(LogLine {
                    node_id: node.to_string(),
                    service_id,
                    task_id: m.task_id,
                    stream: m.stream,
                    time: m.time,
                    data: m.data,
                });
            }
            if let Some(t) = last {
                let r = sub.resume.entry(node.to_string()).or_insert(t);
                *r = (*r).max(t);
            }
            if let Some(p) = sub.parts.get_mut(node) {
                p.outstanding += cost;
            }
            let event = Event::Lines {
                node: node.to_string(),
                session,
                cost,
                lines,
            };
            if let Some(out) = &sub.out {
                let _ = out.send(event);
            }
        }
        if batch.done && !over {
            complete = sub.end_part(&batch.id, node, None);
        }
        if complete {
            if let Some(mut sub) = subs.remove(&batch.id) {
                sub.complete();
            }
        }
    }

    /// The subscriber read `cost` bytes that `node` sent: the node may send that much more.
    fn credit(&self, id: &str, node: &str, session: u64, cost: u64) {
        let mut st = self.inner.state.lock();
        let State { sessions, subs } = &mut *st;
        let Some(part) = subs
            .get_mut(id)
            .and_then(|s| s.parts.get_mut(node))
            .filter(|p| p.session == session)
        else {
            return;
        };
        part.outstanding = part.outstanding.saturating_sub(cost);
        if let Some(s) = sessions.get(node).filter(|s| s.id == session) {
            s.send(ManagerMessage::LogCredit {
                id: id.to_string(),
                bytes: cost,
            });
        }
    }

    /// The subscriber went away: every node serving it is told to stop.
    fn unsubscribe(&self, id: &str) {
        let mut st = self.inner.state.lock();
        let State { sessions, subs } = &mut *st;
        let Some(sub) = subs.remove(id) else { return };
        close_parts(sessions, id, &sub);
        tracing::debug!(subscription = %id, nodes = sub.parts.len(), "log subscriber left");
    }

    /// Following: `node` runs a selected task now; asked if it is not serving already.
    fn want(&self, id: &str, node: &str) {
        let mut st = self.inner.state.lock();
        let State { sessions, subs } = &mut *st;
        let Some(sub) = subs.get_mut(id) else { return };
        sub.wanted.insert(node.to_string());
        if !sub.parts.contains_key(node) {
            if let Some(s) = sessions.get(node) {
                sub.start_part(id, node, s);
            }
        }
    }

    /// Ends a subscription from this side (this manager stopped leading).
    fn abort(&self, id: &str, why: String) {
        let mut st = self.inner.state.lock();
        let State { sessions, subs } = &mut *st;
        if let Some(mut sub) = subs.remove(id) {
            close_parts(sessions, id, &sub);
            if let Some(out) = sub.out.take() {
                let _ = out.send(Event::Error(why));
            }
        }
    }
}

/// Tells every node still serving `sub` to stop.
fn close_parts(sessions: &HashMap<String, Session>, id: &str, sub: &Sub) {
    for (node, part) in &sub.parts {
        if let Some(s) = sessions.get(node).filter(|s| s.id == part.session) {
            s.send(ManagerMessage::LogClose { id: id.to_string() });
        }
    }
}

/// The nodes running tasks the selector picks, and the picked tasks no node has yet.
/// Not following, a service's tasks count once running (swarmkit's rule: the others have no
/// logs yet); tasks named by ID count whatever their state.
fn selected_nodes(
    store: &Store,
    selector: &LogSelector,
    follow: bool,
) -> (HashSet<String>, Vec<String>) {
    let mut nodes = HashSet::new();
    let mut pending = Vec::new();
    for t in db::list::<StoredTask>(store) {
        let t = t.obj;
        if t.is_attachment() {
            continue;
        }
        let by_id = selector.task_ids.iter().any(|id| id == t.id());
        let by_service = selector.service_ids.iter().any(|s| s == t.service_id());
        if !by_id
            && !(by_service && (follow || state_rank(t.state()) >= state_rank(TaskState::RUNNING)))
        {
            continue;
        }
        match t.node_id() {
            Some(n) => {
                nodes.insert(n.to_string());
            }
            None => pending.push(t.id().to_string()),
        }
    }
    (nodes, pending)
}

/// Following: adds the nodes that selected tasks land on later, until the subscription ends
/// (`stop`) or this manager stops leading (the subscription ends with an error then, as
/// swarmkit's broker stops with leadership).
async fn follow_tasks(
    broker: LogBroker,
    id: String,
    mut changes: tokio::sync::broadcast::Receiver<Arc<shoal_store::ChangeSet>>,
    stop: CancellationToken,
) {
    let store = broker.inner.store.clone();
    let selector = match broker.inner.state.lock().subs.get(&id) {
        Some(s) => s.selector.clone(),
        None => return,
    };
    let mut leadership = store.raft().metrics();
    loop {
        let touched: Vec<String> = tokio::select! {
            _ = stop.cancelled() => return,
            r = leadership.changed() => {
                if r.is_err() || !store.is_leader() {
                    broker.abort(&id, "rpc error: code = Unavailable desc = this manager stopped leading the swarm; the log stream ended".into());
                    return;
                }
                continue;
            }
            r = changes.recv() => match r {
                Ok(set) => set
                    .changes
                    .iter()
                    .filter(|c| c.kind == <StoredTask as db::Stored>::KIND)
                    .map(|c| c.id.clone())
                    .collect(),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    db::list::<StoredTask>(&store).into_iter().map(|t| t.obj.id().to_string()).collect()
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        };
        for task in touched {
            let Some(t) = db::get::<StoredTask>(&store, &task) else {
                continue;
            };
            if t.obj.is_attachment() || !selector.matches(t.obj.id(), t.obj.service_id()) {
                continue;
            }
            if let Some(node) = t.obj.node_id() {
                broker.want(&id, node);
            }
        }
    }
}

/// A log subscription as the API reads it; dropping it ends the subscription everywhere.
pub struct Subscription(Source);

enum Source {
    Local {
        id: String,
        rx: mpsc::UnboundedReceiver<Event>,
        broker: LogBroker,
        _watcher: tokio_util::sync::DropGuard,
    },
    Remote(remote::RemoteStream),
}

impl Subscription {
    /// The next lines, or the error that ends the stream; None at its end.
    pub async fn next(&mut self) -> Option<LogItem> {
        match &mut self.0 {
            Source::Local { id, rx, broker, .. } => match rx.recv().await? {
                Event::Lines {
                    node,
                    session,
                    cost,
                    lines,
                } => {
                    broker.credit(id, &node, session, cost);
                    Some(LogItem::Lines(lines))
                }
                Event::Error(e) => Some(LogItem::Error(e)),
            },
            Source::Remote(r) => r.next().await,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Source::Local { id, broker, .. } = &self.0 {
            broker.unsubscribe(id);
        }
    }
}
