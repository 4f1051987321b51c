//! Scheduler at scale: places replicated tasks on simulated nodes through the real manager.
//!
//! A real store (openraft on redb, fsync) in a temporary directory, the cluster object and N ready
//! nodes shaped as `swarm init` writes its own, then services created one write at a time as
//! `docker service create` would. The manager side is the production code: `control::run`
//! and one `dispatcher::assignments::AssignmentFeed` serving every node's session, both on one `SharedState`
//! view of the store, and `dispatcher::reports::collect_reports`, one per node as `cluster::Manager` wires
//! the local node's session (`--collectors shared`: one for all nodes, on one channel). The node
//! side is the agent's real `worker::run` per node, over a simulated `Executor` (containers are
//! entries in a map; nothing touches Docker).
//!
//! Prints the time until every task is assigned to a node (placements per second), the time
//! until every task is reported running, the raft entries written and the peak RSS.
//!
//!     cargo run --release -p shoal-manager --example scale -- --nodes 1000 --services 100 --replicas 1000
//!
//! See `bench/README.md` for the numbers.

use serde::Deserialize;
use shoal_agent::executor::{ExecError, Executor, Found, Prepared};
use shoal_agent::files::Files;
use shoal_agent::worker::{self, WorkerConfig};
use shoal_api::dispatch::NodeAssignments;
use shoal_api::models::{
    EndpointSpec, EndpointSpecModeEnum, EngineDescription, ManagerStatus, Network, Node,
    NodeDescription, NodeSpec, NodeSpecAvailabilityEnum, NodeSpecRoleEnum, NodeState, NodeStatus,
    Platform, Reachability, ResourceObject, ServiceEndpoint, ServiceSpec, Swarm, TaskState,
};
use shoal_api::objects::StoredService;
use shoal_api::{id, kind};
use shoal_manager::dispatcher::{assignments::AssignmentFeed, reports};
use shoal_manager::state::SharedState;
use shoal_manager::{control, db};
use shoal_store::{Expect, Store, StoreOptions};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// What to run, from the command line.
struct Args {
    nodes: usize,
    services: usize,
    replicas: usize,
    timeout: Duration,
    per_node_collectors: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        nodes: 1000,
        services: 100,
        replicas: 1000,
        timeout: Duration::from_secs(1800),
        per_node_collectors: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench`-style harness flags are ignored.
        if flag == "--bench" {
            continue;
        }
        if flag == "--collectors" {
            a.per_node_collectors = match it.next().as_deref() {
                Some("per-node") => true,
                Some("shared") => false,
                other => return Err(format!("--collectors shared|per-node, not {other:?}")),
            };
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .parse::<u64>()
            .map_err(|e| format!("{flag}: {e}"))?;
        match flag.as_str() {
            "--nodes" => a.nodes = value as usize,
            "--services" => a.services = value as usize,
            "--replicas" => a.replicas = value as usize,
            "--timeout" => a.timeout = Duration::from_secs(value),
            _ => {
                return Err(format!(
                    "unknown flag {flag}; use --nodes N --services N --replicas N (per service) --timeout SECS --collectors shared|per-node"
                ))
            }
        }
    }
    Ok(a)
}

/// One simulated container.
struct Container {
    task_id: String,
    started: bool,
    exit_code: Option<i64>,
    stopped: watch::Sender<bool>,
}

/// A node's container engine, simulated: create/start/stop only change a map.
#[derive(Default)]
struct SimEngine {
    next: AtomicU64,
    containers: Mutex<HashMap<String, Container>>,
}

fn gone(id: &str) -> ExecError {
    ExecError::NoImage {
        image: format!("(simulated container {id} is gone)"),
        detail: String::new(),
    }
}

impl Executor for SimEngine {
    async fn list(&self) -> Result<Vec<Found>, ExecError> {
        let map = self.containers.lock().map_err(|_| gone("lock"))?;
        Ok(map
            .iter()
            .map(|(id, c)| Found {
                id: id.clone(),
                task_id: c.task_id.clone(),
                running: c.started && c.exit_code.is_none(),
                started: c.started,
                pid: None,
            })
            .collect())
    }
    async fn prepare(
        &self,
        task: &shoal_api::objects::StoredTask,
        _prep: &Prepared,
    ) -> Result<String, ExecError> {
        let id = format!("c{}", self.next.fetch_add(1, Ordering::Relaxed));
        let (stopped, _) = watch::channel(false);
        self.containers.lock().map_err(|_| gone(&id))?.insert(
            id.clone(),
            Container {
                task_id: task.id().to_string(),
                started: false,
                exit_code: None,
                stopped,
            },
        );
        Ok(id)
    }
    async fn start(&self, id: &str) -> Result<Option<i64>, ExecError> {
        let mut map = self.containers.lock().map_err(|_| gone(id))?;
        let c = map.get_mut(id).ok_or_else(|| gone(id))?;
        c.started = true;
        Ok(Some(1000))
    }
    async fn wait(&self, id: &str) -> Result<i64, ExecError> {
        let mut rx = {
            let map = self.containers.lock().map_err(|_| gone(id))?;
            map.get(id).ok_or_else(|| gone(id))?.stopped.subscribe()
        };
        rx.wait_for(|s| *s).await.map_err(|_| gone(id))?;
        Ok(0)
    }
    async fn shutdown(&self, id: &str) -> Result<(), ExecError> {
        let mut map = self.containers.lock().map_err(|_| gone(id))?;
        if let Some(c) = map.get_mut(id) {
            c.exit_code = Some(0);
            c.stopped.send_replace(true);
        }
        Ok(())
    }
    async fn remove(&self, id: &str) -> Result<(), ExecError> {
        let mut map = self.containers.lock().map_err(|_| gone(id))?;
        if let Some(c) = map.remove(id) {
            c.stopped.send_replace(true);
        }
        Ok(())
    }
}

/// The cluster object, shaped as `swarm init` makes it (no CA: nothing here needs one).
fn cluster() -> Swarm {
    let now = id::now();
    Swarm {
        id: Some(id::new_id()),
        created_at: Some(now.clone()),
        updated_at: Some(now),
        spec: Some(shoal_manager::node::init::default_spec()),
        root_rotation_in_progress: Some(false),
        data_path_port: Some(4789),
        default_addr_pool: Some(vec!["10.0.0.0/8".into()]),
        subnet_size: Some(24),
        ..Default::default()
    }
}

/// The ingress network `swarm init` creates.
fn ingress() -> Network {
    shoal_control::allocator::ingress_network(&id::new_id(), id::now())
}

/// A ready node, shaped as `swarm init` describes the local one; node 0 is the manager.
fn node(i: usize) -> Node {
    let now = id::now();
    let manager = i == 0;
    Node {
        id: Some(id::new_id()),
        version: None,
        created_at: Some(now.clone()),
        updated_at: Some(now),
        spec: Some(NodeSpec {
            name: None,
            labels: Some(HashMap::new()),
            role: Some(if manager {
                NodeSpecRoleEnum::MANAGER
            } else {
                NodeSpecRoleEnum::WORKER
            }),
            availability: Some(NodeSpecAvailabilityEnum::ACTIVE),
        }),
        description: Some(NodeDescription {
            hostname: Some(format!("sim-{i:04}")),
            platform: Some(Platform {
                architecture: Some("x86_64".into()),
                os: Some("linux".into()),
            }),
            resources: Some(ResourceObject {
                nano_cpus: Some(4_000_000_000),
                memory_bytes: Some(8 << 30),
                generic_resources: None,
            }),
            engine: Some(EngineDescription {
                engine_version: Some("simulated".into()),
                labels: Some(HashMap::new()),
                plugins: None,
            }),
            tls_info: None,
        }),
        status: Some(NodeStatus {
            state: Some(NodeState::READY),
            message: None,
            addr: Some(format!(
                "10.{}.{}.{}",
                100 + i / 65536,
                (i / 256) % 256,
                i % 256
            )),
        }),
        manager_status: manager.then(|| ManagerStatus {
            leader: Some(true),
            reachability: Some(Reachability::REACHABLE),
            addr: Some("127.0.0.1:2377".into()),
        }),
    }
}

/// A replicated service as `POST /services/create` stores it (no networks, no ports).
fn service(i: usize, replicas: usize) -> Result<StoredService, String> {
    let spec: ServiceSpec = serde_json::from_value(serde_json::json!({
        "Name": format!("svc-{i:04}"),
        "Labels": {},
        "Mode": {"Replicated": {"Replicas": replicas}},
        "TaskTemplate": {
            "ContainerSpec": {"Image": "shoal-test/web:latest", "Init": false},
            "Resources": {"Limits": {}, "Reservations": {}},
            "Placement": {},
            "ForceUpdate": 0,
            "Runtime": "container"
        },
        "UpdateConfig": {"Parallelism": 1, "FailureAction": "pause", "Order": "stop-first"},
        "EndpointSpec": {"Mode": "vip"}
    }))
    .map_err(|e| format!("service spec: {e}"))?;
    let now = id::now();
    let mut svc = StoredService::default();
    svc.service.id = Some(id::new_id());
    svc.service.created_at = Some(now.clone());
    svc.service.updated_at = Some(now);
    svc.service.spec = Some(spec);
    svc.service.endpoint = Some(ServiceEndpoint {
        spec: Some(EndpointSpec {
            mode: Some(EndpointSpecModeEnum::VIP),
            ports: None,
        }),
        ports: None,
        virtual_ips: None,
    });
    svc.spec_version = 1;
    Ok(svc)
}

/// The fields of a stored task the measurement needs; the rest of the document is skipped.
#[derive(Deserialize)]
struct TaskLite {
    #[serde(rename = "NodeID")]
    node_id: Option<String>,
    #[serde(rename = "Status")]
    status: Option<StatusLite>,
}

#[derive(Deserialize)]
struct StatusLite {
    #[serde(rename = "State")]
    state: Option<TaskState>,
}

/// Progress as seen on the store's change stream.
#[derive(Default)]
struct Progress {
    /// Task ID -> (has a node, is running).
    tasks: HashMap<String, (bool, bool)>,
    assigned: usize,
    running: usize,
    all_assigned: Option<Duration>,
    all_running: Option<Duration>,
    first_assigned: Option<Duration>,
}

impl Progress {
    fn note(&mut self, task_id: &str, data: Option<&[u8]>) {
        let now = match data.map(serde_json::from_slice::<TaskLite>) {
            Some(Ok(t)) => (
                t.node_id.is_some_and(|n| !n.is_empty()),
                t.status.and_then(|s| s.state) == Some(TaskState::RUNNING),
            ),
            _ => (false, false),
        };
        let before = self
            .tasks
            .insert(task_id.to_string(), now)
            .unwrap_or((false, false));
        if data.is_none() {
            self.tasks.remove(task_id);
        }
        self.assigned = self.assigned + now.0 as usize - before.0 as usize;
        self.running = self.running + now.1 as usize - before.1 as usize;
    }

    fn recount(&mut self, store: &Store) {
        self.tasks.clear();
        self.assigned = 0;
        self.running = 0;
        for o in store.list(kind::TASK) {
            self.note(&o.id, Some(&o.data));
        }
    }
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// CPU time used by the process so far (user + system), from /proc (clock ticks of 10 ms).
fn cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

fn last_log_index(store: &Store) -> u64 {
    store.raft().metrics().borrow().last_log_index.unwrap_or(0)
}

async fn run(args: Args) -> Result<(), String> {
    let total = args.services * args.replicas;
    let dir = tempfile::Builder::new()
        .prefix("shoal-scale-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let store = Store::open(StoreOptions {
        dir: dir.path().join("raft"),
        raft_node_id: 1,
        raft_addr: "127.0.0.1:2377".into(),
        bootstrap: true,
        transport: None,
        data_key: shoal_store::seal::Key::generate().expect("data key"),
        recorder: None,
    })
    .await
    .map_err(|e| format!("opening the store: {e}"))?;
    let put = |r: Result<shoal_store::Op, shoal_api::ApiError>| r.map_err(|e| e.to_string());

    // The cluster, as `swarm init` leaves it, plus the other nodes.
    let nodes: Vec<Node> = (0..args.nodes).map(node).collect();
    let mut ops = vec![
        put(db::put(&cluster(), Expect::Absent))?,
        put(db::put(&ingress(), Expect::Absent))?,
    ];
    for n in &nodes {
        ops.push(put(db::put(n, Expect::Absent))?);
    }
    db::write(&store, ops).await.map_err(|e| e.to_string())?;

    // The manager: the control loop, the dispatcher with one session per node, and the agents.
    let stop = CancellationToken::new();
    let files = Files::new(dir.path().join("files")).map_err(|e| e.to_string())?;
    let alloc = Arc::new(tokio::sync::Mutex::new(()));
    // One view of the store for the control loop and the dispatcher: each change decoded once.
    let view = SharedState::new(store.clone());
    tokio::spawn(control::run(view.reader(), alloc, stop.clone()));
    let sessions = AssignmentFeed::spawn(view.reader(), stop.clone());
    let (shared_reports, rrx) = mpsc::channel(1024);
    tokio::spawn(reports::collect_reports(store.clone(), rrx, stop.clone()));
    for n in &nodes {
        let node_id = n.id.clone().unwrap_or_default();
        let (atx, arx) = watch::channel(NodeAssignments::default());
        sessions
            .serve(node_id.clone(), atx)
            .map_err(|e| e.to_string())?;
        let rtx = if args.per_node_collectors {
            let (rtx, rrx) = mpsc::channel(1024);
            tokio::spawn(reports::collect_reports(store.clone(), rrx, stop.clone()));
            rtx
        } else {
            shared_reports.clone()
        };
        let rtx = from_node(&node_id, rtx);
        let cfg = WorkerConfig {
            node_id,
            executor: Arc::new(SimEngine::default()),
            files: files.clone(),
            network: None,
            volumes: shoal_agent::volumes::Volumes::new(
                files.root().join("volumes"),
                files.root().to_path_buf(),
            ),
        };
        tokio::spawn(worker::run(cfg, arx, rtx, stop.clone()));
    }
    // Let every session send its first (empty) assignments.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut changes = store.watch();
    let index_before = last_log_index(&store);
    let cpu_before = cpu_secs();
    let started = Instant::now();
    eprintln!(
        "scale: {} nodes, {} services x {} replicas = {total} tasks",
        args.nodes, args.services, args.replicas
    );
    // The services, one write each, as `docker service create` in a loop would make them.
    let writer = {
        let store = store.clone();
        let (services, replicas) = (args.services, args.replicas);
        tokio::spawn(async move {
            for i in 0..services {
                let svc = service(i, replicas)?;
                db::write(
                    &store,
                    vec![db::put(&svc, Expect::Absent).map_err(|e| e.to_string())?],
                )
                .await
                .map_err(|e| e.to_string())?;
            }
            Ok::<Duration, String>(started.elapsed())
        })
    };

    let mut p = Progress::default();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    let deadline = tokio::time::sleep(args.timeout);
    tokio::pin!(deadline);
    let outcome = loop {
        if p.all_running.is_some() {
            break Ok(());
        }
        tokio::select! {
            r = changes.recv() => match r {
                Ok(cs) => {
                    for c in cs.changes.iter().filter(|c| c.kind == kind::TASK) {
                        let data = match c.action {
                            shoal_store::Action::Deleted => None,
                            _ => c.object.as_ref().map(|o| &o.data[..]),
                        };
                        p.note(&c.id, data);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    eprintln!("scale: measurement lagged {n} change sets; recounting");
                    p.recount(&store);
                }
                Err(e) => break Err(format!("change stream: {e}")),
            },
            _ = tick.tick() => eprintln!(
                "scale: {:>6.1}s assigned {:>7} running {:>7} rss {:.0} MiB",
                started.elapsed().as_secs_f64(), p.assigned, p.running, peak_rss_mib()
            ),
            _ = &mut deadline => break Err(format!(
                "timed out after {:?}: {} assigned, {} running", args.timeout, p.assigned, p.running
            )),
        }
        let t = started.elapsed();
        if p.first_assigned.is_none() && p.assigned > 0 {
            p.first_assigned = Some(t);
        }
        if p.all_assigned.is_none() && p.assigned >= total {
            p.all_assigned = Some(t);
        }
        if p.all_running.is_none() && p.running >= total {
            p.all_running = Some(t);
        }
    };
    let created = match writer.await {
        Ok(Ok(t)) => Some(t),
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(format!("service writer: {e}")),
    };
    let entries = last_log_index(&store) - index_before;
    let cpu = cpu_secs() - cpu_before;
    let wall = started.elapsed().as_secs_f64();
    let rss = peak_rss_mib();
    let secs = |d: Option<Duration>| {
        d.map(|d| format!("{:.2} s", d.as_secs_f64()))
            .unwrap_or("-".into())
    };
    println!(
        "nodes {}  services {}  replicas/service {}  tasks {total}  collectors {}",
        args.nodes,
        args.services,
        args.replicas,
        if args.per_node_collectors {
            "per node"
        } else {
            "shared"
        }
    );
    println!("services written       {}", secs(created));
    println!("first task assigned    {}", secs(p.first_assigned));
    match p.all_assigned {
        Some(d) => println!(
            "all tasks assigned     {} ({:.0} placements/s)",
            secs(Some(d)),
            total as f64 / d.as_secs_f64()
        ),
        None => println!("all tasks assigned     - ({} of {total})", p.assigned),
    }
    match p.all_running {
        Some(d) => println!(
            "all tasks running      {} ({:.0} tasks/s)",
            secs(Some(d)),
            total as f64 / d.as_secs_f64()
        ),
        None => println!("all tasks running      - ({} of {total})", p.running),
    }
    println!("raft entries written   {entries}");
    println!("peak RSS               {rss:.0} MiB");
    println!(
        "CPU time               {cpu:.1} s in {wall:.1} s ({:.0}% of one core; manager and all agents)",
        100.0 * cpu / wall.max(0.001)
    );
    stop.cancel();
    if let Err(e) = store.shutdown().await {
        eprintln!("scale: store shutdown: {e}");
    }
    files.cleanup();
    outcome
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("scale: {e}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("scale: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("scale: {e}");
        std::process::exit(1);
    }
}

/// The worker's reports tagged with its node, as its session tags them with its certificate's.
fn from_node(
    node: &str,
    to: mpsc::Sender<reports::NodeReports>,
) -> mpsc::Sender<Vec<shoal_api::dispatch::TaskStatusReport>> {
    let (tx, mut rx) = mpsc::channel(1024);
    let node: Arc<str> = node.into();
    tokio::spawn(async move {
        while let Some(reports) = rx.recv().await {
            let batch = reports::NodeReports {
                node: node.clone(),
                reports,
            };
            if to.send(batch).await.is_err() {
                return;
            }
        }
    });
    tx
}
