//! The executor: the only code that creates, starts, stops and removes task containers, and
//! reads their logs (`logs`). A small trait (as swarmkit's controller) with the Docker Engine
//! implementation behind it.

mod logs;

pub use logs::{LogLine, LogLines};

use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, Mount, MountType,
    NetworkConnectRequest, NetworkingConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, StopContainerOptions,
    WaitContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use shoal_api::objects::StoredTask;
use shoal_api::{labels, template};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Why an executor step failed; `Display` is what `docker service ps` shows as the task's error.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The image is not on this node and could not be pulled.
    #[error("No such image: {image}{detail}")]
    NoImage {
        /// Image reference.
        image: String,
        /// Why it could not be had.
        detail: String,
    },
    /// The engine refused a call.
    #[error("{op} {what}: {source}")]
    Engine {
        /// The step.
        op: &'static str,
        /// Container or task.
        what: String,
        /// The engine's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The task has no container on this node (not created yet, or already removed).
    #[error("task {task} has no container on this node")]
    NoContainer {
        /// The task.
        task: String,
    },
}

/// When to pull an image the node does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull only if the image is missing (Swarm's behaviour).
    Missing,
    /// Never pull; a missing image rejects the task.
    Never,
}

/// A task container as found on the engine: what the worker adopts after a restart, and what
/// the sweep removes once its task is gone.
#[derive(Debug, Clone)]
pub struct Found {
    /// Container ID.
    pub id: String,
    /// Task the container runs.
    pub task_id: String,
    /// Running now.
    pub running: bool,
    /// Was started at least once (a stopped one has an exit code `wait` returns at once).
    pub started: bool,
    /// Process ID if running.
    pub pid: Option<i64>,
}

/// Where a task's networks and files are, prepared by the worker before `create`.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// (Docker network name, IPv4 address) per attachment, in order.
    pub networks: Vec<(String, String)>,
    /// DNS servers for the container.
    pub dns: Vec<String>,
    /// Read-only file mounts: (host path, container path).
    pub files: Vec<(PathBuf, String)>,
    /// Shared volumes the task mounts, to be mounted on this node before `create`.
    pub volumes: Vec<shoal_api::dispatch::VolumePayload>,
    /// Where each of them is mounted here (volume name -> host path), once mounted: the
    /// container binds these instead of asking the engine for a volume.
    pub binds: HashMap<String, PathBuf>,
}

/// A container's health check verdict, as Docker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No verdict yet (the start period, or no check has passed).
    Starting,
    /// The last checks passed.
    Healthy,
    /// Failed as many checks in a row as its retries allow.
    Unhealthy,
}

/// What runs a task's container: the worker decides (`worker::step`), the executor acts. As
/// small as swarmkit's controller: prepare, start, wait, shutdown, remove, plus the inspections
/// the worker cannot do without (each says why). A trait so a simulated node can stand in for
/// benchmarks and a recording one for the worker's tests.
pub trait Executor: Send + Sync + 'static {
    /// Task containers this node has (labelled with its node ID), running or not. Needed for
    /// adoption: after a restart the worker takes over these instead of starting duplicates,
    /// and removes those whose task left the node.
    fn list(&self) -> impl Future<Output = Result<Vec<Found>, ExecError>> + Send;
    /// Makes everything ready so that `start` runs the task at once: the image (pulled if the
    /// policy allows), the container with its networks and files. Returns the container's ID.
    fn prepare(
        &self,
        task: &StoredTask,
        prep: &Prepared,
    ) -> impl Future<Output = Result<String, ExecError>> + Send;
    /// Starts the prepared container; returns its process ID when the engine tells it.
    fn start(&self, id: &str) -> impl Future<Output = Result<Option<i64>, ExecError>> + Send;
    /// Waits for the container to stop (returns at once if it has); returns the exit code.
    fn wait(&self, id: &str) -> impl Future<Output = Result<i64, ExecError>> + Send;
    /// Stops the container the way its task asked: the stop signal, then SIGKILL after the
    /// stop grace period (both given to the container at `prepare`, so an adopted container
    /// stops the same way). Already stopped or gone counts as done.
    fn shutdown(&self, id: &str) -> impl Future<Output = Result<(), ExecError>> + Send;
    /// Removes the container and its anonymous volumes; gone already counts as done.
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), ExecError>> + Send;
    /// The container's health as its HEALTHCHECK reports it; `None` when it has no check.
    /// Needed because a task with a check is `running` only once healthy, and fails when
    /// unhealthy, and the engine tells the verdict only on inspection.
    fn health(&self, id: &str) -> impl Future<Output = Result<Option<Health>, ExecError>> + Send {
        let _ = id;
        async { Ok(None) }
    }
    /// How far the task's preparation has got while it takes long ("fetching image from
    /// node-1: 45%"), for the `preparing` status; `None` when there is nothing to tell.
    fn progress(&self, task: &StoredTask) -> Option<String> {
        let _ = task;
        None
    }
    /// Network-attachment task IDs that plain containers on the engine still name (their
    /// `ATTACHMENTS_LABEL`). Needed to give back the addresses of attachments whose container
    /// is gone; an engine without plain containers (a simulated node) has none.
    fn attached(&self) -> impl Future<Output = Result<HashSet<String>, ExecError>> + Send {
        async { Ok(HashSet::new()) }
    }
    /// The log lines of the task's container that `options` ask for (streams, tail, since,
    /// until, follow), as the engine's container logs give them. Needed because a node's task
    /// logs reach `docker service logs` only through its agent; `NoContainer` while the task
    /// has none. A simulated node has no logs.
    fn logs(
        &self,
        task_id: &str,
        options: &shoal_api::logs::LogOptions,
    ) -> impl Future<Output = Result<LogLines, ExecError>> + Send {
        let _ = (task_id, options);
        async { Ok(Box::pin(futures::stream::empty()) as LogLines) }
    }
}

/// Concurrent container create/start calls per node (measured in bench/service-scale.sh).
pub const DEFAULT_START_PARALLELISM: usize = 8;

/// The Docker Engine executor.
#[derive(Clone)]
pub struct DockerExecutor {
    docker: Docker,
    node_id: String,
    pull: PullPolicy,
    hostname: String,
    /// Images seen present recently, so 50 replicas cost one image lookup, not 50.
    images: Arc<Mutex<HashMap<String, Instant>>>,
    /// Bounds concurrent create+start calls: the engine serializes much of that work anyway.
    starts: Arc<Semaphore>,
    /// Images fetched from other nodes when no registry gives them (issue 22).
    transfers: Option<Arc<crate::images::Transfers>>,
}

/// How long an image found present is trusted without asking the engine again.
const IMAGE_CACHE_TTL: Duration = Duration::from_secs(10);

fn engine(
    op: &'static str,
    what: impl Into<String>,
) -> impl FnOnce(bollard::errors::Error) -> ExecError {
    let what = what.into();
    move |source| ExecError::Engine { op, what, source }
}

impl DockerExecutor {
    /// An executor for `node_id`'s containers on this engine.
    pub fn new(docker: Docker, node_id: String, pull: PullPolicy) -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_string();
        let parallel = std::env::var("SHOAL_START_PARALLELISM")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_START_PARALLELISM);
        Self {
            docker,
            node_id,
            pull,
            hostname,
            images: Default::default(),
            starts: Arc::new(Semaphore::new(parallel)),
            transfers: None,
        }
    }

    /// Fetches images that are neither here nor pullable from the nodes that hold them.
    pub fn with_transfers(mut self, transfers: Arc<crate::images::Transfers>) -> Self {
        self.transfers = Some(transfers);
        self
    }

    fn template_context(&self, task: &StoredTask) -> template::Context {
        let name = Self::container_name(task);
        template::Context {
            service_id: task.service_id().to_string(),
            service_name: task.service_name.clone(),
            task_id: task.id().to_string(),
            task_slot: if task.slot() > 0 {
                task.slot().to_string()
            } else {
                self.node_id.clone()
            },
            task_name: name,
            node_id: self.node_id.clone(),
            node_hostname: self.hostname.clone(),
            node_os: std::env::consts::OS.to_string(),
            node_arch: std::env::consts::ARCH.to_string(),
        }
    }

    /// The container name Swarm uses: `service.slot.task` (or `service.node.task` for global).
    pub fn container_name(task: &StoredTask) -> String {
        let middle = if task.slot() > 0 {
            task.slot().to_string()
        } else {
            task.node_id().unwrap_or_default().to_string()
        };
        format!("{}.{}.{}", task.service_name, middle, task.id())
    }

    fn config(&self, task: &StoredTask, prep: &Prepared) -> ContainerCreateBody {
        let spec = task.task.spec.clone().unwrap_or_default();
        let mut cs = spec.container_spec.clone().unwrap_or_default();
        let ctx = self.template_context(task);
        cs.hostname = cs.hostname.map(|h| template::expand(&h, &ctx));
        cs.env = cs
            .env
            .map(|e| e.iter().map(|v| template::expand(v, &ctx)).collect());
        if let Some(ms) = cs.mounts.as_mut() {
            for m in ms {
                m.source = m.source.as_deref().map(|v| template::expand(v, &ctx));
                m.target = m.target.as_deref().map(|v| template::expand(v, &ctx));
            }
        }
        let mut lbl: HashMap<String, String> = cs.labels.clone().unwrap_or_default();
        lbl.insert(labels::TASK_ID.into(), task.id().into());
        lbl.insert(labels::TASK_NAME.into(), Self::container_name(task));
        lbl.insert(labels::SERVICE_ID.into(), task.service_id().into());
        lbl.insert(labels::SERVICE_NAME.into(), task.service_name.clone());
        lbl.insert(labels::NODE_ID.into(), self.node_id.clone());
        let mut mounts: Vec<Mount> = cs.mounts.clone().unwrap_or_default();
        for m in &mut mounts {
            let shared = m.typ == Some(MountType::VOLUME)
                && m.source.as_ref().and_then(|s| prep.binds.get(s)).is_some();
            if shared {
                let host = m.source.as_ref().and_then(|s| prep.binds.get(s));
                m.source = host.map(|h| h.display().to_string());
                m.typ = Some(MountType::BIND);
                m.volume_options = None;
            }
        }
        for (host, target) in &prep.files {
            mounts.push(Mount {
                target: Some(target.clone()),
                source: Some(host.display().to_string()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            });
        }
        let res = spec.resources.clone().unwrap_or_default();
        let limits = res.limits.unwrap_or_default();
        let reservations = res.reservations.unwrap_or_default();
        let dns_cfg = cs.dns_config.clone().unwrap_or_default();
        let mut dns = dns_cfg.nameservers.clone().unwrap_or_default();
        if dns.is_empty() {
            dns = prep.dns.clone();
        }
        // Swarm's hosts entries are "IP host..."; the engine wants "host:IP".
        let extra_hosts: Vec<String> = cs
            .hosts
            .iter()
            .flatten()
            .filter_map(|h| {
                let mut parts = h.split_whitespace();
                let ip = parts.next()?;
                Some(parts.map(|name| format!("{name}:{ip}")).collect::<Vec<_>>())
            })
            .flatten()
            .collect();
        let host_config = HostConfig {
            mounts: if mounts.is_empty() {
                None
            } else {
                Some(mounts)
            },
            nano_cpus: limits.nano_cpus.filter(|n| *n > 0),
            memory: limits.memory_bytes.filter(|n| *n > 0),
            pids_limit: limits.pids.filter(|n| *n > 0),
            memory_reservation: reservations.memory_bytes.filter(|n| *n > 0),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            dns: if dns.is_empty() { None } else { Some(dns) },
            dns_search: dns_cfg.search.clone(),
            dns_options: dns_cfg.options.clone(),
            extra_hosts: if extra_hosts.is_empty() {
                None
            } else {
                Some(extra_hosts)
            },
            init: cs.init,
            readonly_rootfs: cs.read_only,
            group_add: cs.groups.clone(),
            cap_add: cs.capability_add.clone(),
            cap_drop: cs.capability_drop.clone(),
            sysctls: cs.sysctls.clone(),
            ulimits: cs.ulimits.clone().map(|u| {
                u.into_iter()
                    .map(|x| bollard::models::ResourcesUlimits {
                        name: x.name,
                        soft: x.soft,
                        hard: x.hard,
                    })
                    .collect()
            }),
            oom_score_adj: cs.oom_score_adj,
            log_config: spec
                .log_driver
                .as_ref()
                .map(|l| bollard::models::HostConfigLogConfig {
                    typ: l.name.clone(),
                    config: l.options.clone(),
                }),
            network_mode: prep.networks.first().map(|(n, _)| n.clone()),
            ..Default::default()
        };
        let networking_config = prep.networks.first().map(|(n, ip)| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                n.clone(),
                EndpointSettings {
                    ipam_config: Some(EndpointIpamConfig {
                        ipv4_address: Some(ip.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )])),
        });
        ContainerCreateBody {
            hostname: cs.hostname.clone().filter(|h| !h.is_empty()),
            user: cs.user.clone().filter(|u| !u.is_empty()),
            env: cs.env.clone(),
            cmd: cs.args.clone(),
            entrypoint: cs.command.clone(),
            image: cs.image.clone(),
            labels: Some(lbl),
            working_dir: cs.dir.clone().filter(|d| !d.is_empty()),
            tty: cs.tty,
            open_stdin: cs.open_stdin,
            stop_signal: cs.stop_signal.clone().filter(|s| !s.is_empty()),
            stop_timeout: cs.stop_grace_period.map(|g| g / 1_000_000_000),
            healthcheck: cs.health_check.clone(),
            host_config: Some(host_config),
            networking_config,
            ..Default::default()
        }
    }
}

impl DockerExecutor {
    /// Every container on the engine, running or not, that matches the label filter `label`.
    async fn containers_labelled(
        &self,
        label: String,
        what: &'static str,
    ) -> Result<Vec<bollard::models::ContainerSummary>, ExecError> {
        let filters = HashMap::from([("label".to_string(), vec![label])]);
        self.docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(engine(what, self.node_id.clone()))
    }

    /// Makes sure the image is present, pulling it if the policy allows.
    async fn ensure_image(&self, image: &str) -> Result<(), ExecError> {
        let fresh = self
            .images
            .lock()
            .ok()
            .and_then(|m| m.get(image).map(|t| t.elapsed() < IMAGE_CACHE_TTL))
            .unwrap_or(false);
        if fresh {
            return Ok(());
        }
        if self.docker.inspect_image(image).await.is_ok() {
            if let Ok(mut m) = self.images.lock() {
                m.insert(image.to_string(), Instant::now());
            }
            return Ok(());
        }
        let pulled = if self.pull == PullPolicy::Never {
            Err("not on this node, and the node does not pull".to_string())
        } else {
            self.pull(image).await
        };
        let Err(pull_error) = pulled else {
            return Ok(());
        };
        // No registry gave it: a node of the swarm that holds it may.
        let Some(t) = &self.transfers else {
            return Err(ExecError::NoImage {
                image: image.into(),
                detail: format!(" ({pull_error})"),
            });
        };
        match t.fetch(image).await {
            Ok(()) => {
                if let Ok(mut m) = self.images.lock() {
                    m.insert(image.to_string(), Instant::now());
                }
                Ok(())
            }
            Err(e) => Err(ExecError::NoImage {
                image: image.into(),
                detail: format!(" ({pull_error}; from the swarm: {e})"),
            }),
        }
    }

    /// Pulls `image` from its registry; the engine's error when it cannot.
    async fn pull(&self, image: &str) -> Result<(), String> {
        let (from, tag) = split_image(image);
        let mut s = self.docker.create_image(
            Some(bollard::query_parameters::CreateImageOptions {
                from_image: Some(from),
                tag: Some(tag),
                ..Default::default()
            }),
            None,
            None,
        );
        while let Some(r) = s.next().await {
            if let Err(e) = r {
                crate::metrics::count(&crate::metrics::METRICS.image_pulls, false);
                return Err(format!("pull: {e}"));
            }
        }
        crate::metrics::count(&crate::metrics::METRICS.image_pulls, true);
        Ok(())
    }

    /// Creates the task's container and connects its networks; returns its ID.
    async fn create(&self, task: &StoredTask, prep: &Prepared) -> Result<String, ExecError> {
        let _permit = self.starts.acquire().await;
        let name = Self::container_name(task);
        let body = self.config(task, prep);
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(engine("creating container", name.clone()))?;
        // The engine takes one network at create time; the rest join before start.
        for (net, ip) in prep.networks.iter().skip(1) {
            self.docker
                .connect_network(
                    net,
                    NetworkConnectRequest {
                        container: created.id.clone(),
                        endpoint_config: Some(EndpointSettings {
                            ipam_config: Some(EndpointIpamConfig {
                                ipv4_address: Some(ip.clone()),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                    },
                )
                .await
                .map_err(engine(
                    "connecting container to network",
                    format!("{name} -> {net}"),
                ))?;
        }
        Ok(created.id)
    }
}

impl Executor for DockerExecutor {
    async fn logs(
        &self,
        task_id: &str,
        options: &shoal_api::logs::LogOptions,
    ) -> Result<LogLines, ExecError> {
        logs::read(&self.docker, &self.node_id, task_id, options).await
    }

    async fn attached(&self) -> Result<HashSet<String>, ExecError> {
        let label = shoal_api::dispatch::ATTACHMENTS_LABEL;
        let list = self
            .containers_labelled(label.to_string(), "listing attached containers of node")
            .await?;
        Ok(list
            .iter()
            .filter_map(|c| c.labels.as_ref()?.get(label))
            .flat_map(|v| v.split(','))
            .map(str::to_string)
            .collect())
    }

    async fn list(&self) -> Result<Vec<Found>, ExecError> {
        let label = format!("{}={}", labels::NODE_ID, self.node_id);
        let list = self
            .containers_labelled(label, "listing containers of node")
            .await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let task_id = c.labels.as_ref()?.get(labels::TASK_ID)?.clone();
                let state = c.state.map(|s| s.to_string()).unwrap_or_default();
                Some(Found {
                    id: c.id?,
                    task_id,
                    running: state == "running" || state == "restarting",
                    started: state != "created",
                    pid: None,
                })
            })
            .collect())
    }

    async fn prepare(&self, task: &StoredTask, prep: &Prepared) -> Result<String, ExecError> {
        let image = image_of(task);
        self.ensure_image(&image).await?;
        match self.create(task, prep).await {
            // The image was here when last looked at, and has been removed since: get it again.
            Err(ExecError::Engine {
                source:
                    bollard::errors::Error::DockerResponseServerError {
                        status_code: 404,
                        ref message,
                    },
                ..
            }) if message.contains("No such image") => {
                if let Ok(mut m) = self.images.lock() {
                    m.remove(&image);
                }
                self.ensure_image(&image).await?;
                self.create(task, prep).await
            }
            made => made,
        }
    }

    fn progress(&self, task: &StoredTask) -> Option<String> {
        self.transfers.as_ref()?.progress(&image_of(task))
    }

    async fn health(&self, id: &str) -> Result<Option<Health>, ExecError> {
        use bollard::models::HealthStatusEnum as S;
        let c = self
            .docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(engine("inspecting container health", id))?;
        // The check comes from the spec or the image; Docker fills in its status only once
        // the container runs, so a configured check without a status yet is still starting.
        let test = c.config.and_then(|c| c.healthcheck).and_then(|h| h.test);
        let configured = test
            .as_ref()
            .and_then(|t| t.first())
            .is_some_and(|kind| kind != "NONE");
        let status = c.state.and_then(|s| s.health).and_then(|h| h.status);
        Ok(match status {
            Some(S::HEALTHY) => Some(Health::Healthy),
            Some(S::UNHEALTHY) => Some(Health::Unhealthy),
            _ if configured => Some(Health::Starting),
            _ => None,
        })
    }

    async fn start(&self, id: &str) -> Result<Option<i64>, ExecError> {
        let _permit = self.starts.acquire().await;
        self.docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(engine("starting container", id))?;
        Ok(None)
    }

    async fn wait(&self, id: &str) -> Result<i64, ExecError> {
        let mut s = self.docker.wait_container(
            id,
            Some(WaitContainerOptions {
                condition: "not-running".into(),
            }),
        );
        match s.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(ExecError::Engine {
                op: "waiting for container",
                what: id.into(),
                source: e,
            }),
            None => Ok(0),
        }
    }

    async fn shutdown(&self, id: &str) -> Result<(), ExecError> {
        // No timeout or signal here: the engine uses the container's own StopTimeout and
        // StopSignal, set from the task's spec at create (Docker's default 10 s otherwise).
        let r = self
            .docker
            .stop_container(id, None::<StopContainerOptions>)
            .await;
        match r {
            Ok(()) => Ok(()),
            // Already stopped (304) or gone (404): the goal is reached.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => Ok(()),
            Err(e) => Err(ExecError::Engine {
                op: "stopping container",
                what: id.into(),
                source: e,
            }),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), ExecError> {
        let r = self
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await;
        match r {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(ExecError::Engine {
                op: "removing container",
                what: id.into(),
                source: e,
            }),
        }
    }
}

/// `repo:tag` (digest references pass through whole), defaulting the tag to `latest`.
/// The image the task's container runs, as its spec names it.
fn image_of(task: &StoredTask) -> String {
    task.task
        .spec
        .as_ref()
        .and_then(|s| s.container_spec.as_ref())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

fn split_image(image: &str) -> (String, String) {
    if image.contains('@') {
        return (image.to_string(), String::new());
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => (
            image[..image.len() - tag.len() - 1].to_string(),
            tag.to_string(),
        ),
        None => (image.to_string(), "latest".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        assert_eq!(split_image("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(
            split_image("localhost:5000/web:1.2"),
            ("localhost:5000/web".into(), "1.2".into())
        );
        assert_eq!(
            split_image("localhost:5000/web"),
            ("localhost:5000/web".into(), "latest".into())
        );
    }
}
