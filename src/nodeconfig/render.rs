//! Pure rendering of the node files: what to write where for a registry, a mirror and a runtime.
//!
//! Nothing here touches the disk; [`super::files`] decides and performs the writes.

use std::fmt;
use std::path::PathBuf;

use super::NodeConfigError;
use crate::reference::is_host;

/// First line of every file we write; only files starting with it are ever changed or removed.
pub const MARKER: &str = "# Managed by imagecache node-config";

/// Second line: the mirror the file points to, so a run can tell its own stale files from those
/// of another cache that writes to the same node.
const MIRROR_PREFIX: &str = "# mirror: ";

/// File-name prefix of the CRI-O drop-ins (one per registry).
pub const CRIO_PREFIX: &str = "imagecache-";
/// File-name suffix of the CRI-O drop-ins; CRI-O reads only `*.conf` there.
pub const CRIO_SUFFIX: &str = ".conf";
/// The file containerd reads in each registry folder.
pub const HOSTS_TOML: &str = "hosts.toml";

/// The container runtime of the node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// `<dir>/<registry>/hosts.toml`.
    #[default]
    Containerd,
    /// CRI-O, registries.conf v2 drop-ins: `<dir>/imagecache-<registry>.conf`.
    Crio,
}

impl Runtime {
    /// Where the runtime reads its registry configuration when `--hosts-dir` is not given.
    pub fn default_dir(self) -> PathBuf {
        match self {
            Runtime::Containerd => PathBuf::from("/etc/containerd/certs.d"),
            Runtime::Crio => PathBuf::from("/etc/containers/registries.conf.d"),
        }
    }
}

/// The mirror's base URL: `http` or `https`, a host and an optional port, no path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    https: bool,
    /// `host[:port]`, lowercase.
    authority: String,
}

impl Mirror {
    /// Parses `http://10.96.0.12:5000` (a trailing `/` is allowed).
    pub fn parse(raw: &str) -> Result<Self, NodeConfigError> {
        let bad = |why: &'static str| NodeConfigError::Mirror {
            value: raw.to_owned(),
            why,
        };
        let s = raw.trim();
        let lower = s.to_ascii_lowercase();
        let (https, rest) = if let Some(r) = lower.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = lower.strip_prefix("https://") {
            (true, r)
        } else if lower.contains("://") {
            return Err(bad("the scheme must be http:// or https://"));
        } else {
            return Err(bad(
                "needs a scheme: http://HOST[:PORT] or https://HOST[:PORT]",
            ));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(bad(
                "must be scheme://HOST[:PORT] without a path, query or user",
            ));
        }
        if !is_host(authority) {
            return Err(bad("not a valid HOST[:PORT]"));
        }
        Ok(Mirror {
            https,
            authority: authority.to_owned(),
        })
    }

    /// `http://host:port`
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.authority)
    }

    /// `host:port`, as CRI-O wants a mirror location.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Plain HTTP: runtimes must be told the mirror is insecure.
    pub fn is_plain_http(&self) -> bool {
        !self.https
    }
}

impl fmt::Display for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url())
    }
}

/// A registry host the node should pull through the mirror (`docker.io`, `registry.local:5000`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Registry(String);

impl Registry {
    /// Validates one registry host (`host` or `host:port`, lowercased).
    pub fn parse(raw: &str) -> Result<Self, NodeConfigError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(NodeConfigError::EmptyRegistry);
        }
        let bad = |why: &'static str| NodeConfigError::Registry {
            value: raw.to_owned(),
            why,
        };
        if s.contains("://") {
            return Err(bad("a registry host (e.g. docker.io), not a URL"));
        }
        let s = s.to_ascii_lowercase();
        // `_default` and friends are containerd folder names, never a registry host.
        if !is_host(&s) {
            return Err(bad("not a valid HOST[:PORT]"));
        }
        Ok(Registry(s))
    }

    /// Every registry of repeated and comma-separated flag values, first occurrence kept.
    pub fn parse_list(values: &[String]) -> Result<Vec<Self>, NodeConfigError> {
        let mut out: Vec<Registry> = Vec::new();
        for value in values {
            for part in value.split(',') {
                let r = Registry::parse(part)?;
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The registry's own endpoint: the fallback when the mirror cannot serve.
    pub fn upstream_url(&self) -> String {
        format!("https://{}", crate::reference::api_host(&self.0))
    }
}

impl fmt::Display for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One file to keep on the node: its path relative to the hosts directory and its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedFile {
    pub path: PathBuf,
    pub content: String,
}

/// The path (relative to the hosts directory) of a registry's file.
///
/// containerd looks a registry up by its host namespace, `host[:port]`, as the folder name (on
/// Unix `registry.local:5000` is a valid folder name, and every containerd since 1.5 reads it).
/// CRI-O reads every `*.conf` drop-in, so the name only has to be unique and tidy.
pub fn relative_path(runtime: Runtime, registry: &Registry) -> PathBuf {
    match runtime {
        Runtime::Containerd => PathBuf::from(registry.as_str()).join(HOSTS_TOML),
        Runtime::Crio => {
            let tidy: String = registry
                .as_str()
                .chars()
                .map(|c| match c {
                    ':' | '[' | ']' => '_',
                    c => c,
                })
                .collect();
            PathBuf::from(format!("{CRIO_PREFIX}{tidy}{CRIO_SUFFIX}"))
        }
    }
}

/// The file that routes `registry`'s pulls through `mirror` for `runtime`.
pub fn render(runtime: Runtime, registry: &Registry, mirror: &Mirror) -> ManagedFile {
    let content = match runtime {
        Runtime::Containerd => containerd(registry, mirror),
        Runtime::Crio => crio(registry, mirror),
    };
    ManagedFile {
        path: relative_path(runtime, registry),
        content,
    }
}

/// Does this file content carry our marker line?
pub fn is_ours(content: &[u8]) -> bool {
    let first = content.split(|b| *b == b'\n').next().unwrap_or_default();
    first.strip_suffix(b"\r").unwrap_or(first) == MARKER.as_bytes()
}

/// The mirror URL recorded in one of our files, if any.
pub fn recorded_mirror(content: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(content).ok()?;
    text.lines()
        .take(3)
        .find_map(|l| l.strip_prefix(MIRROR_PREFIX))
        .map(|m| m.trim().to_owned())
}

fn header(registry: &Registry, mirror: &Mirror) -> String {
    format!(
        "{MARKER}\n{MIRROR_PREFIX}{mirror}\n\
         # Pulls of {registry} try the imagecache mirror first, then {upstream}.\n\
         # Edits are overwritten; remove the first line to take this file over.\n",
        upstream = registry.upstream_url(),
    )
}

/// containerd `hosts.toml`: the mirror as the first host (containerd adds `?ns=<registry>` to
/// every request it sends there), the registry itself as the fallback `server`. An `http://`
/// host key is all containerd needs to talk plain HTTP to it; TLS options do not apply.
fn containerd(registry: &Registry, mirror: &Mirror) -> String {
    format!(
        "{header}\
         server = {server}\n\
         \n\
         [host.{mirror_key}]\n  \
         capabilities = [\"pull\", \"resolve\"]\n",
        header = header(registry, mirror),
        server = toml_str(&registry.upstream_url()),
        mirror_key = toml_str(&mirror.url()),
    )
}

/// CRI-O drop-in (containers-registries.conf v2). CRI-O sends no `ns`, so the mirror location
/// carries the registry as its first path segment (`10.96.0.12:5000/quay.io`), which the
/// server routes to that upstream.
fn crio(registry: &Registry, mirror: &Mirror) -> String {
    let insecure = if mirror.is_plain_http() {
        "insecure = true\n"
    } else {
        ""
    };
    format!(
        "{header}\
         [[registry]]\n\
         prefix = {name}\n\
         location = {name}\n\
         \n\
         [[registry.mirror]]\n\
         location = {location}\n\
         {insecure}\
         pull-from-mirror = \"all\"\n",
        header = header(registry, mirror),
        name = toml_str(registry.as_str()),
        location = toml_str(&format!("{}/{}", mirror.authority(), registry)),
    )
}

/// A TOML basic string. Inputs are validated hosts, so escaping is only a safety net.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(s: &str) -> Mirror {
        Mirror::parse(s).unwrap()
    }

    fn reg(s: &str) -> Registry {
        Registry::parse(s).unwrap()
    }

    #[test]
    fn containerd_docker_io_golden() {
        let f = render(
            Runtime::Containerd,
            &reg("docker.io"),
            &mirror("http://10.96.0.12:5000"),
        );
        assert_eq!(f.path, PathBuf::from("docker.io/hosts.toml"));
        assert_eq!(
            f.content,
            "# Managed by imagecache node-config\n\
             # mirror: http://10.96.0.12:5000\n\
             # Pulls of docker.io try the imagecache mirror first, then https://registry-1.docker.io.\n\
             # Edits are overwritten; remove the first line to take this file over.\n\
             server = \"https://registry-1.docker.io\"\n\
             \n\
             [host.\"http://10.96.0.12:5000\"]\n  \
             capabilities = [\"pull\", \"resolve\"]\n"
        );
    }

    #[test]
    fn containerd_port_registry_golden() {
        let f = render(
            Runtime::Containerd,
            &reg("Registry.Local:5000"),
            &mirror("https://cache.example:8443/"),
        );
        assert_eq!(f.path, PathBuf::from("registry.local:5000/hosts.toml"));
        assert_eq!(
            f.content,
            "# Managed by imagecache node-config\n\
             # mirror: https://cache.example:8443\n\
             # Pulls of registry.local:5000 try the imagecache mirror first, then https://registry.local:5000.\n\
             # Edits are overwritten; remove the first line to take this file over.\n\
             server = \"https://registry.local:5000\"\n\
             \n\
             [host.\"https://cache.example:8443\"]\n  \
             capabilities = [\"pull\", \"resolve\"]\n"
        );
    }

    #[test]
    fn crio_golden() {
        let f = render(
            Runtime::Crio,
            &reg("quay.io"),
            &mirror("http://127.0.0.1:30500"),
        );
        assert_eq!(f.path, PathBuf::from("imagecache-quay.io.conf"));
        assert_eq!(
            f.content,
            "# Managed by imagecache node-config\n\
             # mirror: http://127.0.0.1:30500\n\
             # Pulls of quay.io try the imagecache mirror first, then https://quay.io.\n\
             # Edits are overwritten; remove the first line to take this file over.\n\
             [[registry]]\n\
             prefix = \"quay.io\"\n\
             location = \"quay.io\"\n\
             \n\
             [[registry.mirror]]\n\
             location = \"127.0.0.1:30500/quay.io\"\n\
             insecure = true\n\
             pull-from-mirror = \"all\"\n"
        );
        // An HTTPS mirror is not insecure; a port registry gets a tidy file name.
        let f = render(
            Runtime::Crio,
            &reg("registry.local:5000"),
            &mirror("https://cache.example"),
        );
        assert_eq!(f.path, PathBuf::from("imagecache-registry.local_5000.conf"));
        assert!(!f.content.contains("insecure"));
        assert!(
            f.content
                .contains("location = \"cache.example/registry.local:5000\"\n")
        );
    }

    #[test]
    fn markers_are_recognised() {
        let f = render(
            Runtime::Containerd,
            &reg("ghcr.io"),
            &mirror("http://10.0.0.1:5000"),
        );
        assert!(is_ours(f.content.as_bytes()));
        assert_eq!(
            recorded_mirror(f.content.as_bytes()).as_deref(),
            Some("http://10.0.0.1:5000")
        );
        assert!(is_ours(
            b"# Managed by imagecache node-config\r\nserver = \"x\"\n"
        ));
        assert!(!is_ours(b"server = \"https://ghcr.io\"\n"));
        assert!(!is_ours(
            b"# hand-written\n# Managed by imagecache node-config\n"
        ));
        assert!(!is_ours(
            b"# Managed by imagecache node-config, not really\n"
        ));
        assert!(!is_ours(b""));
        assert_eq!(recorded_mirror(b"server = \"x\"\n"), None);
    }

    #[test]
    fn upstreams() {
        assert_eq!(
            reg("docker.io").upstream_url(),
            "https://registry-1.docker.io"
        );
        assert_eq!(
            reg("registry.k8s.io").upstream_url(),
            "https://registry.k8s.io"
        );
        assert_eq!(reg("ghcr.io").upstream_url(), "https://ghcr.io");
    }

    #[test]
    fn mirror_urls() {
        assert_eq!(
            mirror("http://10.96.0.12:5000").url(),
            "http://10.96.0.12:5000"
        );
        assert_eq!(
            mirror(" HTTP://Cache.Local:80/ ").url(),
            "http://cache.local:80"
        );
        assert_eq!(
            mirror("http://[fd00::1]:5000").authority(),
            "[fd00::1]:5000"
        );
        assert!(mirror("http://x.y").is_plain_http());
        assert!(!mirror("https://x.y").is_plain_http());
        for bad in [
            "10.96.0.12:5000",
            "ftp://10.96.0.12",
            "http://",
            "http://10.96.0.12:5000/v2",
            "http://u:p@10.96.0.12",
            "http://10.96.0.12:0",
            "http://bad host",
            "",
        ] {
            assert!(
                matches!(Mirror::parse(bad), Err(NodeConfigError::Mirror { .. })),
                "{bad:?}"
            );
        }
        let e = Mirror::parse("10.96.0.12:5000").unwrap_err().to_string();
        assert!(e.contains("scheme") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn registry_lists() {
        let list = Registry::parse_list(&[
            "docker.io,quay.io".to_owned(),
            "registry.local:5000".to_owned(),
            "Docker.io".to_owned(),
        ])
        .unwrap();
        let names: Vec<_> = list.iter().map(Registry::as_str).collect();
        assert_eq!(names, ["docker.io", "quay.io", "registry.local:5000"]);
        assert!(matches!(
            Registry::parse_list(&["docker.io,,quay.io".to_owned()]),
            Err(NodeConfigError::EmptyRegistry)
        ));
        assert!(matches!(
            Registry::parse_list(&[" ".to_owned()]),
            Err(NodeConfigError::EmptyRegistry)
        ));
        for bad in ["https://docker.io", "docker.io/library", "_default", "a b"] {
            assert!(
                matches!(Registry::parse(bad), Err(NodeConfigError::Registry { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    }
}
