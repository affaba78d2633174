//! Upstream credentials and the registry token flow: `WWW-Authenticate` parsing (pure), Docker
//! `config.json` lookup, and tokens cached per scope until shortly before they expire.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Basic credentials. `Debug` never shows the password, so a stray `{:?}` cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a Docker config.json: {source}")]
    DockerConfig {
        path: String,
        #[source]
        source: DockerConfigError,
    },
    #[error("{path} has no credentials for {registry}")]
    NoEntry { path: String, registry: String },
    #[error("auth for {0}: username given without passwordFile")]
    Incomplete(String),
}

/// Why a Docker `config.json` cannot be read for credentials. The auth entries' own decoding
/// errors are not kept: their bytes are the secret.
#[derive(Debug, thiserror::Error)]
pub enum DockerConfigError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("an auth entry is not base64")]
    NotBase64,
    #[error("an auth entry is not UTF-8")]
    NotUtf8,
    #[error("an auth entry is not user:password")]
    NotUserPassword,
}

/// Loads the credentials configured for `registry` (`username` + `passwordFile`, or a Docker
/// config file).
pub fn load_credentials(
    registry: &str,
    endpoint_host: &str,
    auth: &crate::config::AuthConfig,
) -> Result<Option<Credentials>, CredentialError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| CredentialError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    if let Some(file) = &auth.docker_config_file {
        let text = read(file)?;
        return docker_config_lookup(&text, registry, endpoint_host)
            .map_err(|source| CredentialError::DockerConfig {
                path: file.display().to_string(),
                source,
            })?
            .map(Some)
            .ok_or_else(|| CredentialError::NoEntry {
                path: file.display().to_string(),
                registry: registry.to_owned(),
            });
    }
    match (&auth.username, &auth.password_file) {
        (Some(u), Some(p)) => Ok(Some(Credentials {
            username: u.clone(),
            password: read(p)?.trim_end_matches(['\r', '\n']).to_owned(),
        })),
        (Some(_), None) => Err(CredentialError::Incomplete(registry.to_owned())),
        _ => Ok(None),
    }
}

/// Finds credentials in a Docker `config.json` (or `.dockerconfigjson`) for a registry, trying
/// the names Docker itself writes (`host`, `https://host`, Docker Hub's v1 URL).
pub fn docker_config_lookup(
    text: &str,
    registry: &str,
    endpoint_host: &str,
) -> Result<Option<Credentials>, DockerConfigError> {
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        auths: HashMap<String, Entry>,
    }
    let file: File = serde_json::from_str(text)?;
    let strip = |k: &str| {
        let k = k
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        k.split('/').next().unwrap_or(k).to_ascii_lowercase()
    };
    let mut wanted = vec![
        registry.to_ascii_lowercase(),
        endpoint_host.to_ascii_lowercase(),
    ];
    if registry == "docker.io" {
        wanted.extend(["index.docker.io".into(), "registry-1.docker.io".into()]);
    }
    let Some(entry) = file
        .auths
        .iter()
        .find(|(k, _)| wanted.contains(&strip(k)))
        .map(|(_, v)| v)
    else {
        return Ok(None);
    };
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(Some(Credentials {
            username: u.clone(),
            password: p.clone(),
        }));
    }
    let Some(auth) = &entry.auth else {
        return Ok(None);
    };
    let decoded = STANDARD
        .decode(auth.trim())
        .map_err(|_| DockerConfigError::NotBase64)?;
    let decoded = String::from_utf8(decoded).map_err(|_| DockerConfigError::NotUtf8)?;
    let (u, p) = decoded
        .split_once(':')
        .ok_or(DockerConfigError::NotUserPassword)?;
    Ok(Some(Credentials {
        username: u.to_owned(),
        password: p.to_owned(),
    }))
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Parses the first challenge we can answer; `None` for schemes we do not speak.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(params);
    Some(Challenge::Bearer {
        realm: params.get("realm")?.clone(),
        service: params.get("service").cloned(),
    })
}

/// `key="quoted, value", key2=token` into a map (keys lowercased).
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            continue;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    out
}

/// A bearer token and when we stop using it.
#[derive(Clone)]
pub struct CachedToken {
    pub token: String,
    pub refresh_at: Instant,
}

impl fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CachedToken(<redacted>)")
    }
}

/// The token endpoint's answer.
#[derive(serde::Deserialize)]
pub struct TokenResponse {
    pub token: Option<String>,
    pub access_token: Option<String>,
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token and the moment to refresh it: at 80% of its lifetime, at most 30 s early, so a
    /// pull never starts with a token about to lapse. Registries that omit `expires_in` give 60 s.
    pub fn into_cached(self, now: Instant) -> Option<CachedToken> {
        let token = self.token.or(self.access_token).filter(|t| !t.is_empty())?;
        let life = Duration::from_secs(self.expires_in.unwrap_or(60).max(1));
        let margin = (life / 5).min(Duration::from_secs(30));
        Some(CachedToken {
            token,
            refresh_at: now + life - margin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None);
        let q = parse_params(r#"realm="a\"b,c", x=y"#);
        assert_eq!(q["realm"], "a\"b,c");
        assert_eq!(q["x"], "y");
    }

    #[test]
    fn docker_config_entries() {
        let auth = STANDARD.encode("bob:s3cret");
        let cfg = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},"quay.io":{{"username":"q","password":"p"}}}}}}"#
        );
        let hub = docker_config_lookup(&cfg, "docker.io", "registry-1.docker.io")
            .unwrap()
            .unwrap();
        assert_eq!(hub.username, "bob");
        assert_eq!(hub.password, "s3cret");
        assert_eq!(
            docker_config_lookup(&cfg, "quay.io", "quay.io")
                .unwrap()
                .unwrap()
                .password,
            "p"
        );
        assert_eq!(
            docker_config_lookup(&cfg, "ghcr.io", "ghcr.io").unwrap(),
            None
        );
        assert!(docker_config_lookup("nope", "x", "x").is_err());
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        let t = TokenResponse {
            token: Some("tok-123".into()),
            access_token: None,
            expires_in: Some(300),
        }
        .into_cached(Instant::now())
        .unwrap();
        assert!(!format!("{t:?}").contains("tok-123"));
    }

    #[test]
    fn tokens_refresh_before_expiry() {
        let now = Instant::now();
        let t = |s| {
            TokenResponse {
                token: Some("t".into()),
                access_token: None,
                expires_in: s,
            }
            .into_cached(now)
            .unwrap()
            .refresh_at
                - now
        };
        assert_eq!(t(Some(300)), Duration::from_secs(270));
        assert_eq!(t(None), Duration::from_secs(48));
        assert!(
            TokenResponse {
                token: None,
                access_token: None,
                expires_in: None
            }
            .into_cached(now)
            .is_none()
        );
    }
}
