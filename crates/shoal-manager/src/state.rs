//! The manager's decoded view of the store: a snapshot ([`load`]), or one kept current from the
//! store's change stream ([`LiveState`], shared by the control loop and the dispatcher through
//! [`SharedState`]). What it holds is `shoal_control`'s [`ClusterState`].

use crate::db::{self, Stored};
use shoal_api::images::StoredNodeImages;
use shoal_api::kind;
use shoal_api::models::Swarm;
use shoal_api::objects::{StoredService, StoredTask};
pub use shoal_control::changes::{Delta, TaskChange};
pub use shoal_control::state::{node_schedulable, ClusterState, Versioned};
use shoal_store::{Action, Change, ChangeSet, Store};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

/// Reads a snapshot of the whole store.
pub fn load(store: &Store) -> ClusterState {
    ClusterState {
        services: db::list::<StoredService>(store)
            .into_iter()
            .map(|s| (s.obj.id().to_string(), s))
            .collect(),
        tasks: db::list(store),
        nodes: db::list(store),
        networks: db::list(store),
        cluster: db::list::<Swarm>(store).into_iter().next(),
        node_images: db::list::<StoredNodeImages>(store)
            .into_iter()
            .map(|i| (i.obj.node.clone(), i))
            .collect(),
    }
}

/// A [`ClusterState`] kept current from the store's change stream, so that each pass decodes
/// only the objects that changed instead of the whole store (issue 4: 100k tasks).
///
/// Tasks stay in a `Vec` (the shape the pure decisions take) with an index by ID; nodes and
/// networks stay sorted by ID as [`ClusterState::load`] returns them. If the stream lags, the
/// view reloads everything and says so in [`Delta::reloaded`].
pub struct LiveState {
    store: Store,
    changes: broadcast::Receiver<Arc<ChangeSet>>,
    state: ClusterState,
    /// Task ID -> position in `state.tasks`.
    task_pos: HashMap<String, usize>,
    /// Changes applied since the last [`LiveState::refresh`].
    pending: Delta,
    closed: bool,
}

impl LiveState {
    /// Subscribes to the store's changes, then loads the snapshot (so nothing falls between).
    pub fn new(store: Store) -> Self {
        let changes = store.watch();
        let mut live = LiveState {
            store,
            changes,
            state: ClusterState::default(),
            task_pos: HashMap::new(),
            pending: Delta::default(),
            closed: false,
        };
        live.reload();
        live
    }

    /// The current view.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// A task by ID.
    pub fn task(&self, id: &str) -> Option<&Versioned<StoredTask>> {
        self.task_pos.get(id).and_then(|&i| self.state.tasks.get(i))
    }

    /// True once the store's change stream has ended (the store shut down).
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Waits for the next change set and applies it; false when the stream has ended.
    pub async fn changed(&mut self) -> bool {
        if self.closed {
            return false;
        }
        match self.changes.recv().await {
            Ok(cs) => {
                self.apply(&cs);
                true
            }
            Err(RecvError::Lagged(n)) => {
                tracing::debug!(missed = n, "change stream lagged; reloading the view");
                self.reload();
                true
            }
            Err(RecvError::Closed) => {
                self.closed = true;
                false
            }
        }
    }

    /// Applies every change set already received and returns what changed since the last call.
    pub fn refresh(&mut self) -> Delta {
        loop {
            match self.changes.try_recv() {
                Ok(cs) => self.apply(&cs),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(n)) => {
                    tracing::debug!(missed = n, "change stream lagged; reloading the view");
                    self.reload();
                }
                Err(TryRecvError::Closed) => {
                    self.closed = true;
                    break;
                }
            }
        }
        std::mem::take(&mut self.pending)
    }

    fn reload(&mut self) {
        // Everything still queued is older than what the load reads; the load covers it.
        while let Ok(_) | Err(TryRecvError::Lagged(_)) = self.changes.try_recv() {}
        self.state = crate::state::load(&self.store);
        self.task_pos = self
            .state
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.obj.id().to_string(), i))
            .collect();
        self.pending = Delta {
            reloaded: true,
            ..Default::default()
        };
    }

    fn apply(&mut self, cs: &ChangeSet) {
        let mut d = Delta {
            change_sets: 1,
            ..Default::default()
        };
        for c in &cs.changes {
            match c.kind.as_str() {
                kind::TASK => d.tasks.extend(self.apply_task(c)),
                kind::SERVICE => {
                    if let Some(held) = self.state.services.get(&c.id) {
                        if stale(held.version, c) {
                            continue;
                        }
                    }
                    d.services = true;
                    match live_object::<StoredService>(c) {
                        Some(s) => {
                            self.state.services.insert(c.id.clone(), s);
                        }
                        None => {
                            self.state.services.remove(&c.id);
                        }
                    }
                }
                kind::NODE => {
                    d.nodes |= upsert_sorted(&mut self.state.nodes, c, |n| {
                        n.id.as_deref().unwrap_or_default()
                    });
                }
                kind::NETWORK => {
                    d.networks |= upsert_sorted(&mut self.state.networks, c, |n| {
                        n.id.as_deref().unwrap_or_default()
                    });
                }
                kind::NODE_IMAGES => {
                    let images = &mut self.state.node_images;
                    if images.get(&c.id).is_some_and(|held| stale(held.version, c)) {
                        continue;
                    }
                    d.node_images = true;
                    match live_object::<StoredNodeImages>(c) {
                        Some(i) => {
                            images.insert(c.id.clone(), i);
                        }
                        None => {
                            images.remove(&c.id);
                        }
                    }
                }
                kind::CLUSTER => {
                    d.cluster = true;
                    // As `load`: the first cluster object by ID (there is only ever one).
                    self.state.cluster = db::list::<Swarm>(&self.store).into_iter().next();
                }
                // The node registries' records decide nothing the control loop, the sessions'
                // assignments or the routes read.
                kind::REGISTRY_TAG | kind::REGISTRY_MANIFEST | kind::REGISTRY_BLOB => {}
                _ => d.other = true,
            }
        }
        self.pending.merge(d);
    }

    fn apply_task(&mut self, c: &Change) -> Option<TaskChange> {
        let at = self.task_pos.get(&c.id).copied();
        if at.is_some_and(|i| stale(self.state.tasks[i].version, c)) {
            return None;
        }
        let new = live_object::<StoredTask>(c);
        let exists = new.is_some();
        let before = match (at, new) {
            (Some(i), Some(t)) => {
                Some(Arc::new(std::mem::replace(&mut self.state.tasks[i], t).obj))
            }
            (Some(i), None) => {
                let old = self.state.tasks.swap_remove(i);
                self.task_pos.remove(&c.id);
                if let Some(moved) = self.state.tasks.get(i) {
                    self.task_pos.insert(moved.obj.id().to_string(), i);
                }
                Some(Arc::new(old.obj))
            }
            (None, Some(t)) => {
                self.task_pos.insert(c.id.clone(), self.state.tasks.len());
                self.state.tasks.push(t);
                None
            }
            (None, None) => return None,
        };
        Some(TaskChange {
            id: c.id.clone(),
            before,
            exists,
        })
    }
}

/// True if the view already holds a newer version than a (re-delivered) update brings: a
/// reload may read an entry's result before its change set arrives.
fn stale(held: u64, c: &Change) -> bool {
    c.action != Action::Deleted && c.object.as_ref().is_some_and(|o| o.version < held)
}

/// Task changes kept for a reader that has not refreshed, beyond which it is told to start over.
const MAX_PENDING_TASK_CHANGES: usize = 1 << 20;

/// One [`LiveState`] read by several loops (the control loop and the dispatcher): each change
/// is decoded once, and each reader still gets every change since its own last refresh.
#[derive(Clone)]
pub struct SharedState {
    inner: Arc<ViewShared>,
}

struct ViewShared {
    store: Store,
    live: tokio::sync::RwLock<LiveState>,
    /// Changes applied but not yet taken, per reader.
    readers: std::sync::Mutex<Vec<std::sync::Weak<std::sync::Mutex<Delta>>>>,
}

/// One loop's access to a [`SharedState`].
pub struct SharedReader {
    inner: Arc<ViewShared>,
    pending: Arc<std::sync::Mutex<Delta>>,
    /// The store's change stream, used only to wake up: the view applies the changes.
    wake: broadcast::Receiver<Arc<ChangeSet>>,
    closed: bool,
}

impl SharedState {
    /// Loads the view from the store and follows its changes from then on.
    pub fn new(store: Store) -> Self {
        SharedState {
            inner: Arc::new(ViewShared {
                live: tokio::sync::RwLock::new(LiveState::new(store.clone())),
                store,
                readers: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }

    /// A new reader; its first refresh reports everything as changed.
    pub fn reader(&self) -> SharedReader {
        let pending = Arc::new(std::sync::Mutex::new(Delta {
            reloaded: true,
            ..Default::default()
        }));
        if let Ok(mut readers) = self.inner.readers.lock() {
            readers.retain(|r| r.strong_count() > 0);
            readers.push(Arc::downgrade(&pending));
        }
        SharedReader {
            wake: self.inner.store.watch(),
            inner: self.inner.clone(),
            pending,
            closed: false,
        }
    }
}

/// Lets a burst of changes settle before a loop acts on them: 5 ms, or as long as the loop's
/// last run took (at most 250 ms), so a big cluster's loops cannot take the whole CPU while
/// reports stream in. False if `stop` fired meanwhile.
pub async fn settle(took: std::time::Duration, stop: &tokio_util::sync::CancellationToken) -> bool {
    use std::time::Duration;
    let pause = took.clamp(Duration::from_millis(5), Duration::from_millis(250));
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(pause) => true,
    }
}

impl SharedReader {
    /// The store the view follows.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Waits until something changed since this reader's last refresh; false once the store's
    /// change stream has ended.
    pub async fn changed(&mut self) -> bool {
        if self.closed {
            return false;
        }
        if self.pending.lock().is_ok_and(|p| !p.is_empty()) {
            return true;
        }
        match self.wake.recv().await {
            Ok(_) | Err(RecvError::Lagged(_)) => true,
            Err(RecvError::Closed) => {
                self.closed = true;
                false
            }
        }
    }

    /// Brings the view up to date and returns it (read-locked: release it before awaiting
    /// anything long) with what changed since this reader's last refresh.
    pub async fn refresh(&mut self) -> (tokio::sync::RwLockReadGuard<'_, LiveState>, Delta) {
        // Wake-ups first: a change sent after this point wakes the reader again, and one sent
        // before it is applied below.
        loop {
            match self.wake.try_recv() {
                Ok(_) | Err(TryRecvError::Lagged(_)) => {}
                Err(TryRecvError::Closed) => {
                    self.closed = true;
                    break;
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        let mut live = self.inner.live.write().await;
        let fresh = live.refresh();
        if !fresh.is_empty() {
            let readers: Vec<_> = match self.inner.readers.lock() {
                Ok(r) => r.iter().filter_map(std::sync::Weak::upgrade).collect(),
                Err(_) => Vec::new(),
            };
            for r in readers.iter().filter(|r| !Arc::ptr_eq(r, &self.pending)) {
                if let Ok(mut p) = r.lock() {
                    p.merge(fresh.clone());
                    if p.tasks.len() > MAX_PENDING_TASK_CHANGES {
                        // A reader this far behind just starts over from the whole view.
                        p.tasks = Vec::new();
                        p.reloaded = true;
                    }
                }
            }
        }
        let mut mine = match self.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => Delta {
                reloaded: true,
                ..Default::default()
            },
        };
        mine.merge(fresh);
        (tokio::sync::RwLockWriteGuard::downgrade(live), mine)
    }
}

/// The object a change leaves behind, decoded; `None` if it was deleted or does not decode.
fn live_object<T: Stored>(c: &Change) -> Option<Versioned<T>> {
    match c.action {
        Action::Deleted => None,
        Action::Created | Action::Updated => c.object.as_ref().and_then(db::decode),
    }
}

/// Applies a change to a list kept sorted by ID; false if it was stale and left out.
fn upsert_sorted<T: Stored>(
    list: &mut Vec<Versioned<T>>,
    c: &Change,
    id_of: impl Fn(&T) -> &str,
) -> bool {
    let at = list.binary_search_by(|x| id_of(&x.obj).cmp(c.id.as_str()));
    if let Ok(i) = at {
        if stale(list[i].version, c) {
            return false;
        }
    }
    match (at, live_object(c)) {
        (Ok(i), Some(o)) => list[i] = o,
        (Ok(i), None) => {
            list.remove(i);
        }
        (Err(i), Some(o)) => list.insert(i, o),
        (Err(_), None) => {}
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::models::Node;
    use shoal_api::models::TaskState;
    use shoal_store::{Expect, StoreOptions, StoreTuning};

    fn task(id: &str, node: Option<&str>) -> StoredTask {
        let mut t = StoredTask::default();
        t.task.id = Some(id.into());
        t.task.service_id = Some("svc".into());
        t.task.node_id = node.map(str::to_string);
        t.task.desired_state = Some(TaskState::RUNNING);
        t
    }

    fn node(id: &str) -> Node {
        Node {
            id: Some(id.into()),
            ..Default::default()
        }
    }

    /// The view, normalized for comparison with a fresh load: (ID, version) of every object.
    fn summary(s: &ClusterState) -> Vec<(String, u64)> {
        let mut tasks: Vec<(String, u64)> = s
            .tasks
            .iter()
            .map(|t| (format!("task {}", t.obj.id()), t.version))
            .collect();
        tasks.sort();
        let mut services: Vec<(String, u64)> = s
            .services
            .values()
            .map(|v| (format!("service {}", v.obj.id()), v.version))
            .collect();
        services.sort();
        tasks
            .into_iter()
            .chain(services)
            .chain(
                s.nodes
                    .iter()
                    .map(|n| (format!("node {:?}", n.obj.id), n.version)),
            )
            .chain(s.cluster.iter().map(|c| ("cluster".to_string(), c.version)))
            .chain(
                s.node_images
                    .iter()
                    .map(|(id, i)| (format!("images {id} {:?}", i.obj.images), i.version)),
            )
            .collect()
    }

    async fn open(dir: &std::path::Path, watch_capacity: usize) -> Store {
        Store::open_with(
            StoreOptions {
                dir: dir.to_path_buf(),
                raft_node_id: 1,
                raft_addr: "127.0.0.1:2377".into(),
                bootstrap: true,
                transport: None,
                data_key: shoal_store::seal::Key::generate().expect("data key"),
                recorder: None,
            },
            StoreTuning {
                watch_capacity,
                ..Default::default()
            },
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn live_view_follows_the_store_and_reports_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 64).await;
        db::write(
            &store,
            vec![db::put(&task("a", None), Expect::Absent).unwrap()],
        )
        .await
        .unwrap();
        let mut live = LiveState::new(store.clone());
        assert!(live.refresh().reloaded, "the first view is a load");
        assert_eq!(summary(live.state()), summary(&crate::state::load(&store)));

        let a = db::get::<StoredTask>(&store, "a").unwrap();
        let mut svc = StoredService::default();
        svc.service.id = Some("svc".into());
        svc.service.spec = Some(shoal_api::models::ServiceSpec {
            name: Some("web".into()),
            ..Default::default()
        });
        db::write(
            &store,
            vec![
                db::put(&task("a", Some("n1")), Expect::Version(a.version)).unwrap(),
                db::put(&task("b", Some("n2")), Expect::Absent).unwrap(),
                db::put(&task("c", None), Expect::Absent).unwrap(),
                db::put(&node("n2"), Expect::Absent).unwrap(),
                db::put(&node("n1"), Expect::Absent).unwrap(),
                db::put(&svc, Expect::Absent).unwrap(),
            ],
        )
        .await
        .unwrap();
        let b = db::get::<StoredTask>(&store, "b").unwrap();
        db::write(
            &store,
            vec![db::delete::<StoredTask>("a", Expect::Any), {
                let mut moved = b.obj.clone();
                moved.task.node_id = Some("n1".into());
                db::put(&moved, Expect::Version(b.version)).unwrap()
            }],
        )
        .await
        .unwrap();
        assert!(live.changed().await);
        let d = live.refresh();
        assert!(!d.reloaded);
        assert_eq!(d.change_sets, 2);
        assert!(d.services && d.nodes && !d.networks && !d.cluster);
        let seen: Vec<(&str, Option<&str>, bool)> = d
            .tasks
            .iter()
            .map(|c| {
                (
                    c.id.as_str(),
                    c.before.as_ref().and_then(|t| t.node_id()),
                    c.exists,
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("a", None, true),
                ("b", None, true),
                ("c", None, true),
                ("a", Some("n1"), false),
                ("b", Some("n2"), true),
            ]
        );
        assert_eq!(summary(live.state()), summary(&crate::state::load(&store)));
        assert!(live.task("a").is_none());
        assert_eq!(live.task("b").and_then(|t| t.obj.node_id()), Some("n1"));
        let ids: Vec<&str> = live
            .state()
            .nodes
            .iter()
            .filter_map(|n| n.obj.id.as_deref())
            .collect();
        assert_eq!(
            ids,
            vec!["n1", "n2"],
            "nodes stay sorted by ID, as a load returns them"
        );
        assert!(live.refresh().is_empty());
        store.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn live_view_follows_each_nodes_images() {
        use shoal_api::images::NodeImage;
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 64).await;
        let images = |node: &str, tags: &[&str]| StoredNodeImages {
            node: node.into(),
            images: tags
                .iter()
                .map(|t| NodeImage {
                    id: format!("sha256:{}", t.len().to_string().repeat(64)),
                    repo_tags: vec![t.to_string()],
                    ..Default::default()
                })
                .collect(),
        };
        db::write(
            &store,
            vec![db::put(&images("n1", &["web:1"]), Expect::Absent).unwrap()],
        )
        .await
        .unwrap();
        let mut live = LiveState::new(store.clone());
        live.refresh();
        let held = |live: &LiveState, node: &str| -> Option<Vec<String>> {
            live.state().node_images.get(node).map(|i| {
                i.obj
                    .images
                    .iter()
                    .flat_map(|i| i.repo_tags.clone())
                    .collect()
            })
        };
        assert_eq!(held(&live, "n1"), Some(vec!["web:1".to_string()]), "loaded");

        // A node reports another list, a second node its first.
        let cur = db::get::<StoredNodeImages>(&store, "n1").unwrap();
        db::write(
            &store,
            vec![
                db::put(&images("n1", &["web:22"]), Expect::Version(cur.version)).unwrap(),
                db::put(&images("n2", &["db:1"]), Expect::Absent).unwrap(),
            ],
        )
        .await
        .unwrap();
        assert!(live.changed().await);
        let d = live.refresh();
        assert!(d.node_images, "{d:?}");
        assert!(
            !(d.other || d.nodes || d.services || d.reloaded),
            "an image report is no other kind of change: {d:?}"
        );
        assert_eq!(held(&live, "n1"), Some(vec!["web:22".to_string()]));
        assert_eq!(held(&live, "n2"), Some(vec!["db:1".to_string()]));
        assert_eq!(summary(live.state()), summary(&crate::state::load(&store)));

        // A node's list removed: the view forgets it.
        db::write(
            &store,
            vec![db::delete::<StoredNodeImages>("n1", Expect::Any)],
        )
        .await
        .unwrap();
        assert!(live.changed().await);
        assert!(live.refresh().node_images);
        assert_eq!(held(&live, "n1"), None);
        assert_eq!(summary(live.state()), summary(&crate::state::load(&store)));
        store.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_lagging_view_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 2).await;
        let mut live = LiveState::new(store.clone());
        live.refresh();
        for i in 0..5 {
            db::write(
                &store,
                vec![db::put(&task(&format!("t{i}"), None), Expect::Absent).unwrap()],
            )
            .await
            .unwrap();
        }
        let d = live.refresh();
        assert!(d.reloaded, "five change sets cannot fit a buffer of two");
        assert_eq!(summary(live.state()), summary(&crate::state::load(&store)));
        assert_eq!(live.state().tasks.len(), 5);
        store.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn every_reader_of_a_shared_view_sees_every_change_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 64).await;
        let shared = SharedState::new(store.clone());
        let mut a = shared.reader();
        let mut b = shared.reader();
        assert!(
            a.refresh().await.1.reloaded,
            "a new reader starts from the whole view"
        );
        assert!(b.refresh().await.1.reloaded);

        db::write(
            &store,
            vec![db::put(&task("t1", Some("n1")), Expect::Absent).unwrap()],
        )
        .await
        .unwrap();
        assert!(a.changed().await);
        let (view, d) = a.refresh().await;
        assert_eq!(d.tasks.len(), 1);
        assert!(view.task("t1").is_some());
        drop(view);
        // B was woken by the same change, which A already applied: B still gets it.
        assert!(b.changed().await);
        let (view, d) = b.refresh().await;
        assert_eq!(
            d.tasks.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
            vec!["t1"]
        );
        assert!(!d.reloaded);
        drop(view);
        let (_, d) = a.refresh().await;
        assert!(d.is_empty(), "a change is reported to each reader once");
        let (_, d) = b.refresh().await;
        assert!(d.is_empty());
        store.shutdown().await.unwrap();
    }
}
