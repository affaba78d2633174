//! Security checks as tests: the SSRF guard (in-path and `?ns=` hosts, token realms, redirects),
//! no secret in any log line at `trace`, and bounded request bodies, headers and URLs.
//! Covered elsewhere: the admin listener off loopback without a token (`tests/admin.rs`
//! `admin_off_loopback_needs_a_token`), oversized upstream manifests (`tests/interop.rs`).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use support::fake::FakeUpstream;
use support::http::{client, get};
use support::{ImageCache, sha256_digest};

/// A loopback listener that only counts the connections it accepts (and closes them).
struct Recorder {
    addr: String,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, s) = (connections.clone(), stop.clone());
        std::thread::spawn(move || {
            for c in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                if c.is_ok() {
                    n.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Recorder {
            addr,
            connections,
            stop,
        }
    }

    fn port(&self) -> &str {
        self.addr.rsplit_once(':').unwrap().1
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr);
    }
}

#[tokio::test]
async fn unlisted_local_and_metadata_hosts_are_denied_even_with_allow_any_upstream() {
    let target = Recorder::start();
    let port = target.port().to_owned();
    let cache = ImageCache::builder().allow_any_upstream(true).start();
    let c = client();
    let base = cache.url();
    let cases = [
        (format!("/v2/127.0.0.1:{port}/app/manifests/1"), "loopback"),
        (
            format!("/v2/app/manifests/1?ns=127.0.0.1:{port}"),
            "loopback",
        ),
        (format!("/v2/localhost:{port}/app/manifests/1"), "localhost"),
        (
            format!("/v2/app/manifests/1?ns=localhost:{port}"),
            "localhost",
        ),
        (format!("/v2/[::1]:{port}/app/manifests/1"), "loopback"),
        (format!("/v2/app/manifests/1?ns=[::1]:{port}"), "loopback"),
        // 2130706433 is 127.0.0.1 written as one number; URL parsing reads it so.
        (
            format!("/v2/app/manifests/1?ns=2130706433:{port}"),
            "loopback",
        ),
        (
            "/v2/169.254.169.254/latest/manifests/1".into(),
            "link-local",
        ),
        (
            "/v2/app/manifests/1?ns=169.254.169.254".into(),
            "link-local",
        ),
        (
            "/v2/metadata.google.internal/computemetadata/manifests/v1".into(),
            "metadata",
        ),
        (
            format!("/v2/10.0.0.1/app/blobs/{}", sha256_digest(b"x")),
            "private",
        ),
        ("/v2/app/tags/list?ns=0.0.0.0".into(), "unspecified"),
        ("/v2/app/manifests/1?ns=[fe80::1]".into(), "link-local"),
    ];
    for (path, why) in &cases {
        let r = get(&c, &format!("{base}{path}"), &[]).await;
        r.assert_error(403, "DENIED");
        assert!(r.text().contains(why), "{path}: {}", r.text());
        assert!(r.text().contains("registries"), "{path}: {}", r.text());
    }
    assert_eq!(target.connections(), 0, "no connection to a refused host");

    // Control: the same cache reaches a public-looking unlisted host (nothing answers in this
    // sandbox, so 503, not 403), and an explicit entry for a loopback host wins.
    let r = get(
        &c,
        &format!("{base}/v2/app/manifests/1?ns=192.0.2.1:1"),
        &[],
    )
    .await;
    assert_ne!(r.status, 403, "{}", r.text());
    let fake = FakeUpstream::start();
    let listed = ImageCache::builder()
        .allow_any_upstream(true)
        .registry("listed.test", &fake.url())
        .start();
    let r = get(
        &c,
        &format!("{}/v2/listed.test/app/manifests/1", listed.url()),
        &[],
    )
    .await;
    r.assert_error(404, "MANIFEST_UNKNOWN");
    assert!(!fake.requests().is_empty());
}

/// An upstream listed under `localhost`, so `127.0.0.1` is not its own host.
fn listed_under_localhost(fake: &FakeUpstream, names: &[&str]) -> ImageCache {
    let endpoint = format!(
        "http://localhost:{}",
        fake.addr().rsplit_once(':').unwrap().1
    );
    let mut b = ImageCache::builder();
    for n in names {
        b = b.registry(n, &endpoint);
    }
    b.start()
}

#[tokio::test]
async fn a_token_realm_cannot_steer_the_cache_to_local_addresses() {
    let target = Recorder::start();
    let fake = FakeUpstream::start();
    let challenge = |realm: &str| format!("Bearer realm=\"{realm}\",service=\"fake\"");
    let realms = [
        ("loop", format!("http://127.0.0.1:{}/token", target.port())),
        ("meta", "http://169.254.169.254/latest/meta-data/".into()),
        ("file", "file:///etc/passwd".into()),
        (
            "own",
            format!("{}/token", fake.url().replace("127.0.0.1", "localhost")),
        ),
    ];
    for (repo, realm) in &realms {
        fake.route(
            &format!("/v2/{repo}/manifests/1"),
            401,
            &[("WWW-Authenticate", &challenge(realm))],
            Vec::new(),
        );
    }
    fake.route(
        "/token",
        200,
        &[("Content-Type", "application/json")],
        br#"{"token":"t0ken","expires_in":300}"#.to_vec(),
    );
    // One registry entry per realm: a client keeps the last challenge it saw.
    let names: Vec<String> = realms.iter().map(|(r, _)| format!("{r}.test")).collect();
    let cache =
        listed_under_localhost(&fake, &names.iter().map(String::as_str).collect::<Vec<_>>());
    let c = client();
    for ((repo, _), why) in realms.iter().zip(["loopback", "link-local", "file", ""]) {
        let r = get(
            &c,
            &format!("{}/v2/{repo}.test/{repo}/manifests/1", cache.url()),
            &[],
        )
        .await;
        r.assert_error(403, "DENIED");
        if *repo == "own" {
            // The upstream's own host is trusted: the token was fetched, then refused by the
            // static fake, which is an authorisation failure, not the guard.
            assert!(r.text().contains("refused our credentials"), "{}", r.text());
        } else {
            assert!(r.text().contains(why), "{repo}: {}", r.text());
        }
    }
    assert_eq!(
        target.connections(),
        0,
        "the realm on loopback was contacted"
    );
    let tokens = fake
        .requests()
        .iter()
        .filter(|(_, t)| t.starts_with("/token"))
        .count();
    assert!(tokens >= 1, "control: the own-host realm is fetched");
}

#[tokio::test]
async fn redirects_to_local_addresses_are_refused() {
    let target = Recorder::start();
    let fake = FakeUpstream::start();
    let blob = b"a layer served by a CDN".to_vec();
    let digest = sha256_digest(&blob);
    let own_cdn = format!("{}/cdn/blob", fake.url().replace("127.0.0.1", "localhost"));
    let redirects = [
        ("loop", format!("http://127.0.0.1:{}/blob", target.port())),
        ("meta", "http://169.254.169.254/latest/meta-data/".into()),
        ("own", own_cdn),
    ];
    for (repo, location) in &redirects {
        fake.route(
            &format!("/v2/{repo}/blobs/{digest}"),
            307,
            &[("Location", location.as_str())],
            Vec::new(),
        );
    }
    fake.route("/cdn/blob", 200, &[], blob.clone());
    let cache = listed_under_localhost(&fake, &["up.test"]);
    let c = client();
    for ((repo, _), why) in redirects.iter().zip(["loopback", "link-local"]) {
        let r = get(
            &c,
            &format!("{}/v2/up.test/{repo}/blobs/{digest}", cache.url()),
            &[],
        )
        .await;
        r.assert_error(403, "DENIED");
        assert!(r.text().contains(why), "{repo}: {}", r.text());
    }
    assert_eq!(target.connections(), 0, "the redirect target was contacted");
    // Control: a redirect within the upstream's own host is followed.
    let r = get(
        &c,
        &format!("{}/v2/up.test/own/blobs/{digest}", cache.url()),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, blob);
}

/// A registry that demands credentials: `Basic` directly, or a `Bearer` token from `/token`
/// obtained with them. Records every `Authorization` it receives.
struct AuthUpstream {
    addr: String,
    seen: Arc<Mutex<Vec<String>>>,
}

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

impl AuthUpstream {
    fn start(
        bearer: bool,
        basic: String,
        token: &'static str,
        files: Vec<(String, Vec<u8>)>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen: Arc<Mutex<Vec<String>>> = Default::default();
        let (seen2, addr2) = (seen.clone(), addr.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (seen, files, basic, addr) =
                    (seen2.clone(), files.clone(), basic.clone(), addr2.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let head = line.starts_with("HEAD");
                    let mut auth = None;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':')
                            && k.eq_ignore_ascii_case("authorization")
                        {
                            auth = Some(v.trim().to_owned());
                        }
                    }
                    if let Some(a) = &auth {
                        seen.lock().unwrap().push(a.clone());
                    }
                    let path = target.split('?').next().unwrap_or("");
                    let bearer_ok = auth.as_deref() == Some(&format!("Bearer {token}"));
                    let basic_ok = auth.as_deref() == Some(&basic);
                    let challenge = if bearer {
                        format!("Bearer realm=\"http://{addr}/token\",service=\"auth\"")
                    } else {
                        "Basic realm=\"auth\"".to_owned()
                    };
                    let (status, headers, body): (u16, Vec<String>, Vec<u8>) = if path == "/token" {
                        if basic_ok {
                            (
                                200,
                                vec![],
                                json!({"token": token, "expires_in": 300})
                                    .to_string()
                                    .into_bytes(),
                            )
                        } else {
                            (401, vec![], vec![])
                        }
                    } else if !(if bearer { bearer_ok } else { basic_ok }) {
                        (401, vec![format!("WWW-Authenticate: {challenge}")], vec![])
                    } else if let Some((_, b)) = files.iter().find(|(p, _)| p == path) {
                        let mut h = vec![format!("Docker-Content-Digest: {}", sha256_digest(b))];
                        if path.contains("/manifests/") {
                            h.push(format!("Content-Type: {MANIFEST_TYPE}"));
                        }
                        (200, h, b.clone())
                    } else if path == "/v2/" {
                        (200, vec![], b"{}".to_vec())
                    } else {
                        (404, vec![], vec![])
                    };
                    let mut out = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                        body.len()
                    );
                    for h in headers {
                        out.push_str(&h);
                        out.push_str("\r\n");
                    }
                    out.push_str("\r\n");
                    let mut conn = conn;
                    let _ = conn.write_all(out.as_bytes());
                    if !head {
                        let _ = conn.write_all(&body);
                    }
                });
            }
        });
        AuthUpstream { addr, seen }
    }
}

#[tokio::test]
async fn no_credential_or_token_reaches_the_log_at_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let (user, password, token) = (
        "alice",
        "Pa55-never-in-a-log-7d1f",
        "tok-never-in-a-log-93ab",
    );
    let pw_file = tmp.path().join("password");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    let basic_value = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    let (config, layer) = (b"{}".to_vec(), b"secret layer".to_vec());
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": sha256_digest(&config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": layer.len(), "digest": sha256_digest(&layer)}],
    }))
    .unwrap();
    let files = vec![
        ("/v2/app/manifests/1".to_owned(), manifest.clone()),
        (format!("/v2/app/blobs/{}", sha256_digest(&config)), config),
        (
            format!("/v2/app/blobs/{}", sha256_digest(&layer)),
            layer.clone(),
        ),
    ];
    let c = client();
    for bearer in [false, true] {
        let up = AuthUpstream::start(bearer, basic_value.clone(), token, files.clone());
        let cache = ImageCache::builder()
            .registry_with(json!({"name": "auth.test", "endpoint": format!("http://{}", up.addr),
                "auth": {"username": user, "passwordFile": pw_file}}))
            // `log.level` is spliced into the filter as `imagecache=<level>,warn`: name the
            // HTTP and TLS crates too, so every layer that sees a header logs at trace.
            .set("log", json!({"level": "trace,reqwest=trace,hyper=trace,hyper_util=trace,h2=trace,rustls=trace,axum=trace,tower=trace", "format": "text"}))
            .start();
        let r = get(
            &c,
            &format!("{}/v2/auth.test/app/manifests/1", cache.url()),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "bearer={bearer}: {}", r.text());
        assert_eq!(r.body, manifest);
        let r = get(
            &c,
            &format!(
                "{}/v2/auth.test/app/blobs/{}",
                cache.url(),
                sha256_digest(&layer)
            ),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "bearer={bearer}: {}", r.text());
        assert_eq!(r.body, layer);
        let seen = up.seen.lock().unwrap().clone();
        assert!(seen.contains(&basic_value), "the credentials were sent");
        if bearer {
            assert!(
                seen.contains(&format!("Bearer {token}")),
                "the token was used"
            );
        }
        let log = cache.log();
        assert!(
            log.contains("TRACE hyper_util") && log.contains("TRACE reqwest"),
            "trace logging of the HTTP client is on"
        );
        for secret in [
            password,
            token,
            basic_value.as_str(),
            &basic_value["Basic ".len()..],
        ] {
            let line = log.lines().find(|l| l.contains(secret));
            assert!(
                line.is_none(),
                "bearer={bearer}: a secret in the log: {line:?}"
            );
        }
    }
}

/// Sends raw bytes and reads the status line, or `None` when the server closed the
/// connection without one. A hang fails the test (read timeout).
fn raw_status(addr: &str, request: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer and close before it has read everything: a write error is fine.
    let _ = s.write_all(request);
    // The status line is enough: the connection may be kept open after it.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no answer and no close: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok())
}

#[test]
fn oversized_admin_bodies_get_413() {
    let cache = ImageCache::builder().start();
    let addr = cache.admin_addr();
    let post = |extra: &str| {
        format!(
            "POST /admin/v1/prune HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}\r\n"
        )
    };
    // Declared too large: refused before the body is sent.
    let s = raw_status(&addr, post("Content-Length: 2097152\r\n").as_bytes());
    assert_eq!(s, Some(413));
    // Streamed without a length: refused once past the limit.
    let mut chunked = post("Transfer-Encoding: chunked\r\n").into_bytes();
    for _ in 0..40 {
        chunked.extend_from_slice(format!("{:x}\r\n{}\r\n", 65536, " ".repeat(65536)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw_status(&addr, &chunked), Some(413));
    // Control: a small body is read (and this one is not a prune request).
    let small = format!("{}[1]", post("Content-Length: 3\r\n"));
    assert_eq!(raw_status(&addr, small.as_bytes()), Some(400));
}

#[test]
fn oversized_headers_and_urls_get_a_clean_4xx() {
    let cache = ImageCache::builder().start();
    let addr = cache.addr();
    let big = format!(
        "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let s = raw_status(&addr, big.as_bytes());
    assert!(matches!(s, Some(431) | None), "1 MiB header: {s:?}");
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let s = raw_status(
        &addr,
        format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    );
    assert!(matches!(s, Some(431) | None), "500 headers: {s:?}");
    // Very long URLs: ours (414 with an OCI error body) and hyper's (beyond 64 KiB).
    let long = format!("/v2/{}/manifests/1", "a/".repeat(5000));
    let r = support::raw_request(&addr, "GET", &long, &[]).unwrap();
    r.assert_error(414, "NAME_INVALID");
    let huge = format!("/v2/{}/manifests/1", "a".repeat(100_000));
    let s = raw_status(
        &addr,
        format!("GET {huge} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    );
    assert!(matches!(s, Some(400..=499) | None), "100 KB URL: {s:?}");
    // The server is fine afterwards.
    assert_eq!(
        support::raw_request(&addr, "GET", "/v2/", &[])
            .unwrap()
            .status,
        200
    );
}
