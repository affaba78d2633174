//! The index's view of blobs: which are cached and their sizes, and how many cached manifests
//! reference each (cached or not: layers are pulled lazily). One map serves both, because at
//! 300k blobs a second map keyed by digest costs another 20 MiB. Pure.

use std::collections::HashMap;

use crate::digest::{Digest, DigestMap};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    size: u64,
    refs: u32,
    cached: bool,
}

#[derive(Clone, Debug, Default)]
pub struct BlobTable {
    entries: DigestMap<Digest, Entry>,
    cached: usize,
    bytes: u64,
}

impl BlobTable {
    pub fn with_capacity(n: usize) -> BlobTable {
        BlobTable {
            entries: DigestMap::with_capacity_and_hasher(n, Default::default()),
            ..BlobTable::default()
        }
    }

    /// The size of a cached blob.
    pub fn size(&self, d: &Digest) -> Option<u64> {
        self.entries.get(d).filter(|e| e.cached).map(|e| e.size)
    }

    /// Whether the blob is cached.
    pub fn contains(&self, d: &Digest) -> bool {
        self.size(d).is_some()
    }

    /// Cached manifests referencing the blob.
    pub fn refs(&self, d: &Digest) -> u32 {
        self.entries.get(d).map_or(0, |e| e.refs)
    }

    /// Cached blobs.
    pub fn len(&self) -> usize {
        self.cached
    }

    pub fn is_empty(&self) -> bool {
        self.cached == 0
    }

    /// Bytes of the cached blobs.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Cached blobs: digest, size, references.
    pub fn iter(&self) -> impl Iterator<Item = (&Digest, u64, u32)> {
        self.entries
            .iter()
            .filter(|(_, e)| e.cached)
            .map(|(d, e)| (d, e.size, e.refs))
    }

    /// Records a cached blob; whether it is new.
    pub fn insert(&mut self, d: &Digest, size: u64) -> bool {
        let e = self.entries.entry(d.clone()).or_default();
        if e.cached {
            return false;
        }
        *e = Entry {
            size,
            cached: true,
            ..*e
        };
        self.cached += 1;
        self.bytes += size;
        true
    }

    /// Forgets a cached blob (its references stay counted); its size if it was cached.
    pub fn remove(&mut self, d: &Digest) -> Option<u64> {
        let e = self.entries.get_mut(d).filter(|e| e.cached)?;
        let size = e.size;
        e.cached = false;
        if e.refs == 0 {
            self.entries.remove(d);
        }
        self.cached -= 1;
        self.bytes -= size;
        Some(size)
    }

    pub fn add_ref(&mut self, d: &Digest) {
        let e = self.entries.entry(d.clone()).or_default();
        e.refs = e.refs.saturating_add(1);
    }

    /// Drops one reference. When none is left the blob is garbage: it is forgotten, and its
    /// size returned if it was cached (the caller removes the file).
    pub fn drop_ref(&mut self, d: &Digest) -> Option<u64> {
        let e = self.entries.get_mut(d)?;
        e.refs = e.refs.saturating_sub(1);
        if e.refs > 0 {
            return None;
        }
        let gone = *e;
        self.entries.remove(d);
        if !gone.cached {
            return None;
        }
        self.cached -= 1;
        self.bytes -= gone.size;
        Some(gone.size)
    }
}

/// Building the table at load: blob files are found by name, and their sizes come from the
/// manifests that declare them, so a cache of 300k blobs is opened without a `stat` each. Only
/// blobs no manifest declares, or declared with two sizes, are measured on disk.
impl BlobTable {
    /// Size not known yet.
    const UNSIZED: u64 = u64::MAX;

    /// A blob file found on disk.
    pub(super) fn found(&mut self, d: Digest) {
        let e = self.entries.entry(d).or_default();
        if !e.cached {
            e.cached = true;
            e.size = Self::UNSIZED;
            self.cached += 1;
        }
    }

    /// A size a cached manifest declares for `d`; false when it disagrees with an earlier one
    /// (the file then decides). Blobs not found on disk are ignored.
    pub(super) fn declare(&mut self, d: &Digest, size: u64) -> bool {
        match self.entries.get_mut(d) {
            Some(e) if e.cached && e.size == Self::UNSIZED => {
                e.size = size;
                true
            }
            Some(e) if e.cached => e.size == size,
            _ => true,
        }
    }

    /// Found blobs no manifest declared.
    pub(super) fn undeclared(&self) -> Vec<Digest> {
        self.entries
            .iter()
            .filter(|(_, e)| e.cached && e.size == Self::UNSIZED)
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// The size measured on disk, or `None` when the file is gone.
    pub(super) fn measured(&mut self, d: &Digest, size: Option<u64>) {
        match size {
            Some(size) => {
                if let Some(e) = self.entries.get_mut(d) {
                    e.size = size;
                }
            }
            None => {
                if let Some(e) = self.entries.get_mut(d).filter(|e| e.cached) {
                    e.cached = false;
                    self.cached -= 1;
                    if e.refs == 0 {
                        self.entries.remove(d);
                    }
                }
            }
        }
    }

    /// Ends the load: every found blob has its size now.
    pub(super) fn sized(&mut self) {
        self.bytes = self
            .entries
            .values()
            .filter(|e| e.cached)
            .map(|e| e.size)
            .sum();
    }
}

impl FromIterator<(Digest, u64)> for BlobTable {
    /// A table of cached blobs with no references counted (for tests and tools).
    fn from_iter<I: IntoIterator<Item = (Digest, u64)>>(iter: I) -> BlobTable {
        let mut t = BlobTable::default();
        for (d, size) in iter {
            t.insert(&d, size);
        }
        t
    }
}

impl From<HashMap<Digest, u64>> for BlobTable {
    fn from(m: HashMap<Digest, u64>) -> BlobTable {
        m.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    #[test]
    fn cached_blobs_and_references_are_counted_apart() {
        let mut t = BlobTable::default();
        t.add_ref(&d(1));
        t.add_ref(&d(1));
        assert!(!t.contains(&d(1)), "referenced is not cached");
        assert_eq!((t.len(), t.bytes()), (0, 0));
        assert!(t.insert(&d(1), 10));
        assert!(!t.insert(&d(1), 10));
        assert!(t.insert(&d(2), 5));
        assert_eq!((t.len(), t.bytes(), t.refs(&d(1))), (2, 15, 2));
        assert_eq!(t.drop_ref(&d(1)), None, "one reference left");
        assert_eq!(t.drop_ref(&d(1)), Some(10), "garbage now");
        assert_eq!((t.len(), t.bytes()), (1, 5));
        assert!(!t.contains(&d(1)));
        assert_eq!(t.drop_ref(&d(1)), None, "already gone");
        assert_eq!(t.iter().collect::<Vec<_>>(), [(&d(2), 5, 0)]);
    }

    #[test]
    fn sizes_at_load_come_from_declarations_and_disputes_go_to_the_file() {
        let mut t = BlobTable::default();
        for n in 1..=4 {
            t.found(d(n));
        }
        assert!(t.declare(&d(1), 10));
        assert!(t.declare(&d(1), 10), "agreeing declarations");
        assert!(t.declare(&d(2), 20));
        assert!(!t.declare(&d(2), 21), "a second size is a dispute");
        assert!(t.declare(&d(9), 5), "a blob not on disk is ignored");
        let mut undeclared = t.undeclared();
        undeclared.sort();
        let mut want = vec![d(3), d(4)];
        want.sort();
        assert_eq!(undeclared, want);
        t.measured(&d(2), Some(22));
        t.measured(&d(3), Some(3));
        t.measured(&d(4), None);
        t.sized();
        assert_eq!((t.len(), t.bytes()), (3, 10 + 22 + 3));
        assert_eq!(t.size(&d(9)), None);
        assert!(!t.contains(&d(4)));
    }

    #[test]
    fn an_uncached_blob_losing_its_last_reference_leaves_nothing() {
        let mut t = BlobTable::default();
        t.add_ref(&d(3));
        assert_eq!(t.drop_ref(&d(3)), None);
        assert_eq!(t.refs(&d(3)), 0);
        t.add_ref(&d(3));
        t.insert(&d(3), 7);
        assert_eq!(t.remove(&d(3)), Some(7));
        assert_eq!(t.refs(&d(3)), 1, "references outlive the file");
        assert_eq!(t.remove(&d(3)), None);
        assert_eq!((t.len(), t.bytes()), (0, 0));
    }
}
