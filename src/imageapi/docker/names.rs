//! Image names as the docker CLI sends them, normalised the way the daemon does: `nginx` is
//! `docker.io/library/nginx:latest`, `quay.io/org/img@sha256:...` names a digest, `sha256:abc`
//! and `abc` may be (prefixes of) image IDs. And back: `docker.io` names shown familiar.

use crate::digest::Digest;
use crate::reference::{Reference, RepoPath, parse_reference, parse_route, select_upstream};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid reference format: {0:?}")]
pub struct InvalidName(pub String);

/// What a name in `/images/{name}` (or a `before`/`since` filter) asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageName {
    /// `sha256:<hex>` or 64 hex digits: an image ID or a prefix of one.
    Id(String),
    Ref {
        repo: RepoPath,
        /// `latest` when neither a tag nor a digest was given.
        tag: Option<String>,
        digest: Option<Digest>,
        /// The input was bare hex (`abc123`): if no such repository exists it is an ID prefix,
        /// as `docker image rm 4f2a` works.
        maybe_id: bool,
    },
}

impl ImageName {
    pub fn parse(input: &str) -> Result<ImageName, InvalidName> {
        let bad = || InvalidName(input.chars().take(300).collect());
        let is_hex = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if let Some(hex) = input.strip_prefix("sha256:") {
            return if is_hex(hex) {
                Ok(ImageName::Id(hex.to_owned()))
            } else {
                Err(bad())
            };
        }
        if input.len() == 64 && is_hex(input) {
            return Ok(ImageName::Id(input.to_owned()));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((n, d)) => (n, Some(d.parse::<Digest>().map_err(|_| bad())?)),
            None => (input, None),
        };
        // A tag's colon comes after the last slash; a registry port's comes before it.
        let (name, tag) = match rest.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => match parse_reference(t) {
                Ok(Reference::Tag(t)) => (n, Some(t)),
                _ => return Err(bad()),
            },
            _ => (rest, None),
        };
        // The registry's own name grammar (host first segment, lowercase components).
        parse_route(&format!("{name}/tags/list")).map_err(|_| bad())?;
        let repo = select_upstream(name, None, "docker.io").map_err(|_| bad())?;
        let maybe_id = tag.is_none() && digest.is_none() && is_hex(input);
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            (t, _) => t,
        };
        Ok(ImageName::Ref {
            repo,
            tag,
            digest,
            maybe_id,
        })
    }
}

/// The name Docker shows: `nginx` for `docker.io/library/nginx`, `org/app` for
/// `docker.io/org/app`, anything else in full.
pub fn familiar(repo: &RepoPath) -> String {
    if repo.registry != "docker.io" {
        return repo.to_string();
    }
    match repo.repository.strip_prefix("library/") {
        Some(short) if !short.contains('/') => short.to_owned(),
        _ => repo.repository.clone(),
    }
}

pub fn familiar_tag(repo: &RepoPath, tag: &str) -> String {
    format!("{}:{tag}", familiar(repo))
}

pub fn familiar_digest(repo: &RepoPath, digest: &Digest) -> String {
    format!("{}@{digest}", familiar(repo))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(r: &str, p: &str) -> RepoPath {
        RepoPath {
            registry: r.into(),
            repository: p.into(),
        }
    }

    fn named(input: &str) -> (String, Option<String>, Option<String>, bool) {
        match ImageName::parse(input).unwrap() {
            ImageName::Ref {
                repo,
                tag,
                digest,
                maybe_id,
            } => (
                repo.to_string(),
                tag,
                digest.map(|d| d.to_string()),
                maybe_id,
            ),
            other => panic!("{input}: {other:?}"),
        }
    }

    #[test]
    fn normalises_like_docker() {
        let latest = Some("latest".to_owned());
        assert_eq!(
            named("nginx"),
            (
                "docker.io/library/nginx".into(),
                latest.clone(),
                None,
                false
            )
        );
        assert_eq!(
            named("nginx:1.27").1.as_deref(),
            Some("1.27"),
            "explicit tag"
        );
        assert_eq!(named("docker.io/nginx").0, "docker.io/library/nginx");
        assert_eq!(named("index.docker.io/org/app").0, "docker.io/org/app");
        assert_eq!(named("org/app").0, "docker.io/org/app");
        assert_eq!(
            named("127.0.0.1:5000/team/app"),
            ("127.0.0.1:5000/team/app".into(), latest, None, false)
        );
        let d = format!("sha256:{}", "ab".repeat(32));
        let (r, t, dg, _) = named(&format!("quay.io/org/img@{d}"));
        assert_eq!(
            (r.as_str(), t, dg),
            ("quay.io/org/img", None, Some(d.clone()))
        );
        let (_, t, dg, _) = named(&format!("quay.io/org/img:v1@{d}"));
        assert_eq!((t.as_deref(), dg.is_some()), (Some("v1"), true));
        assert!(named("abc123").3, "bare hex may be an ID prefix");
        assert!(!named("abc123:latest").3);
    }

    #[test]
    fn ids() {
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(
            ImageName::parse(&format!("sha256:{hex}")),
            Ok(ImageName::Id(hex.clone()))
        );
        assert_eq!(ImageName::parse(&hex), Ok(ImageName::Id(hex.clone())));
        assert_eq!(
            ImageName::parse("sha256:0123"),
            Ok(ImageName::Id("0123".into()))
        );
        assert!(ImageName::parse("sha256:xyz").is_err());
        assert!(ImageName::parse("sha256:").is_err());
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "Nginx",
            "nginx:",
            "nginx:-x",
            "a//b",
            "nginx@sha256:zz",
            "",
            "../x",
            "quay.io",
        ] {
            assert!(ImageName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn familiar_names() {
        assert_eq!(familiar(&repo("docker.io", "library/nginx")), "nginx");
        assert_eq!(familiar(&repo("docker.io", "org/app")), "org/app");
        assert_eq!(familiar(&repo("docker.io", "library/a/b")), "library/a/b");
        assert_eq!(
            familiar_tag(&repo("quay.io", "org/app"), "v1"),
            "quay.io/org/app:v1"
        );
    }
}
