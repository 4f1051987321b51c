//! Log subscriptions on this node (swarmkit's agent log publisher). The manager asks, over the
//! node's session, for the logs of the node's tasks a selector matches; each subscription reads
//! them through the executor, one reader per task, and sends them up in batches, never more
//! than its window ahead of the credit the manager gives back as its client reads. It ends when
//! it has sent everything (not following), when the manager closes it (its client went away),
//! or when the session that brought it ends; its readers, and their engine connections, end
//! with it.

use crate::executor::{ExecError, Executor};
use futures::StreamExt;
use shoal_api::dispatch::NodeAssignments;
use shoal_api::logs::{LogBatch, LogCommand, LogMessage, LogSubscription, MAX_LOG_BATCH};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A subscription being served.
struct Open {
    stop: CancellationToken,
    credit: Arc<Semaphore>,
    window: usize,
    generation: u64,
}

/// Serves the manager's log subscriptions from `commands` until `stop` or until the session
/// side lets go of `commands`, sending the batches into `batches`.
pub async fn run<E: Executor>(
    executor: Arc<E>,
    assignments: watch::Receiver<NodeAssignments>,
    mut commands: mpsc::Receiver<LogCommand>,
    batches: mpsc::Sender<LogBatch>,
    stop: CancellationToken,
) {
    let mut open: HashMap<String, Open> = HashMap::new();
    let mut generation = 0u64;
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(String, u64, &'static str)>();
    let end = |open: &mut HashMap<String, Open>, id: &str, why: &str| {
        if let Some(o) = open.remove(id) {
            o.stop.cancel();
            tracing::info!(subscription = %id, why, open = open.len(), "log subscription ended");
        }
    };
    loop {
        let cmd = tokio::select! {
            _ = stop.cancelled() => None,
            c = commands.recv() => c,
            Some((id, g, why)) = ended_rx.recv() => {
                if open.get(&id).is_some_and(|o| o.generation == g) {
                    end(&mut open, &id, why);
                }
                continue;
            }
        };
        let Some(cmd) = cmd else { break };
        match cmd {
            LogCommand::Subscribe(sub) => {
                if open.contains_key(&sub.id) {
                    continue;
                }
                generation += 1;
                let window = usize::try_from(sub.window.max(1)).unwrap_or(usize::MAX >> 4);
                let window = window.min(Semaphore::MAX_PERMITS);
                let o = Open {
                    stop: stop.child_token(),
                    credit: Arc::new(Semaphore::new(window)),
                    window,
                    generation,
                };
                tracing::info!(
                    subscription = %sub.id,
                    follow = sub.options.follow,
                    open = open.len() + 1,
                    "log subscription started"
                );
                let job = serve(
                    executor.clone(),
                    assignments.clone(),
                    *sub.clone(),
                    o.credit.clone(),
                    batches.clone(),
                    o.stop.clone(),
                );
                let ended = ended_tx.clone();
                let (id, g) = (sub.id.clone(), generation);
                tokio::spawn(async move {
                    let why = job.await;
                    let _ = ended.send((id, g, why));
                });
                open.insert(sub.id, o);
            }
            LogCommand::Credit { id, bytes } => {
                if let Some(o) = open.get(&id) {
                    // Never more than the window: a confused manager cannot unbound it.
                    let room = o.window.saturating_sub(o.credit.available_permits());
                    o.credit
                        .add_permits(usize::try_from(bytes).unwrap_or(usize::MAX).min(room));
                }
            }
            LogCommand::Close { id } => end(&mut open, &id, "closed by the manager"),
            LogCommand::CloseAll => {
                let ids: Vec<String> = open.keys().cloned().collect();
                for id in ids {
                    end(&mut open, &id, "session ended");
                }
            }
        }
    }
    let ids: Vec<String> = open.keys().cloned().collect();
    for id in ids {
        end(&mut open, &id, "agent stopped");
    }
}

/// One subscription's task readers: which tasks have one, and where they send.
struct Readers<E: Executor> {
    executor: Arc<E>,
    sub: LogSubscription,
    view: watch::Receiver<NodeAssignments>,
    credit: Arc<Semaphore>,
    /// Dropped when no reader is to start any more, so the channel closes after the last one.
    tx: Option<mpsc::Sender<LogMessage>>,
    started: HashSet<String>,
    running: JoinSet<()>,
}

impl<E: Executor> Readers<E> {
    /// Starts a reader for each task of `a` the selector matches that has none yet.
    fn start_new(&mut self, a: &NodeAssignments) {
        let Some(tx) = &self.tx else { return };
        for t in &a.tasks {
            if t.is_attachment()
                || !self.sub.selector.matches(t.id(), t.service_id())
                || !self.started.insert(t.id().to_string())
            {
                continue;
            }
            self.running.spawn(read_task(
                self.executor.clone(),
                t.id().to_string(),
                self.sub.clone(),
                self.view.clone(),
                self.credit.clone(),
                tx.clone(),
            ));
        }
        while self.running.try_join_next().is_some() {}
    }
}

/// Serves one subscription until it is done or `stop`; says why it ended. Its readers are
/// aborted when it returns (the `JoinSet` goes), which closes their engine streams.
async fn serve<E: Executor>(
    executor: Arc<E>,
    mut assignments: watch::Receiver<NodeAssignments>,
    sub: LogSubscription,
    credit: Arc<Semaphore>,
    out: mpsc::Sender<LogBatch>,
    stop: CancellationToken,
) -> &'static str {
    let follow = sub.options.follow;
    let id = sub.id.clone();
    let (tx, mut rx) = mpsc::channel::<LogMessage>(256);
    let mut readers = Readers {
        executor,
        sub,
        view: assignments.clone(),
        credit,
        tx: Some(tx),
        started: HashSet::new(),
        running: JoinSet::new(),
    };
    readers.start_new(&assignments.borrow_and_update());
    if !follow {
        // Not following: the channel closes once every reader has read to the end.
        readers.tx = None;
    }
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return "stopped",
            m = rx.recv() => {
                let Some(first) = m else {
                    let done = LogBatch { id, messages: Vec::new(), done: true };
                    tokio::select! {
                        _ = stop.cancelled() => return "stopped",
                        r = out.send(done) => return if r.is_ok() { "done" } else { "session ended" },
                    }
                };
                let mut bytes = first.data.len();
                let mut messages = vec![first];
                while bytes < MAX_LOG_BATCH {
                    match rx.try_recv() {
                        Ok(m) => {
                            bytes += m.data.len();
                            messages.push(m);
                        }
                        Err(_) => break,
                    }
                }
                let batch = LogBatch { id: id.clone(), messages, done: false };
                tokio::select! {
                    _ = stop.cancelled() => return "stopped",
                    r = out.send(batch) => if r.is_err() { return "session ended" },
                }
            }
            r = assignments.changed(), if readers.tx.is_some() => {
                if r.is_err() {
                    readers.tx = None;
                    continue;
                }
                // Following: tasks of the selection that came to this node since.
                readers.start_new(&assignments.borrow_and_update());
            }
        }
    }
}

/// Reads one task's container logs into `tx`, each line paid for with window credit first.
async fn read_task<E: Executor>(
    executor: Arc<E>,
    task_id: String,
    sub: LogSubscription,
    mut assignments: watch::Receiver<NodeAssignments>,
    credit: Arc<Semaphore>,
    tx: mpsc::Sender<LogMessage>,
) {
    let window = u32::try_from(sub.window.max(1)).unwrap_or(u32::MAX);
    loop {
        let mut lines = match executor.logs(&task_id, &sub.options).await {
            Ok(lines) => lines,
            Err(ExecError::NoContainer { .. }) if sub.options.follow => {
                // Following a task whose container is not made yet: wait for the task to move
                // on, for as long as it is this node's.
                let here = assignments.borrow().tasks.iter().any(|t| t.id() == task_id);
                if !here {
                    return;
                }
                tokio::select! {
                    r = assignments.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            Err(e) => {
                tracing::debug!(task = %task_id, error = %e, "no logs for a task");
                return;
            }
        };
        while let Some(line) = lines.next().await {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(task = %task_id, error = %e, "task logs ended early");
                    return;
                }
            };
            let m = LogMessage {
                task_id: task_id.clone(),
                stream: line.stream,
                time: line.time,
                data: line.data,
            };
            let cost = u32::try_from(m.cost()).unwrap_or(u32::MAX).min(window);
            match credit.acquire_many(cost).await {
                Ok(permit) => permit.forget(),
                Err(_) => return,
            }
            if tx.send(m).await.is_err() {
                return;
            }
        }
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{Found, LogLine, LogLines, Prepared};
    use shoal_api::logs::{LogOptions, LogSelector, LogStream, LogTime};
    use shoal_api::objects::StoredTask;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Each task's container says `lines` lines, then (following) holds its stream open;
    /// counts the streams open now.
    #[derive(Default)]
    struct Talker {
        lines: usize,
        open: Arc<AtomicUsize>,
    }

    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Executor for Talker {
        async fn list(&self) -> Result<Vec<Found>, ExecError> {
            Ok(Vec::new())
        }
        async fn prepare(&self, _: &StoredTask, _: &Prepared) -> Result<String, ExecError> {
            Ok(String::new())
        }
        async fn start(&self, _: &str) -> Result<Option<i64>, ExecError> {
            Ok(None)
        }
        async fn wait(&self, _: &str) -> Result<i64, ExecError> {
            Ok(0)
        }
        async fn shutdown(&self, _: &str) -> Result<(), ExecError> {
            Ok(())
        }
        async fn remove(&self, _: &str) -> Result<(), ExecError> {
            Ok(())
        }
        async fn logs(&self, task_id: &str, o: &LogOptions) -> Result<LogLines, ExecError> {
            if task_id.starts_with("none") {
                return Err(ExecError::NoContainer {
                    task: task_id.into(),
                });
            }
            self.open.fetch_add(1, Ordering::SeqCst);
            let guard = Counted(self.open.clone());
            let task = task_id.to_string();
            let said = futures::stream::iter((0..self.lines).map(move |i| {
                Ok(LogLine {
                    stream: LogStream::Stdout,
                    time: LogTime::default(),
                    data: format!("{task} line {i}\n").into_bytes(),
                })
            }));
            let follow = o.follow;
            let tail = futures::stream::once(async move {
                let _g = guard;
                if follow {
                    std::future::pending::<()>().await;
                }
                None
            })
            .filter_map(|x: Option<Result<LogLine, ExecError>>| async move { x });
            Ok(said.chain(tail).boxed())
        }
    }

    fn task(id: &str, service: &str) -> StoredTask {
        let mut t = StoredTask::default();
        t.task.id = Some(id.into());
        t.task.service_id = Some(service.into());
        t
    }

    fn sub(id: &str, follow: bool, window: u64) -> LogCommand {
        LogCommand::Subscribe(Box::new(LogSubscription {
            id: id.into(),
            selector: LogSelector {
                service_ids: vec!["web".into()],
                task_ids: vec![],
            },
            options: LogOptions {
                follow,
                stdout: true,
                ..Default::default()
            },
            window,
        }))
    }

    struct Agent {
        commands: mpsc::Sender<LogCommand>,
        batches: mpsc::Receiver<LogBatch>,
        open: Arc<AtomicUsize>,
        assignments: watch::Sender<NodeAssignments>,
    }

    fn agent(lines: usize, tasks: Vec<StoredTask>) -> Agent {
        let open = Arc::new(AtomicUsize::new(0));
        let exec = Arc::new(Talker {
            lines,
            open: open.clone(),
        });
        let (atx, arx) = watch::channel(NodeAssignments {
            tasks,
            ..Default::default()
        });
        let (ctx, crx) = mpsc::channel(16);
        let (btx, brx) = mpsc::channel(16);
        tokio::spawn(run(exec, arx, crx, btx, CancellationToken::new()));
        Agent {
            commands: ctx,
            batches: brx,
            open,
            assignments: atx,
        }
    }

    async fn next(a: &mut Agent) -> LogBatch {
        tokio::time::timeout(Duration::from_secs(5), a.batches.recv())
            .await
            .expect("a batch within 5 s")
            .expect("batches open")
    }

    async fn until_closed(open: &AtomicUsize) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while open.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("every log stream closed within 5 s");
    }

    #[tokio::test]
    async fn a_subscription_sends_the_selected_tasks_lines_then_says_it_is_done() {
        let mut a = agent(
            3,
            vec![
                task("t1", "web"),
                task("t2", "web"),
                task("db1", "db"),
                task("none1", "web"),
            ],
        );
        a.commands.send(sub("s", false, 1 << 20)).await.unwrap();
        let mut lines = Vec::new();
        loop {
            let b = next(&mut a).await;
            assert_eq!(b.id, "s");
            lines.extend(
                b.messages
                    .iter()
                    .map(|m| String::from_utf8_lossy(&m.data).to_string()),
            );
            if b.done {
                break;
            }
        }
        lines.sort();
        assert_eq!(
            lines,
            [
                "t1 line 0\n",
                "t1 line 1\n",
                "t1 line 2\n",
                "t2 line 0\n",
                "t2 line 1\n",
                "t2 line 2\n"
            ]
        );
        until_closed(&a.open).await;
    }

    #[tokio::test]
    async fn a_node_sends_no_more_than_its_window_until_the_manager_gives_credit() {
        let mut a = agent(1000, vec![task("t1", "web")]);
        let per_line = LogMessage {
            task_id: "t1".into(),
            stream: LogStream::Stdout,
            time: LogTime::default(),
            data: b"t1 line 000\n".to_vec(),
        }
        .cost();
        // Room for ten lines.
        a.commands
            .send(sub("s", true, 10 * per_line))
            .await
            .unwrap();
        let mut got = 0;
        while got < 10 {
            got += next(&mut a).await.messages.len();
        }
        assert_eq!(got, 10);
        // No credit: nothing more comes.
        let more = tokio::time::timeout(Duration::from_millis(300), a.batches.recv()).await;
        assert!(more.is_err(), "sent past its window: {more:?}");
        a.commands
            .send(LogCommand::Credit {
                id: "s".into(),
                bytes: 5 * per_line,
            })
            .await
            .unwrap();
        let mut after = 0;
        while after < 5 {
            after += next(&mut a).await.messages.len();
        }
        assert_eq!(after, 5);
        let more = tokio::time::timeout(Duration::from_millis(300), a.batches.recv()).await;
        assert!(more.is_err(), "sent past its credit: {more:?}");
    }

    #[tokio::test]
    async fn closing_a_followed_subscription_ends_its_engine_streams() {
        let mut a = agent(1, vec![task("t1", "web")]);
        a.commands.send(sub("s", true, 1 << 20)).await.unwrap();
        assert_eq!(next(&mut a).await.messages.len(), 1);
        // A task that comes to the node later is followed too.
        a.assignments
            .send_modify(|x| x.tasks.push(task("t2", "web")));
        let b = next(&mut a).await;
        assert_eq!(b.messages[0].task_id, "t2");
        assert_eq!(a.open.load(Ordering::SeqCst), 2);
        a.commands
            .send(LogCommand::Close { id: "s".into() })
            .await
            .unwrap();
        until_closed(&a.open).await;

        // The session's end closes every subscription.
        a.commands.send(sub("s2", true, 1 << 20)).await.unwrap();
        next(&mut a).await;
        a.commands.send(LogCommand::CloseAll).await.unwrap();
        until_closed(&a.open).await;
    }
}
