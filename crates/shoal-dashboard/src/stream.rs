//! `/api/stream`: the page's live feed, server-sent events. Each event `view` carries the whole
//! [`crate::view::View`]; one is sent at once, then after each change of the store (coalesced:
//! at most one every [`MIN_GAP`]) or of who leads, and only when the view differs from the last
//! one sent. The stream ends when the client leaves, its session ends, or the manager stops.

use crate::view;
use crate::Dashboard;
use axum::response::sse::Event;
use futures::Stream;
use shoal_manager::cluster::Manager;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// The shortest time between two views: a burst of changes (a scale to 100) costs one view per
/// gap, and a single change is on the page within the gap plus the write's own time.
pub const MIN_GAP: Duration = Duration::from_millis(100);
/// How often the leader and the session are checked when the store is quiet.
const RECHECK: Duration = Duration::from_secs(1);

/// The view of `m` as it is now.
pub async fn current(m: &Manager, reader: &mut shoal_manager::state::SharedReader) -> view::View {
    let leader = leader_node(m);
    let (live, _) = reader.refresh().await;
    let floating = shoal_manager::floating::list(&m.store, live.state(), &m.floating.status());
    let usage = m.usage.lock().clone();
    let images = shoal_manager::images::by_node(&m.store);
    view::build(
        live.state(),
        leader.as_deref(),
        &floating,
        &usage,
        &images,
        shoal_api::id::now(),
    )
}

/// The raft leader's node ID.
pub fn leader_node(m: &Manager) -> Option<String> {
    let (raft_id, _) = m.store.leader()?;
    shoal_manager::db::list::<shoal_manager::db::Member>(&m.store)
        .into_iter()
        .find(|v| v.obj.raft_id == raft_id)
        .map(|v| v.obj.node_id)
}

/// The event stream for one page, while `token`'s session lasts: a `view` event first (the
/// whole view), then a `delta` event ([`view::delta`]) for each change.
pub fn views(
    dash: Arc<Dashboard>,
    m: Arc<Manager>,
    token: String,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(
        (dash, m.view.reader(), m, token, None::<view::View>),
        |(dash, mut reader, m, token, last)| async move {
            let stopping = m.stopping();
            loop {
                if last.is_some() {
                    tokio::select! {
                        _ = stopping.cancelled() => return None,
                        changed = reader.changed() => if !changed { return None },
                        _ = tokio::time::sleep(RECHECK) => {}
                    }
                    // Let a burst of changes land before the next view.
                    tokio::time::sleep(MIN_GAP).await;
                }
                if !dash.session_alive(&token) {
                    return None;
                }
                let mut v = current(&m, &mut reader).await;
                let event = match &last {
                    None => Event::default()
                        .event("view")
                        .data(serde_json::to_string(&v).unwrap_or_default()),
                    Some(prev) => {
                        // The same but for its time: nothing to send.
                        let generated = std::mem::replace(
                            &mut v.cluster.generated,
                            prev.cluster.generated.clone(),
                        );
                        if *prev == v {
                            continue;
                        }
                        v.cluster.generated = generated;
                        Event::default()
                            .event("delta")
                            .data(serde_json::to_string(&view::delta(prev, &v)).unwrap_or_default())
                    }
                };
                return Some((Ok(event), (dash, reader, m, token, Some(v))));
            }
        },
    )
}
