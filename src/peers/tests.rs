use std::collections::BTreeMap;

use super::*;

fn digest(i: u32) -> Digest {
    Digest::sha256_of(format!("blob {i}").as_bytes())
}

fn member(id: &str) -> Member {
    Member {
        id: id.to_owned(),
        url: format!("http://{id}"),
    }
}

fn members(ids: &[&str]) -> Vec<Member> {
    ids.iter().map(|id| member(id)).collect()
}

/// A membership as replica `me` sees `known`, all live.
fn view(me: &str, known: &[&str]) -> Membership {
    let mut m = Membership::default();
    m.set_known(members(known));
    m.set_me(me);
    m
}

const THREE: [&str; 3] = ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"];

#[test]
fn weight_is_a_stable_wire_contract() {
    // The weight is the contract between replicas of different builds: it must never change.
    let d: Digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
        .parse()
        .unwrap();
    let w = ring::weight("10.0.0.1:8080", &d);
    assert_eq!(w, ring::weight("10.0.0.1:8080", &d));
    assert_ne!(w, ring::weight("10.0.0.2:8080", &d));
    // SHA-256("10.0.0.1:8080\0sha256:000...0"), first 8 bytes big-endian.
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"10.0.0.1:8080\0");
    h.update(d.to_string().as_bytes());
    let out = h.finalize();
    assert_eq!(w.to_be_bytes(), out[..8]);
}

#[test]
fn owner_is_the_first_of_the_ranking_whatever_the_order() {
    let a = members(&THREE);
    let mut b = a.clone();
    b.reverse();
    for i in 0..200 {
        let d = digest(i);
        let ranked = ring::rank(&a, &d);
        assert_eq!(ranked.len(), 3);
        assert_eq!(ring::owner(&a, &d), Some(ranked[0]));
        assert_eq!(ring::owner(&b, &d).map(|m| &m.id), Some(&ranked[0].id));
    }
}

#[test]
fn ownership_spreads_over_the_members() {
    let m = members(&THREE);
    let mut count: BTreeMap<&str, u32> = BTreeMap::new();
    for i in 0..3000 {
        *count
            .entry(&ring::owner(&m, &digest(i)).unwrap().id)
            .or_default() += 1;
    }
    for (id, n) in &count {
        assert!((800..1200).contains(n), "{id} owns {n} of 3000");
    }
}

#[test]
fn a_member_leaving_moves_only_what_it_owned() {
    let all = members(&THREE);
    let two = members(&THREE[..2]);
    for i in 0..500 {
        let d = digest(i);
        let before = ring::owner(&all, &d).unwrap();
        let after = ring::owner(&two, &d).unwrap();
        if before.id != THREE[2] {
            assert_eq!(
                before, after,
                "digest {i} moved between members that stayed"
            );
        }
    }
}

#[test]
fn every_replica_agrees_on_the_owner() {
    let views: Vec<Membership> = THREE.iter().map(|me| view(me, &THREE)).collect();
    for i in 0..300 {
        let d = digest(i);
        let owners: Vec<&str> = views
            .iter()
            .zip(THREE)
            .filter(|(v, _)| v.owns(&d))
            .map(|(_, me)| me)
            .collect();
        assert_eq!(owners.len(), 1, "digest {i}: owners {owners:?}");
        for v in &views {
            let plan = v.plan(&d);
            if v.owns(&d) {
                // The owner asks the runner-up whether it holds it (cache only), no one else.
                let all = members(&THREE);
                let ranked = ring::rank(&all, &d);
                assert_eq!(plan, vec![(ranked[1].clone(), Ask::Cached)]);
            } else {
                assert_eq!(plan.len(), 1);
                assert_eq!(plan[0].0.id, owners[0]);
                assert_eq!(plan[0].1, Ask::Fetch);
            }
        }
    }
}

#[test]
fn after_a_change_the_previous_owner_is_asked_second_and_by_the_owner_cache_only() {
    // Replica 1 sees replica 3 join.
    let mut v = view(THREE[0], &THREE[..2]);
    assert!(v.set_known(members(&THREE)));
    let mut moved = 0;
    for i in 0..300 {
        let d = digest(i);
        let before = ring::owner(&members(&THREE[..2]), &d).unwrap().id.clone();
        let now = ring::owner(&members(&THREE), &d).unwrap().id.clone();
        let plan = v.plan(&d);
        assert!(plan.len() <= 2);
        assert!(plan.iter().all(|(m, _)| m.id != THREE[0]), "never itself");
        if now == THREE[0] {
            // Ownership never moves to a member that was there already.
            assert_eq!(before, THREE[0]);
            assert_eq!(plan.len(), 1, "the runner-up, cache only: {plan:?}");
            assert_eq!(plan[0].1, Ask::Cached);
        } else if before == now {
            assert_eq!(plan, vec![(member(&now), Ask::Fetch)]);
        } else {
            moved += 1;
            assert_eq!(now, THREE[2]);
            let mut expected = vec![(member(&now), Ask::Fetch)];
            if before != THREE[0] {
                expected.push((member(&before), Ask::Fetch));
            }
            assert_eq!(plan, expected, "digest {i}");
        }
    }
    assert!(
        moved > 50,
        "a third of the digests move to the new member: {moved}"
    );

    // Seen from the new member: it owns what moved and asks the previous owner cache only.
    let mut n = view(THREE[2], &THREE[..2]);
    n.set_known(members(&THREE));
    for i in 0..300 {
        let d = digest(i);
        if !n.owns(&d) {
            continue;
        }
        let two = members(&THREE[..2]);
        let before = ring::owner(&two, &d).unwrap();
        assert_eq!(n.plan(&d), vec![(before.clone(), Ask::Cached)]);
    }
}

#[test]
fn a_down_member_is_left_out_until_it_is_marked_up() {
    let mut v = view(THREE[0], &THREE);
    assert_eq!(v.live_peers(), 2);
    assert!(v.mark_down(THREE[2]));
    assert!(!v.mark_down(THREE[2]), "already down");
    assert!(!v.mark_down(THREE[0]), "this server is never down");
    assert!(!v.mark_down("10.9.9.9:8080"), "not a member");
    assert_eq!(v.live_peers(), 1);
    assert_eq!(v.down().len(), 1);
    for i in 0..200 {
        let d = digest(i);
        for (m, _) in v.plan(&d) {
            assert_ne!(m.id, THREE[2]);
        }
    }
    assert!(v.mark_up(THREE[2]));
    assert_eq!(v.live_peers(), 2);
    // A new member list forgets down marks of members that are gone.
    v.mark_down(THREE[2]);
    v.set_known(members(&THREE[..2]));
    assert!(v.down().is_empty());
}

#[test]
fn alone_or_unrecognised() {
    // Alone: owns everything, asks no one.
    let v = view(THREE[0], &THREE[..1]);
    assert!(v.owns(&digest(1)));
    assert!(v.plan(&digest(1)).is_empty());
    // Not (yet) among the members (a pod not ready is not in the headless Service): it owns
    // nothing and asks the owners.
    let mut u = Membership::default();
    u.set_known(members(&THREE[..2]));
    for i in 0..50 {
        let d = digest(i);
        assert!(!u.owns(&d));
        assert_eq!(u.plan(&d).len(), 1);
    }
}

#[test]
fn static_peers_are_named_by_host_and_port() {
    let m = static_member("http://127.0.0.1:5001").unwrap();
    assert_eq!(m.id, "127.0.0.1:5001");
    assert_eq!(m.url, "http://127.0.0.1:5001");
    let m = static_member("https://Cache-0.Mirror:8443/").unwrap();
    assert_eq!(m.id, "cache-0.mirror:8443");
    assert_eq!(m.url, "https://cache-0.mirror:8443");
    assert_eq!(static_member("http://cache").unwrap().id, "cache:80");
    assert_eq!(
        static_member("http://[fd00::1]:8080").unwrap().id,
        "[fd00::1]:8080"
    );
    // Resolved addresses name members the same way.
    let a: SocketAddr = "[fd00::1]:8080".parse().unwrap();
    assert_eq!(Member::at(a).id, "[fd00::1]:8080");
}

#[test]
fn config_without_peers_has_no_peer_set() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Config::default();
    let metrics = Arc::new(Metrics::new());
    assert!(Peers::new(&config, metrics).unwrap().is_none());
}

#[tokio::test]
async fn static_peers_recognise_this_server_and_publish_the_set() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Config {
        addr: "127.0.0.1:5999".parse().unwrap(),
        peers: vec![
            "http://127.0.0.1:5999".into(),
            "http://127.0.0.1:5998".into(),
            "http://127.0.0.1:5997".into(),
        ],
        ..Config::default()
    };
    let metrics = Arc::new(Metrics::new());
    let peers = Peers::new(&config, metrics.clone()).unwrap().unwrap();
    peers.resolve().await;
    let m = peers.membership();
    assert_eq!(m.me(), Some("127.0.0.1:5999"));
    assert_eq!(m.live_peers(), 2);
    let text = metrics.render(None);
    assert!(
        text.contains("imagecache_peers{state=\"live\"} 2"),
        "peer gauge in:\n{text}"
    );
}
