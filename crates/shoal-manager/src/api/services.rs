//! `/services` and `/tasks`.

use super::filters::Filters;
use super::{json, parse_body, AppState, Result};

/// A service spec as dockerd reads it (field names in any case, so the CLI's and the SDK's
/// `Healthcheck` is the swagger's `HealthCheck`). Public for the fuzz targets (`fuzz/`), which
/// feed it any bytes.
pub fn parse_spec(body: &[u8]) -> std::result::Result<ServiceSpec, shoal_api::ApiError> {
    parse_body(body)
}
use crate::db::{self, Versioned};
use crate::state::{node_schedulable, ClusterState};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use shoal_api::models::{
    Config, Network, NetworkAttachmentConfig, Node, ObjectVersion, Secret, Service,
    ServiceServiceStatus, ServiceSpec, ServiceUpdateStatus, ServiceUpdateStatusStateEnum, Task,
    TaskState, TaskStatus,
};
use shoal_api::objects::{Mode, StoredService, StoredTask};
use shoal_api::{id, validate, ApiError};
use shoal_control::allocator::{endpoint, Ipam};
use shoal_control::orchestrator::jobs;
use shoal_store::Expect;
use std::collections::HashMap;

fn find_service(
    store: &shoal_store::Store,
    key: &str,
) -> std::result::Result<Versioned<StoredService>, ApiError> {
    db::find::<StoredService>(store, key)
}

/// Resolves network names to IDs, checks secrets and configs exist, and refuses what the store
/// contradicts: everything about a spec that needs the cluster's state.
fn resolve(
    spec: &mut ServiceSpec,
    state: &ClusterState,
    store: &shoal_store::Store,
) -> std::result::Result<(), ApiError> {
    // What dockerd's conversion fills: the replica count the CLI leaves out (its progress
    // display needs it), a job's counts, `Order: stop-first`, ... (`shoal_api::moby`).
    shoal_api::moby::service_spec(spec);
    let tt = spec.task_template.get_or_insert_with(Default::default);
    // The deprecated top-level Networks field means the same as TaskTemplate.Networks.
    let mut nets: Vec<NetworkAttachmentConfig> = tt
        .networks
        .take()
        .or_else(|| spec.networks.take())
        .unwrap_or_default();
    for n in &mut nets {
        let key = n.target.clone().unwrap_or_default();
        let found = db::lookup::<Network>(store, &key)
            .ok_or_else(|| ApiError::not_found(format!("network {key} not found")))?;
        if found.obj.ingress == Some(true) {
            return Err(ApiError::invalid_arg(format!(
                "Networks: service cannot be explicitly attached to the ingress network {key:?}"
            )));
        }
        n.target = found.obj.id.clone();
    }
    let mut seen = std::collections::HashSet::new();
    nets.retain(|n| seen.insert(n.target.clone()));
    tt.networks = if nets.is_empty() { None } else { Some(nets) };
    let cs = tt.container_spec.get_or_insert_with(Default::default);
    for s in cs.secrets.iter().flatten() {
        let sid = s.secret_id.clone().unwrap_or_default();
        if db::get::<Secret>(store, &sid).is_none() {
            return Err(ApiError::invalid_arg(format!(
                "secret not found: {}",
                s.secret_name.as_deref().unwrap_or(&sid)
            )));
        }
    }
    for c in cs.configs.iter().flatten() {
        let cid = c.config_id.clone().unwrap_or_default();
        if db::get::<Config>(store, &cid).is_none() {
            return Err(ApiError::invalid_arg(format!(
                "config not found: {}",
                c.config_name.as_deref().unwrap_or(&cid)
            )));
        }
    }
    let _ = state;
    Ok(())
}

/// `POST /services/create`.
pub async fn create(State(d): State<AppState>, body: Bytes) -> Result<Response> {
    let m = d.manager().await?;
    let mut spec: ServiceSpec = parse_spec(&body)?;
    validate::service_spec(&spec)?;
    let _alloc = m.alloc.lock().await;
    let state = crate::state::load(&m.store);
    resolve(&mut spec, &state, &m.store)?;
    let (volume_ops, pins) = volume_ops(&m.store, &mut spec)?;
    let sid = id::new_id();
    if spec.name.as_deref().unwrap_or("").is_empty() {
        spec.name = Some(format!("svc-{}", &sid[..10]));
    }
    super::name_free::<StoredService>(&m.store, "service", spec.name.as_deref().unwrap_or(""))?;
    let now = id::now();
    let mut svc = StoredService::default();
    svc.service.id = Some(sid.clone());
    svc.service.created_at = Some(now.clone());
    svc.service.updated_at = Some(now);
    svc.service.spec = Some(spec);
    svc.spec_version = 1;
    svc.last_spec_version = 1;
    svc.volume_pins = pins;
    if svc.mode().is_job() {
        svc.service.job_status = Some(jobs::initial_status(svc.cron().is_some(), &id::now()));
    }
    let mut ipam = Ipam::from_state(&state);
    svc.service.endpoint = Some(endpoint(&svc, &state, &mut ipam)?);
    let mut ops = volume_ops;
    ops.push(db::put(&svc, Expect::Absent)?);
    db::write(&m.store, ops).await?;
    tracing::info!(service = %svc.name(), id = %sid, "service created");
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({"ID": sid, "Warnings": null}),
    ))
}

/// `POST /services/{id}/update?version=N[&rollback=previous]`.
pub async fn update(
    State(d): State<AppState>,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response> {
    let m = d.manager().await?;
    let mut spec: ServiceSpec = parse_spec(&body)?;
    let version = super::query::version(&q, super::query::Versioned::Service)?;
    // dockerd's words; it answers 500 for this, a client's mistake (issue 17: 400).
    let rollback = match q.get("rollback").map(String::as_str) {
        None | Some("" | "none") => false,
        Some("previous") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!("unrecognized rollback option {other}")).into())
        }
    };
    let _alloc = m.alloc.lock().await;
    let cur = find_service(&m.store, &key)?;
    if cur.version != version {
        return Err(ApiError::out_of_sequence().into());
    }
    let old = cur.obj.spec().clone();
    if rollback {
        spec = cur.obj.previous_spec.clone().ok_or_else(|| {
            ApiError::failed_precondition(format!(
                "service {} does not have a previous spec",
                cur.obj.id()
            ))
        })?;
    }
    validate::service_spec(&spec)?;
    let state = crate::state::load(&m.store);
    resolve(&mut spec, &state, &m.store)?;
    let volume_ops = volume_ops(&m.store, &mut spec)?;
    if spec.name.as_deref().unwrap_or("").is_empty() {
        spec.name = old.name.clone();
    }
    // swarmkit's checks, in its order and words: both are `codes.Unimplemented`, which dockerd
    // answers 501 (a spec that leaves the mode out asks for one replica, so it changes a
    // global service's mode too, as in Swarm).
    let mode_kind = |m: Mode| std::mem::discriminant(&m);
    if mode_kind(Mode::of(spec.mode.as_ref())) != mode_kind(Mode::of(old.mode.as_ref())) {
        return Err(ApiError::new(
            501,
            "rpc error: code = Unimplemented desc = service mode change is not allowed",
        )
        .into());
    }
    if spec.name != old.name {
        return Err(ApiError::new(
            501,
            "rpc error: code = Unimplemented desc = renaming services is not supported",
        )
        .into());
    }
    let start = if rollback {
        (
            ServiceUpdateStatusStateEnum::ROLLBACK_STARTED,
            "manually requested rollback".to_string(),
        )
    } else {
        (
            ServiceUpdateStatusStateEnum::UPDATING,
            "update in progress".to_string(),
        )
    };
    store_spec(&m.store, &state, &cur, spec, start, volume_ops).await?;
    Ok(json(StatusCode::OK, &serde_json::json!({"Warnings": null})))
}

/// Writes `spec` as the service's current one (read at `cur`). If its tasks must be replaced
/// (or a rollback is asked for), the update starts in `start`'s state with its message; otherwise
/// the update status is cleared as swarmkit clears it, so any update call resumes a paused
/// update (the control loop starts it again if tasks are still out of date). Also stores the
/// nodes its node-local volumes pin it to, and writes `ops` (its volumes) in the same entry.
async fn store_spec(
    store: &shoal_store::Store,
    state: &ClusterState,
    cur: &Versioned<StoredService>,
    spec: ServiceSpec,
    start: (ServiceUpdateStatusStateEnum, String),
    (mut ops, pins): (Vec<shoal_store::Op>, Vec<shoal_api::objects::VolumePin>),
) -> std::result::Result<(), ApiError> {
    let mut svc = cur.obj.clone();
    svc.volume_pins = pins;
    let now = id::now();
    if svc.mode().is_job() {
        rerun_job(&mut svc, spec, &now);
    } else {
        // A rollback asked for is one in Swarm's status even when no task differs (a rolled
        // back scale): it completes once the tasks are settled.
        let rollback = start.0 == ServiceUpdateStatusStateEnum::ROLLBACK_STARTED;
        if svc.replace_spec(spec, &now) || rollback {
            svc.service.update_status = Some(ServiceUpdateStatus {
                state: Some(start.0),
                started_at: Some(now.clone()),
                completed_at: None,
                message: Some(start.1),
            });
        } else {
            // swarmkit's `UpdateService` resets the update status on every update that is not
            // a rollback ("Reset update status"): a scale or a label change after a finished
            // update shows none, a paused update resumes (the control loop starts it again
            // while tasks are out of date).
            svc.service.update_status = None;
        }
    }
    svc.service.updated_at = Some(now);
    let mut ipam = Ipam::from_state(state);
    svc.service.endpoint = Some(endpoint(&svc, state, &mut ipam)?);
    ops.push(db::put(&svc, Expect::Version(cur.version))?);
    db::write(store, ops).await?;
    Ok(())
}

/// The writes that make or update the shared volumes the spec's mounts declare (a stack's
/// `volumes:` with `driver_opts`), taking their credentials out of the spec; they go in the
/// same raft entry as the service.
/// Also the nodes its node-local volumes pin it to.
fn volume_ops(
    store: &shoal_store::Store,
    spec: &mut ServiceSpec,
) -> std::result::Result<(Vec<shoal_store::Op>, Vec<shoal_api::objects::VolumePin>), ApiError> {
    let mut ops = Vec::new();
    let requests = crate::volumes::from_service(store, spec)?;
    for req in &requests {
        ops.extend(crate::volumes::ops_for(store, req)?);
    }
    let pins = crate::volumes::pins(store, spec, &requests);
    Ok((ops, pins))
}

/// A job has no rolling update: an update runs it again, as a new iteration. A periodic job
/// runs at its ticks, and again now only when forced (`docker service update --force`); a
/// changed schedule is planned afresh.
fn rerun_job(svc: &mut StoredService, spec: ServiceSpec, now: &str) {
    let forced = |s: &ServiceSpec| s.task_template.as_ref().and_then(|t| t.force_update);
    let run_now = svc.cron().is_none() || forced(&spec) != forced(svc.spec());
    if shoal_api::cron::of(&spec) != svc.cron() {
        svc.cron_next = None;
    }
    svc.replace_spec(spec, now);
    if run_now {
        jobs::next_iteration(svc, now);
    }
}

/// `GET /shoal/v1/services/{id}/schedule`: a periodic job's schedule, last and next run and
/// skipped runs, for `shoal service schedule` (Docker's API has no place for them).
pub async fn schedule(State(d): State<AppState>, Path(key): Path<String>) -> Result<Response> {
    let m = d.manager().await?;
    let s = find_service(&m.store, &key)?.obj;
    let Some(expr) = s.cron() else {
        return Err(ApiError::invalid(format!(
            "service {} has no {} label: it is not a periodic job",
            s.name(),
            shoal_api::cron::LABEL
        ))
        .into());
    };
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "Schedule": expr,
            "Iteration": s.job_iteration(),
            "LastRun": s.service.job_status.as_ref().and_then(|j| j.last_execution.clone()),
            "NextRun": s.cron_next,
            "Skipped": s.cron_skipped,
        }),
    ))
}

/// `GET /shoal/v1/services/{id}/history`: the current spec and the earlier ones kept, newest
/// first, for `shoal service history`.
pub async fn history(State(d): State<AppState>, Path(key): Path<String>) -> Result<Response> {
    let m = d.manager().await?;
    let s = find_service(&m.store, &key)?.obj;
    /// One revision, encoded directly so its spec keeps moby's field names.
    #[derive(serde::Serialize)]
    struct Revision<'a> {
        #[serde(rename = "Version")]
        version: u64,
        #[serde(rename = "Current")]
        current: bool,
        #[serde(rename = "Since", skip_serializing_if = "Option::is_none")]
        since: Option<&'a str>,
        #[serde(rename = "ReplacedAt", skip_serializing_if = "Option::is_none")]
        replaced_at: Option<&'a str>,
        #[serde(rename = "Spec")]
        spec: &'a ServiceSpec,
    }
    let mut out = vec![Revision {
        version: s.spec_version,
        current: true,
        since: s.service.updated_at.as_deref(),
        replaced_at: None,
        spec: s.spec(),
    }];
    for r in &s.history {
        out.push(Revision {
            version: r.version,
            current: false,
            since: None,
            replaced_at: Some(&r.replaced_at),
            spec: &r.spec,
        });
    }
    Ok(json(StatusCode::OK, &out))
}

/// `POST /shoal/v1/services/{id}/rollback?revision=N`: goes back to any spec the history
/// keeps (beyond Swarm, which keeps one), as a rollback with the rollback settings.
pub async fn rollback_to(
    State(d): State<AppState>,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let m = d.manager().await?;
    let revision: u64 = q
        .get("revision")
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| ApiError::invalid("revision: a revision number is required"))?;
    let _alloc = m.alloc.lock().await;
    let cur = find_service(&m.store, &key)?;
    if revision == cur.obj.spec_version {
        return Err(ApiError::invalid(format!(
            "revision: {revision} is the current spec of service {}",
            cur.obj.name()
        ))
        .into());
    }
    let spec = cur
        .obj
        .history
        .iter()
        .find(|r| r.version == revision)
        .map(|r| r.spec.clone())
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "revision: service {} has no revision {revision} (see shoal service history)",
                cur.obj.name()
            ))
        })?;
    let state = crate::state::load(&m.store);
    let mut spec = spec;
    resolve(&mut spec, &state, &m.store)?;
    let start = (
        ServiceUpdateStatusStateEnum::ROLLBACK_STARTED,
        format!("rollback to revision {revision} requested"),
    );
    let pins = crate::volumes::pins(&m.store, &spec, &[]);
    store_spec(&m.store, &state, &cur, spec, start, (Vec::new(), pins)).await?;
    tracing::info!(service = %cur.obj.name(), revision, "rollback to an earlier revision");
    Ok(json(StatusCode::OK, &serde_json::json!({"Warnings": null})))
}

/// `GET /services/{id}[?insertDefaults=true]`: with `insertDefaults`, every setting the spec
/// leaves out shows the value Swarm uses (swarmkit's `InterpolateService`; the previous spec
/// is shown as stored, as dockerd does).
pub async fn inspect(
    State(d): State<AppState>,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let insert_defaults = super::query::strict_bool(&q, "insertDefaults")?;
    let m = d.manager().await?;
    let mut view = ServiceView::from(find_service(&m.store, &key)?.obj);
    if insert_defaults {
        if let Some(spec) = view.service.spec.as_mut() {
            shoal_api::moby::insert_defaults(spec);
        }
    }
    Ok(json(StatusCode::OK, &view))
}

/// `DELETE /services/{id}`: the control loop then stops and forgets its tasks.
pub async fn remove(State(d): State<AppState>, Path(key): Path<String>) -> Result<Response> {
    let m = d.manager().await?;
    let s = find_service(&m.store, &key)?;
    db::write(
        &m.store,
        vec![db::delete::<StoredService>(s.obj.id(), Expect::Any)],
    )
    .await?;
    tracing::info!(service = %s.obj.name(), "service removed");
    Ok(super::done())
}

/// `GET /services?filters=&status=`: what `docker service ls` asks for. It reads only what
/// it shows: the services, and with `status` each task's counted fields, never a whole
/// [`ClusterState`] (decoding every task's spec was a third of this request's time).
pub async fn list(
    State(d): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let m = d.manager().await?;
    let f = Filters::parse(&q, &["id", "name", "label", "mode", "runtime"])?;
    let status = super::query::strict_bool(&q, "status")?;
    let mut services: Vec<StoredService> = db::list::<StoredService>(&m.store)
        .into_iter()
        .map(|s| s.obj)
        .filter(|s| f.any("id", |x| s.id().starts_with(x)))
        .filter(|s| f.any("name", |x| s.name().starts_with(x)))
        .filter(|s| f.labels("label", s.spec().labels.as_ref()))
        .filter(|s| {
            // dockerd's names for the four modes, matched exactly.
            let mode = match s.mode() {
                Mode::Replicated(_) => "replicated",
                Mode::Global => "global",
                Mode::ReplicatedJob { .. } => "replicated-job",
                Mode::GlobalJob => "global-job",
            };
            f.any("mode", |x| x == mode)
        })
        .collect();
    services.sort_by(|a, b| a.name().cmp(b.name()));
    if status {
        let mut tasks = tally_tasks(&m.store);
        let nodes = if services.iter().any(|s| s.mode() == Mode::Global) {
            db::list::<Node>(&m.store)
        } else {
            Vec::new()
        };
        for svc in &mut services {
            let of_service = tasks.remove(svc.id()).unwrap_or_default();
            svc.service.service_status = Some(service_status(svc, &of_service, &nodes));
        }
    }
    let out: Vec<ServiceView> = services.into_iter().map(ServiceView::from).collect();
    Ok(json(StatusCode::OK, &out))
}

/// A stored service as Docker shows it: Docker's `Service` and the previous spec, as dockerd's
/// conversions leave them (`shoal_api::moby::service`), encoded directly instead of through a
/// JSON tree, where half of a list's time went.
#[derive(serde::Serialize)]
struct ServiceView {
    #[serde(flatten)]
    service: Service,
    #[serde(rename = "PreviousSpec", skip_serializing_if = "Option::is_none")]
    previous_spec: Option<ServiceSpec>,
}

impl From<StoredService> for ServiceView {
    fn from(mut s: StoredService) -> Self {
        shoal_api::moby::service(&mut s.service, s.previous_spec.as_mut());
        ServiceView {
            service: s.service,
            previous_spec: s.previous_spec,
        }
    }
}

/// The fields of a stored task that a service's status counts. Decoding only these skips the
/// task's spec and status details, which a full [`StoredTask`] decode would build and drop.
#[derive(serde::Deserialize)]
struct TaskTally {
    #[serde(rename = "ServiceID", default)]
    service_id: Option<String>,
    #[serde(rename = "DesiredState", default)]
    desired_state: Option<TaskState>,
    #[serde(rename = "Status", default)]
    status: Option<TallyStatus>,
    #[serde(rename = "JobIteration", default)]
    job_iteration: Option<ObjectVersion>,
}

/// The observed state of a [`TaskTally`].
#[derive(serde::Deserialize)]
struct TallyStatus {
    #[serde(rename = "State", default)]
    state: Option<TaskState>,
}

/// Every task's counted fields, by service ID, as tasks with only those fields set (so the
/// counting reads them through [`StoredTask`]'s own accessors, as the control loops do).
fn tally_tasks(store: &shoal_store::Store) -> HashMap<String, Vec<StoredTask>> {
    let mut by_service: HashMap<String, Vec<StoredTask>> = HashMap::new();
    for o in store.list(shoal_api::kind::TASK) {
        match tally(&o.data) {
            Ok(task) => by_service
                .entry(task.service_id().to_string())
                .or_default()
                .push(task),
            Err(e) => {
                tracing::error!(kind = %o.kind, id = %o.id, error = %e, "stored object does not decode; skipped")
            }
        }
    }
    by_service
}

/// One stored task's counted fields, as a task with only those set.
fn tally(data: &[u8]) -> serde_json::Result<StoredTask> {
    let t: TaskTally = serde_json::from_slice(data)?;
    Ok(StoredTask {
        task: Task {
            service_id: t.service_id,
            desired_state: t.desired_state,
            status: Some(TaskStatus {
                state: t.status.and_then(|s| s.state),
                ..Default::default()
            }),
            job_iteration: t.job_iteration,
            ..Default::default()
        },
        ..Default::default()
    })
}

fn service_status(
    svc: &StoredService,
    tasks: &[StoredTask],
    nodes: &[Versioned<Node>],
) -> ServiceServiceStatus {
    if svc.mode().is_job() {
        return job_status(svc, tasks.iter());
    }
    let running = tasks
        .iter()
        .filter(|t| t.desired() == TaskState::RUNNING && t.state() == TaskState::RUNNING)
        .count() as u64;
    let desired = match svc.mode() {
        Mode::Replicated(n) => n,
        Mode::Global => nodes
            .iter()
            .filter(|n| {
                node_schedulable(&n.obj) && shoal_control::scheduler::constraints_met(svc, &n.obj)
            })
            .count() as u64,
        _ => 0,
    };
    let completed = tasks
        .iter()
        .filter(|t| t.state() == TaskState::COMPLETE)
        .count() as u64;
    ServiceServiceStatus {
        running_tasks: Some(running),
        desired_tasks: Some(desired),
        completed_tasks: Some(completed),
    }
}

/// `GET /tasks?filters=`.
pub async fn list_tasks(
    State(d): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let m = d.manager().await?;
    let f = Filters::parse(
        &q,
        &[
            "desired-state",
            "id",
            "label",
            "name",
            "node",
            "service",
            "_up-to-date",
            "runtime",
        ],
    )?;
    f.known(
        "desired-state",
        &[
            "new",
            "allocated",
            "pending",
            "assigned",
            "accepted",
            "preparing",
            "ready",
            "starting",
            "running",
            "complete",
            "shutdown",
            "failed",
            "rejected",
            "remove",
            "orphaned",
        ],
    )?;
    let state = crate::state::load(&m.store);
    let service_ids: Vec<String> = f
        .get("service")
        .iter()
        .filter_map(|k| db::lookup::<StoredService>(&m.store, k).map(|s| s.obj.id().to_string()))
        .collect();
    if !f.get("service").is_empty() && service_ids.is_empty() {
        return Ok(json(StatusCode::OK, &Vec::<()>::new()));
    }
    let node_ids: Vec<String> = f
        .get("node")
        .iter()
        .map(|k| {
            if k == "self" {
                return m.identity.node_id.clone();
            }
            db::lookup::<Node>(&m.store, k)
                .map(|n| n.obj.id.unwrap_or_default())
                .or_else(|| {
                    state
                        .nodes
                        .iter()
                        .find(|n| {
                            n.obj
                                .description
                                .as_ref()
                                .and_then(|d| d.hostname.as_deref())
                                == Some(k.as_str())
                        })
                        .and_then(|n| n.obj.id.clone())
                })
                .unwrap_or_else(|| k.clone())
        })
        .collect();
    // swarmkit asks only whether the key is there (`len(filter.Get("_up-to-date")) != 0`).
    let up_to_date = !f.get("_up-to-date").is_empty();
    let mut tasks: Vec<&StoredTask> = state
        .tasks
        .iter()
        .map(|t| &t.obj)
        .filter(|t| service_ids.is_empty() || service_ids.iter().any(|s| s == t.service_id()))
        .filter(|t| node_ids.is_empty() || node_ids.iter().any(|n| Some(n.as_str()) == t.node_id()))
        .filter(|t| f.any("id", |x| t.id().starts_with(x)))
        .filter(|t| {
            f.any("desired-state", |x| match x.to_ascii_lowercase().as_str() {
                // A job's task, run to completion, is running as far as a user asks.
                "running" => shoal_api::objects::runs(t.desired()),
                "ready" => t.desired() == TaskState::READY,
                "shutdown" => !t.meant_to_run() && t.desired() != TaskState::ACCEPTED,
                "accepted" => t.desired() == TaskState::ACCEPTED,
                other => t.desired().to_string() == other,
            })
        })
        .filter(|t| {
            let svc = state.services.get(t.service_id());
            f.labels("label", svc.and_then(|s| s.obj.spec().labels.as_ref()))
        })
        .filter(|t| {
            f.any("name", |x| {
                let svc_name = state
                    .services
                    .get(t.service_id())
                    .map(|s| s.obj.name().to_string())
                    .unwrap_or_default();
                task_name(&svc_name, t).starts_with(x)
            })
        })
        .filter(|t| {
            !up_to_date
                || state
                    .services
                    .get(t.service_id())
                    .is_some_and(|s| t.spec_version == s.obj.spec_version)
        })
        .collect();
    tasks.sort_by(|a, b| a.task.created_at.cmp(&b.task.created_at));
    let out: Vec<TaskView> = tasks
        .into_iter()
        .map(|t| task_view(t, &state.networks))
        .collect();
    Ok(json(StatusCode::OK, &out))
}

/// A job's counts, from its current iteration's tasks: running, wanted running now (for a
/// replicated job the lesser of max-concurrent and the completions left), and completed.
fn job_status<'a>(
    svc: &StoredService,
    tasks: impl Iterator<Item = &'a StoredTask>,
) -> ServiceServiceStatus {
    let iteration = svc.job_iteration();
    let (mut running, mut completed, mut pending) = (0, 0, 0);
    for t in tasks.filter(|t| t.job_iteration() == Some(iteration)) {
        match t.state() {
            TaskState::RUNNING if t.meant_to_run() => running += 1,
            TaskState::COMPLETE => completed += 1,
            s if t.meant_to_run() && !shoal_api::objects::is_terminal(s) => pending += 1,
            _ => {}
        }
    }
    let desired = match svc.mode() {
        Mode::ReplicatedJob {
            total,
            max_concurrent,
        } => max_concurrent.min(total.saturating_sub(completed)),
        _ => running + pending,
    };
    ServiceServiceStatus {
        running_tasks: Some(running),
        desired_tasks: Some(desired),
        completed_tasks: Some(completed),
    }
}

/// A task's display name, as the CLI and container names use it.
pub fn task_name(service: &str, t: &StoredTask) -> String {
    if t.slot() > 0 {
        format!("{service}.{}", t.slot())
    } else {
        format!("{service}.{}", t.node_id().unwrap_or_default())
    }
}

/// `GET /tasks/{id}`.
pub async fn inspect_task(State(d): State<AppState>, Path(key): Path<String>) -> Result<Response> {
    let m = d.manager().await?;
    let t = db::find::<StoredTask>(&m.store, &key)?;
    let networks = db::list::<Network>(&m.store);
    Ok(json(StatusCode::OK, &task_view(&t.obj, &networks)))
}

/// A stored task as dockerd answers it (`shoal_api::moby::task`), without shoal's fields, and
/// encoded directly (a JSON tree would lose moby's field names, `api::encode`).
#[derive(serde::Serialize)]
struct TaskView {
    #[serde(flatten)]
    task: Task,
    #[serde(rename = "NetworksAttachments", skip_serializing_if = "Vec::is_empty")]
    networks_attachments: Vec<AttachmentView>,
}

/// One of a task's networks as moby shows it: the whole network object
/// (`shoal_api::moby::swarm_network`) and the task's addresses on it.
#[derive(serde::Serialize)]
struct AttachmentView {
    #[serde(rename = "Network")]
    network: serde_json::Value,
    #[serde(rename = "Addresses")]
    addresses: Vec<String>,
}

fn task_view(t: &StoredTask, networks: &[Versioned<Network>]) -> TaskView {
    let mut task = t.task.clone();
    shoal_api::moby::task(&mut task);
    let networks_attachments = t
        .networks_attachments
        .iter()
        .map(|a| {
            let network = networks
                .iter()
                .find(|n| n.obj.id.as_deref() == Some(a.network.id.as_str()))
                .map(|n| shoal_api::moby::swarm_network(&n.obj, n.version))
                // A network removed since: what the task recorded of it.
                .unwrap_or_else(|| serde_json::to_value(&a.network).unwrap_or_default());
            AttachmentView {
                network,
                addresses: a.addresses.clone(),
            }
        })
        .collect();
    TaskView {
        task,
        networks_attachments,
    }
}

#[cfg(test)]
#[path = "services_tests.rs"]
mod tests;
