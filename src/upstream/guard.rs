//! Where the cache may connect: the server-side request forgery (SSRF) guard.
//!
//! Rules (they apply to every outgoing request: the upstream itself, the bearer-token `realm`
//! an upstream names, and every redirect hop, e.g. to a blob CDN):
//! - Only `http` and `https` URLs are fetched.
//! - A host named by an explicit `registries` entry (the host of its endpoint URL, any port) is
//!   trusted: it may be anything, loopback included, because an operator wrote it down. So is
//!   the host of a configured HTTP(S) proxy.
//! - Any other host must resolve only to public addresses. Refused: loopback (127/8, ::1),
//!   link-local (169.254/16 with the cloud metadata address 169.254.169.254, fe80::/10),
//!   unspecified (0/8, ::), multicast, broadcast and reserved ranges, and the private ranges
//!   (10/8, 172.16/12, 192.168/16, 100.64/10 which holds Alibaba's metadata address, fc00::/7
//!   which holds AWS's fd00:ec2::254, fec0::/10). Private ranges are refused because in a cluster
//!   they hold the API server, kubelets and every Service: an in-cluster registry has to be
//!   listed in `registries` to be reached. IPv4-mapped and NAT64 IPv6 addresses are judged by
//!   the IPv4 address they carry. `localhost` and `metadata.google.internal` are refused by
//!   name as well.
//! - The check holds after DNS resolution and against DNS rebinding: the clients resolve names
//!   through [`GuardedResolver`], which drops refused addresses, so a connection only ever goes
//!   to an address that was checked. IP literals never reach a resolver; [`Guard::check_url`]
//!   judges them before each request and redirect.
//! - With an HTTP proxy in the environment, names are resolved by the proxy: only IP literals
//!   and the names above are checked then.
//!
//! So a client naming `169.254.169.254` in-path or in `?ns=` under `allowAnyUpstream` gets
//! `403 DENIED`, and an allowlisted upstream cannot steer the cache (by its token realm or a
//! redirect) to an address the cache would not otherwise reach.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;

/// Why an address is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressKind {
    Loopback,
    LinkLocal,
    Unspecified,
    Multicast,
    Private,
    Reserved,
}

impl fmt::Display for AddressKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressKind::Loopback => "loopback",
            AddressKind::LinkLocal => "link-local (cloud metadata)",
            AddressKind::Unspecified => "unspecified",
            AddressKind::Multicast => "multicast",
            AddressKind::Private => "private",
            AddressKind::Reserved => "reserved",
        })
    }
}

/// The kind of a non-public address, `None` for an address the cache may reach.
pub fn refused_kind(ip: IpAddr) -> Option<AddressKind> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<AddressKind> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b) {
        (127, _) => AddressKind::Loopback,
        (169, 254) => AddressKind::LinkLocal,
        (0, _) => AddressKind::Unspecified,
        (10, _) | (192, 168) => AddressKind::Private,
        (172, b) if (16..32).contains(&b) => AddressKind::Private,
        (100, b) if (64..128).contains(&b) => AddressKind::Private,
        (192, 0) if c == 0 => AddressKind::Reserved,
        (198, 18 | 19) => AddressKind::Reserved,
        (224..=239, _) => AddressKind::Multicast,
        (240..=255, _) => AddressKind::Reserved,
        _ => return None,
    })
}

fn refused_v6(ip: Ipv6Addr) -> Option<AddressKind> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return refused_v4(v4);
    }
    let seg = ip.segments();
    // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = seg[6].to_be_bytes();
        let [c, d] = seg[7].to_be_bytes();
        return refused_v4(Ipv4Addr::new(a, b, c, d));
    }
    Some(match seg[0] {
        _ if ip.is_loopback() => AddressKind::Loopback,
        _ if ip.is_unspecified() => AddressKind::Unspecified,
        s if s & 0xffc0 == 0xfe80 => AddressKind::LinkLocal,
        s if s & 0xffc0 == 0xfec0 => AddressKind::Private,
        s if s & 0xfe00 == 0xfc00 => AddressKind::Private,
        s if s & 0xff00 == 0xff00 => AddressKind::Multicast,
        // IPv4-compatible (::a.b.c.d, deprecated) and the rest of ::/8.
        0 => AddressKind::Reserved,
        _ => return None,
    })
}

/// Names refused whatever they resolve to (or before they fail to resolve offline).
fn refused_name(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host == "metadata.google.internal"
        || host == "metadata"
}

/// A refused destination; [`Guard::find`] recognises it in a `reqwest` error's causes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The SSRF policy shared by every upstream client.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    /// Lowercased hosts (no port, no trailing dot, IPv6 without brackets) trusted as listed.
    trusted: Arc<HashSet<String>>,
}

/// A host as compared: lowercase, without a trailing dot or IPv6 brackets.
fn canonical(host: &str) -> String {
    host.trim_end_matches('.')
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

impl Guard {
    /// Trusts the hosts of these URLs (the endpoints of the `registries` entries) and of the
    /// proxies configured in the environment.
    pub fn new<'a>(endpoints: impl IntoIterator<Item = &'a str>) -> Guard {
        let proxies = [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ]
        .iter()
        .filter_map(|k| std::env::var(k).ok());
        let trusted = endpoints
            .into_iter()
            .map(str::to_owned)
            .chain(proxies)
            .filter_map(|u| {
                let u = if u.contains("://") {
                    u
                } else {
                    format!("http://{u}")
                };
                Url::parse(&u).ok()?.host_str().map(canonical)
            })
            .collect();
        Guard {
            trusted: Arc::new(trusted),
        }
    }

    pub fn is_trusted(&self, host: &str) -> bool {
        self.trusted.contains(&canonical(host))
    }

    /// Judges a URL before a request: its scheme, a refused name, or an IP literal. Names that
    /// pass are judged again, address by address, when resolved.
    pub fn check_url(&self, url: &Url) -> Result<(), Refused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused(format!(
                "refusing a {} URL: only http and https are fetched",
                url.scheme()
            )));
        }
        let Some(host) = url.host_str() else {
            return Err(Refused("refusing a URL without a host".into()));
        };
        let bare = canonical(host);
        if self.trusted.contains(&bare) {
            return Ok(());
        }
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return match refused_kind(ip) {
                Some(kind) => Err(refused_address(&bare, ip, kind)),
                None => Ok(()),
            };
        }
        if refused_name(&bare) {
            return Err(Refused(format!(
                "{bare} is a local or cloud metadata name; list it in `registries` to allow it"
            )));
        }
        Ok(())
    }

    /// Judges a bare host (`host`, `host:port`, `[v6]:port`) as named by a client.
    pub fn check_host(&self, host: &str) -> Result<(), Refused> {
        // Parsed as a URL authority, so `[v6]:port`, ports and numeric forms such as `0x7f.1`
        // are read the way the client will read them.
        let url = Url::parse(&format!("http://{host}/"))
            .map_err(|e| Refused(format!("invalid upstream host {host:?}: {e}")))?;
        self.check_url(&url)
    }

    /// The addresses of `host` the cache may connect to. An error when none is left.
    pub fn filter(
        &self,
        host: &str,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Refused> {
        let host = canonical(host);
        let addrs: Vec<SocketAddr> = addrs.into_iter().collect();
        if self.trusted.contains(&host) {
            return Ok(addrs);
        }
        let mut first_refused = None;
        let allowed: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| match refused_kind(a.ip()) {
                Some(kind) => {
                    first_refused.get_or_insert((a.ip(), kind));
                    false
                }
                None => true,
            })
            .collect();
        match (allowed.is_empty(), first_refused) {
            (true, Some((ip, kind))) => Err(refused_address(&host, ip, kind)),
            _ => Ok(allowed),
        }
    }

    /// The refusal among an error's causes, if that is why a request failed.
    pub fn find(e: &(dyn std::error::Error + 'static)) -> Option<Refused> {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(r) = err.downcast_ref::<Refused>() {
                return Some(r.clone());
            }
            cur = err.source();
        }
        None
    }

    /// The redirect policy: reqwest's default (at most 10 hops), every hop judged first.
    pub fn redirect_policy(&self) -> reqwest::redirect::Policy {
        let guard = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| match guard.check_url(attempt.url()) {
            Ok(()) => reqwest::redirect::Policy::default().redirect(attempt),
            Err(e) => attempt.error(e),
        })
    }

    /// A DNS resolver for the clients that drops refused addresses.
    pub fn resolver(&self) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver {
            guard: self.clone(),
        })
    }
}

fn refused_address(host: &str, ip: IpAddr, kind: AddressKind) -> Refused {
    let resolved = if host == ip.to_string() {
        String::new()
    } else {
        format!(" resolves to {ip}, which")
    };
    Refused(format!(
        "{host}{resolved} is a {kind} address; the cache reaches such addresses only for hosts listed in `registries`"
    ))
}

/// Resolves with the system resolver, then keeps only the addresses the [`Guard`] allows.
pub struct GuardedResolver {
    guard: Guard,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed = guard.filter(&host, found)?;
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_kinds() {
        use AddressKind::*;
        for (a, k) in [
            ("127.0.0.1", Some(Loopback)),
            ("127.255.0.9", Some(Loopback)),
            ("169.254.169.254", Some(LinkLocal)),
            ("0.0.0.0", Some(Unspecified)),
            ("10.96.0.1", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("172.32.0.1", None),
            ("192.168.1.1", Some(Private)),
            ("100.100.100.200", Some(Private)),
            ("224.0.0.1", Some(Multicast)),
            ("255.255.255.255", Some(Reserved)),
            ("8.8.8.8", None),
            ("::1", Some(Loopback)),
            ("::", Some(Unspecified)),
            ("fe80::1", Some(LinkLocal)),
            ("fd00:ec2::254", Some(Private)),
            ("ff02::1", Some(Multicast)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:169.254.169.254", Some(LinkLocal)),
            ("64:ff9b::a9fe:a9fe", Some(LinkLocal)),
            ("::127.0.0.1", Some(Reserved)),
            ("2606:4700::1111", None),
            ("::ffff:1.1.1.1", None),
        ] {
            assert_eq!(refused_kind(ip(a)), k, "{a}");
        }
    }

    #[test]
    fn hosts_and_urls() {
        let g = Guard::new(["http://127.0.0.1:5000", "https://Registry.Internal"]);
        assert!(
            g.check_host("127.0.0.1:9999").is_ok(),
            "listed host, any port"
        );
        assert!(g.check_host("registry.internal.").is_ok());
        for h in [
            "169.254.169.254",
            "169.254.169.254:80",
            "[::1]:5000",
            "[::1]",
            "0xa9.254.169.254",
            "2852039166",
            "localhost",
            "LOCALHOST.:5000",
            "metadata.google.internal",
            "10.0.0.1:443",
        ] {
            let e = g.check_host(h).expect_err(h);
            assert!(e.0.contains("registries"), "{h}: {e}");
        }
        assert!(g.check_host("quay.io").is_ok());
        assert!(g.check_host("8.8.8.8:443").is_ok());
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(g.check_url(&url("https://auth.docker.io/token")).is_ok());
        assert!(g.check_url(&url("http://127.0.0.1:1/token")).is_ok());
        assert!(g.check_url(&url("file:///etc/passwd")).is_err());
        assert!(g.check_url(&url("ftp://quay.io/x")).is_err());
        assert!(g.check_url(&url("http://[fe80::1]/")).is_err());
        assert!(g.check_url(&url("http://169.254.169.254/latest")).is_err());
        assert!(g.check_url(&url("http://0xa9.254.169.254/")).is_err());
    }

    #[test]
    fn resolved_addresses_are_filtered() {
        let g = Guard::new(["http://listed.test"]);
        let sa = |s: &str| SocketAddr::new(ip(s), 0);
        let e = g
            .filter("rebind.example", [sa("169.254.169.254")])
            .unwrap_err();
        assert!(e.0.contains("resolves to 169.254.169.254"), "{e}");
        assert!(
            g.filter("evil.example", [sa("127.0.0.1"), sa("::1")])
                .is_err()
        );
        assert_eq!(
            g.filter("mixed.example", [sa("10.0.0.1"), sa("1.1.1.1")])
                .unwrap(),
            vec![sa("1.1.1.1")],
            "only checked addresses are returned for the connection"
        );
        assert_eq!(
            g.filter("Listed.Test.", [sa("127.0.0.1")]).unwrap(),
            vec![sa("127.0.0.1")]
        );
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_loopback() {
        use reqwest::dns::Resolve as _;
        let g = Guard::new(["http://127.0.0.1:1"]);
        // `localhost` resolves offline; the name rule is `check_url`'s, so this is the address
        // filter at work, as for any name that resolves (or rebinds) to loopback.
        {
            let name = "localhost";
            let r = g.resolver().resolve(name.parse().unwrap()).await;
            let e = r.err().expect("a loopback name must not resolve");
            let refused = Guard::find(&*e).expect("a refusal");
            assert!(refused.0.contains("resolves to"), "{refused}");
        }
        // An error from inside reqwest is recognised by its cause.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .dns_resolver(g.resolver())
            .no_proxy()
            .build()
            .unwrap();
        let e = client
            .get("http://localhost:9/v2/")
            .send()
            .await
            .unwrap_err();
        let refused = Guard::find(&e).expect("the refusal is among the causes");
        assert!(refused.0.contains("localhost"), "{refused}");
    }
}
