//! HTTP helpers: an async reqwest client for normal requests, and a raw
//! blocking HTTP/1.1 client for paths that a URL parser would normalise
//! (`..`, `%2e%2e`) and for readiness probes from synchronous code.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

/// A fully read response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Codes of an OCI error envelope `{"errors":[{"code","message",..}]}`;
    /// panics when the body is not such an envelope.
    pub fn error_codes(&self) -> Vec<String> {
        let v: Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not an OCI error envelope ({e}): {:?}",
                self.status,
                self.text()
            )
        });
        let errs = v["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("no `errors` array in {v}"));
        assert!(!errs.is_empty(), "empty `errors` array: {v}");
        errs.iter()
            .map(|e| {
                assert!(e["message"].is_string(), "error without message: {v}");
                e["code"]
                    .as_str()
                    .unwrap_or_else(|| panic!("error without code: {v}"))
                    .to_string()
            })
            .collect()
    }

    /// Asserts an error envelope with the given status and (first) code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.text());
        let codes = self.error_codes();
        assert_eq!(codes[0], code, "body: {}", self.text());
    }
}

/// Shared async client: plain HTTP only, never proxied, generous timeouts.
pub fn client() -> reqwest::Client {
    // reqwest is built with rustls-no-provider; even a plain-HTTP client wants a provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
        .build()
        .expect("reqwest client")
}

/// Sends a request and reads the whole body.
pub async fn send(c: &reqwest::Client, method: &str, url: &str, headers: &[(&str, &str)]) -> Resp {
    send_body(c, method, url, headers, Vec::new()).await
}

pub async fn send_body(
    c: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Resp {
    let mut rb = c.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if !body.is_empty() {
        rb = rb.body(body);
    }
    let r = rb
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e:?}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: body: {e:?}"))
        .to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

pub async fn get(c: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Resp {
    send(c, "GET", url, headers).await
}

pub async fn head(c: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Resp {
    send(c, "HEAD", url, headers).await
}

/// One request over a fresh connection, with the request target sent verbatim.
pub fn raw_request(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse_response(&buf, method == "HEAD")
}

/// Status of `GET path`, or `None` when nothing answers (used for readiness polls).
pub fn probe(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_response(&buf, false).ok().map(|r| r.status)
}

fn parse_response(buf: &[u8], head: bool) -> std::io::Result<Resp> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head_text = std::str::from_utf8(&buf[..end]).map_err(|_| bad("non-utf8 headers"))?;
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(status_line))?;
    let mut headers = HeaderMap::new();
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.trim().as_bytes()),
            HeaderValue::from_str(v.trim()),
        ) {
            headers.append(k, v);
        }
    }
    let rest = &buf[end + 4..];
    let chunked = headers
        .get("transfer-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if head {
        Vec::new()
    } else if chunked {
        dechunk(rest).ok_or_else(|| bad("bad chunked body"))?
    } else {
        rest.to_vec()
    };
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&b[..nl]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        b = &b[nl + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}
