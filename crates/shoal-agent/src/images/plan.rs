//! Which nodes to fetch an image from (pure): the holders whose copy runs on this node, of the
//! one image ID most of them hold under the task's name, in an order that spreads the askers.

use shoal_api::images::{platform_runs, ImageRef, ImageSource};
use std::collections::BTreeMap;

/// This node's platform as the engine names it (`linux`, `amd64`, ``).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`...
    pub architecture: String,
    /// `v7`... or empty.
    pub variant: String,
}

impl Platform {
    /// The platform this process runs on.
    pub fn here() -> Platform {
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: shoal_api::images::go_arch(std::env::consts::ARCH),
            variant: String::new(),
        }
    }

    fn triple(&self) -> (&str, &str, &str) {
        (&self.os, &self.architecture, &self.variant)
    }

    fn show(&self) -> String {
        if self.variant.is_empty() {
            format!("{}/{}", self.os, self.architecture)
        } else {
            format!("{}/{}/{}", self.os, self.architecture, self.variant)
        }
    }
}

/// What to fetch and from whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPlan {
    /// The image ID to load and check.
    pub image_id: String,
    /// `name:tag` to give it once loaded (what the task names), if the reference has a tag.
    pub tag: Option<(String, String)>,
    /// The holders to try, in order.
    pub sources: Vec<ImageSource>,
}

/// Why no node can give the image; `Display` is what `docker service ps` shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoSource {
    /// No node holds an image by that name.
    #[error("no node in the swarm has it")]
    Nowhere,
    /// Nodes hold it, but for other platforms.
    #[error("{holders}, this node is {own}: not sent")]
    Platform {
        /// "node-1 has it for linux/arm64; node-2 ..."
        holders: String,
        /// This node's platform.
        own: String,
    },
    /// Not a reference an engine would take.
    #[error("not a valid image reference")]
    BadReference,
}

/// Plans the fetch of `image` from `sources` (the leader's answer) for a node of platform
/// `own`. Among holders of different image IDs under one name, the ID most of them hold wins
/// (ties: the smallest ID); `spread` (e.g. a hash of the asking node) rotates the holders so
/// that nodes fetching at once ask different ones first.
pub fn plan(
    image: &str,
    own: &Platform,
    sources: Vec<ImageSource>,
    spread: u64,
) -> Result<FetchPlan, NoSource> {
    let wanted = ImageRef::parse(image).ok_or(NoSource::BadReference)?;
    if sources.is_empty() {
        return Err(NoSource::Nowhere);
    }
    let (fit, unfit): (Vec<ImageSource>, Vec<ImageSource>) = sources.into_iter().partition(|s| {
        let i = &s.image;
        platform_runs((&i.os, &i.architecture, &i.variant), own.triple())
    });
    if fit.is_empty() {
        let holders = unfit
            .iter()
            .map(|s| format!("{} has it for {}", s.hostname, s.image.platform()))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(NoSource::Platform {
            holders,
            own: own.show(),
        });
    }
    let mut by_id: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &fit {
        *by_id.entry(s.image.id.as_str()).or_default() += 1;
    }
    // BTreeMap order: the first of the most held is the smallest ID.
    let mut best: Option<(&str, usize)> = None;
    for (id, n) in &by_id {
        if best.is_none_or(|(_, m)| *n > m) {
            best = Some((id, *n));
        }
    }
    let image_id = best.map(|(id, _)| id.to_string()).unwrap_or_default();
    let mut chosen: Vec<ImageSource> = fit.into_iter().filter(|s| s.image.id == image_id).collect();
    chosen.sort_by(|a, b| (&a.hostname, &a.node_id).cmp(&(&b.hostname, &b.node_id)));
    let n = chosen.len();
    chosen.rotate_left((spread % n as u64) as usize);
    let tag = match &wanted {
        ImageRef::Named { tag: Some(t), .. } => wanted.familiar_name().map(|n| (n, t.clone())),
        _ => None,
    };
    Ok(FetchPlan {
        image_id,
        tag,
        sources: chosen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::images::NodeImage;

    fn src(host: &str, id: char, arch: &str) -> ImageSource {
        ImageSource {
            node_id: format!("id-{host}"),
            hostname: host.into(),
            addr: "10.0.0.1".into(),
            image: NodeImage {
                id: format!("sha256:{}", id.to_string().repeat(64)),
                repo_tags: vec!["app:1".into()],
                os: "linux".into(),
                architecture: arch.into(),
                ..Default::default()
            },
        }
    }

    fn amd64() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: String::new(),
        }
    }

    fn hosts(p: &FetchPlan) -> Vec<&str> {
        p.sources.iter().map(|s| s.hostname.as_str()).collect()
    }

    #[test]
    fn the_plan_takes_fitting_holders_of_the_most_held_id() {
        let p = plan(
            "app:1",
            &amd64(),
            vec![
                src("n1", 'a', "amd64"),
                src("n2", 'b', "amd64"),
                src("n3", 'b', "x86_64"),
            ],
            0,
        )
        .unwrap();
        assert_eq!(p.image_id, format!("sha256:{}", "b".repeat(64)));
        assert_eq!(hosts(&p), vec!["n2", "n3"], "x86_64 is amd64");
        assert_eq!(p.tag, Some(("app".into(), "1".into())));
        // A tie goes to the smallest ID; the spread rotates the holders.
        let p = plan(
            "docker.io/library/app:1",
            &amd64(),
            vec![src("n1", 'c', "amd64"), src("n2", 'a', "amd64")],
            7,
        )
        .unwrap();
        assert_eq!(p.image_id, format!("sha256:{}", "a".repeat(64)));
        let p = plan(
            "app:1",
            &amd64(),
            vec![src("n1", 'a', ""), src("n2", 'a', "")],
            1,
        )
        .unwrap();
        assert_eq!(hosts(&p), vec!["n2", "n1"]);
        assert_eq!(p.tag, Some(("app".into(), "1".into())));
    }

    #[test]
    fn an_image_for_another_platform_is_never_planned_and_the_reason_names_it() {
        let e = plan(
            "app:1",
            &amd64(),
            vec![src("node-1", 'a', "arm64"), src("node-2", 'a', "aarch64")],
            0,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "node-1 has it for linux/arm64; node-2 has it for linux/aarch64, this node is linux/amd64: not sent"
        );
        let p = plan(
            "app:1",
            &amd64(),
            vec![src("node-1", 'a', "arm64"), src("node-2", 'b', "amd64")],
            0,
        )
        .unwrap();
        assert_eq!(hosts(&p), vec!["node-2"]);
        assert_eq!(plan("app:1", &amd64(), vec![], 0), Err(NoSource::Nowhere));
        assert_eq!(
            plan("Bad Ref", &amd64(), vec![], 0),
            Err(NoSource::BadReference)
        );
    }
}
