//! Repository names, tags and digests as the distribution spec defines them.
//!
//! Hand-written matchers for the spec's regular expressions (no regex engine in the tree):
//! a name is `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*` and
//! shorter than 256 characters, a tag `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`, a digest
//! `algorithm:encoded` with the image spec's grammar, of which only `sha256` is served.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

/// The longest repository name the spec allows (it must be shorter than 256 characters).
pub const MAX_NAME_LEN: usize = 255;
/// The longest tag the spec allows.
pub const MAX_TAG_LEN: usize = 128;

/// Why a name, tag or digest was refused; the message says which rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A repository name that does not match the spec's grammar.
    #[error("invalid repository name {0:?}: components of [a-z0-9] separated by '.', '_', '__' or dashes, joined by '/', under 256 characters")]
    Name(String),
    /// A tag that does not match `[a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}`.
    #[error("invalid tag {0:?}: [a-zA-Z0-9_] then up to 127 of [a-zA-Z0-9._-]")]
    Tag(String),
    /// A string that is not `algorithm:encoded` as the image spec defines a digest.
    #[error("invalid digest {0:?}")]
    Digest(String),
    /// A well-formed digest of an algorithm this registry does not compute.
    #[error("unsupported digest algorithm {0:?}: only sha256")]
    Algorithm(String),
}

/// Checks a repository name against the spec's grammar and length limit.
pub fn validate_name(name: &str) -> Result<(), ParseError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.split('/').all(valid_component) {
        return Err(ParseError::Name(name.to_string()));
    }
    Ok(())
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let b = c.as_bytes();
    if b.first().is_none_or(|&x| !alnum(x)) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        // A separator must sit between two alphanumeric runs.
        if !ok || i == b.len() {
            return false;
        }
    }
    true
}

/// Checks a tag against `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), ParseError> {
    let b = tag.as_bytes();
    let first_ok = b
        .first()
        .is_some_and(|&x| x.is_ascii_alphanumeric() || x == b'_');
    let rest_ok = b
        .iter()
        .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'.' | b'_' | b'-'));
    if !first_ok || !rest_ok || b.len() > MAX_TAG_LEN {
        return Err(ParseError::Tag(tag.to_string()));
    }
    Ok(())
}

/// A sha256 content digest, `sha256:<64 lowercase hex>`: the only kind this registry stores,
/// so holding one means the string was checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parses `algorithm:encoded`; well-formed digests of other algorithms are `Algorithm`.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::Digest(s.to_string());
        let (alg, enc) = s.split_once(':').ok_or_else(bad)?;
        // algorithm: [a-z0-9]+([+._-][a-z0-9]+)*
        let alg_ok = !alg.is_empty()
            && alg.split(['+', '.', '_', '-']).all(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit())
            });
        // encoded: [a-zA-Z0-9=_-]+
        let enc_ok = !enc.is_empty()
            && enc
                .bytes()
                .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'=' | b'_' | b'-'));
        if !alg_ok || !enc_ok {
            return Err(bad());
        }
        if alg != "sha256" {
            return Err(ParseError::Algorithm(alg.to_string()));
        }
        if enc.len() != 64
            || !enc
                .bytes()
                .all(|x| x.is_ascii_digit() || (b'a'..=b'f').contains(&x))
        {
            return Err(bad());
        }
        Ok(Self(s.to_string()))
    }

    /// The digest of some bytes held whole (manifests, tests).
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// The digest a running hash has reached (blobs hashed as they stream).
    pub fn from_hasher(hasher: Sha256) -> Self {
        Self(format!("sha256:{:x}", hasher.finalize()))
    }

    /// The 64 hex characters, which name the blob's file.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The digest as the API writes it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Digest {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Digest {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

/// What follows `/manifests/`: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A tag, checked against the spec's grammar.
    Tag(String),
    /// A manifest's digest.
    Digest(Digest),
}

impl Reference {
    /// A reference with a `:` is a digest, anything else a tag.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.contains(':') {
            Digest::parse(s).map(Reference::Digest)
        } else {
            validate_tag(s)?;
            Ok(Reference::Tag(s.to_string()))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec_grammar() {
        for ok in [
            "a",
            "app",
            "t/busybox",
            "library/ubuntu",
            "a.b_c__d---e/f0",
            "x/y/z/w",
            "0",
            &"a".repeat(255),
        ] {
            assert_eq!(validate_name(ok), Ok(()), "{ok:?} should be valid");
        }
        for bad in [
            "",
            "A",
            "App/x",
            "a//b",
            "/a",
            "a/",
            "-a",
            "a-",
            "a..b",
            "a___b",
            "a._b",
            "a_-b",
            "a b",
            "a:b",
            "a/../b",
            "..",
            "ä",
            &"a".repeat(256),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn tags_follow_the_spec_grammar() {
        for ok in ["1", "latest", "_x", "v1.2.3-rc_1", "A", &"a".repeat(128)] {
            assert_eq!(validate_tag(ok), Ok(()), "{ok:?}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "a b", &"a".repeat(129)] {
            assert!(validate_tag(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn digests_parse_sha256_only() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let d = Digest::parse(&format!("sha256:{hex}")).unwrap();
        assert_eq!(d.hex(), hex);
        assert_eq!(Digest::of(b""), d, "sha256 of nothing");
        assert_eq!(
            Digest::parse(&format!("sha512:{hex}{hex}")),
            Err(ParseError::Algorithm("sha512".into()))
        );
        for bad in [
            "",
            "sha256",
            "sha256:",
            ":abc",
            &format!("sha256:{}", hex.to_uppercase()),
            &format!("sha256:{}", &hex[1..]),
            &format!("sha256:{hex}0"),
            &format!("SHA256:{hex}"),
            "sha256:../../etc/passwd",
            &format!("sha256:{hex}/x"),
        ] {
            assert!(
                matches!(
                    Digest::parse(bad),
                    Err(ParseError::Digest(_) | ParseError::Algorithm(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Digest::parse("sha256:../x"),
            Err(ParseError::Digest(_))
        ));
    }

    #[test]
    fn references_are_tags_or_digests() {
        let d = Digest::of(b"x");
        assert_eq!(Reference::parse(d.as_str()), Ok(Reference::Digest(d)));
        assert_eq!(Reference::parse("1"), Ok(Reference::Tag("1".into())));
        assert!(Reference::parse("a/b").is_err());
        assert!(Reference::parse("md5:abc").is_err());
    }

    #[test]
    fn digests_round_trip_through_json() {
        let d = Digest::of(b"x");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:zz\"").is_err());
    }
}
