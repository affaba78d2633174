//! Replicas of one cache on loopback that list each other as `peers` (issue 15), as
//! `tests/peers.rs` and the peers benchmark start them.

use std::time::Duration;

use serde_json::{Value, json};

use super::{
    ImageCache, ImageCacheBuilder, UPSTREAM, free_port, metric_sum, raw_request, wait_for,
};

/// Registry ports for `n` replicas and their `peers` list.
pub fn peer_ports(n: usize) -> (Vec<u16>, Vec<String>) {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let urls = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    (ports, urls)
}

/// A replica on `port` with `upstream` as `upstream.test`, listing `peers` with the `peering`
/// section.
pub fn replica(upstream: &str, port: u16, peers: &[String], peering: Value) -> ImageCache {
    builder(upstream, port)
        .set("peers", json!(peers))
        .set("peering", peering)
        .start()
}

/// `n` replicas with `upstream` as `upstream.test`. With `peering` (the `peering` section) they
/// list each other as `peers`, and each is waited for until it counts the other `n - 1` live;
/// without, they are `n` independent caches.
pub fn start_replicas(
    upstream: &str,
    n: usize,
    peering: Option<Value>,
) -> (Vec<u16>, Vec<ImageCache>) {
    let (ports, peers) = peer_ports(n);
    let caches: Vec<ImageCache> = ports
        .iter()
        .map(|&port| match &peering {
            Some(p) => replica(upstream, port, &peers, p.clone()),
            None => builder(upstream, port).start(),
        })
        .collect();
    if peering.is_some() {
        for c in &caches {
            wait_live(c, n - 1);
        }
    }
    (ports, caches)
}

/// The replica's `/metrics`.
pub fn metrics(cache: &ImageCache) -> String {
    let r = raw_request(&cache.admin_addr(), "GET", "/metrics", &[]).expect("GET /metrics");
    assert_eq!(r.status, 200, "GET /metrics");
    r.text()
}

/// Waits until `cache` counts `live` other replicas as live.
pub fn wait_live(cache: &ImageCache, live: usize) {
    let seen = wait_for(Duration::from_secs(20), || {
        (metric_sum(&metrics(cache), "imagecache_peers{state=\"live\"}") as usize == live)
            .then_some(())
    });
    assert!(
        seen.is_some(),
        "{} does not see {live} live peers:\n{}",
        cache.addr(),
        metrics(cache)
    );
}

/// A replica's config before its peers: `upstream` as `upstream.test`, info logs in text, `port`.
fn builder(upstream: &str, port: u16) -> ImageCacheBuilder {
    ImageCache::builder()
        .registry(UPSTREAM, upstream)
        .set("log", json!({"level": "info", "format": "text"}))
        .port(port)
}
