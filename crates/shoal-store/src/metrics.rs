//! The store's instruments for the manager's `/metrics` (issue 21).

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::sync::LazyLock;

/// How long [`crate::Store::write`] took, from the call to the entry committed on a quorum and
/// applied here (0.5 ms to about 16 s).
pub static WRITE_SECONDS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)));
