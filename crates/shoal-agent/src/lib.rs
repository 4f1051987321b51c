//! Everything that runs on a node: the executor that drives the Docker Engine, the worker that
//! moves each assigned task through its states, secret and config files, and node networking.

pub mod executor;
pub mod files;
pub mod floating;
pub mod images;
pub mod logs;
pub mod metrics;
/// Swarm networks on this node: bridges, the Docker network plugin, service DNS, load balancing.
pub mod network;
mod nft_run;
pub mod volumes;
pub mod worker;
