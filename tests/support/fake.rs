//! A scripted upstream for responses Distribution refuses to produce (e.g. a
//! manifest over its 4 MiB push limit). One request per connection, fixed routes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

#[derive(Clone)]
pub struct Route {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// A Content-Length larger than the body: the connection closes early, as a cut transfer.
    pub declared_len: Option<usize>,
}

pub struct FakeUpstream {
    addr: String,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    requests: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeUpstream {
    /// Serves `GET /v2/` with 200 and whatever `route` adds; anything else gets 404 `NAME_UNKNOWN`.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let routes: Arc<Mutex<HashMap<String, Route>>> = Default::default();
        let requests: Arc<Mutex<Vec<(String, String)>>> = Default::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (routes, requests, stop) = (routes.clone(), requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (routes, requests) = (routes.clone(), requests.clone());
                    std::thread::spawn(move || serve(conn, &routes, &requests));
                }
            })
        };
        let fake = FakeUpstream {
            addr,
            routes,
            requests,
            stop,
            thread: Some(thread),
        };
        fake.route(
            "/v2/",
            200,
            &[("Content-Type", "application/json")],
            b"{}".to_vec(),
        );
        fake
    }

    /// Answers `path` (query ignored) for GET and HEAD.
    pub fn route(&self, path: &str, status: u16, headers: &[(&str, &str)], body: Vec<u8>) {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.routes.lock().unwrap().insert(
            path.to_string(),
            Route {
                status,
                headers,
                body,
                declared_len: None,
            },
        );
    }

    /// Answers `path` with a 200 that announces `declared_len` bytes but sends only `body`.
    pub fn route_truncated(&self, path: &str, body: Vec<u8>, declared_len: usize) {
        self.routes.lock().unwrap().insert(
            path.to_string(),
            Route {
                status: 200,
                headers: vec![],
                body,
                declared_len: Some(declared_len),
            },
        );
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `(method, target)` of every request so far.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr); // wake the accept loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    conn: TcpStream,
    routes: &Mutex<HashMap<String, Route>>,
    requests: &Mutex<Vec<(String, String)>>,
) {
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    // Drain headers; requests to a registry upstream carry no body we care about.
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    requests
        .lock()
        .unwrap()
        .push((method.clone(), target.clone()));
    let path = target.split('?').next().unwrap_or("");
    let route = routes.lock().unwrap().get(path).cloned().unwrap_or(Route {
        status: 404,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#.to_vec(),
        declared_len: None,
    });
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        route.status,
        route.declared_len.unwrap_or(route.body.len())
    );
    for (k, v) in &route.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut conn = conn;
    let _ = conn.write_all(head.as_bytes());
    if method != "HEAD" {
        let _ = conn.write_all(&route.body);
    }
    let _ = conn.flush();
}
