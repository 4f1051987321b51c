//! Label keys Swarm puts on task containers; tools (and shoal's adoption after a restart) read them.

/// The task a container runs.
pub const TASK_ID: &str = "com.docker.swarm.task.id";
/// The task's name (`service.slot.taskid`).
pub const TASK_NAME: &str = "com.docker.swarm.task.name";
/// The service the task belongs to.
pub const SERVICE_ID: &str = "com.docker.swarm.service.id";
/// The service's name.
pub const SERVICE_NAME: &str = "com.docker.swarm.service.name";
/// The node the task was assigned to: an agent manages only containers carrying its own node ID.
pub const NODE_ID: &str = "com.docker.swarm.node.id";
/// The stack a service belongs to, set by `docker stack deploy`.
pub const STACK_NAMESPACE: &str = "com.docker.stack.namespace";
