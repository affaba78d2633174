//! Who the replicas are, which of them are live, which one is this server, and whom to ask for
//! a digest. Pure state: discovery, probes and failed requests feed it; no IO, no clock.

use std::collections::BTreeSet;

use super::ring;
use crate::digest::Digest;

/// One replica, named the same way by every replica (`10.0.0.12:8080`, `[fd00::1]:8080`, or
/// `host:port` as a static `peers` entry writes it), and the base URL it is reached at.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member {
    pub id: String,
    pub url: String,
}

impl AsRef<str> for Member {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl Member {
    /// A member reached over plain HTTP at a resolved address.
    pub fn at(addr: std::net::SocketAddr) -> Member {
        Member {
            id: addr.to_string(),
            url: format!("http://{addr}"),
        }
    }
}

/// What a peer is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// Answer from its cache or its upstream (it fetches once and streams).
    Fetch,
    /// Answer from its cache only; a 404 says only that it does not hold the content.
    Cached,
}

/// The replicas as this server sees them.
#[derive(Clone, Debug, Default)]
pub struct Membership {
    /// Every replica discovered or configured, this one included when listed; sorted by id.
    known: Vec<Member>,
    /// This server's id, once recognised among `known`.
    me: Option<String>,
    /// Ids left out after a failure, until a probe answers.
    down: BTreeSet<String>,
    /// `known` less `down`: the members ranked for ownership (this server is never down).
    live: Vec<Member>,
    /// `live` before its last change: who owned what before a replica came or went.
    previous: Vec<Member>,
}

impl Membership {
    /// Replaces the known replicas (a new DNS answer or the static list). Down marks of
    /// replicas that are gone are forgotten. Returns whether the live set changed.
    pub fn set_known(&mut self, mut members: Vec<Member>) -> bool {
        members.sort();
        members.dedup_by(|a, b| a.id == b.id);
        self.down.retain(|id| members.iter().any(|m| &m.id == id));
        self.known = members;
        self.relive()
    }

    /// Records that `id` is this server. Returns whether that is news (the peer count changes
    /// with it).
    pub fn set_me(&mut self, id: &str) -> bool {
        if self.me.as_deref() == Some(id) {
            return false;
        }
        self.me = Some(id.to_owned());
        self.down.remove(id);
        self.relive();
        true
    }

    /// Leaves `id` out until [`Membership::mark_up`]. Returns whether the live set changed.
    pub fn mark_down(&mut self, id: &str) -> bool {
        if self.is_me(id) || !self.known.iter().any(|m| m.id == id) {
            return false;
        }
        self.down.insert(id.to_owned()) && self.relive()
    }

    /// Takes `id` back after a probe answered. Returns whether the live set changed.
    pub fn mark_up(&mut self, id: &str) -> bool {
        self.down.remove(id) && self.relive()
    }

    fn relive(&mut self) -> bool {
        let live: Vec<Member> = self
            .known
            .iter()
            .filter(|m| !self.down.contains(&m.id))
            .cloned()
            .collect();
        if live == self.live {
            return false;
        }
        self.previous = std::mem::replace(&mut self.live, live);
        true
    }

    pub fn is_me(&self, id: &str) -> bool {
        self.me.as_deref() == Some(id)
    }

    pub fn me(&self) -> Option<&str> {
        self.me.as_deref()
    }

    pub fn known(&self) -> &[Member] {
        &self.known
    }

    /// The members ranked for ownership, this server included when it is listed.
    pub fn live(&self) -> &[Member] {
        &self.live
    }

    /// Known replicas other than this one that are left out.
    pub fn down(&self) -> Vec<&Member> {
        self.known
            .iter()
            .filter(|m| self.down.contains(&m.id))
            .collect()
    }

    /// Live replicas other than this one.
    pub fn live_peers(&self) -> usize {
        self.live.iter().filter(|m| !self.is_me(&m.id)).count()
    }

    /// Whom to ask for `key` before the upstream, in order (at most two, never this server):
    /// the owner among the live members, then the owner before the last change of the live
    /// set when it differs and is still live (it likely holds the content).
    pub fn candidates(&self, key: &Digest) -> Vec<Member> {
        let mut out: Vec<Member> = Vec::with_capacity(2);
        let owner = ring::owner(&self.live, key);
        if let Some(o) = owner
            && !self.is_me(&o.id)
        {
            out.push(o.clone());
        }
        if let Some(p) = ring::owner(&self.previous, key)
            && !self.is_me(&p.id)
            && owner.is_none_or(|o| o.id != p.id)
            && self.live.iter().any(|m| m.id == p.id)
        {
            out.push(p.clone());
        }
        out
    }

    /// Whom to ask for `key` before the upstream, and how. A replica that does not own `key`
    /// asks the owner, then the previous owner ([`Membership::candidates`]), to fetch it
    /// ([`Ask::Fetch`]). The owner asks only whether the replica that owned `key` before holds
    /// it ([`Ask::Cached`]): the runner-up in the ranking (the owner were this replica not
    /// there: right after it joined, whoever held the content), then the owner before the last
    /// change of the live set when that is another live replica. So content moves to its new
    /// owner instead of being fetched upstream again, and the owner's fetch never waits on
    /// another replica's fetch.
    pub fn plan(&self, key: &Digest) -> Vec<(Member, Ask)> {
        if !self.owns(key) {
            return self
                .candidates(key)
                .into_iter()
                .map(|m| (m, Ask::Fetch))
                .collect();
        }
        let mut out: Vec<(Member, Ask)> = Vec::with_capacity(2);
        let runner_up = ring::rank(&self.live, key)
            .into_iter()
            .find(|m| !self.is_me(&m.id));
        if let Some(r) = runner_up {
            out.push((r.clone(), Ask::Cached));
        }
        if let Some(p) = ring::owner(&self.previous, key)
            && !self.is_me(&p.id)
            && out.iter().all(|(m, _)| m.id != p.id)
            && self.live.iter().any(|m| m.id == p.id)
        {
            out.push((p.clone(), Ask::Cached));
        }
        out
    }

    /// Whether this server owns `key`: it is first in the ranking, or no other replica is live.
    pub fn owns(&self, key: &Digest) -> bool {
        match ring::owner(&self.live, key) {
            Some(o) => self.is_me(&o.id) || self.live_peers() == 0,
            None => true,
        }
    }
}
