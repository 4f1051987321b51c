//! The data shoal speaks: Docker's swarm objects (from `bollard-stubs`, the models bollard generates from moby's swagger), the extra
//! fields shoal keeps beside them, Docker's error format and spec validation. Pure data, no I/O.

pub mod cron;
pub mod dispatch;
pub mod error;
pub mod floating;
pub mod id;
pub mod images;
pub mod labels;
pub mod logs;
pub mod moby;
pub mod objects;
pub mod registry;
pub mod role;
pub mod template;
pub mod validate;
pub mod volume;

/// Docker's models, re-exported so every crate names them the same way.
pub use bollard_stubs::models;
pub use error::ApiError;
pub use role::Role;

/// Store kinds: one per object type, the keys under which `shoal-store` files objects.
pub mod kind {
    /// The one cluster object (Docker's `Swarm`).
    pub const CLUSTER: &str = "cluster";
    /// Nodes.
    pub const NODE: &str = "node";
    /// Services.
    pub const SERVICE: &str = "service";
    /// Tasks.
    pub const TASK: &str = "task";
    /// Swarm-scoped networks.
    pub const NETWORK: &str = "network";
    /// Secrets.
    pub const SECRET: &str = "secret";
    /// Configs.
    pub const CONFIG: &str = "config";
    /// Shared volumes (issue 19).
    pub const VOLUME: &str = "volume";
    /// Floating addresses (issue 20).
    pub const FLOATING_IP: &str = "floatingip";
    /// Who holds a floating address, under which epoch (the lease's raft record).
    pub const FLOATING_GRANT: &str = "floatinggrant";
    /// A node's network interfaces, as it reports them (floating address checks).
    pub const NODE_INTERFACES: &str = "nodeinterfaces";
    /// The images a node's engine holds, as it reports them (issue 22's index).
    pub const NODE_IMAGES: &str = "nodeimages";
    /// A node registry's tag: `repo:tag` -> manifest digest (issue 22).
    pub const REGISTRY_TAG: &str = "regtag";
    /// A node registry's manifest, by digest, with its exact bytes.
    pub const REGISTRY_MANIFEST: &str = "regmanifest";
    /// A node registry's blob: its size and the nodes that hold it.
    pub const REGISTRY_BLOB: &str = "regblob";
}
