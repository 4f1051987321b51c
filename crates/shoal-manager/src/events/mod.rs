//! `docker events` on a manager: the swarm's events (services, nodes, secrets, configs,
//! networks), kept in the store's journal so every manager holds the same bounded history, and
//! the engine's own events, merged into one stream.
//!
//! - [`derive`]: what event a store change is (pure, table-tested).
//! - [`filter`]: which events a request asks for, and its `since`/`until` (pure).
//! - [`stream`]: the I/O edge: the journal and the engine's `/events`, merged.
//!
//! The events are made where the change is applied, on every manager, by [`EventRecorder`]
//! (the store's [`shoal_store::Recorder`]); see ARCHITECTURE.md, "Events".

pub mod derive;
pub mod filter;
pub mod stream;

use shoal_store::{Change, Object};

/// How many swarm events the journal keeps: four times the 256 a Docker daemon keeps in memory,
/// about 200 KB in every raft snapshot (an event is ~200 bytes), small enough to scan whole for
/// each `docker events` request.
pub const KEEP: usize = 1000;

/// Makes the swarm's events from the store's changes as they are applied.
#[derive(Debug, Default)]
pub struct EventRecorder;

impl shoal_store::Recorder for EventRecorder {
    fn keep(&self) -> usize {
        KEEP
    }

    fn wants(&self, kind: &str) -> bool {
        derive::KINDS.contains(&kind)
    }

    fn record(&self, change: &Change, previous: Option<&Object>) -> Option<Vec<u8>> {
        let object = change.object.as_ref()?;
        let event = derive::event_of(
            &change.kind,
            change.action,
            &object.data,
            previous.map(|p| &*p.data),
        )?;
        serde_json::to_vec(&event).ok()
    }
}
