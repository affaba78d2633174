//! A fault-injecting HTTP proxy to put between imagecache and a real upstream registry.
//!
//! Every request is forwarded to the upstream (a CNCF Distribution registry in the tests),
//! then answered as a rule says: late, cut, reset, corrupted, slowed to a trickle, or
//! replaced by a 5xx or a 429 with `Retry-After`. Rules match a method and a path fragment
//! and apply a number of times; a chaos mode draws a fault per request from a seeded RNG.
//! Every request is logged with its arrival time and what was done to it.
//!
//! One request per connection (`Connection: close`), which is all a proxy for faults needs.
//! It runs on its own runtime thread, so a test blocking its own thread never stalls it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What to do to a response.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answer correctly after a delay.
    Latency(Duration),
    /// Reset the connection (RST) before any byte of the response.
    ResetBeforeResponse,
    /// Send the headers and half the body, then reset the connection.
    ResetMidBody,
    /// Send the headers (with the full `Content-Length`) and half the body, then close.
    Truncate,
    /// Answer this status with an OCI error body instead of forwarding.
    Status(u16),
    /// Answer 429 with `Retry-After: <secs>` instead of forwarding.
    RateLimit { retry_after_secs: u64 },
    /// Flip one byte in the middle of the body (same length, wrong digest).
    Corrupt,
    /// Send the headers and half the body, stall for this long, then close: slow-loris.
    Stall(Duration),
    /// Send half of the status line and headers, stall for this long, then close.
    StallHeaders(Duration),
}

/// Which requests a rule applies to, and how many more times.
#[derive(Clone, Debug)]
pub struct Rule {
    /// `None`: any method.
    pub method: Option<String>,
    /// A fragment the request path must contain ("" matches all).
    pub path: String,
    pub fault: Fault,
    pub times: usize,
}

impl Rule {
    pub fn new(method: &str, path: &str, fault: Fault, times: usize) -> Rule {
        Rule {
            method: Some(method.to_owned()),
            path: path.to_owned(),
            fault,
            times,
        }
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.times > 0
            && self.method.as_deref().is_none_or(|m| m == method)
            && path.contains(&self.path)
    }
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub at: Instant,
    pub fault: Option<Fault>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Chaos {
    rng: StdRng,
    probability: f64,
    faults: Vec<Fault>,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    chaos: Option<Chaos>,
    seen: Vec<Seen>,
}

impl State {
    /// The fault for a request: the first matching rule (used up by one), else chaos.
    fn pick(&mut self, method: &str, path: &str) -> Option<Fault> {
        if let Some(rule) = self.rules.iter_mut().find(|r| r.matches(method, path)) {
            rule.times -= 1;
            return Some(rule.fault.clone());
        }
        let chaos = self.chaos.as_mut()?;
        if path == "/v2/" || !chaos.rng.random_bool(chaos.probability) {
            return None;
        }
        let i = chaos.rng.random_range(0..chaos.faults.len());
        Some(chaos.faults[i].clone())
    }
}

pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy on a loopback port forwarding to `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> FaultProxy {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let state: Arc<Mutex<State>> = Default::default();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let upstream = upstream.trim_end_matches('/').to_owned();
        let thread = {
            let state = state.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).unwrap();
                    let client = reqwest::Client::builder()
                        .redirect(reqwest::redirect::Policy::none())
                        .build()
                        .unwrap();
                    loop {
                        tokio::select! {
                            _ = &mut rx => break,
                            conn = listener.accept() => {
                                let Ok((conn, _)) = conn else { continue };
                                let (state, client, upstream) =
                                    (state.clone(), client.clone(), upstream.clone());
                                tokio::spawn(async move {
                                    let _ = serve(conn, &state, &client, &upstream).await;
                                });
                            }
                        }
                    }
                });
            })
        };
        FaultProxy {
            addr,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a rule; rules are tried in the order added.
    pub fn inject(&self, rule: Rule) {
        self.state.lock().unwrap().rules.push(rule);
    }

    /// Drops every rule and turns chaos off: requests pass untouched.
    pub fn clear(&self) {
        let mut s = self.state.lock().unwrap();
        s.rules.clear();
        s.chaos = None;
    }

    /// From now on, each request (but `GET /v2/`) gets one of `faults` with `probability`.
    pub fn chaos(&self, seed: u64, probability: f64, faults: Vec<Fault>) {
        self.state.lock().unwrap().chaos = Some(Chaos {
            rng: StdRng::seed_from_u64(seed),
            probability,
            faults,
        });
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The requests so far whose path contains `fragment`.
    pub fn seen_for(&self, fragment: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.contains(fragment))
            .collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request head; GET and HEAD carry no body.
async fn read_head(
    conn: &mut TcpStream,
) -> std::io::Result<Option<(String, String, Vec<(String, String)>)>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).await? == 0 || buf.len() > 64 * 1024 {
            return Ok(None);
        }
        buf.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (method, path) = (
        first.next().unwrap_or("").to_owned(),
        first.next().unwrap_or("").to_owned(),
    );
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Some((method, path, headers)))
}

async fn serve(
    mut conn: TcpStream,
    state: &Mutex<State>,
    client: &reqwest::Client,
    upstream: &str,
) -> std::io::Result<()> {
    let Some((method, path, headers)) = read_head(&mut conn).await? else {
        return Ok(());
    };
    let fault = {
        let mut s = state.lock().unwrap();
        let fault = s.pick(&method, &path);
        s.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
            at: Instant::now(),
            fault: fault.clone(),
        });
        fault
    };
    match &fault {
        Some(Fault::ResetBeforeResponse) => return reset(conn),
        Some(Fault::Status(code)) => {
            let body =
                format!(r#"{{"errors":[{{"code":"UNAVAILABLE","message":"injected {code}"}}]}}"#);
            let head = format!(
                "HTTP/1.1 {code} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            return write_all(conn, head.as_bytes(), body.as_bytes()).await;
        }
        Some(Fault::RateLimit { retry_after_secs }) => {
            let body = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"injected rate limit"}]}"#;
            let head = format!(
                "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {retry_after_secs}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            return write_all(conn, head.as_bytes(), body.as_bytes()).await;
        }
        _ => {}
    }

    // Forward to the upstream.
    let method_v = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut req = client.request(method_v.clone(), format!("{upstream}{path}"));
    for (k, v) in &headers {
        let k_lower = k.to_ascii_lowercase();
        if !matches!(k_lower.as_str(), "host" | "connection" | "content-length") {
            req = req.header(k, v);
        }
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(_) => return reset(conn),
    };
    let status = resp.status();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut declared = None;
    for (k, v) in resp.headers() {
        match k.as_str() {
            "transfer-encoding" | "connection" => {}
            "content-length" => declared = v.to_str().ok().and_then(|v| v.parse::<usize>().ok()),
            _ => head.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap_or(""))),
        }
    }
    let mut body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    // A HEAD answer declares the length of the body it does not send.
    let length = if method_v == reqwest::Method::HEAD {
        declared.unwrap_or(0)
    } else {
        body.len()
    };
    head.push_str(&format!(
        "Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ));
    let half = body.len() / 2;
    match fault {
        None => write_all(conn, head.as_bytes(), &body).await,
        Some(Fault::Latency(d)) => {
            tokio::time::sleep(d).await;
            write_all(conn, head.as_bytes(), &body).await
        }
        Some(Fault::Corrupt) => {
            if let Some(b) = body.get_mut(half) {
                *b ^= 0x5a;
            }
            write_all(conn, head.as_bytes(), &body).await
        }
        Some(Fault::Truncate) => write_all(conn, head.as_bytes(), &body[..half]).await,
        Some(Fault::ResetMidBody) => {
            conn.write_all(head.as_bytes()).await?;
            conn.write_all(&body[..half]).await?;
            conn.flush().await?;
            // Let the bytes leave before the reset discards the send buffer.
            tokio::time::sleep(Duration::from_millis(50)).await;
            reset(conn)
        }
        Some(Fault::Stall(d)) => {
            conn.write_all(head.as_bytes()).await?;
            conn.write_all(&body[..half]).await?;
            conn.flush().await?;
            tokio::time::sleep(d).await;
            Ok(())
        }
        Some(Fault::StallHeaders(d)) => {
            conn.write_all(&head.as_bytes()[..head.len() / 2]).await?;
            conn.flush().await?;
            tokio::time::sleep(d).await;
            Ok(())
        }
        Some(Fault::ResetBeforeResponse | Fault::Status(_) | Fault::RateLimit { .. }) => {
            unreachable!("answered before forwarding")
        }
    }
}

async fn write_all(mut conn: TcpStream, head: &[u8], body: &[u8]) -> std::io::Result<()> {
    conn.write_all(head).await?;
    conn.write_all(body).await?;
    conn.flush().await?;
    conn.shutdown().await
}

/// Closes with a TCP reset: linger 0 makes the close discard and send RST.
#[allow(deprecated)]
fn reset(conn: TcpStream) -> std::io::Result<()> {
    conn.set_linger(Some(Duration::ZERO))?;
    drop(conn);
    Ok(())
}
