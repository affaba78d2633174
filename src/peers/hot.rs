//! Which relayed blobs a non-owner keeps under `peering.nonOwnerBlobs: hot`: a blob it has
//! relayed before within [`HOT_WINDOW`]. Content pulled once through a replica stays on its
//! owner only; content pulled again (an image rolling out to many nodes) gets a copy on every
//! replica that serves it, so it is read from local disk and stops funnelling every node's pull
//! through one owner. Pure: the caller passes the time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::digest::Digest;

/// How long a relay is remembered.
pub const HOT_WINDOW: Duration = Duration::from_secs(3600);
/// Relays remembered at most; past it the oldest half is forgotten.
const MAX_REMEMBERED: usize = 65_536;

/// The blobs relayed once in the window, by when.
#[derive(Debug, Default)]
pub struct HotSet {
    relayed: HashMap<Digest, Instant>,
}

impl HotSet {
    /// Records a relay of `digest` at `now`; true when it was relayed before within the window
    /// (keep a copy this time).
    pub fn relayed(&mut self, digest: &Digest, now: Instant) -> bool {
        if let Some(at) = self.relayed.get(digest)
            && now.saturating_duration_since(*at) <= HOT_WINDOW
        {
            self.relayed.remove(digest);
            return true;
        }
        if self.relayed.len() >= MAX_REMEMBERED {
            self.forget_oldest(now);
        }
        self.relayed.insert(digest.clone(), now);
        false
    }

    /// Drops relays out of the window, then the older half if that freed too little.
    fn forget_oldest(&mut self, now: Instant) {
        self.relayed
            .retain(|_, at| now.saturating_duration_since(*at) <= HOT_WINDOW);
        if self.relayed.len() >= MAX_REMEMBERED / 2 {
            let mut times: Vec<Instant> = self.relayed.values().copied().collect();
            times.sort_unstable();
            let cut = times[times.len() / 2];
            self.relayed.retain(|_, at| *at > cut);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.relayed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct in their first 8 bytes, as real digests are (`Digest`'s `Hash` reads only those).
    fn digest(n: u64) -> Digest {
        format!("sha256:{n:016x}{:048x}", 0).parse().unwrap()
    }

    #[test]
    fn the_second_relay_in_the_window_keeps_a_copy() {
        let mut hot = HotSet::default();
        let t = Instant::now();
        assert!(!hot.relayed(&digest(1), t));
        assert!(!hot.relayed(&digest(2), t));
        assert!(hot.relayed(&digest(1), t + Duration::from_secs(10)));
        // Kept now: a later relay (the copy was pruned) starts counting again.
        assert!(!hot.relayed(&digest(1), t + Duration::from_secs(20)));
    }

    #[test]
    fn a_relay_out_of_the_window_counts_as_the_first() {
        let mut hot = HotSet::default();
        let t = Instant::now();
        assert!(!hot.relayed(&digest(1), t));
        let later = t + HOT_WINDOW + Duration::from_secs(1);
        assert!(!hot.relayed(&digest(1), later));
        assert!(hot.relayed(&digest(1), later + Duration::from_secs(1)));
    }

    #[test]
    fn memory_stays_bounded() {
        let mut hot = HotSet::default();
        let t = Instant::now();
        for n in 0..(MAX_REMEMBERED as u64 + 10) {
            hot.relayed(&digest(n), t + Duration::from_millis(n));
        }
        assert!(hot.len() <= MAX_REMEMBERED / 2 + 10, "{}", hot.len());
        // The newest are remembered.
        let last = MAX_REMEMBERED as u64 + 9;
        assert!(hot.relayed(&digest(last), t + Duration::from_millis(last + 1)));
    }
}
