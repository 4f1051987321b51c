//! Manifests as pushed: which types are accepted, how one is checked, and what it references.
//!
//! Four types: Docker's image manifest v2 schema 2 and its manifest list, OCI's image manifest
//! and index. The bytes are stored as pushed; this module only reads them to decide whether
//! they are acceptable and which blobs and manifests must already be known.

use crate::reference::{Digest, ParseError};
use serde::Deserialize;

/// Docker's image manifest, v2 schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker's manifest list (multi-platform).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI's image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI's image index (multi-platform, attestations).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The manifest types this registry accepts.
pub const MEDIA_TYPES: [&str; 4] = [
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    OCI_INDEX,
];

/// Layers that live outside registries (Windows base layers, OCI's non-distributable ones):
/// never uploaded, so never checked.
fn foreign_layer(media_type: &str) -> bool {
    media_type == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        || media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
}

/// Why a manifest was refused (MANIFEST_INVALID).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("manifest is not valid JSON of its type: {0}")]
    Json(String),
    /// `schemaVersion` is not 2.
    #[error("schemaVersion must be 2")]
    SchemaVersion,
    /// A type this registry does not take (schema 1 among them).
    #[error("unsupported manifest media type {0:?}; accepted: {types}", types = MEDIA_TYPES.join(", "))]
    MediaType(String),
    /// The body's `mediaType` differs from the request's `Content-Type`.
    #[error("mediaType {body:?} in the manifest differs from Content-Type {header:?}")]
    TypeMismatch {
        /// The `Content-Type`.
        header: String,
        /// The `mediaType` field.
        body: String,
    },
    /// A descriptor's digest is malformed or of an unsupported algorithm.
    #[error("descriptor digest: {0}")]
    Digest(ParseError),
}

/// What a checked manifest is and references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The type it is stored and served as.
    pub media_type: String,
    /// Blobs that must be known (config and layers of an image manifest).
    pub blobs: Vec<Digest>,
    /// Manifests that must be in the same repository (entries of a list or index).
    pub manifests: Vec<Digest>,
    /// The `subject` of an OCI manifest (a referrer), which need not exist yet.
    pub subject: Option<Digest>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    digest: String,
    size: i64,
    #[serde(default)]
    urls: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    subject: Option<Descriptor>,
}

/// A `Content-Type` without parameters, lower-cased.
fn bare(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn digest_of(d: &Descriptor) -> Result<Digest, ManifestError> {
    if d.size < 0 {
        return Err(ManifestError::Json(format!(
            "negative size for {}",
            d.digest
        )));
    }
    Digest::parse(&d.digest).map_err(ManifestError::Digest)
}

/// Checks a pushed manifest: JSON of one of the accepted types, `schemaVersion` 2, its
/// `mediaType` agreeing with `Content-Type`, descriptors well-formed. The type is the
/// `Content-Type` when it names a manifest type, else the body's `mediaType`, else guessed
/// from the shape as OCI (an index has `manifests`).
pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<Parsed, ManifestError> {
    let raw: Raw = serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
    if raw.schema_version != Some(2) {
        return Err(ManifestError::SchemaVersion);
    }
    let header = content_type
        .map(bare)
        .filter(|t| t.starts_with("application/vnd."));
    let media_type = match (&header, &raw.media_type) {
        (Some(h), Some(b)) if h != b => {
            return Err(ManifestError::TypeMismatch {
                header: h.clone(),
                body: b.clone(),
            })
        }
        (Some(h), _) => h.clone(),
        (None, Some(b)) => b.clone(),
        (None, None) if raw.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) => OCI_MANIFEST.to_string(),
    };
    let mut parsed = Parsed {
        media_type,
        blobs: Vec::new(),
        manifests: Vec::new(),
        subject: None,
    };
    match parsed.media_type.as_str() {
        DOCKER_MANIFEST | OCI_MANIFEST => {
            let config = raw
                .config
                .ok_or_else(|| ManifestError::Json("an image manifest needs a config".into()))?;
            parsed.blobs.push(digest_of(&config)?);
            let layers = raw
                .layers
                .ok_or_else(|| ManifestError::Json("an image manifest needs layers".into()))?;
            for layer in &layers {
                let d = digest_of(layer)?;
                let external = layer.media_type.as_deref().is_some_and(foreign_layer)
                    || layer.urls.as_ref().is_some_and(|u| !u.is_empty());
                if !external && !parsed.blobs.contains(&d) {
                    parsed.blobs.push(d);
                }
            }
        }
        DOCKER_MANIFEST_LIST | OCI_INDEX => {
            let manifests = raw
                .manifests
                .ok_or_else(|| ManifestError::Json("an index needs manifests".into()))?;
            for m in &manifests {
                let d = digest_of(m)?;
                if !parsed.manifests.contains(&d) {
                    parsed.manifests.push(d);
                }
            }
        }
        other => return Err(ManifestError::MediaType(other.to_string())),
    }
    if let Some(s) = &raw.subject {
        parsed.subject = Some(digest_of(s)?);
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(s: &str) -> String {
        Digest::of(s.as_bytes()).to_string()
    }

    fn image(media_type: Option<&str>) -> Vec<u8> {
        let mut v = json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d("c"), "size": 1},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d("l1"), "size": 2},
                {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "digest": d("f"), "size": 3, "urls": ["https://example.invalid/f"]},
            ],
        });
        if let Some(t) = media_type {
            v["mediaType"] = json!(t);
        }
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn an_image_manifest_lists_config_and_layers_but_not_foreign_ones() {
        let p = parse(Some(OCI_MANIFEST), &image(Some(OCI_MANIFEST))).unwrap();
        assert_eq!(p.media_type, OCI_MANIFEST);
        assert_eq!(
            p.blobs.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
            vec![d("c"), d("l1")]
        );
        assert!(p.manifests.is_empty());
        // Docker's type from the body alone, parameters on Content-Type ignored.
        let p = parse(Some("application/json"), &image(Some(DOCKER_MANIFEST))).unwrap();
        assert_eq!(p.media_type, DOCKER_MANIFEST);
        let p = parse(
            Some(&format!("{DOCKER_MANIFEST}; charset=utf-8")),
            &image(None),
        )
        .unwrap();
        assert_eq!(p.media_type, DOCKER_MANIFEST);
        // Neither: OCI by shape.
        assert_eq!(parse(None, &image(None)).unwrap().media_type, OCI_MANIFEST);
    }

    #[test]
    fn an_index_lists_its_manifests() {
        let body = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": d("m1"), "size": 10, "platform": {"os": "linux", "architecture": "amd64"}}],
        }))
        .unwrap();
        let p = parse(Some(OCI_INDEX), &body).unwrap();
        assert_eq!(p.manifests, vec![Digest::of(b"m1")]);
        assert!(p.blobs.is_empty());
        assert_eq!(parse(None, &body).unwrap().media_type, OCI_INDEX);
        let list = String::from_utf8(body)
            .unwrap()
            .replace(OCI_INDEX, DOCKER_MANIFEST_LIST);
        assert_eq!(
            parse(Some(DOCKER_MANIFEST_LIST), list.as_bytes())
                .unwrap()
                .media_type,
            DOCKER_MANIFEST_LIST
        );
    }

    #[test]
    fn bad_manifests_are_refused() {
        assert!(matches!(
            parse(None, b"not json"),
            Err(ManifestError::Json(_))
        ));
        assert!(matches!(parse(None, b"[]"), Err(ManifestError::Json(_))));
        assert_eq!(
            parse(None, br#"{"schemaVersion":1,"layers":[]}"#),
            Err(ManifestError::SchemaVersion)
        );
        assert!(matches!(
            parse(Some(OCI_INDEX), &image(Some(OCI_MANIFEST))),
            Err(ManifestError::TypeMismatch { .. })
        ));
        assert!(matches!(
            parse(
                Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
                &image(None)
            ),
            Err(ManifestError::MediaType(_))
        ));
        assert!(matches!(
            parse(Some(OCI_MANIFEST), br#"{"schemaVersion":2,"layers":[]}"#),
            Err(ManifestError::Json(_))
        ));
        let bad_digest = String::from_utf8(image(None))
            .unwrap()
            .replace(&d("l1"), "sha256:abc");
        assert!(matches!(
            parse(Some(OCI_MANIFEST), bad_digest.as_bytes()),
            Err(ManifestError::Digest(_))
        ));
    }
}
