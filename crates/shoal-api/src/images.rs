//! Which images each node's engine holds (issue 22's index, and the dashboard's images view):
//! what a node reports and what the store keeps per node.

use serde::{Deserialize, Serialize};

/// Kept per node at most: a node with more reports only its newest (by the engine's order).
pub const MAX_IMAGES_PER_NODE: usize = 2000;

/// One image as a node's engine lists and inspects it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct NodeImage {
    /// The image ID (`sha256:...`): the same content has the same ID on every engine.
    pub id: String,
    /// `repo:tag` names.
    #[serde(default)]
    pub repo_tags: Vec<String>,
    /// `repo@sha256:...` names, from a registry.
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// Bytes on disk.
    #[serde(default)]
    pub size: i64,
    /// `linux`, ...
    #[serde(default)]
    pub os: String,
    /// `amd64`, `arm64`, ...
    #[serde(default)]
    pub architecture: String,
    /// `v7`, ... (ARM).
    #[serde(default)]
    pub variant: String,
}

/// A node's images as the store keeps them (kind `nodeimages`, keyed by node ID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StoredNodeImages {
    /// The node's ID.
    pub node: String,
    /// Its images, sorted by ID.
    pub images: Vec<NodeImage>,
}

/// A node that holds an image another node lacks: where to fetch it from (issue 22). The
/// leader answers a node's question with these, read from the index and the nodes' records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageSource {
    /// The holder's node ID: its peer certificate must name it.
    pub node_id: String,
    /// Its name in `docker node ls`, for messages ("fetching image from node-1").
    pub hostname: String,
    /// The address its peer port listens on (the port is the asker's own `--peer-port`).
    pub addr: String,
    /// The image as the holder's engine lists it.
    pub image: NodeImage,
}

/// The longest image reference a node may ask about (a session message, so bounded).
pub const MAX_IMAGE_REF: usize = 512;

/// Architecture names as Go spells them (`x86_64` is `amd64`), so a node's `uname -m`, an
/// engine's `Architecture` and an image's platform compare.
pub fn go_arch(a: &str) -> String {
    match a.to_lowercase().as_str() {
        "x86_64" | "x86-64" => "amd64".into(),
        "aarch64" | "arm64/v8" => "arm64".into(),
        "armv7l" | "armhf" | "arm/v7" => "arm".into(),
        "i386" | "i686" => "386".into(),
        other => other.to_string(),
    }
}

/// Whether an image built for `image` (`os`, `architecture`, `variant`) runs on a node of
/// platform `node`; an empty field on either side says nothing, so it matches.
pub fn platform_runs(image: (&str, &str, &str), node: (&str, &str, &str)) -> bool {
    let same = |a: &str, b: &str| a.is_empty() || b.is_empty() || a.eq_ignore_ascii_case(b);
    same(image.0, node.0)
        && (image.1.is_empty() || node.1.is_empty() || go_arch(image.1) == go_arch(node.1))
        && same(image.2, node.2)
}

/// An image reference as the engine resolves it (`app`, `app:1`, `reg:5000/a/b@sha256:...`,
/// `sha256:<id>`), normalized as distribution's `ParseNormalizedNamed` does, so that a task's
/// `app:1` finds the `docker.io/library/app:1` another engine lists as `app:1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// A repository name with a tag (`latest` when none was given) and maybe a digest.
    Named {
        /// The full name: `docker.io/library/app`, `127.0.0.1:5000/app`.
        name: String,
        /// The tag; `None` only when a digest was given without one.
        tag: Option<String>,
        /// `sha256:...`, when pinned.
        digest: Option<String>,
    },
    /// An image ID (`sha256:<64 hex>` or the bare 64 hex digits).
    Id(String),
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl ImageRef {
    /// Parses a reference; `None` for what no engine would accept (empty, upper case names,
    /// an empty tag or component).
    pub fn parse(s: &str) -> Option<ImageRef> {
        let s = s.trim();
        if let Some(hex) = s.strip_prefix("sha256:") {
            return is_hex64(hex).then(|| ImageRef::Id(s.to_string()));
        }
        if is_hex64(s) {
            return Some(ImageRef::Id(format!("sha256:{s}")));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let hex = d.strip_prefix("sha256:")?;
                if !is_hex64(hex) {
                    return None;
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/' (a registry's port is not).
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&rest[..at], Some(rest[at + 1..].to_string()))
            }
            None => (rest, None),
        };
        if tag.as_deref().is_some_and(|t| {
            t.is_empty()
                || t.len() > 128
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        }) {
            return None;
        }
        if name.is_empty() || name.split('/').any(str::is_empty) {
            return None;
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first, path.to_string())
            }
            _ => ("docker.io", name.to_string()),
        };
        if path
            .bytes()
            .any(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)))
        {
            return None;
        }
        let path = if domain == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t,
        };
        Some(ImageRef::Named {
            name: format!("{domain}/{path}"),
            tag,
            digest,
        })
    }

    /// The name as `docker images` shows it: `app` for `docker.io/library/app`.
    pub fn familiar_name(&self) -> Option<String> {
        match self {
            ImageRef::Named { name, .. } => Some(familiar(name)),
            ImageRef::Id(_) => None,
        }
    }

    /// `name:tag` in the familiar form, what `docker tag` takes; `None` without a tag.
    pub fn familiar_tagged(&self) -> Option<String> {
        match self {
            ImageRef::Named {
                name, tag: Some(t), ..
            } => Some(format!("{}:{t}", familiar(name))),
            _ => None,
        }
    }
}

fn familiar(name: &str) -> String {
    let short = name.strip_prefix("docker.io/").unwrap_or(name);
    short.strip_prefix("library/").unwrap_or(short).to_string()
}

impl NodeImage {
    /// Whether this image is what `wanted` names on its engine: the same ID, the digest among
    /// its repo digests (a pinned reference), or else the tag among its repo tags.
    pub fn matches(&self, wanted: &ImageRef) -> bool {
        match wanted {
            ImageRef::Id(id) => &self.id == id,
            ImageRef::Named {
                name,
                digest: Some(d),
                ..
            } => self.repo_digests.iter().any(|rd| {
                matches!(ImageRef::parse(rd), Some(ImageRef::Named { name: n, digest: Some(e), .. }) if &n == name && &e == d)
            }),
            ImageRef::Named {
                name,
                tag: Some(t),
                digest: None,
            } => self.repo_tags.iter().any(|rt| {
                matches!(ImageRef::parse(rt), Some(ImageRef::Named { name: n, tag: Some(u), .. }) if &n == name && &u == t)
            }),
            ImageRef::Named { .. } => false,
        }
    }

    /// `os/architecture[/variant]`, as the scheduler and errors show a platform.
    pub fn platform(&self) -> String {
        if self.variant.is_empty() {
            format!("{}/{}", self.os, self.architecture)
        } else {
            format!("{}/{}/{}", self.os, self.architecture, self.variant)
        }
    }
}

impl StoredNodeImages {
    /// The image `wanted` names on this node, if it has it.
    pub fn find(&self, wanted: &ImageRef) -> Option<&NodeImage> {
        self.images.iter().find(|i| i.matches(wanted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: &str, tags: &[&str], digests: &[&str]) -> NodeImage {
        NodeImage {
            id: id.into(),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: digests.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn references_normalize_as_the_engine_resolves_them() {
        let named = |n: &str, t: Option<&str>, d: Option<&str>| ImageRef::Named {
            name: n.into(),
            tag: t.map(Into::into),
            digest: d.map(Into::into),
        };
        let d = format!("sha256:{}", "a".repeat(64));
        let table: Vec<(String, Option<ImageRef>)> = vec![
            (
                "app".to_string(),
                Some(named("docker.io/library/app", Some("latest"), None)),
            ),
            (
                "app:1".to_string(),
                Some(named("docker.io/library/app", Some("1"), None)),
            ),
            (
                "docker.io/library/app:1".to_string(),
                Some(named("docker.io/library/app", Some("1"), None)),
            ),
            (
                "me/app:1".to_string(),
                Some(named("docker.io/me/app", Some("1"), None)),
            ),
            (
                "127.0.0.1:5000/app".to_string(),
                Some(named("127.0.0.1:5000/app", Some("latest"), None)),
            ),
            (
                "localhost/a/b:v2".to_string(),
                Some(named("localhost/a/b", Some("v2"), None)),
            ),
            (
                format!("app@{d}"),
                Some(named("docker.io/library/app", None, Some(&d))),
            ),
            (
                format!("app:1@{d}"),
                Some(named("docker.io/library/app", Some("1"), Some(&d))),
            ),
            (d.clone(), Some(ImageRef::Id(d.clone()))),
            ("".to_string(), None),
            ("App:1".to_string(), None),
            ("app:".to_string(), None),
            ("a//b".to_string(), None),
            ("app@sha256:short".to_string(), None),
        ];
        for (input, want) in table {
            assert_eq!(ImageRef::parse(&input), want, "{input:?}");
        }
        assert_eq!(
            ImageRef::parse("docker.io/library/app:1").and_then(|r| r.familiar_tagged()),
            Some("app:1".into())
        );
    }

    #[test]
    fn a_node_image_matches_by_tag_digest_or_id() {
        let d = format!("sha256:{}", "b".repeat(64));
        let id = format!("sha256:{}", "c".repeat(64));
        let i = img(&id, &["app:1", "reg.local/x/y:2"], &[&format!("app@{d}")]);
        let p = |s: &str| ImageRef::parse(s).unwrap();
        assert!(i.matches(&p("app:1")));
        assert!(i.matches(&p("docker.io/library/app:1")));
        assert!(!i.matches(&p("app")), "latest is another tag");
        assert!(!i.matches(&p("app:2")));
        assert!(i.matches(&p("reg.local/x/y:2")));
        assert!(i.matches(&p(&format!("app@{d}"))));
        assert!(i.matches(&p(&format!("app:9@{d}"))), "the digest decides");
        assert!(!i.matches(&p(&format!("other@{d}"))));
        assert!(i.matches(&p(&id)));
        assert!(!i.matches(&p(&format!("sha256:{}", "d".repeat(64)))));
    }
}
