//! Builders and a tiny store stand-in for the decision tests: clusters from JSON, a pass's
//! writes applied as the store would, and seeded randomness whose seed a failure prints.

use crate::decide::{decide, Decision};
use crate::inputs::Inputs;
use crate::state::{ClusterState, Versioned};
use rand::SeedableRng;
use shoal_api::models::Node;
use shoal_api::objects::StoredService;

/// A time far from any real clock, so tests never depend on when they run.
pub const T0: &str = "2030-01-01T00:00:00Z";

/// `T0` as a time.
pub fn t0() -> chrono::DateTime<chrono::Utc> {
    shoal_api::id::parse_time(T0).expect("T0 parses")
}

/// Inputs at `T0` with a fixed seed.
pub fn inputs() -> Inputs {
    Inputs::new(t0(), 1)
}

/// An object at version 1.
pub fn versioned<T>(obj: T) -> Versioned<T> {
    Versioned { obj, version: 1 }
}

/// A node from its JSON.
pub fn node(json: &str) -> Node {
    serde_json::from_str(json).expect("node JSON")
}

/// A service with `id` from its spec's JSON, at spec version 1.
pub fn service(id: &str, spec: &str) -> StoredService {
    let mut svc = StoredService::default();
    svc.service.id = Some(id.into());
    svc.service.spec = Some(serde_json::from_str(spec).expect("service spec JSON"));
    svc.spec_version = 1;
    svc.last_spec_version = 1;
    svc
}

/// Applies a pass's writes to `state` as the store would, numbering versions from `version`.
pub fn apply(state: &mut ClusterState, d: Decision, version: &mut u64) {
    for t in d
        .created
        .into_iter()
        .chain(d.updated.into_iter().map(|(t, _)| t))
    {
        *version += 1;
        let v = Versioned {
            obj: t,
            version: *version,
        };
        match state.tasks.iter().position(|x| x.obj.id() == v.obj.id()) {
            Some(i) => state.tasks[i] = v,
            None => state.tasks.push(v),
        }
    }
    for (id, _) in d.deleted {
        state.tasks.retain(|t| t.obj.id() != id);
    }
    for (s, _) in d.services {
        *version += 1;
        state.services.insert(
            s.id().to_string(),
            Versioned {
                obj: s,
                version: *version,
            },
        );
    }
}

/// Runs passes (each with the next seed) until one writes nothing; the number of passes that
/// wrote, or None if `max` passes never settle.
pub fn settle(
    state: &mut ClusterState,
    inputs: &Inputs,
    version: &mut u64,
    max: usize,
) -> Option<usize> {
    for pass in 0..max {
        let at = Inputs::new(inputs.now, inputs.seed.wrapping_add(pass as u64 * 7919));
        let d = decide(state, &at);
        if d.is_empty() {
            return Some(pass);
        }
        apply(state, d, version);
    }
    None
}

/// A seeded generator for randomized tests: the seed is `SHOAL_TEST_SEED` if set, else
/// `default`, plus `round`; failures print it so a run can be repeated.
pub fn rng(default: u64, round: u64) -> (rand::rngs::StdRng, u64) {
    let base = std::env::var("SHOAL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    let seed = base.wrapping_add(round);
    (rand::rngs::StdRng::seed_from_u64(seed), seed)
}
