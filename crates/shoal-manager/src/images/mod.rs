//! Which node has which image (issue 22's index; the dashboard's images view). Each node's
//! session reports its engine's images when they change ([`watch_engine`] polls the engine);
//! the leader keeps them in the store per node ([`record`]), so every manager knows where an
//! image is, also after a leader change.

use crate::api::AppState;
use crate::db::{self, Stored};
use axum::http::Method;
use shoal_api::images::{NodeImage, StoredNodeImages, MAX_IMAGES_PER_NODE};
use shoal_store::{Expect, Store};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;

/// How often the engine's image list is read.
pub const POLL: Duration = Duration::from_secs(5);

/// Publishes this node's engine images on `tx` (sorted by ID), read every [`POLL`], until
/// every receiver is gone (the session ended). A new image is inspected once for its
/// platform.
pub async fn watch_engine(d: AppState, tx: watch::Sender<Vec<NodeImage>>) {
    let mut platforms: HashMap<String, (String, String, String)> = HashMap::new();
    loop {
        if let Some(list) = read_engine(&d, &mut platforms).await {
            tx.send_if_modified(|cur| {
                let changed = *cur != list;
                if changed {
                    *cur = list;
                }
                changed
            });
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// The engine's images now; None when the engine does not answer.
async fn read_engine(
    d: &AppState,
    platforms: &mut HashMap<String, (String, String, String)>,
) -> Option<Vec<NodeImage>> {
    let (status, v) = crate::api::system::engine_json(d, Method::GET, "/images/json", None)
        .await
        .ok()?;
    if !status.is_success() {
        return None;
    }
    let strings = |v: &serde_json::Value| -> Vec<String> {
        let mut out: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str())
            .filter(|s| !s.starts_with("<none>"))
            .map(str::to_string)
            .collect();
        out.sort();
        out
    };
    let mut images = Vec::new();
    for i in v.as_array().into_iter().flatten().take(MAX_IMAGES_PER_NODE) {
        let Some(id) = i["Id"].as_str() else { continue };
        if !platforms.contains_key(id) {
            let path = format!("/images/{id}/json");
            if let Ok((s, inspect)) =
                crate::api::system::engine_json(d, Method::GET, &path, None).await
            {
                if s.is_success() {
                    let field = |k: &str| inspect[k].as_str().unwrap_or_default().to_string();
                    platforms.insert(
                        id.to_string(),
                        (field("Os"), field("Architecture"), field("Variant")),
                    );
                }
            }
        }
        let (os, architecture, variant) = platforms.get(id).cloned().unwrap_or_default();
        images.push(NodeImage {
            id: id.to_string(),
            repo_tags: strings(&i["RepoTags"]),
            repo_digests: strings(&i["RepoDigests"]),
            size: i["Size"].as_i64().unwrap_or(0),
            os,
            architecture,
            variant,
        });
    }
    images.sort_by(|a, b| a.id.cmp(&b.id));
    // Forget the platforms of images that are gone.
    platforms.retain(|id, _| images.iter().any(|i| &i.id == id));
    Some(images)
}

/// Stores what a node reported, when it differs from what the store has (the node is the
/// session's certificate, never the message's word).
pub async fn record(store: &Store, node: &str, mut images: Vec<NodeImage>) {
    images.truncate(MAX_IMAGES_PER_NODE);
    images.sort_by(|a, b| a.id.cmp(&b.id));
    let cur = db::get::<StoredNodeImages>(store, node);
    if cur.as_ref().is_some_and(|c| c.obj.images == images) {
        return;
    }
    let obj = StoredNodeImages {
        node: node.to_string(),
        images,
    };
    let expect = cur.map_or(Expect::Absent, |c| Expect::Version(c.version));
    if let Ok(op) = db::put(&obj, expect) {
        if let Err(e) = db::write(store, vec![op]).await {
            tracing::debug!(error = ?e, kind = StoredNodeImages::KIND, "updating a node's images");
        }
    }
}

/// Every node's images: node ID -> its list.
pub fn by_node(store: &Store) -> Vec<StoredNodeImages> {
    db::list::<StoredNodeImages>(store)
        .into_iter()
        .map(|v| v.obj)
        .collect()
}
