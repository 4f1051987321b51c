//! The agent's Prometheus instruments (issue 21): what this node did (image pulls, volume
//! mounts, rule applies) and holds (floating addresses). The binary's `/metrics` encodes them,
//! with the task containers it counts from the engine at each scrape.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::LazyLock;

/// Labels as name-value pairs.
pub type Labels = Vec<(String, String)>;

/// The agent's instruments.
pub struct AgentMetrics {
    /// Image pulls by result (`ok`, `error`).
    pub image_pulls: Family<Labels, Counter>,
    /// Image transfers from other nodes by result (`ok`, `error`), one per holder tried.
    pub image_transfers: Family<Labels, Counter>,
    /// Bytes of images received from other nodes.
    pub image_transfer_bytes: Counter,
    /// Shared-volume mounts by result (`ok`, `error`).
    pub volume_mounts: Family<Labels, Counter>,
    /// Shared-volume unmounts.
    pub volume_unmounts: Counter,
    /// One nftables transaction (the routing mesh and VIP rules, the floating gate).
    pub nft_apply: Histogram,
    /// Floating addresses on this node's interfaces now.
    pub floating_held: Gauge,
}

/// The one set of instruments of this process.
pub static METRICS: LazyLock<AgentMetrics> = LazyLock::new(|| AgentMetrics {
    image_pulls: Family::default(),
    image_transfers: Family::default(),
    image_transfer_bytes: Counter::default(),
    volume_mounts: Family::default(),
    volume_unmounts: Counter::default(),
    nft_apply: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
    floating_held: Gauge::default(),
});

/// Counts one event of a family by result.
pub fn count(family: &Family<Labels, Counter>, ok: bool) {
    family
        .get_or_create(&vec![(
            "result".into(),
            if ok { "ok" } else { "error" }.into(),
        )])
        .inc();
}

/// Counts one transfer attempt from another node and the bytes it received.
pub fn transferred(ok: bool, bytes: u64) {
    count(&METRICS.image_transfers, ok);
    METRICS.image_transfer_bytes.inc_by(bytes);
}

/// Registers the agent's instruments (clones share the same values).
pub fn register(r: &mut Registry) {
    let m = &*METRICS;
    r.register(
        "shoal_agent_image_pulls",
        "Image pulls by this node's agent, by result",
        m.image_pulls.clone(),
    );
    r.register(
        "shoal_agent_image_transfers",
        "Image transfers from other nodes (one per holder tried), by result",
        m.image_transfers.clone(),
    );
    r.register(
        "shoal_agent_image_transfer_bytes",
        "Bytes of images received from other nodes",
        m.image_transfer_bytes.clone(),
    );
    r.register(
        "shoal_agent_volume_mounts",
        "Shared-volume mounts made by this node's agent, by result",
        m.volume_mounts.clone(),
    );
    r.register(
        "shoal_agent_volume_unmounts",
        "Shared-volume unmounts made by this node's agent",
        m.volume_unmounts.clone(),
    );
    r.register(
        "shoal_agent_nft_apply_seconds",
        "Time to apply one nftables transaction (load-balancer rules, the floating gate)",
        m.nft_apply.clone(),
    );
    r.register(
        "shoal_agent_floating_addresses_held",
        "Floating addresses on this node's interfaces now",
        m.floating_held.clone(),
    );
}
