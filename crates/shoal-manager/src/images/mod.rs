//! Which node has which image (issue 22's index; the dashboard's images view). Each node's
//! session reports its engine's images when they change ([`watch_engine`] polls the engine);
//! the leader keeps them in the store per node ([`record`]), so every manager knows where an
//! image is, also after a leader change.

use crate::api::AppState;
use crate::db::{self, Stored};
use axum::http::Method;
use shoal_api::images::{ImageRef, ImageSource, NodeImage, StoredNodeImages, MAX_IMAGES_PER_NODE};
use shoal_api::models::{Node, NodeState};
use shoal_store::{Expect, Store};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;

/// How often the engine's image list is read.
pub const POLL: Duration = Duration::from_secs(5);

/// Publishes this node's engine images on `tx` (sorted by ID; an empty engine too), read every [`POLL`], until
/// every receiver is gone (the session ended). A new image is inspected once for its
/// platform.
pub async fn watch_engine(d: AppState, tx: watch::Sender<Option<Vec<NodeImage>>>) {
    let mut platforms: HashMap<String, (String, String, String)> = HashMap::new();
    loop {
        if let Some(list) = read_engine(&d, &mut platforms).await {
            tx.send_if_modified(|cur| {
                let changed = cur.as_ref() != Some(&list);
                if changed {
                    *cur = Some(list);
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

/// The answer to a node asking where `image` is: every ready node but `asker` whose engine
/// holds it, from the store's index.
pub fn sources(store: &Store, asker: &str, image: &str) -> Vec<ImageSource> {
    let nodes: Vec<Node> = db::list::<Node>(store).into_iter().map(|v| v.obj).collect();
    pick_sources(&nodes, &by_node(store), asker, image)
}

/// [`sources`] as a pure function of the nodes and the index: ready nodes with an address,
/// the asker left out, sorted by host name. An unparsable reference has none.
pub fn pick_sources(
    nodes: &[Node],
    index: &[StoredNodeImages],
    asker: &str,
    image: &str,
) -> Vec<ImageSource> {
    let Some(wanted) = ImageRef::parse(image) else {
        return Vec::new();
    };
    let mut out: Vec<ImageSource> = nodes
        .iter()
        .filter_map(|n| {
            let id = n.id.as_deref()?;
            let status = n.status.as_ref()?;
            if id == asker || status.state != Some(NodeState::READY) {
                return None;
            }
            let addr = status.addr.clone().filter(|a| !a.is_empty())?;
            let held = index.iter().find(|i| i.node == id)?.find(&wanted)?;
            Some(ImageSource {
                node_id: id.to_string(),
                hostname: n
                    .description
                    .as_ref()
                    .and_then(|d| d.hostname.clone())
                    .unwrap_or_else(|| id.to_string()),
                addr,
                image: held.clone(),
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.hostname, &a.node_id).cmp(&(&b.hostname, &b.node_id)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::models::{NodeDescription, NodeStatus};

    fn node(id: &str, name: &str, state: NodeState, addr: &str) -> Node {
        Node {
            id: Some(id.into()),
            description: Some(NodeDescription {
                hostname: Some(name.into()),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                state: Some(state),
                addr: Some(addr.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn held(node: &str, tags: &[&str]) -> StoredNodeImages {
        StoredNodeImages {
            node: node.into(),
            images: vec![NodeImage {
                id: format!("sha256:{}", "a".repeat(64)),
                repo_tags: tags.iter().map(|t| t.to_string()).collect(),
                os: "linux".into(),
                architecture: "amd64".into(),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn sources_are_the_other_ready_nodes_holding_the_image() {
        let nodes = vec![
            node("n1", "node-1", NodeState::READY, "10.0.0.1"),
            node("n2", "node-2", NodeState::READY, "10.0.0.2"),
            node("n3", "node-3", NodeState::DOWN, "10.0.0.3"),
            node("n4", "node-4", NodeState::READY, "10.0.0.4"),
        ];
        let index = vec![
            held("n1", &["app:1"]),
            held("n2", &["app:1"]),
            held("n3", &["app:1"]),
            held("n4", &["other:1"]),
        ];
        let names = |image: &str, asker: &str| -> Vec<String> {
            pick_sources(&nodes, &index, asker, image)
                .into_iter()
                .map(|s| format!("{}@{}", s.hostname, s.addr))
                .collect()
        };
        // The asker is left out, a down node too, and one holding another tag.
        assert_eq!(names("app:1", "n2"), vec!["node-1@10.0.0.1"]);
        assert_eq!(
            names("docker.io/library/app:1", "n4"),
            vec!["node-1@10.0.0.1", "node-2@10.0.0.2"]
        );
        assert!(names("app:2", "n4").is_empty());
        assert!(names("app", "n4").is_empty(), "app is app:latest");
        assert!(names("Not A Ref", "n4").is_empty());
    }
}
