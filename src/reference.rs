//! Pure parsing of what clients and config files name: distribution API paths (which endpoint,
//! which repository, which upstream), image references as `load` and `preload` take them, and
//! platforms.
//!
//! Layer: a value module. It imports only [`crate::digest`]; nothing here touches the network
//! or disk. The registry handlers call these functions first and map [`PathError`] to OCI error
//! codes.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, InvalidDigest};

/// Longest repository name accepted (the distribution spec's recommended limit).
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A manifest reference: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// One endpoint of the distribution API, with the raw repository name as it appeared in the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    Base,
    Manifest { name: &'a str, reference: Reference },
    Blob { name: &'a str, digest: Digest },
    BlobUpload { name: &'a str },
    TagsList { name: &'a str },
    Referrers { name: &'a str, digest: Digest },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("no such endpoint")]
    NotFound,
    #[error("invalid repository name {0:?}")]
    Name(String),
    #[error("invalid tag {0:?}")]
    Tag(String),
    #[error(transparent)]
    Digest(#[from] InvalidDigest),
    #[error("invalid registry host {0:?}")]
    Host(String),
}

/// Parses the path of a `/v2/...` request (the part after `/v2/`, still percent-encoded).
pub fn parse_route(rest: &str) -> Result<Route<'_>, PathError> {
    if rest.is_empty() {
        return Ok(Route::Base);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Route::TagsList {
            name: checked_name(name)?,
        });
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return Ok(Route::Manifest {
            name: checked_name(name)?,
            reference: parse_reference(reference)?,
        });
    }
    if let Some((name, tail)) = rest.rsplit_once("/blobs/uploads")
        && (tail.is_empty() || tail.starts_with('/'))
    {
        return Ok(Route::BlobUpload {
            name: checked_name(name)?,
        });
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        return Ok(Route::Blob {
            name: checked_name(name)?,
            digest: digest.parse()?,
        });
    }
    if let Some((name, digest)) = rest.rsplit_once("/referrers/") {
        return Ok(Route::Referrers {
            name: checked_name(name)?,
            digest: digest.parse()?,
        });
    }
    Err(PathError::NotFound)
}

/// A tag (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`) or a digest (contains `:`).
pub fn parse_reference(s: &str) -> Result<Reference, PathError> {
    if s.contains(':') {
        return Ok(Reference::Digest(s.parse()?));
    }
    let mut bytes = s.bytes();
    let valid = s.len() <= MAX_TAG_LEN
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(Reference::Tag(s.to_owned()))
    } else {
        Err(PathError::Tag(s.chars().take(200).collect()))
    }
}

/// Checks the name against the distribution grammar, allowing a registry host as first segment.
/// Percent escapes, `..` and empty segments all fail here, so a name can never leave the cache.
fn checked_name(name: &str) -> Result<&str, PathError> {
    let bad = || PathError::Name(name.chars().take(300).collect());
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(bad());
    }
    let mut segments = name.split('/');
    let first = segments.next().ok_or_else(bad)?;
    if !(is_component(first) || (looks_like_host(first) && is_host(first))) {
        return Err(bad());
    }
    if segments.all(is_component) {
        Ok(name)
    } else {
        Err(bad())
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_component(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
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
        let sep = &s[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// The distribution rule for telling a registry host from a repository component.
pub fn looks_like_host(segment: &str) -> bool {
    segment.contains('.') || segment.contains(':') || segment == "localhost"
}

/// A DNS name or IPv4 address with an optional port, or a bracketed IPv6 address with one.
pub fn is_host(s: &str) -> bool {
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, tail)) => {
                if v6.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                match tail {
                    "" => return true,
                    t => match t.strip_prefix(':') {
                        Some(p) => ("", Some(p)),
                        None => return false,
                    },
                }
            }
            None => return false,
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if let Some(p) = port
        && p.parse::<u16>().map_or(true, |p| p == 0)
    {
        return false;
    }
    if host.is_empty() {
        return s.starts_with('[');
    }
    host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// Where a request goes: an upstream registry and a repository inside it.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct RepoPath {
    pub registry: String,
    pub repository: String,
}

impl fmt::Display for RepoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)
    }
}

/// Chooses the upstream for a validated repository name: `?ns=` wins, then a host-like first
/// segment, then the default registry. Docker Hub names are normalised (`library/` for one
/// segment, `index.docker.io` is `docker.io`).
pub fn select_upstream(
    name: &str,
    ns: Option<&str>,
    default_registry: &str,
) -> Result<RepoPath, PathError> {
    let (registry, repository) = match ns {
        Some(ns) => {
            if !is_host(ns) {
                return Err(PathError::Host(ns.chars().take(300).collect()));
            }
            (ns, name)
        }
        None => match name.split_once('/') {
            Some((first, rest)) if looks_like_host(first) => (first, rest),
            _ if looks_like_host(name) => return Err(PathError::Name(name.to_owned())),
            _ => (default_registry, name),
        },
    };
    let registry = normalize_registry(registry);
    let repository = if registry == "docker.io" && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository.to_owned()
    };
    Ok(RepoPath {
        registry,
        repository,
    })
}

/// The host that serves a registry's API when no endpoint is configured: the registry itself,
/// except Docker Hub, whose API is at `registry-1.docker.io`.
pub fn api_host(registry: &str) -> String {
    match normalize_registry(registry).as_str() {
        "docker.io" => "registry-1.docker.io".to_owned(),
        _ => registry.to_owned(),
    }
}

/// Lowercases a registry host and folds Docker Hub's aliases into `docker.io`.
pub fn normalize_registry(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        _ => host,
    }
}

/// An image reference as written in a list file or the config's `preload.images`, resolved to an
/// upstream repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub repo: RepoPath,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// What to resolve: the digest when given (it pins the content), else the tag, else
    /// `latest`.
    pub fn reference(&self) -> Reference {
        match (&self.digest, &self.tag) {
            (Some(d), _) => Reference::Digest(d.clone()),
            (None, Some(t)) => Reference::Tag(t.clone()),
            (None, None) => Reference::Tag("latest".to_owned()),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Why a string is not an image reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageRefError {
    #[error("{0:?} is not an image reference")]
    Syntax(String),
    #[error(transparent)]
    Digest(#[from] InvalidDigest),
    #[error("invalid tag {tag:?} in {reference:?}")]
    Tag { tag: String, reference: String },
    #[error("invalid repository name {name:?} in {reference:?}")]
    Name { name: String, reference: String },
    #[error(transparent)]
    Upstream(#[from] PathError),
}

/// Parses `[HOST/]NAME[:TAG][@DIGEST]` with the rules the registry applies to request paths:
/// a host-like first segment names the upstream, else `default_registry` (where Docker Hub's
/// one-segment names get `library/`).
pub fn parse_image_reference(s: &str, default_registry: &str) -> Result<ImageRef, ImageRefError> {
    let s = s.trim();
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        return Err(ImageRefError::Syntax(s.to_owned()));
    }
    let (name_tag, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d.parse::<Digest>()?)),
        None => (s, None),
    };
    // A tag's colon comes after the last slash; earlier ones belong to a host:port.
    let last = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last..].rfind(':') {
        Some(i) => (&name_tag[..last + i], Some(&name_tag[last + i + 1..])),
        None => (name_tag, None),
    };
    if let Some(t) = tag
        && !matches!(parse_reference(t), Ok(Reference::Tag(_)))
    {
        return Err(ImageRefError::Tag {
            tag: t.to_owned(),
            reference: s.to_owned(),
        });
    }
    // The route parser holds the distribution name grammar; reuse it rather than restate it.
    match parse_route(&format!("{name}/manifests/latest")) {
        Ok(Route::Manifest { name: n, .. }) if n == name => {}
        _ => {
            return Err(ImageRefError::Name {
                name: name.to_owned(),
                reference: s.to_owned(),
            });
        }
    }
    let repo = select_upstream(name, None, default_registry)?;
    Ok(ImageRef {
        repo,
        tag: tag.map(str::to_owned),
        digest,
    })
}

/// A platform as the CLI and the config file name it: `os/arch[/variant]`, e.g. `linux/arm64`
/// or `linux/arm/v7`, lowercased. The store's record type converts from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformSpec {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid platform {0:?}: expected os/arch[/variant], e.g. linux/arm64")]
pub struct InvalidPlatform(pub String);

impl FromStr for PlatformSpec {
    type Err = InvalidPlatform;

    fn from_str(s: &str) -> Result<PlatformSpec, InvalidPlatform> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        };
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if parts.iter().all(ok) => Ok(PlatformSpec {
                os: os.to_ascii_lowercase(),
                architecture: arch.to_ascii_lowercase(),
                variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
            }),
            _ => Err(InvalidPlatform(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> String {
        format!("sha256:{}", "ab".repeat(32))
    }

    #[test]
    fn references_normalise_like_pulls() {
        let p = |s| parse_image_reference(s, "docker.io").unwrap();
        let r = p("nginx");
        assert_eq!(r.to_string(), "docker.io/library/nginx");
        assert_eq!(r.reference(), Reference::Tag("latest".into()));
        assert_eq!(
            p("docker.io/library/nginx:1.27").to_string(),
            "docker.io/library/nginx:1.27"
        );
        assert_eq!(p("nginx:1.27").repo, p("index.docker.io/nginx:1.27").repo);
        let r = p("localhost:5000/team/app");
        assert_eq!(r.repo.registry, "localhost:5000");
        assert_eq!(r.repo.repository, "team/app");
        assert_eq!(r.tag, None);
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = p(&format!("quay.io/org/img:v1@{d}"));
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.reference(), Reference::Digest(d.parse().unwrap()));
        assert_eq!(r.to_string(), format!("quay.io/org/img:v1@{d}"));
        assert_eq!(
            parse_image_reference("team/app:V2", "upstream.test")
                .unwrap()
                .to_string(),
            "upstream.test/team/app:V2"
        );
        for bad in [
            "",
            "Nginx",
            "nginx:",
            "nginx:-x",
            "a b",
            "quay.io",
            "quay.io/org/img@sha256:xyz",
            "org//img",
            "../etc:1",
        ] {
            assert!(parse_image_reference(bad, "docker.io").is_err(), "{bad}");
        }
    }

    #[test]
    fn routes() {
        assert_eq!(parse_route(""), Ok(Route::Base));
        assert_eq!(
            parse_route("library/nginx/manifests/Latest"),
            Ok(Route::Manifest {
                name: "library/nginx",
                reference: Reference::Tag("Latest".into())
            })
        );
        let d = digest();
        assert!(matches!(
            parse_route(&format!("quay.io/a/b/c/blobs/{d}")),
            Ok(Route::Blob {
                name: "quay.io/a/b/c",
                ..
            })
        ));
        assert!(matches!(
            parse_route("x/blobs/uploads/"),
            Ok(Route::BlobUpload { name: "x" })
        ));
        assert_eq!(
            parse_route("a/b/tags/list"),
            Ok(Route::TagsList { name: "a/b" })
        );
        assert!(matches!(
            parse_route(&format!("a/referrers/{d}")),
            Ok(Route::Referrers { name: "a", .. })
        ));
        assert_eq!(parse_route("a/b"), Err(PathError::NotFound));
    }

    #[test]
    fn rejects_traversal_and_escapes() {
        for bad in [
            "../etc/manifests/latest",
            "a/../b/manifests/latest",
            "a/%2e%2e/b/manifests/latest",
            "a%2Fb/manifests/latest",
            "a//b/manifests/latest",
            "/a/manifests/latest",
            "A/manifests/latest",
            "a/manifests/..",
            "a/manifests/-x",
        ] {
            assert!(parse_route(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_route("a/blobs/sha256:xyz"),
            Err(PathError::Digest(_))
        ));
    }

    #[test]
    fn components() {
        for ok in ["a", "a.b", "a_b", "a__b", "a---b", "0x"] {
            assert!(is_component(ok), "{ok}");
        }
        for bad in ["", ".a", "a.", "a..b", "a___b", "a-", "A", "a.-b"] {
            assert!(!is_component(bad), "{bad}");
        }
    }

    #[test]
    fn hosts() {
        for ok in [
            "quay.io",
            "localhost",
            "127.0.0.1:5000",
            "[::1]:5000",
            "a-b.c",
        ] {
            assert!(is_host(ok), "{ok}");
        }
        for bad in [
            "", "a..b", "-a.b", "a.b:0", "a.b:x", "[zz]:1", "a/b", "a b", "a%2f",
        ] {
            assert!(!is_host(bad), "{bad}");
        }
    }

    #[test]
    fn upstream_selection() {
        let sel = |n, ns| select_upstream(n, ns, "docker.io").unwrap();
        assert_eq!(sel("nginx", None).to_string(), "docker.io/library/nginx");
        assert_eq!(
            sel("docker.io/nginx", None).to_string(),
            "docker.io/library/nginx"
        );
        assert_eq!(sel("quay.io/org/img", None).to_string(), "quay.io/org/img");
        assert_eq!(sel("localhost/img", None).to_string(), "localhost/img");
        assert_eq!(
            sel("org/img", Some("127.0.0.1:5000")).to_string(),
            "127.0.0.1:5000/org/img"
        );
        assert_eq!(
            sel("nginx", Some("index.docker.io")).to_string(),
            "docker.io/library/nginx"
        );
        assert_eq!(
            select_upstream("a/b", None, "upstream.test")
                .unwrap()
                .to_string(),
            "upstream.test/a/b"
        );
        assert!(select_upstream("a", Some("bad host"), "docker.io").is_err());
        assert!(select_upstream("quay.io", None, "docker.io").is_err());
    }
}
